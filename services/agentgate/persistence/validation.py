"""Request checks of the persistence service. Each returns every violation at once, named
by its field path in the request, so a caller can fix all of them in one go."""

from __future__ import annotations

from collections.abc import Sequence

from agentgate.common.errors import FieldViolation
from agentgate.persistence.ids import check_id
from agentgate.v1 import common_pb2, events_pb2


def _present(*violations: FieldViolation | None) -> list[FieldViolation]:
    return [v for v in violations if v is not None]


def check_new_run(run: common_pb2.Run) -> list[FieldViolation]:
    """CreateRun: run.id and run.work_order_id are required safe ids."""
    return _present(check_id(run.id, "run.id"), check_id(run.work_order_id, "run.work_order_id"))


def check_run_update(run: common_pb2.Run) -> list[FieldViolation]:
    """UpdateRun: run.id is required; run.work_order_id may be left empty (kept)."""
    found = _present(check_id(run.id, "run.id"))
    if run.work_order_id:
        found += _present(check_id(run.work_order_id, "run.work_order_id"))
    return found


def check_run_id(run_id: str, field: str = "run_id") -> list[FieldViolation]:
    """A required run id (GetRun)."""
    return _present(check_id(run_id, field))


def check_iteration_record(run_id: str, iteration: int, prefix: str) -> list[FieldViolation]:
    """Save*: `{prefix}.run_id` is a required safe id and `{prefix}.iteration` counts from 1."""
    found = _present(check_id(run_id, f"{prefix}.run_id"))
    if iteration < 1:
        found.append(FieldViolation(f"{prefix}.iteration", f"must be at least 1, got {iteration}"))
    return found


def check_patches(patch: common_pb2.RunPatch, cumulative: common_pb2.RunPatch) -> list[FieldViolation]:
    """SavePatch: the iteration's patch names its run and iteration (from 1); the cumulative
    one belongs to the same run (or names none)."""
    found = check_iteration_record(patch.run_id, patch.iteration, "patch")
    if cumulative.run_id and cumulative.run_id != patch.run_id:
        found.append(FieldViolation("cumulative.run_id", f"must be {patch.run_id!r} like patch.run_id"))
    return found


def check_events(events: Sequence[events_pb2.RunEvent]) -> list[FieldViolation]:
    """AppendEvents: every event names its work order and run (safe ids) and its type."""
    found: list[FieldViolation] = []
    for index, event in enumerate(events):
        found += _present(
            check_id(event.work_order_id, f"events[{index}].work_order_id"),
            check_id(event.run_id, f"events[{index}].run_id"),
        )
        if not event.type:
            found.append(FieldViolation(f"events[{index}].type", "is required"))
    return found


def check_stream_request(work_order_id: str, run_id: str) -> list[FieldViolation]:
    """StreamEvents: one of work_order_id or run_id."""
    if not work_order_id and not run_id:
        return [FieldViolation("work_order_id", "one of work_order_id or run_id is required")]
    return []


def check_list_runs(page_size: int, states: Sequence[int]) -> list[FieldViolation]:
    """ListRuns: page_size not negative; every state a known RunState other than UNSPECIFIED."""
    found: list[FieldViolation] = []
    if page_size < 0:
        found.append(FieldViolation("page_size", f"must not be negative, got {page_size}"))
    known = set(common_pb2.RunState.values()) - {common_pb2.RUN_STATE_UNSPECIFIED}
    for index, state in enumerate(states):
        if state not in known:
            found.append(FieldViolation(f"states[{index}]", f"{state} is not a run state"))
    return found


def check_record_request(run_id: str, iteration: int) -> list[FieldViolation]:
    """Get{AgentResult,VerificationReport,Iteration}: a safe run_id and an iteration from 1."""
    found = _present(check_id(run_id, "run_id"))
    if iteration < 1:
        found.append(FieldViolation("iteration", f"must be at least 1, got {iteration}"))
    return found
