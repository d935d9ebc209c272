"""Admission checks of a `WorkOrderSpec` (SPEC §1): everything wrong is reported at once,
each violation named by its field path (`spec.task_prompt`, `spec.source.local_path`, ...),
so a client can fix every mistake in one round trip.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

from agentgate.common import profiles
from agentgate.common.branches import branch_pattern_problem
from agentgate.common.errors import FieldViolation
from agentgate.common.github import split_repo
from agentgate.v1 import common_pb2

#: The task prompt may hold at most this many bytes of UTF-8.
MAX_TASK_PROMPT_BYTES = 256 * 1024

AgentCheck = Callable[[common_pb2.AgentSpec], list[FieldViolation]]


def default_agent_check(agent: common_pb2.AgentSpec) -> list[FieldViolation]:
    """Checks the agent against the workspace service's driver registry (driver name and
    its options).

    Imported at call time: the registry lives with the workspace service, and importing
    the queue (e.g. for its validation rules alone) should not load every driver.

    The answer depends only on the AgentSpec's content (the drivers' option checks read
    no files), so it is cached by the spec's bytes: a scripted agent's YAML is parsed
    once, not on every Submit (it was ~2/3 of validate_spec's time).
    """
    return list(_cached_agent_check(agent.SerializeToString(deterministic=True)))


@functools.lru_cache(maxsize=256)
def _cached_agent_check(agent_bytes: bytes) -> tuple[FieldViolation, ...]:
    from agentgate.workspace.agent_drivers import validate_agent

    return tuple(validate_agent(common_pb2.AgentSpec.FromString(agent_bytes)))


def validate_spec(
    spec: common_pb2.WorkOrderSpec, agent_check: AgentCheck | None = None, profiles_dir: Path | None = None
) -> list[FieldViolation]:
    """Every violation of `spec`, in field order; empty when the spec is acceptable.

    `agent_check` validates `spec.agent` (default: the workspace driver registry); it is a
    parameter so the rules here can be tested without the drivers. `profiles_dir` holds
    the profile files (default $AGENTGATE_HOME/profiles). A valid spec whose agent cannot
    run on this machine raises FailedPrecondition (`check_agent_available`).
    """
    violations: list[FieldViolation] = []
    violations += _check_task_prompt(spec.task_prompt)
    violations += _check_source(spec)
    violations += (agent_check or default_agent_check)(spec.agent)
    violations += _check_harness(spec.harness, profiles_dir)
    violations += _check_delivery_and_retry(spec.harness)
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
    so the registry's own check (`shutil.which`) answers for them; AGENTGATE_CHECK_AGENT_
    AVAILABILITY=0 turns it off for deployments where that is not so."""
    if os.environ.get(AVAILABILITY_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return
    from agentgate.queue.store import FailedPrecondition
    from agentgate.workspace.agent_drivers import agent_unavailable

    missing = agent_unavailable(agent)
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


def _check_harness(harness: common_pb2.HarnessSettings, profiles_dir: Path | None) -> list[FieldViolation]:
    """The profile (SPEC §14: unknown, bad file, cycle in `extends`, each named by its key)
    and the inline loop strategy, limits and verification settings, checked by resolving
    the harness as the orchestrator will; git_ops and retry are checked below."""
    directory = profiles_dir if profiles_dir is not None else profiles.profiles_dir()
    resolution = profiles.resolve(harness, directory, inline_sections=("loop_strategy", "limits", "verification"))
    return resolution.violations


#: SPEC §6's presets (the orchestrator's retry module holds their numbers).
RETRY_PRESETS = ("default", "aggressive", "none")
MAX_RETRY_ATTEMPTS = 20
#: No single wait between retries above an hour.
MAX_BACKOFF_SECONDS = 3600.0


def _check_delivery_and_retry(harness: common_pb2.HarnessSettings) -> list[FieldViolation]:
    """git_ops (SPEC §7) and retry (SPEC §6) settings."""
    found: list[FieldViolation] = []
    git_ops = harness.git_ops
    for name, enum in (("mode", common_pb2.GitMode), ("github_mode", common_pb2.GitHubMode)):
        value = getattr(git_ops, name)
        if value not in enum.DESCRIPTOR.values_by_number:
            found.append(FieldViolation(f"spec.harness.git_ops.{name}", f"unknown value {value}"))
    if problem := branch_pattern_problem(git_ops.branch_pattern):
        found.append(FieldViolation("spec.harness.git_ops.branch_pattern", f"{git_ops.branch_pattern!r} {problem}"))

    retry = harness.retry
    prefix = "spec.harness.retry"
    if retry.preset and retry.preset not in RETRY_PRESETS:
        found.append(
            FieldViolation(f"{prefix}.preset", f"unknown preset {retry.preset!r}; expected {', '.join(RETRY_PRESETS)}")
        )
    if retry.HasField("max_attempts") and not 1 <= retry.max_attempts <= MAX_RETRY_ATTEMPTS:
        found.append(
            FieldViolation(
                f"{prefix}.max_attempts",
                f"must be between 1 (no retry) and {MAX_RETRY_ATTEMPTS}, got {retry.max_attempts}",
            )
        )
    for name in ("initial_backoff_seconds", "max_backoff_seconds"):
        value = getattr(retry, name)
        if retry.HasField(name) and not 0 <= value <= MAX_BACKOFF_SECONDS:
            found.append(
                FieldViolation(f"{prefix}.{name}", f"must be between 0 and {MAX_BACKOFF_SECONDS:g}, got {value}")
            )
    if retry.HasField("backoff_multiplier") and not 1 <= retry.backoff_multiplier <= 10:
        found.append(
            FieldViolation(f"{prefix}.backoff_multiplier", f"must be between 1 and 10, got {retry.backoff_multiplier}")
        )
    error_types = common_pb2.BuildErrorType.DESCRIPTOR.values_by_number
    bad = [v for v in retry.retryable_errors if v not in error_types or v == common_pb2.BUILD_ERROR_TYPE_UNSPECIFIED]
    if bad:
        found.append(FieldViolation(f"{prefix}.retryable_errors", f"unknown error type(s) {bad}"))
    return found
