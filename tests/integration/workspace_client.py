"""A real workspace service on 127.0.0.1:0 and a small client over its stub, for the tests
of the gate and of the model-CLI drivers."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from agentgate.common.channels import aio_channel
from agentgate.common.config import ServiceSettings
from agentgate.common.server import start_server
from agentgate.v1 import common_pb2, events_pb2, workspace_pb2, workspace_pb2_grpc
from agentgate.workspace.server import WorkspaceApp


def git(cwd: Path, *args: str) -> str:
    """Runs git with a fixed identity (the host's configuration is not assumed)."""
    done = subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def write_files(root: Path, files: dict[str, str | bytes | None]) -> None:
    """Writes (or, for None, deletes) files under `root`."""
    for name, content in files.items():
        target = root / name
        if content is None:
            target.unlink(missing_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)


@dataclass
class WorkspaceClient:
    stub: workspace_pb2_grpc.WorkspaceServiceStub
    home: Path

    async def prepare(
        self, source: Path, run_id: str = "run-1", sandbox: common_pb2.SandboxSettings | None = None
    ) -> workspace_pb2.Workspace:
        request = workspace_pb2.PrepareForRunRequest(
            run_id=run_id, source=common_pb2.WorkspaceSource(local_path=str(source)), sandbox=sandbox
        )
        return (await self.stub.PrepareForRun(request)).workspace

    async def snapshot(self, workspace: workspace_pb2.Workspace, message: str = "") -> str:
        request = workspace_pb2.CreateSnapshotRequest(workspace_id=workspace.id, message=message)
        return (await self.stub.CreateSnapshot(request)).snapshot_id

    async def verify(
        self, workspace: workspace_pb2.Workspace, snapshot: str = "", iteration: int = 1, **settings: object
    ) -> common_pb2.VerificationReport:
        request = workspace_pb2.VerifyRequest(
            workspace_id=workspace.id,
            snapshot_id=snapshot,
            run_id=workspace.run_id,
            iteration=iteration,
            settings=common_pb2.VerificationSettings(**settings),  # type: ignore[arg-type]
        )
        return (await self.stub.Verify(request)).report

    async def run_agent(
        self, workspace: workspace_pb2.Workspace, agent: common_pb2.AgentSpec, **kwargs: object
    ) -> tuple[list[events_pb2.AgentOutput], common_pb2.AgentResult]:
        """Runs an agent; returns the streamed output lines and the result."""
        request = workspace_pb2.RunAgentRequest(
            workspace_id=workspace.id, run_id=workspace.run_id, agent=agent, **kwargs  # type: ignore[arg-type]
        )
        outputs: list[events_pb2.AgentOutput] = []
        result = None
        async for item in self.stub.RunAgent(request):
            if item.HasField("output"):
                outputs.append(item.output)
            else:
                result = item.result
        assert result is not None
        return outputs, result


@asynccontextmanager
async def workspace_service(home: Path) -> AsyncIterator[WorkspaceClient]:
    """The workspace service running in this event loop, with a 1 s kill grace."""
    settings = ServiceSettings.load("workspace", "127.0.0.1:0", str(home))
    running = await start_server(WorkspaceApp(settings, kill_grace_seconds=1.0), "127.0.0.1:0")
    channel = aio_channel(f"127.0.0.1:{running.port}")
    try:
        yield WorkspaceClient(workspace_pb2_grpc.WorkspaceServiceStub(channel), home)
    finally:
        await channel.close()
        await running.stop(grace=1)


def level(report: common_pb2.VerificationReport, name: str) -> common_pb2.LevelResult:
    return next(item for item in report.levels if item.level == name)


def failed_checks(report: common_pb2.VerificationReport) -> list[common_pb2.CheckResult]:
    return [check for item in report.levels for check in item.checks if not check.passed]
