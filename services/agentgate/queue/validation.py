"""Admission checks of a `WorkOrderSpec` (docs/queue.md): everything wrong is reported at once,
each violation named by its field path (`spec.task_prompt`, `spec.source.local_path`, ...),
so a client can fix every mistake in one round trip.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

from agentgate.common.errors import FieldViolation
from agentgate.common.github import split_repo
from agentgate.harness import drivers, profiles
from agentgate.harness.resolution import Resolution, resolve
from agentgate.v1 import common_pb2

#: The task prompt may hold at most this many bytes of UTF-8.
MAX_TASK_PROMPT_BYTES = 256 * 1024

AgentCheck = Callable[[common_pb2.AgentSpec], list[FieldViolation]]


def default_agent_check(agent: common_pb2.AgentSpec) -> list[FieldViolation]:
    """Checks the agent against the drivers' schemas (driver name and its options).

    The answer depends only on the AgentSpec's content (the option checks read no files),
    so it is cached by the spec's bytes: a scripted agent's YAML is parsed once, not on
    every Submit (it was ~2/3 of validate_spec's time).
    """
    return list(_cached_agent_check(agent.SerializeToString(deterministic=True)))


@functools.lru_cache(maxsize=256)
def _cached_agent_check(agent_bytes: bytes) -> tuple[FieldViolation, ...]:
    return tuple(drivers.validate_agent(common_pb2.AgentSpec.FromString(agent_bytes)))


def validate_spec(
    spec: common_pb2.WorkOrderSpec, agent_check: AgentCheck | None = None, profiles_dir: Path | None = None
) -> list[FieldViolation]:
    """Every violation of `spec`, in field order; empty when the spec is acceptable.

    `agent_check` validates `spec.agent` (default: the drivers' schemas); it is a
    parameter so the rules here can be tested without the drivers. `profiles_dir` holds
    the profile files (default $AGENTGATE_HOME/profiles). A valid spec whose agent cannot
    run on this machine raises FailedPrecondition (`check_agent_available`).
    """
    violations: list[FieldViolation] = []
    violations += _check_task_prompt(spec.task_prompt)
    violations += _check_source(spec)
    violations += (agent_check or default_agent_check)(spec.agent)
    resolution = _resolve_harness(spec.harness, profiles_dir)
    violations += resolution.violations
    if not resolution.violations and (
        problem := drivers.cost_cap_problem(spec.agent, resolution.harness.limits.max_cost_usd)
    ):
        violations.append(problem)
    if spec.max_queue_wait_seconds < 0:
        violations.append(
            FieldViolation(
                "spec.max_queue_wait_seconds",
                f"must be 0 (no limit) or more, got {spec.max_queue_wait_seconds}",
            )
        )
    if any(not key.strip() for key in spec.labels):
        violations.append(FieldViolation("spec.labels", "label keys must be non-empty"))
    if not violations:
        check_agent_available(spec.agent)
    return violations


#: Set to 0 when the queue runs on another machine than the workers, where its PATH
#: says nothing about theirs.
AVAILABILITY_ENV = "AGENTGATE_CHECK_AGENT_AVAILABILITY"


def check_agent_available(agent: common_pb2.AgentSpec) -> None:
    """Raises FailedPrecondition (FAILED_PRECONDITION at the edge) when the agent's driver
    cannot run on this machine, saying what is missing (e.g. the `claude` executable is not
    on PATH). The queue and the workers of `agentgate up` share one machine and one PATH,
    so looking up the driver's executable here answers for them; AGENTGATE_CHECK_AGENT_
    AVAILABILITY=0 turns it off for deployments where that is not so."""
    if os.environ.get(AVAILABILITY_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return
    from agentgate.queue.store import FailedPrecondition

    missing = drivers.agent_unavailable(agent)
    if missing:
        raise FailedPrecondition(f"spec.agent.name: {missing}")


def _check_task_prompt(prompt: str) -> list[FieldViolation]:
    if not prompt.strip():
        return [FieldViolation("spec.task_prompt", "is required and must not be blank")]
    size = len(prompt.encode("utf-8"))
    if size > MAX_TASK_PROMPT_BYTES:
        return [
            FieldViolation(
                "spec.task_prompt", f"is {size} bytes; at most {MAX_TASK_PROMPT_BYTES} bytes (256 KiB) allowed"
            )
        ]
    return []


def _check_source(spec: common_pb2.WorkOrderSpec) -> list[FieldViolation]:
    if not spec.HasField("source"):
        return [FieldViolation("spec.source", "is required: set one of local_path, git_url, github_repo")]
    source = spec.source
    kind = source.WhichOneof("kind")
    if kind is None:
        return [FieldViolation("spec.source", "set exactly one of local_path, git_url, github_repo")]
    found: list[FieldViolation] = []
    if kind == "local_path":
        path = source.local_path
        if not path.strip():
            found.append(FieldViolation("spec.source.local_path", "is empty"))
        elif not os.path.isabs(path):
            found.append(FieldViolation("spec.source.local_path", f"must be an absolute path, got {path!r}"))
        elif not os.path.isdir(path):
            found.append(FieldViolation("spec.source.local_path", f"{path!r} is not an existing directory"))
        if source.ref:
            # A local directory is copied as it is; a ref would silently do nothing.
            found.append(FieldViolation("spec.source.ref", "only applies to git_url and github_repo sources"))
    elif source.include_ignored:
        found.append(FieldViolation("spec.source.include_ignored", "only applies to local_path sources"))
    if kind == "git_url":
        if not source.git_url.strip():
            found.append(FieldViolation("spec.source.git_url", "is empty"))
    elif kind == "github_repo":
        try:
            split_repo(source.github_repo)
        except ValueError:
            found.append(
                FieldViolation("spec.source.github_repo", f"must be owner/name, got {source.github_repo[:140]!r}")
            )
    return found


def _resolve_harness(harness: common_pb2.HarnessSettings, profiles_dir: Path | None) -> Resolution:
    """The harness, resolved as the orchestrator will resolve it, with its violations: the
    profile (unknown, bad file, cycle in `extends`, each named by its key) and every inline
    setting."""
    directory = profiles_dir if profiles_dir is not None else profiles.profiles_dir()
    return resolve(harness, directory)
