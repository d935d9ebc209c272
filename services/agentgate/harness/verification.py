"""Which gate plan a verification uses (docs/harness.md): the rule the queue checks at
submit and the workspace follows when it verifies.

AUTO (or unset): the inline plan if one is given, else the snapshot's verify.yaml, else a
detected plan. FILE: the snapshot's verify.yaml only, so an inline plan is a mistake.
INLINE: the inline plan only, so it must be given.
"""

from __future__ import annotations

from agentgate.v1 import common_pb2

#: The gate's levels, in the order they run (docs/verify-yaml.md).
VERIFICATION_LEVELS = ("L0", "L1", "L2", "L3")


def uses_inline_plan(settings: common_pb2.VerificationSettings) -> bool:
    """Whether the verification takes its plan from `gate_plan_yaml` (rather than a file
    of the snapshot or detection)."""
    source = settings.gate_plan_source
    if source == common_pb2.GATE_PLAN_SOURCE_INLINE:
        return True
    auto = source in (common_pb2.GATE_PLAN_SOURCE_UNSPECIFIED, common_pb2.GATE_PLAN_SOURCE_AUTO)
    return auto and bool(settings.gate_plan_yaml.strip())


def gate_plan_source_problem(settings: common_pb2.VerificationSettings) -> str:
    """What contradicts between the gate plan source and the inline plan ('' = nothing):
    settings are never silently ignored."""
    inline = bool(settings.gate_plan_yaml.strip())
    if settings.gate_plan_source == common_pb2.GATE_PLAN_SOURCE_INLINE and not inline:
        return "inline needs the work order's inline gate plan (gate_plan_yaml)"
    if settings.gate_plan_source == common_pb2.GATE_PLAN_SOURCE_FILE and inline:
        return "file uses only the workspace's verify.yaml, but an inline gate plan is given"
    return ""
