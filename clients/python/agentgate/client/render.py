"""Human-readable lines for events and work orders.

The event vocabulary and rich's Text load in the functions that render events, so a command
that lists work orders does not pay for them at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentgate.common.timeutil import iso
from agentgate.v1 import common_pb2

if TYPE_CHECKING:
    from rich.text import Text

    from agentgate.v1 import events_pb2


def status_name(status: common_pb2.WorkOrderStatus.ValueType) -> str:
    """WORK_ORDER_STATUS_SUCCEEDED -> SUCCEEDED."""
    return common_pb2.WorkOrderStatus.Name(status).removeprefix("WORK_ORDER_STATUS_")


def run_state_name(state: common_pb2.RunState.ValueType) -> str:
    """RUN_STATE_VERIFYING -> VERIFYING."""
    return common_pb2.RunState.Name(state).removeprefix("RUN_STATE_")


def run_result_name(result: common_pb2.RunResult.ValueType) -> str:
    """RUN_RESULT_FAILED_BUILD -> FAILED_BUILD ('' when unset)."""
    return "" if not result else common_pb2.RunResult.Name(result).removeprefix("RUN_RESULT_")


def sandbox_name(settings: common_pb2.SandboxSettings) -> str:
    """on, off, or "" when the run's settings name no mode (the workspace's default)."""
    return "" if not settings.mode else common_pb2.SandboxMode.Name(settings.mode).removeprefix("SANDBOX_MODE_").lower()


def workspace_text(run: common_pb2.Run) -> str:
    """Where the run's workspace is, or that it was deleted when the run ended (its
    retention, docs/workspaces.md)."""
    from agentgate.harness.retention import deletes_workspace
    from agentgate.harness.statuses import TERMINAL_RUN_STATES

    if not run.workspace_path:
        return ""
    ended = run.state in TERMINAL_RUN_STATES
    if ended and deletes_workspace(run.harness.retention, run.result == common_pb2.RUN_RESULT_SUCCEEDED):
        return f"{run.workspace_path} (deleted when the run ended)"
    return run.workspace_path


def describe(event: events_pb2.RunEvent) -> str:
    """The interesting part of an event's payload, in a few words."""
    from agentgate.common import events as ev

    kind = event.WhichOneof("payload")
    # The payload message of the event's type (Any: one of many; None only on a typeless event).
    p: Any = getattr(event, kind) if kind else None
    t = event.type
    if t == ev.WORK_ORDER_QUEUED:
        return f"position {p.position}, priority {p.priority}: {p.task_summary}"
    if t == ev.WORK_ORDER_POSITION:
        return f"position {p.position} ({p.ahead} ahead)"
    if t == ev.RUN_STARTED:
        return f"agent {p.agent}, up to {p.max_iterations} iterations"
    if t == ev.ITERATION_STARTED:
        return f"iteration {event.iteration}/{p.max_iterations}" + (" (with feedback)" if p.has_feedback else "")
    if t == ev.AGENT_STARTED:
        return f"{p.driver} (attempt {p.attempt}, prompt {p.prompt_bytes} bytes)"
    if t == ev.VERIFICATION_STARTED:
        return f"snapshot {p.snapshot_commit[:10]} in a clean room"
    if t == ev.ITERATION_COMPLETE:
        agent = "agent ok" if p.agent_success else "agent failed"
        return f"{agent}, verification {'passed' if p.verification_passed else 'failed'}, {p.duration_seconds:.1f}s"
    if t in (ev.AGENT_COMPLETE, ev.AGENT_FAILED):
        extra = " (timed out)" if p.timed_out else ""
        return f"exit {p.exit_code} in {p.duration_seconds:.1f}s{extra}"
    if t == ev.AGENT_OUTPUT:
        return p.text.rstrip("\n")
    if t == ev.SANDBOX_CONNECTION_REFUSED:
        return f"{p.host}:{p.port} refused: {p.reason}"
    if t == ev.SNAPSHOT_CREATED:
        changed = ", ".join(p.changed_files[:5]) if p.has_changes else "no changes"
        return f"{p.commit[:10]} ({changed})"
    if t == ev.VERIFICATION_COMPLETE:
        return ("PASSED" if p.passed else "FAILED") + f": {p.summary}"
    if t == ev.STRATEGY_DECISION:
        return ("continue" if p.decision.should_continue else "stop") + f": {p.decision.reason}"
    if t in (ev.WORKSPACE_ACQUIRED, ev.WORKSPACE_RELEASED):
        return f"{p.path} ({p.branch})"
    if t in (ev.RUN_COMPLETE, ev.RUN_FAILED, ev.RUN_CANCELED):
        text = f"{run_result_name(p.result)} after {p.iterations} iteration(s), {p.duration_seconds:.1f}s"
        return text + (f" — {p.error}" if p.error else "")
    if t in (ev.WORK_ORDER_CANCELED, ev.WORK_ORDER_TIMED_OUT):
        return p.reason
    if t == ev.PERSISTENCE_WARNING:
        return p.message
    if t == ev.RETRY_ATTEMPT:
        error_kind = common_pb2.BuildErrorType.Name(p.error_type).removeprefix("BUILD_ERROR_TYPE_").lower()
        outcome = "ok" if p.success else f"{error_kind}: {p.error}"
        then = f"; retry in {p.next_retry_ms / 1000:.1f}s" if p.will_retry else ""
        return f"{p.operation} attempt {p.attempt} ({p.duration_seconds:.1f}s) {outcome}{then}"
    if t == ev.GITHUB_OPERATION:
        if p.skipped:
            return f"{p.operation} skipped"
        done = f"ok {p.url}".rstrip() if p.success else f"FAILED: {p.error}"
        return f"{p.operation} {done}" + (f" (after {p.retries} retries)" if p.retries else "")
    if t == ev.PR_CREATED:
        return f"#{p.number} {p.url}" + (" (draft)" if p.draft else "")
    return ""


def event_line(event: events_pb2.RunEvent) -> Text:
    """One styled line for an event."""
    from rich.text import Text

    from agentgate.common import events as ev

    style = "dim" if event.type == ev.AGENT_OUTPUT else ""
    if event.type in (ev.RUN_FAILED, ev.AGENT_FAILED) or (
        event.type == ev.VERIFICATION_COMPLETE and not event.verification_complete.passed
    ):
        style = "red"
    elif event.type in (ev.RUN_COMPLETE,) or (
        event.type == ev.VERIFICATION_COMPLETE and event.verification_complete.passed
    ):
        style = "green"
    line = Text(f"{event.seq:>4} ", style="dim")
    line.append(f"{event.type:<22}", style="bold " + style if style != "dim" else "dim")
    line.append(" " + describe(event), style=style)
    return line


def work_order_summary(work_order: common_pb2.WorkOrder) -> dict[str, str]:
    """The fields a person wants first."""
    return {
        "work_order_id": work_order.id,
        "run_id": work_order.run_id,
        "status": status_name(work_order.status),
        "created_at": iso(work_order.created_at),
        "task": work_order.spec.task_prompt.splitlines()[0][:80] if work_order.spec.task_prompt else "",
    }
