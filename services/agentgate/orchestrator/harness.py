"""Resolving a work order's harness to the settings a run uses (built-in defaults filled in)."""

from __future__ import annotations

from agentgate.v1 import common_pb2

DEFAULT_MAX_ITERATIONS = 3
DEFAULT_MAX_WALL_CLOCK_SECONDS = 3600
DEFAULT_AGENT_TIMEOUT_SECONDS = 300


def resolve_harness(requested: common_pb2.HarnessSettings) -> common_pb2.HarnessSettings:
    """The harness with every unset field at its default; stored with the run."""
    resolved = common_pb2.HarnessSettings()
    resolved.CopyFrom(requested)
    if not resolved.profile:
        resolved.profile = "default"
    strategy = resolved.loop_strategy
    if strategy.mode == common_pb2.LOOP_STRATEGY_MODE_UNSPECIFIED:
        strategy.mode = common_pb2.LOOP_STRATEGY_MODE_FIXED
    if not strategy.HasField("max_iterations"):
        strategy.max_iterations = DEFAULT_MAX_ITERATIONS
    limits = resolved.limits
    if not limits.HasField("max_wall_clock_seconds"):
        limits.max_wall_clock_seconds = DEFAULT_MAX_WALL_CLOCK_SECONDS
    if not limits.HasField("agent_timeout_seconds"):
        limits.agent_timeout_seconds = DEFAULT_AGENT_TIMEOUT_SECONDS
    return resolved
