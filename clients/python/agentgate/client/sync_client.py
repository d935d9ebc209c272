"""A blocking client over the generated stubs: what the CLI and scripts use."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc

from agentgate.client.shared import (
    RPC_TIMEOUT_SECONDS,
    SubmitError,
    WorkOrderStatus,
    is_run_id,
    reconnect_delay,
    should_reconnect,
)
from agentgate.common.channels import sync_channel
from agentgate.common.config import service_address
from agentgate.v1 import common_pb2, persistence_pb2, queue_pb2, queue_pb2_grpc

if TYPE_CHECKING:
    from agentgate.v1 import events_pb2, persistence_pb2_grpc, workspace_pb2_grpc

__all__ = ["AgentGateClient", "SubmitError", "WorkOrderStatus"]


class AgentGateClient:
    """Talks to the queue (work orders) and persistence (runs, events).

    What only some calls need loads on their first use: the persistence stubs, the
    trace context of Submit, the error details of a refusal. A CLI command that asks the
    queue alone then starts faster (docs/benchmarks.md, "CLI start-up")."""

    def __init__(
        self,
        queue_address: str | None = None,
        persistence_address: str | None = None,
        token: str | None = None,
        workspace_address: str | None = None,
    ):
        # `token` None: AGENTGATE_TOKEN, else the token file of $AGENTGATE_HOME (agentgate.common.security).
        self._queue_channel = sync_channel(service_address("queue", queue_address), token)
        self._persistence_channel = sync_channel(service_address("persistence", persistence_address), token)
        # The workspace service is asked only about disk (gc, disk usage): its channel
        # opens on first use.
        self._workspace_target = (service_address("workspace", workspace_address), token)
        self._workspace_channel: grpc.Channel | None = None
        self.queue = queue_pb2_grpc.QueueServiceStub(self._queue_channel)

    @functools.cached_property
    def persistence(self) -> persistence_pb2_grpc.PersistenceServiceStub:
        """The persistence service's stub (runs, iterations, results, events)."""
        from agentgate.v1 import persistence_pb2_grpc

        return persistence_pb2_grpc.PersistenceServiceStub(self._persistence_channel)

    @functools.cached_property
    def workspace(self) -> workspace_pb2_grpc.WorkspaceServiceStub:
        """The workspace service's stub (leftovers, disk usage)."""
        from agentgate.v1 import workspace_pb2_grpc

        self._workspace_channel = sync_channel(*self._workspace_target)
        return workspace_pb2_grpc.WorkspaceServiceStub(self._workspace_channel)

    def close(self) -> None:
        """Closes the channels."""
        self._queue_channel.close()
        self._persistence_channel.close()
        if self._workspace_channel is not None:
            self._workspace_channel.close()

    def __enter__(self) -> AgentGateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, spec: common_pb2.WorkOrderSpec) -> tuple[common_pb2.WorkOrder, int]:
        """Submits a work order; returns it and its queue position. Raises SubmitError."""
        from agentgate.common.errors import field_violations
        from agentgate.common.telemetry import trace_metadata

        try:
            # The work order's trace starts here (or continues the caller's): docs/observability.md.
            # The key makes a retry on another queue replica safe (docs/deployment.md).
            request = queue_pb2.SubmitRequest(spec=spec, idempotency_key=uuid.uuid4().hex)
            response = self.queue.Submit(
                request, timeout=RPC_TIMEOUT_SECONDS, metadata=trace_metadata()
            )
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
                raise SubmitError(exc.code(), exc.details() or exc.code().name, field_violations(exc)) from exc
            raise
        return response.work_order, response.position

    def work_order(self, work_order_id: str) -> common_pb2.WorkOrder:
        """One work order (grpc NOT_FOUND when unknown)."""
        request = queue_pb2.GetWorkOrderRequest(work_order_id=work_order_id)
        return self.queue.GetWorkOrder(request, timeout=RPC_TIMEOUT_SECONDS).work_order

    def work_orders(
        self, statuses: list[common_pb2.WorkOrderStatus.ValueType] | None = None, limit: int = 50
    ) -> list[common_pb2.WorkOrder]:
        """The newest work orders, optionally of some statuses."""
        found: list[common_pb2.WorkOrder] = []
        token = ""
        while len(found) < limit:
            response = self.queue.ListWorkOrders(
                queue_pb2.ListWorkOrdersRequest(
                    statuses=statuses or [], page_size=min(limit - len(found), 1000), page_token=token
                ),
                timeout=RPC_TIMEOUT_SECONDS,
            )
            found.extend(response.work_orders)
            token = response.next_page_token
            if not token:
                break
        return found

    def run(self, run_id: str) -> common_pb2.Run | None:
        """A run, or None when persistence has none (yet)."""
        try:
            return self.persistence.GetRun(
                persistence_pb2.GetRunRequest(run_id=run_id), timeout=RPC_TIMEOUT_SECONDS
            ).run
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def cancel(self, work_order_id: str, reason: str = "") -> common_pb2.WorkOrder:
        """Cancels a work order."""
        request = queue_pb2.CancelWorkOrderRequest(work_order_id=work_order_id, reason=reason)
        return self.queue.CancelWorkOrder(request, timeout=RPC_TIMEOUT_SECONDS).work_order

    def position(self, work_order_id: str) -> queue_pb2.GetPositionResponse:
        """Where a work order stands in the queue (position 1 = next, 0 = running or ended)."""
        request = queue_pb2.GetPositionRequest(work_order_id=work_order_id)
        return self.queue.GetPosition(request, timeout=RPC_TIMEOUT_SECONDS)

    def watch_position(self, work_order_id: str) -> Iterator[queue_pb2.GetPositionResponse]:
        """The position on every change, until the work order starts or ends."""
        for response in self.queue.WatchPosition(queue_pb2.WatchPositionRequest(work_order_id=work_order_id)):
            yield response.position

    def queue_stats(self) -> queue_pb2.GetQueueStatsResponse:
        """Waiting and running counts, the limits, and whether the queue accepts work."""
        return self.queue.GetQueueStats(queue_pb2.GetQueueStatsRequest(), timeout=RPC_TIMEOUT_SECONDS)

    def runs(self, work_order_id: str = "", limit: int = 50) -> list[common_pb2.Run]:
        """The newest runs, of one work order or of all."""
        found: list[common_pb2.Run] = []
        token = ""
        while len(found) < limit:
            request = persistence_pb2.ListRunsRequest(
                work_order_id=work_order_id, page_size=min(limit - len(found), 1000), page_token=token
            )
            response = self.persistence.ListRuns(request, timeout=RPC_TIMEOUT_SECONDS)
            found.extend(response.runs)
            token = response.next_page_token
            if not token:
                break
        return found

    def status(self, ident: str) -> WorkOrderStatus:
        """A work order (by its id or its run's id) with its run."""
        work_order_id = ident
        if is_run_id(ident):
            run = self.run(ident)
            if run is None:
                raise LookupError(f"no run {ident}")
            work_order_id = run.work_order_id
        work_order = self.work_order(work_order_id)
        return WorkOrderStatus(work_order=work_order, run=self.run(work_order.run_id))

    def wait(self, work_order_id: str, timeout: float | None = None, poll: float = 0.2) -> WorkOrderStatus:
        """Waits until the work order ended; TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(work_order_id)
            if status.done:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{work_order_id} still {common_pb2.WorkOrderStatus.Name(status.work_order.status)}")
            time.sleep(poll)

    def agent_result(self, run_id: str, iteration: int) -> common_pb2.AgentResult:
        """The full agent result of one iteration (agent-N.json); NOT_FOUND when absent."""
        request = persistence_pb2.GetAgentResultRequest(run_id=run_id, iteration=iteration)
        return self.persistence.GetAgentResult(request, timeout=RPC_TIMEOUT_SECONDS).result

    def patch(self, run_id: str, iteration: int = 0) -> common_pb2.RunPatch:
        """Iteration N's stored patch, or (0) the run's cumulative one; NOT_FOUND when absent."""
        request = persistence_pb2.GetPatchRequest(run_id=run_id, iteration=iteration)
        return self.persistence.GetPatch(request, timeout=RPC_TIMEOUT_SECONDS).patch

    def agent_results(self, run_id: str) -> list[common_pb2.AgentResult]:
        """The agent results of a run, by iteration."""
        request = persistence_pb2.ListAgentResultsRequest(run_id=run_id)
        return list(self.persistence.ListAgentResults(request, timeout=RPC_TIMEOUT_SECONDS).results)

    def verification_report(self, run_id: str, iteration: int) -> common_pb2.VerificationReport:
        """The verification report of one iteration (verification-N.json); NOT_FOUND when absent."""
        request = persistence_pb2.GetVerificationReportRequest(run_id=run_id, iteration=iteration)
        return self.persistence.GetVerificationReport(request, timeout=RPC_TIMEOUT_SECONDS).report

    def verification_reports(self, run_id: str) -> list[common_pb2.VerificationReport]:
        """The verification reports of a run, by iteration."""
        request = persistence_pb2.ListVerificationReportsRequest(run_id=run_id)
        return list(self.persistence.ListVerificationReports(request, timeout=RPC_TIMEOUT_SECONDS).reports)

    def iteration(self, run_id: str, iteration: int) -> common_pb2.IterationData:
        """One iteration (iteration-N.json); NOT_FOUND when absent."""
        request = persistence_pb2.GetIterationRequest(run_id=run_id, iteration=iteration)
        return self.persistence.GetIteration(request, timeout=RPC_TIMEOUT_SECONDS).iteration

    def iterations(self, run_id: str) -> list[common_pb2.IterationData]:
        """The iterations of a run, in order."""
        request = persistence_pb2.ListIterationsRequest(run_id=run_id)
        return list(self.persistence.ListIterations(request, timeout=RPC_TIMEOUT_SECONDS).iterations)

    def events(
        self, work_order_id: str = "", run_id: str = "", after_seq: int = 0, follow: bool = True
    ) -> Iterator[events_pb2.RunEvent]:
        """The events of a work order from `after_seq` on; with `follow`, live until its run
        ends. A dropped stream is resumed from the last seq seen, so nothing is missed or doubled."""
        last = after_seq
        retries = 0
        while True:
            request = persistence_pb2.StreamEventsRequest(
                work_order_id=work_order_id, run_id=run_id, after_seq=last, follow=follow
            )
            try:
                for response in self.persistence.StreamEvents(request):
                    retries = 0
                    event = response.event
                    if event.seq <= last:
                        continue
                    last = event.seq
                    yield event
                return
            except grpc.RpcError as exc:
                retries += 1
                if not should_reconnect(exc, retries):
                    raise
                time.sleep(reconnect_delay(retries))
