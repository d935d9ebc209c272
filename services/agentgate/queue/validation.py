"""Admission checks of a `WorkOrderSpec` (SPEC §1): everything wrong is reported at once,
each violation named by its field path (`spec.task_prompt`, `spec.source.local_path`, ...),
so a client can fix every mistake in one round trip.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from agentgate.common.errors import FieldViolation
from agentgate.v1 import common_pb2

#: The task prompt may hold at most this many bytes of UTF-8.
MAX_TASK_PROMPT_BYTES = 256 * 1024

#: Profiles the queue accepts. Only the built-in default exists until profiles (§14) land.
KNOWN_PROFILES = frozenset({"", "default"})

#: Loop strategies that can run today; the others are in the contract but not built yet.
SUPPORTED_LOOP_MODES = frozenset({common_pb2.LOOP_STRATEGY_MODE_UNSPECIFIED, common_pb2.LOOP_STRATEGY_MODE_FIXED})

MAX_ITERATIONS_LIMIT = 100

VERIFICATION_LEVELS = ("L0", "L1", "L2", "L3")

AgentCheck = Callable[[common_pb2.AgentSpec], list[FieldViolation]]


def default_agent_check(agent: common_pb2.AgentSpec) -> list[FieldViolation]:
    """Checks the agent against the workspace service's driver registry (driver name and
    its options).

    Imported at call time: the registry lives with the workspace service, and importing
    the queue (e.g. for its validation rules alone) should not load every driver.
    """
    from agentgate.workspace.agent_drivers import validate_agent

    return list(validate_agent(agent))


def validate_spec(spec: common_pb2.WorkOrderSpec, agent_check: AgentCheck | None = None) -> list[FieldViolation]:
    """Every violation of `spec`, in field order; empty when the spec is acceptable.

    `agent_check` validates `spec.agent` (default: the workspace driver registry); it is a
    parameter so the rules here can be tested without the drivers.
    """
    violations: list[FieldViolation] = []
    violations += _check_task_prompt(spec.task_prompt)
    violations += _check_source(spec)
    violations += (agent_check or default_agent_check)(spec.agent)
    violations += _check_harness(spec.harness)
    if spec.max_queue_wait_seconds < 0:
        violations.append(
            FieldViolation(
                "spec.max_queue_wait_seconds",
                f"must be 0 (no limit) or more, got {spec.max_queue_wait_seconds}",
            )
        )
    if any(not key.strip() for key in spec.labels):
        violations.append(FieldViolation("spec.labels", "label keys must be non-empty"))
    return violations


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
    elif kind == "git_url":
        if not source.git_url.strip():
            found.append(FieldViolation("spec.source.git_url", "is empty"))
    elif kind == "github_repo":
        found.append(FieldViolation("spec.source.github_repo", "github_repo sources are not supported yet"))
    return found


def _check_harness(harness: common_pb2.HarnessSettings) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if harness.profile not in KNOWN_PROFILES:
        found.append(FieldViolation("spec.harness.profile", f"unknown profile {harness.profile!r}"))

    loop = harness.loop_strategy
    mode_names = common_pb2.LoopStrategyMode.DESCRIPTOR.values_by_number
    if loop.mode not in mode_names:
        found.append(FieldViolation("spec.harness.loop_strategy.mode", f"unknown value {loop.mode}"))
    elif loop.mode not in SUPPORTED_LOOP_MODES:
        found.append(
            FieldViolation(
                "spec.harness.loop_strategy.mode", f"{mode_names[loop.mode].name} is not supported yet (use FIXED)"
            )
        )
    if loop.HasField("max_iterations") and not 1 <= loop.max_iterations <= MAX_ITERATIONS_LIMIT:
        found.append(
            FieldViolation(
                "spec.harness.loop_strategy.max_iterations",
                f"must be between 1 and {MAX_ITERATIONS_LIMIT}, got {loop.max_iterations}",
            )
        )

    limits = harness.limits
    for name in ("max_wall_clock_seconds", "agent_timeout_seconds"):
        value = getattr(limits, name)
        if limits.HasField(name) and value <= 0:
            found.append(FieldViolation(f"spec.harness.limits.{name}", f"must be greater than 0, got {value}"))

    bad_levels = [level for level in harness.verification.skip_levels if level not in VERIFICATION_LEVELS]
    if bad_levels:
        found.append(
            FieldViolation(
                "spec.harness.verification.skip_levels",
                f"unknown level(s) {', '.join(repr(v) for v in bad_levels)}; expected {', '.join(VERIFICATION_LEVELS)}",
            )
        )
    return found
