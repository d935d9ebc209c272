"""What runs leave on disk (docs/workspaces.md): `agentgate gc` and the disk usage shown by
`agentgate ps` and `agentgate queue stats`.

gc goes through the services, never straight to $AGENTGATE_HOME: the workspace service
lists what each run left (ListRunLeftovers) and deletes it (CleanupRun), persistence says
whether the run is over (GetRun) and deletes old run files (DeleteRuns). A run that is
still going on, as persistence knows it, is never touched; a run persistence does not know
is touched only while no lease holds on its workspaces (a run being prepared right now
has a leased workspace before its record lands).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import grpc

from agentgate.client.shared import RPC_TIMEOUT_SECONDS
from agentgate.harness.statuses import TERMINAL_RUN_STATES
from agentgate.v1 import common_pb2, persistence_pb2, persistence_pb2_grpc, workspace_pb2, workspace_pb2_grpc

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: Deleting many large workspaces takes longer than a plain call.
CLEANUP_TIMEOUT_SECONDS = 300.0
#: `ps` and `queue stats` must answer even when a service is down: a short deadline.
DISK_USAGE_TIMEOUT_SECONDS = 10.0


def parse_duration(text: str) -> float:
    """Seconds of `30s`, `15m`, `12h`, `7d`, `2w` or a sum like `1h30m`; ValueError otherwise."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(number + unit for number, unit in parts) != compact:
        raise ValueError(f"{text!r} is not a duration like 30s, 15m, 12h, 7d or 1h30m")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


@dataclass
class GcPlan:
    """What gc deletes (leftovers with the reason) and what it leaves (with why)."""

    delete: list[tuple[workspace_pb2.RunLeftovers, str]] = field(default_factory=list)
    keep: list[tuple[workspace_pb2.RunLeftovers, str]] = field(default_factory=list)


def _run_or_none(persistence: persistence_pb2_grpc.PersistenceServiceStub, run_id: str) -> common_pb2.Run | None:
    try:
        return persistence.GetRun(persistence_pb2.GetRunRequest(run_id=run_id), timeout=RPC_TIMEOUT_SECONDS).run
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            return None
        raise


def plan_gc(
    workspace: workspace_pb2_grpc.WorkspaceServiceStub,
    persistence: persistence_pb2_grpc.PersistenceServiceStub,
    older_than_seconds: float = 0.0,
    now: float | None = None,
) -> GcPlan:
    """Sorts what runs left on disk into what gc may delete and what it must leave."""
    now = time.time() if now is None else now
    plan = GcPlan()
    leftovers = workspace.ListRunLeftovers(workspace_pb2.ListRunLeftoversRequest(), timeout=RPC_TIMEOUT_SECONDS)
    for item in leftovers.runs:
        age = now - item.last_modified.ToSeconds() if item.HasField("last_modified") else float("inf")
        if age < older_than_seconds:
            plan.keep.append((item, f"changed {age:.0f}s ago"))
            continue
        run = _run_or_none(persistence, item.run_id)
        if run is None:
            if item.leased:
                plan.keep.append((item, "leased, and persistence does not know the run (yet)"))
            else:
                plan.delete.append((item, "unknown to persistence"))
        elif run.state in TERMINAL_RUN_STATES:
            plan.delete.append((item, f"run {common_pb2.RunState.Name(run.state).removeprefix('RUN_STATE_')}"))
        else:
            plan.keep.append((item, f"run {common_pb2.RunState.Name(run.state).removeprefix('RUN_STATE_')}: going on"))
    return plan


def apply_gc(workspace: workspace_pb2_grpc.WorkspaceServiceStub, plan: GcPlan) -> list[str]:
    """Deletes what the plan says; returns the ids of the workspaces deleted."""
    deleted: list[str] = []
    for item, _ in plan.delete:
        # force: the run is over (or unknown and unleased), so a lease left on its
        # workspace is one a dead worker never released.
        response = workspace.CleanupRun(
            workspace_pb2.CleanupRunRequest(run_id=item.run_id, force=True), timeout=CLEANUP_TIMEOUT_SECONDS
        )
        deleted.extend(response.deleted_workspace_ids)
    return deleted


def delete_old_runs(
    persistence: persistence_pb2_grpc.PersistenceServiceStub, older_than_seconds: float, dry_run: bool, now: float
) -> persistence_pb2.DeleteRunsResponse:
    """DeleteRuns: the records and files of terminal runs that finished before now - older_than."""
    request = persistence_pb2.DeleteRunsRequest(dry_run=dry_run)
    request.finished_before.FromNanoseconds(int((now - older_than_seconds) * 1e9))
    return persistence.DeleteRuns(request, timeout=CLEANUP_TIMEOUT_SECONDS)


def disk_usage(
    workspace: workspace_pb2_grpc.WorkspaceServiceStub, persistence: persistence_pb2_grpc.PersistenceServiceStub
) -> dict[str, int | None]:
    """Bytes under $AGENTGATE_HOME by kind, and the total; a kind is None when its service
    did not answer."""
    usage: dict[str, int | None] = {}
    try:
        found = workspace.GetWorkspaceDiskUsage(
            workspace_pb2.GetWorkspaceDiskUsageRequest(), timeout=DISK_USAGE_TIMEOUT_SECONDS
        ).usage
        usage.update(
            workspaces=found.workspaces_bytes,
            gitdirs=found.gitdirs_bytes,
            cleanrooms=found.cleanrooms_bytes,
            agent_files=found.agent_files_bytes,
        )
    except grpc.RpcError:
        usage.update(workspaces=None, gitdirs=None, cleanrooms=None, agent_files=None)
    try:
        usage["run_files"] = persistence.GetRunFilesDiskUsage(
            persistence_pb2.GetRunFilesDiskUsageRequest(), timeout=DISK_USAGE_TIMEOUT_SECONDS
        ).usage.run_files_bytes
    except grpc.RpcError:
        usage["run_files"] = None
    usage["total"] = sum(value for value in usage.values() if value is not None)
    return usage


def human_bytes(size: int | None) -> str:
    """`1.2 GB`-style sizes (decimal units, as `df -H`); `-` for unknown."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def disk_line(usage: dict[str, int | None]) -> str:
    """One line for a person: what each kind takes and the total."""
    names = (("workspaces", "workspaces"), ("gitdirs", "git dirs"), ("cleanrooms", "clean rooms"),
             ("agent_files", "agent files"), ("run_files", "run files"))
    parts = ", ".join(f"{label} {human_bytes(usage.get(key))}" for key, label in names)
    return f"disk under $AGENTGATE_HOME: {parts}; total {human_bytes(usage.get('total'))}"
