"""The gRPC edge of the workspace service (WorkspaceService).

Each RPC converts the request, calls the logic (workspaces, drivers, gate), and turns known
failures into status codes: InvalidArgument → INVALID_ARGUMENT with field violations,
NotFound, FailedPrecondition, Unimplemented; anything unexpected → INTERNAL (logged). The
service never crashes on a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc

from agentgate.common.config import ServiceSettings, env_int
from agentgate.common.errors import FieldViolation, InvalidArgument, invalid_argument_status
from agentgate.v1 import events_pb2, workspace_pb2, workspace_pb2_grpc
from agentgate.workspace import cleanroom, gate
from agentgate.workspace.agent_drivers import AgentInvocation, get_driver, validate_agent
from agentgate.workspace.errors import WorkspaceServiceError
from agentgate.workspace.processes import DEFAULT_KILL_GRACE_SECONDS, STDERR
from agentgate.workspace.workspaces import WorkspaceManager, run_id_violations

log = logging.getLogger(__name__)

SERVICE_NAME = "agentgate.v1.WorkspaceService"
DEFAULT_AGENT_TIMEOUT_SECONDS = 300

T = TypeVar("T")


class WorkspaceServicer(workspace_pb2_grpc.WorkspaceServiceServicer):
    """WorkspaceService over a WorkspaceManager."""

    def __init__(self, manager: WorkspaceManager, kill_grace_seconds: float = DEFAULT_KILL_GRACE_SECONDS):
        self.manager = manager
        self.kill_grace_seconds = kill_grace_seconds

    async def _serve(self, context: grpc.aio.ServicerContext, rpc: str, call: Callable[[], Awaitable[T]]) -> T:
        """Runs `call`, aborting the RPC with the status its failure maps to."""
        try:
            return await call()
        except InvalidArgument as exc:
            await context.abort_with_status(invalid_argument_status(exc.violations))
        except WorkspaceServiceError as exc:
            await context.abort(exc.code, exc.message)
        except Exception as exc:
            log.exception("%s failed", rpc)
            await context.abort(grpc.StatusCode.INTERNAL, f"{rpc} failed: {type(exc).__name__}: {exc}")
        raise AssertionError("unreachable: abort raises")

    async def PrepareForRun(
        self, request: workspace_pb2.PrepareForRunRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.PrepareForRunResponse:
        """Makes a fresh workspace for a run from its source, on branch agentgate/{run_id},
        with an initial snapshot, and leases it. Nothing is left behind when a step fails."""

        async def call() -> workspace_pb2.PrepareForRunResponse:
            prepared = await self.manager.prepare_for_run(request.run_id, request.source, request.gate_plan_yaml)
            return workspace_pb2.PrepareForRunResponse(
                workspace=prepared.workspace.to_proto(),
                rules=prepared.rules,
                gate_plan_summary=prepared.gate_plan_summary,
            )

        return await self._serve(context, "PrepareForRun", call)

    async def RunAgent(
        self, request: workspace_pb2.RunAgentRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[workspace_pb2.RunAgentResponse]:
        """Runs the agent in the workspace: streams each output line while it runs, then
        one result. If the client goes away, the agent's process group is killed."""
        invocation = await self._serve(context, "RunAgent", lambda: self._invocation(request))
        driver = get_driver(request.agent.name)
        assert driver is not None  # checked by _invocation
        queue: asyncio.Queue[workspace_pb2.RunAgentResponse | None] = asyncio.Queue()

        def on_output(stream: str, line: str) -> None:
            kind = events_pb2.OUTPUT_STREAM_STDERR if stream == STDERR else events_pb2.OUTPUT_STREAM_STDOUT
            queue.put_nowait(workspace_pb2.RunAgentResponse(output=events_pb2.AgentOutput(stream=kind, text=line)))

        task = asyncio.create_task(driver.run(invocation, on_output))
        # Every output line is queued before the task finishes, so None comes last.
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (item := await queue.get()) is not None:
                yield item
            result = await self._serve(context, "RunAgent", lambda: task)
            yield workspace_pb2.RunAgentResponse(result=result)
        finally:
            if not task.done():
                # The client cancelled (or the server is stopping): cancelling the driver
                # kills the agent's process group.
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _invocation(self, request: workspace_pb2.RunAgentRequest) -> AgentInvocation:
        violations: list[FieldViolation] = []
        if request.run_id:
            violations += run_id_violations(request.run_id)
        if request.iteration < 0:
            violations.append(FieldViolation("iteration", "must be at least 1"))
        if request.attempt < 0:
            violations.append(FieldViolation("attempt", "must be at least 1"))
        if request.timeout_seconds < 0:
            violations.append(FieldViolation("timeout_seconds", "must not be negative (0 = the default, 300)"))
        violations += validate_agent(request.agent, field_prefix="agent")
        if violations:
            raise InvalidArgument(violations)
        record = await self.manager.get_leased(request.workspace_id)
        if request.run_id and request.run_id != record.run_id:
            problem = f"workspace {record.id} belongs to run {record.run_id}, not {request.run_id}"
            raise InvalidArgument([FieldViolation("run_id", problem)])
        home = self.manager.home
        return AgentInvocation(
            run_id=record.run_id,
            workspace_id=record.id,
            workspace=record.path,
            # Iterations and attempts count from 1; 0 means "not given".
            iteration=request.iteration or 1,
            attempt=request.attempt or 1,
            prompt=request.prompt,
            options=dict(request.agent.options),
            timeout_seconds=float(request.timeout_seconds or DEFAULT_AGENT_TIMEOUT_SECONDS),
            files_dir=home / "agent-files" / record.id,
            prompt_dir=home / "prompts" / record.id,
            kill_grace_seconds=self.kill_grace_seconds,
        )

    async def CreateSnapshot(
        self, request: workspace_pb2.CreateSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.CreateSnapshotResponse:
        """Commits the workspace; the snapshot id is the commit. Without changes since the
        last snapshot, returns HEAD with has_changes false."""

        async def call() -> workspace_pb2.CreateSnapshotResponse:
            snapshot = await self.manager.create_snapshot(request.workspace_id, request.message)
            return workspace_pb2.CreateSnapshotResponse(
                snapshot_id=snapshot.commit, changed_files=snapshot.changed_files, has_changes=snapshot.has_changes
            )

        return await self._serve(context, "CreateSnapshot", call)

    async def Verify(
        self, request: workspace_pb2.VerifyRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.VerifyResponse:
        """Runs the gate plan on a snapshot in a fresh clean-room copy of its tracked files."""

        async def call() -> workspace_pb2.VerifyResponse:
            violations: list[FieldViolation] = []
            if request.run_id:
                violations += run_id_violations(request.run_id)
            if request.iteration < 0:
                violations.append(FieldViolation("iteration", "must not be negative"))
            _, bad_levels = gate.normalize_skip_levels(request.settings.skip_levels)
            if bad_levels:
                violations.append(
                    FieldViolation("settings.skip_levels", f"unknown level(s) {', '.join(bad_levels)} (known: L0-L3)")
                )
            if violations:
                raise InvalidArgument(violations)
            record = await self.manager.get(request.workspace_id)
            commit = await self.manager.resolve_snapshot(record, request.snapshot_id)
            run_id = request.run_id or record.run_id
            room = await cleanroom.create_clean_room(
                record.path, commit, self.manager.home / "cleanrooms", run_id, request.iteration
            )
            try:
                report = await gate.run_gate(
                    room,
                    request.settings,
                    run_id=run_id,
                    iteration=request.iteration,
                    snapshot_commit=commit,
                    kill_grace=self.kill_grace_seconds,
                )
            finally:
                await cleanroom.remove_clean_room(room)
            return workspace_pb2.VerifyResponse(report=report)

        return await self._serve(context, "Verify", call)

    async def GetWorkspace(
        self, request: workspace_pb2.GetWorkspaceRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.GetWorkspaceResponse:
        """Returns a workspace; NOT_FOUND when unknown."""

        async def call() -> workspace_pb2.GetWorkspaceResponse:
            record = await self.manager.get(request.workspace_id)
            return workspace_pb2.GetWorkspaceResponse(workspace=record.to_proto())

        return await self._serve(context, "GetWorkspace", call)

    async def ReleaseLease(
        self, request: workspace_pb2.ReleaseLeaseRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.ReleaseLeaseResponse:
        """Releases the lease on a workspace; its files stay for inspection."""

        async def call() -> workspace_pb2.ReleaseLeaseResponse:
            record = await self.manager.release(request.workspace_id)
            return workspace_pb2.ReleaseLeaseResponse(workspace=record.to_proto())

        return await self._serve(context, "ReleaseLease", call)


class WorkspaceApp:
    """The workspace service as a ServiceApp (see agentgate.common.server)."""

    service_names = (SERVICE_NAME,)

    def __init__(self, settings: ServiceSettings, kill_grace_seconds: float | None = None):
        self.settings = settings
        if kill_grace_seconds is None:
            kill_grace_seconds = float(
                env_int("AGENTGATE_AGENT_KILL_GRACE_SECONDS", int(DEFAULT_KILL_GRACE_SECONDS), minimum=0)
            )
        self.kill_grace_seconds = kill_grace_seconds
        self.manager = WorkspaceManager(Path(settings.home))
        self.servicer: WorkspaceServicer | None = None

    async def start(self, server: grpc.aio.Server) -> None:
        """Opens the workspace index and registers the servicer."""
        await self.manager.open()
        self.servicer = WorkspaceServicer(self.manager, self.kill_grace_seconds)
        workspace_pb2_grpc.add_WorkspaceServiceServicer_to_server(self.servicer, server)

    async def stop(self) -> None:
        """Closes the workspace index."""
        await self.manager.close()
