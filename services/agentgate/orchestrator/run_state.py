"""The run state machine (docs/architecture.md, "Run states"): every state change of a run goes through here."""

from __future__ import annotations

from agentgate.harness.statuses import TERMINAL_RUN_STATES
from agentgate.v1 import common_pb2

S = common_pb2.RunState

TERMINAL_STATES = TERMINAL_RUN_STATES

_ALLOWED: dict[int, frozenset[int]] = {
    S.RUN_STATE_UNSPECIFIED: frozenset({S.RUN_STATE_PREPARING}),
    S.RUN_STATE_PREPARING: frozenset({S.RUN_STATE_BUILDING}),
    S.RUN_STATE_BUILDING: frozenset({S.RUN_STATE_SNAPSHOTTING}),
    S.RUN_STATE_SNAPSHOTTING: frozenset({S.RUN_STATE_VERIFYING, S.RUN_STATE_FEEDBACK}),
    S.RUN_STATE_VERIFYING: frozenset({S.RUN_STATE_FEEDBACK, S.RUN_STATE_DELIVERING}),
    S.RUN_STATE_FEEDBACK: frozenset({S.RUN_STATE_BUILDING}),
    S.RUN_STATE_DELIVERING: frozenset({S.RUN_STATE_SUCCEEDED}),
}


class IllegalTransition(RuntimeError):
    """A state change the machine does not allow: a bug, never a user error."""


def check_transition(current: common_pb2.RunState.ValueType, new: common_pb2.RunState.ValueType) -> None:
    """Raises IllegalTransition unless a run may go from `current` to `new`.

    FAILED and CANCELED are reachable from every non-terminal state; terminal states
    never change again.
    """
    if current in TERMINAL_STATES:
        raise IllegalTransition(f"run is {S.Name(current)}; it cannot become {S.Name(new)}")
    if new in (S.RUN_STATE_FAILED, S.RUN_STATE_CANCELED):
        return
    if new not in _ALLOWED.get(current, frozenset()):
        raise IllegalTransition(f"{S.Name(current)} -> {S.Name(new)} is not a legal transition")


def transition(run: common_pb2.Run, new: common_pb2.RunState.ValueType) -> None:
    """Moves `run` to state `new`, checked."""
    check_transition(run.state, new)
    run.state = new
