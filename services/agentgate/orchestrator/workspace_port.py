"""The orchestrator's port to the workspace service (docs/workspaces.md): every call a run
makes to it, with the requests it builds and the gRPC errors mapped to the orchestrator's
vocabulary.

The orchestrator never touches files, git or processes itself; it asks the workspace
service. A failed call raises `OperationFailed` with a structured `BuildError` and whether
asking again may help, which the retry policy reads (the run loop retries preparation, the
agent and the push; a failed snapshot or verification ends the run). Resetting before a
retried attempt and releasing at the end are never fatal: their failure is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import grpc

from agentgate.common.errors import DISK_FULL_MESSAGE
from agentgate.orchestrator import build_errors
from agentgate.orchestrator.retry import OperationFailed
from agentgate.v1 import common_pb2, events_pb2, workspace_pb2, workspace_pb2_grpc

log = logging.getLogger(__name__)

T = common_pb2.BuildErrorType

#: The workspace lease outlives the run's wall clock by this much: the lease only has to
#: end when the worker holding it is gone, never while the run may still use it.
LEASE_MARGIN_SECONDS = 600
MAX_LEASE_SECONDS = 7 * 24 * 3600
RPC_TIMEOUT_SECONDS = 30.0
PREPARE_TIMEOUT_SECONDS = 600.0
SNAPSHOT_TIMEOUT_SECONDS = 120.0
RESTORE_TIMEOUT_SECONDS = 120.0
# The gate has its own limits per check; this only bounds a stuck call.
VERIFY_TIMEOUT_SECONDS = 3600.0
PUSH_TIMEOUT_SECONDS = 330.0
#: Deleting a large workspace (many files) takes longer than a plain call.
DELETE_TIMEOUT_SECONDS = 300.0
#: The workspace enforces the agent's timeout; the call's own deadline only bounds a lost call.
AGENT_CALL_MARGIN_SECONDS = 60

#: Push failures that asking again may cure.
_TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)

#: Receives the agent's output lines and the sandbox's refused connections, in order.
OutputCallback = Callable[[events_pb2.AgentOutput | events_pb2.SandboxConnectionRefused], None]


def workspace_lease_seconds(max_wall_clock_seconds: float) -> int:
    """The lease to ask PrepareForRun for, for a run limited to `max_wall_clock_seconds`
    (0 = the workspace service's default)."""
    if max_wall_clock_seconds <= 0:
        return 0
    return min(int(max_wall_clock_seconds) + LEASE_MARGIN_SECONDS, MAX_LEASE_SECONDS)


class WorkspacePort(Protocol):
    """What a run asks of the workspace service."""

    async def prepare(
        self,
        run_id: str,
        source: common_pb2.WorkspaceSource,
        harness: common_pb2.HarnessSettings,
        patches: Sequence[bytes] = (),
    ) -> workspace_pb2.PrepareForRunResponse:
        """A leased workspace for the run, on its branch, with the rules and gate plan summary
        for the prompt; with `patches` (a resumed run's), each applied as a snapshot."""
        ...

    async def export_patch(
        self, workspace_id: str, from_snapshot_id: str, to_snapshot_id: str
    ) -> workspace_pb2.ExportPatchResponse:
        """The change between two snapshots as a patch ('' from: the source's commit)."""
        ...

    async def run_agent(
        self,
        *,
        workspace_id: str,
        run_id: str,
        iteration: int,
        attempt: int,
        agent: common_pb2.AgentSpec,
        prompt: str,
        timeout_seconds: int,
        resume_session_id: str,
        on_output: OutputCallback,
        budget: common_pb2.AgentBudget | None = None,
    ) -> common_pb2.AgentResult:
        """Runs one agent attempt, passing its output on as it comes; returns its result."""
        ...

    async def restore_snapshot(self, workspace_id: str) -> str:
        """Resets the workspace to its last snapshot; returns that commit ('' on failure)."""
        ...

    async def snapshot(self, workspace_id: str, message: str) -> workspace_pb2.CreateSnapshotResponse:
        """Commits the workspace as it is."""
        ...

    async def verify(
        self,
        workspace_id: str,
        snapshot_id: str,
        run_id: str,
        iteration: int,
        settings: common_pb2.VerificationSettings,
    ) -> common_pb2.VerificationReport:
        """Runs the gate on a snapshot, in a clean room."""
        ...

    async def push(self, workspace_id: str, branch: str) -> workspace_pb2.PushResponse:
        """Pushes the run's branch to the workspace's remote."""
        ...

    async def release(self, workspace_id: str, delete: bool = False) -> bool:
        """Ends the run's lease, deleting the workspace with `delete`; whether it did (else
        the lease expires by itself and `agentgate gc` removes the files)."""
        ...


def _status(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"


class GrpcWorkspace:
    """`WorkspacePort` over the workspace service's gRPC stub."""

    def __init__(self, stub: workspace_pb2_grpc.WorkspaceServiceAsyncStub):
        self._stub = stub

    async def prepare(
        self,
        run_id: str,
        source: common_pb2.WorkspaceSource,
        harness: common_pb2.HarnessSettings,
        patches: Sequence[bytes] = (),
    ) -> workspace_pb2.PrepareForRunResponse:
        """PrepareForRun with the harness's gate plan, branch pattern, a lease that
        outlives the run's wall clock and a resumed run's patches."""
        try:
            return await self._stub.PrepareForRun(
                workspace_pb2.PrepareForRunRequest(
                    run_id=run_id,
                    source=source,
                    gate_plan_yaml=harness.verification.gate_plan_yaml,
                    branch_pattern=harness.git_ops.branch_pattern,
                    lease_seconds=workspace_lease_seconds(harness.limits.max_wall_clock_seconds),
                    sandbox=harness.sandbox,
                    patches=patches,
                ),
                timeout=PREPARE_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            disk_full = _disk_full("the workspace", exc)
            raise OperationFailed(
                disk_full
                or build_errors.from_step(
                    T.BUILD_ERROR_TYPE_WORKSPACE_ERROR,
                    f"Workspace preparation failed: {exc.details()}",
                    {"code": exc.code().name},
                ),
                # The same request is refused the same way every time.
                permanent=exc.code() == grpc.StatusCode.INVALID_ARGUMENT or disk_full is not None,
                timed_out=exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED,
            ) from exc

    async def run_agent(
        self,
        *,
        workspace_id: str,
        run_id: str,
        iteration: int,
        attempt: int,
        agent: common_pb2.AgentSpec,
        prompt: str,
        timeout_seconds: int,
        resume_session_id: str,
        on_output: OutputCallback,
        budget: common_pb2.AgentBudget | None = None,
    ) -> common_pb2.AgentResult:
        """RunAgent, streaming the output to `on_output`."""
        result: common_pb2.AgentResult | None = None
        try:
            call = self._stub.RunAgent(
                workspace_pb2.RunAgentRequest(
                    workspace_id=workspace_id,
                    run_id=run_id,
                    iteration=iteration,
                    attempt=attempt,
                    agent=agent,
                    prompt=prompt,
                    timeout_seconds=timeout_seconds,
                    resume_session_id=resume_session_id,
                    budget=budget,
                ),
                timeout=timeout_seconds + AGENT_CALL_MARGIN_SECONDS,
            )
            async for item in call:
                if item.HasField("output"):
                    on_output(item.output)
                elif item.HasField("connection_refused"):
                    on_output(item.connection_refused)
                elif item.HasField("result"):
                    result = item.result
        except grpc.aio.AioRpcError as exc:
            raise OperationFailed(
                build_errors.from_exception(RuntimeError(f"RunAgent failed: {_status(exc)}")),
                permanent=exc.code() == grpc.StatusCode.INVALID_ARGUMENT,
            ) from exc
        if result is None:
            raise OperationFailed(build_errors.from_exception(RuntimeError("RunAgent ended without a result")))
        return result

    async def export_patch(
        self, workspace_id: str, from_snapshot_id: str, to_snapshot_id: str
    ) -> workspace_pb2.ExportPatchResponse:
        """ExportPatch; a failure (a patch over the bound, say) is an OperationFailed the
        run reports as a persistence warning: the change stays in the workspace."""
        try:
            return await self._stub.ExportPatch(
                workspace_pb2.ExportPatchRequest(
                    workspace_id=workspace_id, from_snapshot_id=from_snapshot_id, to_snapshot_id=to_snapshot_id
                ),
                timeout=SNAPSHOT_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            raise OperationFailed(
                build_errors.from_step(T.BUILD_ERROR_TYPE_SNAPSHOT_ERROR, f"ExportPatch failed: {_status(exc)}")
            ) from exc

    async def restore_snapshot(self, workspace_id: str) -> str:
        """RestoreSnapshot to the last snapshot; a failure is logged (a retry then runs on
        the workspace as it is, as it would have without the reset)."""
        try:
            response = await self._stub.RestoreSnapshot(
                workspace_pb2.RestoreSnapshotRequest(workspace_id=workspace_id), timeout=RESTORE_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("could not reset workspace %s before a retry: %s", workspace_id, _status(exc))
            return ""
        return response.snapshot_id

    async def snapshot(self, workspace_id: str, message: str) -> workspace_pb2.CreateSnapshotResponse:
        """CreateSnapshot; a failure is a snapshot_error."""
        try:
            return await self._stub.CreateSnapshot(
                workspace_pb2.CreateSnapshotRequest(workspace_id=workspace_id, message=message),
                timeout=SNAPSHOT_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            raise OperationFailed(
                _disk_full("the snapshot", exc)
                or build_errors.from_step(T.BUILD_ERROR_TYPE_SNAPSHOT_ERROR, f"Snapshot failed: {exc.details()}")
            ) from exc

    async def verify(
        self,
        workspace_id: str,
        snapshot_id: str,
        run_id: str,
        iteration: int,
        settings: common_pb2.VerificationSettings,
    ) -> common_pb2.VerificationReport:
        """Verify; a failed call (not a failed gate, which is a report) is a system error."""
        try:
            response = await self._stub.Verify(
                workspace_pb2.VerifyRequest(
                    workspace_id=workspace_id,
                    snapshot_id=snapshot_id,
                    run_id=run_id,
                    iteration=iteration,
                    settings=settings,
                ),
                timeout=VERIFY_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            raise OperationFailed(
                _disk_full("the clean room", exc)
                or build_errors.from_exception(RuntimeError(f"Verify failed: {_status(exc)}"))
            ) from exc
        return response.report

    async def push(self, workspace_id: str, branch: str) -> workspace_pb2.PushResponse:
        """Push; a failure is a github_error, permanent unless the status says asking again
        may cure it."""
        try:
            return await self._stub.Push(
                workspace_pb2.PushRequest(workspace_id=workspace_id, branch=branch), timeout=PUSH_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as exc:
            raise OperationFailed(
                build_errors.from_step(
                    T.BUILD_ERROR_TYPE_GITHUB_ERROR, f"{exc.details()} ({exc.code().name})", {"operation": "push"}
                ),
                permanent=exc.code() not in _TRANSIENT_CODES,
                timed_out=exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED,
            ) from None

    async def release(self, workspace_id: str, delete: bool = False) -> bool:
        """ReleaseLease (with `delete`: the workspace and its run's files go too); a
        failure is logged (`agentgate gc` removes what was left)."""
        try:
            await self._stub.ReleaseLease(
                workspace_pb2.ReleaseLeaseRequest(workspace_id=workspace_id, delete=delete),
                timeout=DELETE_TIMEOUT_SECONDS if delete else RPC_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("could not release workspace %s: %s", workspace_id, exc.details())
            return False
        return True


def _disk_full(what: str, exc: grpc.aio.AioRpcError) -> common_pb2.BuildError | None:
    """The workspace service reports a full disk in the words of what met it (git's or the
    system's "No space left on device", SQLite's "database or disk is full"); the run then
    fails as a SYSTEM_ERROR with the disk message like any other full disk
    (docs/troubleshooting.md, "Disk full"), the original words kept after it. None when
    `exc` is about something else."""
    details = exc.details() or ""
    folded = details.lower()
    if DISK_FULL_MESSAGE not in folded and "database or disk is full" not in folded:
        return None
    return build_errors.from_step(
        T.BUILD_ERROR_TYPE_SYSTEM_ERROR, f"No space left on device while writing {what}: {details}"
    )
