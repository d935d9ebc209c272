"""The gRPC edge of the workspace service (WorkspaceService).

Each RPC converts the request and calls the logic (workspaces, drivers, gate). The logic
raises the errors of `agentgate.common.errors` (InvalidArgument, NotFound,
FailedPrecondition, Unavailable); the request guard every server runs turns them, and
anything unexpected (INTERNAL, logged), into statuses. The service never crashes on a
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from agentgate.common.config import ServiceSettings, env_int
from agentgate.common.errors import FieldViolation, InvalidArgument
from agentgate.harness.drivers import validate_agent
from agentgate.harness.profiles import DEFAULT_AGENT_TIMEOUT_SECONDS
from agentgate.v1 import common_pb2, events_pb2, workspace_pb2, workspace_pb2_grpc
from agentgate.workspace import inventory, leases, snapshots
from agentgate.workspace.drivers.budget import AgentBudget
from agentgate.workspace.drivers.registry import AgentInvocation, get_driver, list_driver_infos
from agentgate.workspace.gate import cleanroom
from agentgate.workspace.gate import runner as gate
from agentgate.workspace.processes import DEFAULT_KILL_GRACE_SECONDS, STDERR
from agentgate.workspace.push import push_branch
from agentgate.workspace.sandbox import Refusal
from agentgate.workspace.sandbox import defaults as sandbox_defaults
from agentgate.workspace.sandbox import service as sandbox_service
from agentgate.workspace.workspaces import WorkspaceManager, run_id_violations

log = logging.getLogger(__name__)

SERVICE_NAME = "agentgate.v1.WorkspaceService"
SESSION_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,255}$")

class WorkspaceServicer(workspace_pb2_grpc.WorkspaceServiceServicer):
    """WorkspaceService over a WorkspaceManager."""

    def __init__(self, manager: WorkspaceManager, kill_grace_seconds: float = DEFAULT_KILL_GRACE_SECONDS):
        self.manager = manager
        self.kill_grace_seconds = kill_grace_seconds

    async def PrepareForRun(
        self, request: workspace_pb2.PrepareForRunRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.PrepareForRunResponse:
        """Makes a fresh workspace for a run from its source, on branch agentgate/{run_id},
        with an initial snapshot, and leases it. Nothing is left behind when a step fails."""
        lease_seconds = leases.lease_seconds_or_default(request.lease_seconds)
        prepared = await self.manager.prepare_for_run(
            request.run_id,
            request.source,
            request.gate_plan_yaml,
            branch_pattern=request.branch_pattern,
            lease_seconds=lease_seconds,
            sandbox=request.sandbox,
        )
        resumed: list[str] = []
        if request.patches:
            try:
                resumed = await snapshots.apply_patches(self.manager, prepared.workspace.id, request.patches)
            except BaseException:
                # A resume that cannot continue leaves no workspace behind either.
                await inventory.delete_workspace(self.manager, prepared.workspace.id, force=True)
                raise
        # Read again only when the patches moved its last snapshot.
        record = await self.manager.get(prepared.workspace.id) if resumed else prepared.workspace
        if sandbox_service.effective_mode(record.sandbox) == sandbox_defaults.MODE_ON:
            # Out of every agent's and check's reach: made while the first iteration runs.
            cleanroom.make_ahead(
                record.git_dir, record.last_snapshot, self.manager.home / "cleanrooms", request.run_id, record.id
            )
        return workspace_pb2.PrepareForRunResponse(
            workspace=prepared.workspace.to_proto(),
            rules=prepared.rules,
            gate_plan_summary=prepared.gate_plan_summary,
            patch_snapshots=resumed,
        )

    async def RunAgent(
        self, request: workspace_pb2.RunAgentRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[workspace_pb2.RunAgentResponse]:
        """Runs the agent in the workspace: streams each output line while it runs, then
        one result. If the client goes away, the agent's process group is killed."""
        invocation, invocation_settings = await self._invocation(request)
        driver = get_driver(request.agent.name)
        assert driver is not None  # checked by _invocation
        # The run goes on: the clean room is reset behind its last verification meanwhile.
        cleanroom.start_reset_behind(self.manager.home / "cleanrooms", invocation.run_id, invocation.workspace_id)
        queue: asyncio.Queue[workspace_pb2.RunAgentResponse | None] = asyncio.Queue()

        def on_output(stream: str, line: str) -> None:
            kind = events_pb2.OUTPUT_STREAM_STDERR if stream == STDERR else events_pb2.OUTPUT_STREAM_STDOUT
            queue.put_nowait(workspace_pb2.RunAgentResponse(output=events_pb2.AgentOutput(stream=kind, text=line)))

        def on_refused(refusal: Refusal) -> None:
            # Streamed in order with the output; the orchestrator emits it as the event
            # sandbox:connection_refused.
            refused = events_pb2.SandboxConnectionRefused(host=refusal.host, port=refusal.port, reason=refusal.reason)
            queue.put_nowait(workspace_pb2.RunAgentResponse(connection_refused=refused))

        if invocation.run_dir is not None:
            # Bound into the sandbox, so it must exist before the agent starts.
            await asyncio.to_thread(invocation.run_dir.mkdir, parents=True, exist_ok=True, mode=0o700)
        sandbox = sandbox_service.agent_sandbox(
            workspace=invocation.workspace,
            agentgate_home=self.manager.home,
            files_dir=invocation.files_dir,
            prompt_dir=invocation.prompt_dir,
            driver=request.agent.name,
            settings=invocation_settings,
            on_refused=on_refused,
            agent_home=invocation.run_dir,
        )
        invocation = dataclasses.replace(invocation, sandbox=sandbox)
        task = asyncio.create_task(driver.run(invocation, on_output))
        # Every output line is queued before the task finishes, so None comes last.
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (item := await queue.get()) is not None:
                yield item
            result = await task
            yield workspace_pb2.RunAgentResponse(result=result)
        finally:
            if not task.done():
                # The client cancelled (or the server is stopping): cancelling the driver
                # kills the agent's process group.
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _invocation(
        self, request: workspace_pb2.RunAgentRequest
    ) -> tuple[AgentInvocation, common_pb2.SandboxSettings]:
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
        if request.resume_session_id and not SESSION_ID_PATTERN.match(request.resume_session_id):
            # It becomes an argument of the agent's CLI: nothing that could read as an option.
            violations.append(FieldViolation("resume_session_id", "must be letters, digits, '.', '_', ':' or '-'"))
        if violations:
            raise InvalidArgument(violations)
        record = await self.manager.get_leased(request.workspace_id)
        if request.run_id and request.run_id != record.run_id:
            problem = f"workspace {record.id} belongs to run {record.run_id}, not {request.run_id}"
            raise InvalidArgument([FieldViolation("run_id", problem)])
        home = self.manager.home
        invocation = AgentInvocation(
            run_id=record.run_id,
            workspace_id=record.id,
            workspace=record.path,
            # Iterations and attempts count from 1; 0 means "not given".
            iteration=request.iteration or 1,
            attempt=request.attempt or 1,
            prompt=request.prompt,
            options=dict(request.agent.options),
            resume_session_id=request.resume_session_id,
            budget=AgentBudget.from_proto(request.budget),
            timeout_seconds=float(request.timeout_seconds or DEFAULT_AGENT_TIMEOUT_SECONDS),
            files_dir=home / "agent-files" / record.id,
            prompt_dir=home / "prompts" / record.id,
            # One per run, kept across iterations: a CLI's sessions live in its home.
            run_dir=home / "agent-homes" / record.run_id,
            kill_grace_seconds=self.kill_grace_seconds,
        )
        return invocation, record.sandbox

    async def CreateSnapshot(
        self, request: workspace_pb2.CreateSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.CreateSnapshotResponse:
        """Commits the workspace; the snapshot id is the commit. Without changes since the
        last snapshot, returns HEAD with has_changes false."""
        snapshot = await self.manager.create_snapshot(request.workspace_id, request.message)
        return workspace_pb2.CreateSnapshotResponse(
            snapshot_id=snapshot.commit, changed_files=snapshot.changed_files, has_changes=snapshot.has_changes
        )

    async def Verify(
        self, request: workspace_pb2.VerifyRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.VerifyResponse:
        """Runs the gate plan on a snapshot in a clean room holding exactly its tracked files."""
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
        violations += gate.plan_source_violations(request.settings)
        if violations:
            raise InvalidArgument(violations)
        record = await self.manager.get(request.workspace_id)
        commit = await self.manager.resolve_snapshot(record, request.snapshot_id)
        run_id = request.run_id or record.run_id
        # The gate's reads of git (plan, change, sizes) need no room: they go while it is
        # made. The security scan looks at what the run changed since its first snapshot.
        reading = asyncio.ensure_future(
            gate.read_gate_inputs(
                request.settings, snapshot_commit=commit, repo=record.git_dir, base_commit=record.base_commit
            )
        )
        try:
            # A leased workspace keeps its clean room between verifications (reset to each
            # snapshot, docs/workspaces.md "Clean rooms"); removed when the lease is released.
            async with cleanroom.clean_room(
                record.git_dir, commit, self.manager.home / "cleanrooms", run_id, request.iteration,
                workspace_id=record.id if record.leased and run_id and run_id == record.run_id else "",
                # Reset behind the verification only when no agent or check can reach the room.
                behind=sandbox_service.effective_mode(record.sandbox) == sandbox_defaults.MODE_ON,
            ) as room:
                report = await gate.run_gate(
                    room,
                    request.settings,
                    run_id=run_id,
                    iteration=request.iteration,
                    snapshot_commit=commit,
                    kill_grace=self.kill_grace_seconds,
                    repo=record.git_dir,
                    base_commit=record.base_commit,
                    sandbox=lambda policy: sandbox_service.check_sandbox(
                        room=room,
                        agentgate_home=self.manager.home,
                        network=policy.network,
                        max_disk_mb=policy.max_disk_mb,
                        settings=record.sandbox,
                    ),
                    inputs=await reading,
                )
        finally:
            # A room that could not be made: the reads stop too.
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
        if sandbox_service.effective_mode(record.sandbox) == sandbox_defaults.MODE_OFF:
            # The explicit opt-out is visible wherever the report is shown.
            report.summary = f"{report.summary} (sandbox: off)" if report.summary else "sandbox: off"
        return workspace_pb2.VerifyResponse(report=report)

    async def GetWorkspace(
        self, request: workspace_pb2.GetWorkspaceRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.GetWorkspaceResponse:
        """Returns a workspace; NOT_FOUND when unknown."""
        record = await self.manager.get(request.workspace_id)
        return workspace_pb2.GetWorkspaceResponse(workspace=record.to_proto())

    async def ReleaseLease(
        self, request: workspace_pb2.ReleaseLeaseRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.ReleaseLeaseResponse:
        """Releases the lease on a workspace; its kept clean room is deleted and its files stay
        for inspection, unless `delete`: then the workspace goes with everything its run left
        (docs/workspaces.md, "Retention")."""
        if request.delete:
            record = await inventory.release_and_delete(self.manager, request.workspace_id)
            return workspace_pb2.ReleaseLeaseResponse(workspace=record.to_proto(), deleted=True)
        record = await self.manager.release(request.workspace_id)
        if record.run_id:
            await cleanroom.remove_run_room(self.manager.home / "cleanrooms", record.run_id, record.id, record.git_dir)
        return workspace_pb2.ReleaseLeaseResponse(workspace=record.to_proto())

    # --- the rest of the facade (logic in leases, snapshots and inventory) ---

    async def CreateWorkspace(
        self, request: workspace_pb2.CreateWorkspaceRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.CreateWorkspaceResponse:
        """Makes a workspace from a source without a run: no agentgate branch, no lease, an
        initial snapshot. INVALID_ARGUMENT for a bad source, FAILED_PRECONDITION when it
        cannot be copied or cloned."""
        record = await inventory.create_workspace(self.manager, request.source)
        return workspace_pb2.CreateWorkspaceResponse(workspace=record.to_proto())

    async def AcquireLease(
        self, request: workspace_pb2.AcquireLeaseRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.AcquireLeaseResponse:
        """Takes the lease for `holder` (or renews it when `holder` has it) for
        `lease_seconds` (default 3600). FAILED_PRECONDITION while another holder's lease
        has not expired."""
        workspace = await leases.acquire_lease(
            self.manager, request.workspace_id, request.lease_seconds, request.holder
        )
        return workspace_pb2.AcquireLeaseResponse(workspace=workspace)

    async def RestoreSnapshot(
        self, request: workspace_pb2.RestoreSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.RestoreSnapshotResponse:
        """Resets the workspace's files to a snapshot with a new commit on top (history
        kept); an empty snapshot_id means the last snapshot, discarding every change since.
        Needs the lease (FAILED_PRECONDITION otherwise, or for a commit the workspace lacks)."""
        commit = await snapshots.restore_snapshot(self.manager, request.workspace_id, request.snapshot_id)
        return workspace_pb2.RestoreSnapshotResponse(snapshot_id=commit)

    async def ListSnapshots(
        self, request: workspace_pb2.ListSnapshotsRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.ListSnapshotsResponse:
        """The snapshots of a workspace, newest first; the initial snapshot is the last."""
        found = await snapshots.list_snapshots(self.manager, request.workspace_id)
        return workspace_pb2.ListSnapshotsResponse(snapshots=found)

    async def GetDiff(
        self, request: workspace_pb2.GetDiffRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.GetDiffResponse:
        """The unified diff between two snapshots (default: the initial snapshot to the
        last one); cut at 4 MiB with `truncated` set."""
        return await snapshots.get_diff(
            self.manager, request.workspace_id, request.from_snapshot_id, request.to_snapshot_id
        )

    async def ExportPatch(
        self, request: workspace_pb2.ExportPatchRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.ExportPatchResponse:
        """The change between two snapshots as a `git apply`-able patch (binary files,
        renames); RESOURCE_EXHAUSTED above MAX_PATCH_BYTES."""
        return await snapshots.export_patch(
            self.manager, request.workspace_id, request.from_snapshot_id, request.to_snapshot_id
        )

    async def CleanupRun(
        self, request: workspace_pb2.CleanupRunRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.CleanupRunResponse:
        """Deletes the workspaces, clean rooms and agent files of a run (none for an
        unknown run). FAILED_PRECONDITION, deleting nothing, while one is still leased,
        unless `force`."""
        deleted = await inventory.cleanup_run(self.manager, request.run_id, request.force)
        return workspace_pb2.CleanupRunResponse(deleted_workspace_ids=deleted)

    async def ListRunLeftovers(
        self, request: workspace_pb2.ListRunLeftoversRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.ListRunLeftoversResponse:
        """What each run left on disk (workspaces, git directories, clean rooms, agent
        files), with bytes, newest change and whether a lease holds, for `agentgate gc`."""
        return workspace_pb2.ListRunLeftoversResponse(runs=await inventory.list_run_leftovers(self.manager))

    async def GetWorkspaceDiskUsage(
        self, request: workspace_pb2.GetWorkspaceDiskUsageRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.GetWorkspaceDiskUsageResponse:
        """Bytes used by workspaces, git directories, clean rooms and agent files
        (measured off the event loop)."""
        return workspace_pb2.GetWorkspaceDiskUsageResponse(usage=await inventory.disk_usage(self.manager))

    async def ListWorkspaces(
        self, request: workspace_pb2.ListWorkspacesRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.ListWorkspacesResponse:
        """All workspaces, newest first; `page_size` default 50, at most 1000."""
        records, token = await inventory.list_workspaces(self.manager, request.page_size, request.page_token)
        return inventory.to_list_response(records, token)

    async def DeleteWorkspace(
        self, request: workspace_pb2.DeleteWorkspaceRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.DeleteWorkspaceResponse:
        """Deletes a workspace with its files. FAILED_PRECONDITION while it is leased,
        unless `force`."""
        await inventory.delete_workspace(self.manager, request.workspace_id, request.force)
        return workspace_pb2.DeleteWorkspaceResponse()

    async def Push(
        self, request: workspace_pb2.PushRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.PushResponse:
        """Pushes the workspace's branch (or `branch`) to its remote (`remote`, default origin).
        UNAVAILABLE when the remote could not be reached (worth retrying), FAILED_PRECONDITION
        when the push cannot succeed as asked (no remote, refused credentials, rejected)."""
        pushed = await push_branch(self.manager, request.workspace_id, request.branch, request.remote)
        return workspace_pb2.PushResponse(branch=pushed.branch, commit=pushed.commit, remote_url=pushed.remote_url)


    async def ListAgentDrivers(
        self, request: workspace_pb2.ListAgentDriversRequest, context: grpc.aio.ServicerContext
    ) -> workspace_pb2.ListAgentDriversResponse:
        """The registered agent drivers, and whether each can run on this machine (and if
        not, what is missing, e.g. "the claude executable is not on PATH"), with each model
        CLI's version and whether its endpoint can be reached from inside the agent sandbox."""
        infos = await list_driver_infos(self.manager.home)
        return workspace_pb2.ListAgentDriversResponse(drivers=infos)


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
        """Opens the workspace index, removes what a service that died left with no owner
        (docs/workspaces.md, "gc") and registers the servicer."""
        await self.manager.open()
        await inventory.sweep_orphans(self.manager)
        self.servicer = WorkspaceServicer(self.manager, self.kill_grace_seconds)
        workspace_pb2_grpc.add_WorkspaceServiceServicer_to_server(self.servicer, server)

    async def stop(self) -> None:
        """Stops the clean room resets still running behind a verification and closes the
        workspace index."""
        await cleanroom.stop_resets_behind()
        await self.manager.close()
