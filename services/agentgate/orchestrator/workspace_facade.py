"""The orchestrator's side of the workspace facade (SPEC §9): the lease it asks for, and
resetting the workspace before a retried agent attempt.

The orchestrator never touches files, git or processes itself; it asks the workspace
service and emits the matching `workspace:*` / `snapshot:*` events.
"""

from __future__ import annotations

import logging

import grpc

from agentgate.common import events as ev
from agentgate.orchestrator.emitter import RunEventEmitter
from agentgate.v1 import events_pb2, workspace_pb2, workspace_pb2_grpc

log = logging.getLogger(__name__)

#: The workspace lease outlives the run's wall clock by this much: the lease only has to
#: end when the worker holding it is gone, never while the run may still use it.
LEASE_MARGIN_SECONDS = 600
MAX_LEASE_SECONDS = 7 * 24 * 3600
RESTORE_TIMEOUT_SECONDS = 120.0


def workspace_lease_seconds(max_wall_clock_seconds: float) -> int:
    """The lease to ask PrepareForRun for, for a run limited to `max_wall_clock_seconds`
    (0 = the workspace service's default)."""
    if max_wall_clock_seconds <= 0:
        return 0
    return min(int(max_wall_clock_seconds) + LEASE_MARGIN_SECONDS, MAX_LEASE_SECONDS)


async def discard_failed_attempt(
    workspace: workspace_pb2_grpc.WorkspaceServiceStub,
    emitter: RunEventEmitter,
    workspace_id: str,
    iteration: int,
) -> str:
    """Before a retried agent attempt: resets the workspace to its last snapshot (what the
    iteration started from), so the retry does not build on a half-done attempt, and emits
    `snapshot:restored`. Returns the commit, or '' when the reset failed (logged; the
    retry then runs on the workspace as it is, as it would have without the reset)."""
    try:
        response = await workspace.RestoreSnapshot(
            workspace_pb2.RestoreSnapshotRequest(workspace_id=workspace_id), timeout=RESTORE_TIMEOUT_SECONDS
        )
    except grpc.aio.AioRpcError as exc:
        log.warning("could not reset workspace %s before a retry: %s: %s", workspace_id, exc.code().name,
                    exc.details())
        return ""
    emitter.emit(
        ev.SNAPSHOT_RESTORED, iteration, snapshot_restored=events_pb2.SnapshotRestored(commit=response.snapshot_id)
    )
    return response.snapshot_id
