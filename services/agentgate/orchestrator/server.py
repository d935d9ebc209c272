"""The orchestrator's gRPC edge and its process: a worker plus a small status API.

As on every server, errors become statuses in the request guard (`agentgate.common.request_guard`).
"""

from __future__ import annotations

import os
import socket

import grpc

from agentgate.common import security, telemetry
from agentgate.common.channels import SERVICE_CHANNEL_OPTIONS, aio_channel
from agentgate.common.config import ServiceSettings, service_address
from agentgate.orchestrator.event_subscribers import WorkerSubscribers
from agentgate.orchestrator.persistence_port import GrpcPersistence
from agentgate.orchestrator.worker import Worker
from agentgate.orchestrator.workspace_port import GrpcWorkspace
from agentgate.v1 import (
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    persistence_pb2_grpc,
    queue_pb2_grpc,
    workspace_pb2_grpc,
)


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """Answers questions about the worker."""

    def __init__(self, worker: Worker):
        self._worker = worker

    async def GetWorkerStatus(  # noqa: N802 - gRPC method name
        self, request: orchestrator_pb2.GetWorkerStatusRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.GetWorkerStatusResponse:
        """What this worker is running now."""
        worker = self._worker
        return orchestrator_pb2.GetWorkerStatusResponse(
            worker_id=worker.worker_id,
            max_concurrent_runs=worker.max_concurrent_runs,
            runs_completed=worker.runs_completed,
            active_runs=[
                orchestrator_pb2.ActiveRun(
                    work_order_id=run.executor.work_order.id,
                    run_id=run.executor.run.id,
                    state=run.executor.run.state,
                    iteration=run.executor.iteration,
                )
                for run in list(worker.active.values())
            ],
        )


class OrchestratorApp:
    """The orchestrator service: leases work from the queue and drives runs."""

    service_names = ("agentgate.v1.OrchestratorService",)

    def __init__(
        self,
        settings: ServiceSettings,
        queue_address: str | None = None,
        workspace_address: str | None = None,
        persistence_address: str | None = None,
        max_concurrent_runs: int = 2,
        worker_id: str | None = None,
    ):
        self.settings = settings
        self._addresses = {
            "queue": service_address("queue", queue_address),
            "workspace": service_address("workspace", workspace_address),
            "persistence": service_address("persistence", persistence_address),
        }
        self.max_concurrent_runs = max_concurrent_runs
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self._channels: list[grpc.aio.Channel] = []
        self.worker: Worker | None = None
        self.subscribers: WorkerSubscribers | None = None

    async def start(self, server: grpc.aio.Server) -> None:
        """Connects to the other services, registers the servicer and starts leasing."""
        # The worker's own credential, not the client token: only workers may lease work and
        # write run records, each write with the lease token of its run (docs/security.md).
        credential = security.service_credential(
            security.load_service_key(self.settings.home), "worker", self.worker_id
        )
        channels = {
            name: aio_channel(addr, service="orchestrator", options=SERVICE_CHANNEL_OPTIONS, credential=credential)
            for name, addr in self._addresses.items()
        }
        self._channels = list(channels.values())
        self.subscribers = WorkerSubscribers.create(
            self.settings.home, telemetry.meter_provider_for("orchestrator").get_meter("agentgate.orchestrator")
        )
        found = telemetry.telemetry_for("orchestrator")
        if found is not None and found.exporting_metrics:
            self.subscribers.start_queue_polling(queue_pb2_grpc.QueueServiceStub(channels["queue"]))
        self.worker = Worker(
            self.worker_id,
            queue_pb2_grpc.QueueServiceStub(channels["queue"]),
            GrpcWorkspace(workspace_pb2_grpc.WorkspaceServiceStub(channels["workspace"])),
            GrpcPersistence(persistence_pb2_grpc.PersistenceServiceStub(channels["persistence"])),
            max_concurrent_runs=self.max_concurrent_runs,
            subscribers=self.subscribers.channels,
            profiles_dir=self.settings.home / "profiles",
        )
        orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(OrchestratorServicer(self.worker), server)
        self.worker.start()

    async def closing(self) -> None:
        """Stops leasing and interrupts the runs in progress (the queue hands them out again)."""
        if self.worker:
            await self.worker.stop()

    async def stop(self) -> None:
        """Stops the worker and closes the channels."""
        await self.closing()
        if self.subscribers is not None:
            await self.subscribers.close()
        for channel in self._channels:
            await channel.close()
