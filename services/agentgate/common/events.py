"""Event type names (docs/observability.md) and helpers to build `RunEvent` envelopes."""

from __future__ import annotations

from agentgate.common.timeutil import now_timestamp
from agentgate.v1 import events_pb2

WORK_ORDER_QUEUED = "work_order:queued"
WORK_ORDER_POSITION = "work_order:position"
WORK_ORDER_TIMED_OUT = "work_order:timed_out"
WORK_ORDER_CANCELED = "work_order:canceled"
RUN_STARTED = "run:started"
RUN_COMPLETE = "run:complete"
RUN_FAILED = "run:failed"
RUN_CANCELED = "run:canceled"
ITERATION_STARTED = "iteration:started"
ITERATION_COMPLETE = "iteration:complete"
AGENT_STARTED = "agent:started"
AGENT_OUTPUT = "agent:output"
AGENT_COMPLETE = "agent:complete"
AGENT_FAILED = "agent:failed"
RETRY_ATTEMPT = "retry:attempt"
VERIFICATION_STARTED = "verification:started"
VERIFICATION_COMPLETE = "verification:complete"
STRATEGY_DECISION = "strategy:decision"
WORKSPACE_ACQUIRED = "workspace:acquired"
WORKSPACE_RELEASED = "workspace:released"
SNAPSHOT_CREATED = "snapshot:created"
SNAPSHOT_RESTORED = "snapshot:restored"
GITHUB_OPERATION = "github:operation"
PR_CREATED = "pr:created"
PERSISTENCE_WARNING = "persistence:warning"
BUDGET_EXCEEDED = "budget:exceeded"
AGENT_SESSION_LOST = "agent:session_lost"
SANDBOX_CONNECTION_REFUSED = "sandbox:connection_refused"

#: After one of these, nothing more happens to the work order: followers stop.
TERMINAL_EVENT_TYPES = frozenset(
    {RUN_COMPLETE, RUN_FAILED, RUN_CANCELED, WORK_ORDER_CANCELED, WORK_ORDER_TIMED_OUT}
)


def make_event(
    event_type: str,
    work_order_id: str,
    run_id: str,
    iteration: int = 0,
    trace_id: str = "",
    **payload: object,
) -> events_pb2.RunEvent:
    """A `RunEvent` stamped now; `payload` is one `payload` oneof field, e.g.
    `agent_output=AgentOutput(...)`. `seq` is left 0: persistence assigns it."""
    event = events_pb2.RunEvent(
        type=event_type,
        timestamp=now_timestamp(),
        work_order_id=work_order_id,
        run_id=run_id,
        iteration=iteration,
        trace_id=trace_id,
    )
    for field, value in payload.items():
        getattr(event, field).CopyFrom(value)
    return event
