"""The four real services started inside one event loop on ephemeral ports (DESIGN allows
this for tests below end-to-end), with stubs to reach them."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from agentgate.common.channels import aio_channel
from agentgate.common.config import ServiceSettings
from agentgate.common.security import ServerSecurity, client_token
from agentgate.common.server import RunningServer, start_server
from agentgate.harness.statuses import TERMINAL_STATUSES
from agentgate.orchestrator.server import OrchestratorApp
from agentgate.persistence.server import PersistenceApp
from agentgate.queue.server import QueueApp
from agentgate.v1 import (
    common_pb2,
    events_pb2,
    orchestrator_pb2_grpc,
    persistence_pb2,
    persistence_pb2_grpc,
    queue_pb2,
    queue_pb2_grpc,
)
from agentgate.workspace.server import WorkspaceApp
from tests.credentials import service_credential


def free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@dataclass
class InProcessSuite:
    """Running servers and stubs; `stop()` shuts everything down."""

    home: Path
    servers: list[RunningServer] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)

    @classmethod
    async def start(
        cls, home: Path, lease_seconds: int = 3, max_concurrent: int = 2, homes: dict[str, Path] | None = None
    ) -> InProcessSuite:
        """`homes` gives some services a home of their own (e.g. persistence on a small
        disk); the others use `home`."""
        suite = cls(home=home)
        suite.addresses = {name: free_address() for name in ("queue", "orchestrator", "workspace", "persistence")}

        def settings(name: str) -> ServiceSettings:
            return ServiceSettings(name=name, address=suite.addresses[name], home=(homes or {}).get(name, home))

        a = suite.addresses
        for app, name in [
            (PersistenceApp(settings("persistence")), "persistence"),
            (WorkspaceApp(settings("workspace")), "workspace"),
            (
                QueueApp(
                    settings("queue"),
                    persistence_address=a["persistence"],
                    max_concurrent=max_concurrent,
                    lease_seconds=lease_seconds,
                ),
                "queue",
            ),
            (
                OrchestratorApp(
                    settings("orchestrator"),
                    queue_address=a["queue"],
                    workspace_address=a["workspace"],
                    persistence_address=a["persistence"],
                    max_concurrent_runs=max_concurrent,
                    worker_id="test-worker",
                ),
                "orchestrator",
            ),
        ]:
            # One suite, one secret: every service reads the credentials of the suite's home,
            # whatever home its data lives in.
            suite.servers.append(await start_server(app, a[name], ServerSecurity.load(home=home)))
        return suite

    def _channel(self, name: str, credential: str | None = None) -> grpc.aio.Channel:
        """A channel with the client token (what users have), or with `credential`."""
        if credential is None:
            credential = client_token({"AGENTGATE_HOME": str(self.home)})
        channel = aio_channel(self.addresses[name], credential=credential)
        self.channels.append(channel)
        return channel

    def service_channel(self, name: str) -> grpc.aio.Channel:
        """A channel with a service credential, for a test that plays a worker."""
        return self._channel(name, service_credential(self.home))

    @property
    def queue(self) -> queue_pb2_grpc.QueueServiceStub:
        return queue_pb2_grpc.QueueServiceStub(self._channel("queue"))

    @property
    def persistence(self) -> persistence_pb2_grpc.PersistenceServiceStub:
        return persistence_pb2_grpc.PersistenceServiceStub(self._channel("persistence"))

    @property
    def orchestrator(self) -> orchestrator_pb2_grpc.OrchestratorServiceStub:
        return orchestrator_pb2_grpc.OrchestratorServiceStub(self._channel("orchestrator"))

    async def stop(self) -> None:
        for channel in self.channels:
            await channel.close()
        for server in reversed(self.servers):
            await server.stop(grace=1.0)

    async def submit(self, spec: common_pb2.WorkOrderSpec) -> common_pb2.WorkOrder:
        response = await self.queue.Submit(queue_pb2.SubmitRequest(spec=spec), timeout=10)
        return response.work_order

    async def wait_terminal(self, work_order_id: str, timeout: float = 60) -> common_pb2.WorkOrder:
        stub = self.queue
        async with asyncio.timeout(timeout):
            while True:
                work_order = (
                    await stub.GetWorkOrder(queue_pb2.GetWorkOrderRequest(work_order_id=work_order_id), timeout=5)
                ).work_order
                if work_order.status in TERMINAL_STATUSES:
                    return work_order
                await asyncio.sleep(0.05)

    async def events(self, work_order_id: str) -> list[events_pb2.RunEvent]:
        """The whole history, once the run has ended."""
        call = self.persistence.StreamEvents(
            persistence_pb2.StreamEventsRequest(work_order_id=work_order_id, follow=True), timeout=30
        )
        return [response.event async for response in call]

    async def run(self, run_id: str) -> common_pb2.Run:
        return (await self.persistence.GetRun(persistence_pb2.GetRunRequest(run_id=run_id), timeout=5)).run

    def run_file(self, run_id: str, name: str) -> dict:
        return json.loads((self.home / "runs" / run_id / name).read_text())
