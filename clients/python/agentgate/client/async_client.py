"""An asyncio client over the generated stubs, with the same surface as the blocking
`AgentGateClient`:

    async with AsyncAgentGateClient() as client:     # addresses from AGENTGATE_*_ADDR
        work_order, position = await client.submit(spec)
        async for event in client.events(work_order.id):
            print(event.seq, event.type)
        status = await client.status(work_order.id)

Channels belong to the event loop that made the client: make it inside the loop that uses it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc

from agentgate.client.shared import (
    RPC_TIMEOUT_SECONDS,
    SubmitError,
    WorkOrderStatus,
    is_run_id,
    reconnect_delay,
    should_reconnect,
)
from agentgate.common.channels import aio_channel
from agentgate.common.config import service_address
from agentgate.common.errors import field_violations
from agentgate.common.telemetry import trace_metadata
from agentgate.v1 import (
    common_pb2,
    events_pb2,
    persistence_pb2,
    persistence_pb2_grpc,
    queue_pb2,
    queue_pb2_grpc,
)


class AsyncAgentGateClient:
    """Talks to the queue (work orders, positions) and persistence (runs, results, events)."""

    def __init__(
        self,
        queue_address: str | None = None,
        persistence_address: str | None = None,
        timeout: float = RPC_TIMEOUT_SECONDS,
        token: str | None = None,
    ):
        self.timeout = timeout
        # `token` None: AGENTGATE_TOKEN, else the token file of $AGENTGATE_HOME (agentgate.common.security).
        self._queue_channel = aio_channel(service_address("queue", queue_address), credential=token)
        self._persistence_channel = aio_channel(service_address("persistence", persistence_address), credential=token)
        self.queue = queue_pb2_grpc.QueueServiceStub(self._queue_channel)
        self.persistence = persistence_pb2_grpc.PersistenceServiceStub(self._persistence_channel)

    async def close(self) -> None:
        """Closes the channels (open streams end with CANCELLED)."""
        await self._queue_channel.close()
        await self._persistence_channel.close()

    async def __aenter__(self) -> AsyncAgentGateClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- work orders (queue) ------------------------------------------------------

    async def submit(self, spec: common_pb2.WorkOrderSpec) -> tuple[common_pb2.WorkOrder, int]:
        """Submits a work order; returns it and its queue position (1 = next).
        Raises SubmitError (with the wrong fields) when the queue refuses it."""
        try:
            # The work order's trace starts here (or continues the caller's): docs/observability.md.
            # The key makes a retry on another queue replica safe (docs/deployment.md).
            request = queue_pb2.SubmitRequest(spec=spec, idempotency_key=uuid.uuid4().hex)
            response = await self.queue.Submit(
                request, timeout=self.timeout, metadata=trace_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
                raise SubmitError(exc.code(), exc.details() or "", field_violations(exc)) from exc
            raise
        return response.work_order, response.position

    async def work_order(self, work_order_id: str) -> common_pb2.WorkOrder:
        """One work order (grpc NOT_FOUND when unknown)."""
        request = queue_pb2.GetWorkOrderRequest(work_order_id=work_order_id)
        return (await self.queue.GetWorkOrder(request, timeout=self.timeout)).work_order

    async def work_orders(
        self, statuses: list[common_pb2.WorkOrderStatus.ValueType] | None = None, limit: int = 50
    ) -> list[common_pb2.WorkOrder]:
        """The newest work orders, optionally only of some statuses."""
        found: list[common_pb2.WorkOrder] = []
        token = ""
        while len(found) < limit:
            request = queue_pb2.ListWorkOrdersRequest(
                statuses=statuses or [], page_size=min(limit - len(found), 1000), page_token=token
            )
            response = await self.queue.ListWorkOrders(request, timeout=self.timeout)
            found.extend(response.work_orders)
            token = response.next_page_token
            if not token:
                break
        return found

    async def cancel(self, work_order_id: str, reason: str = "") -> common_pb2.WorkOrder:
        """Cancels a work order: a waiting one at once, a running one through its worker.
        FAILED_PRECONDITION when it already ended."""
        request = queue_pb2.CancelWorkOrderRequest(work_order_id=work_order_id, reason=reason)
        return (await self.queue.CancelWorkOrder(request, timeout=self.timeout)).work_order

    async def position(self, work_order_id: str) -> queue_pb2.GetPositionResponse:
        """Where a work order stands in the queue (position 1 = next, 0 = running or ended)."""
        request = queue_pb2.GetPositionRequest(work_order_id=work_order_id)
        return await self.queue.GetPosition(request, timeout=self.timeout)

    async def watch_position(self, work_order_id: str) -> AsyncIterator[queue_pb2.GetPositionResponse]:
        """The position on every change, until the work order starts or ends."""
        call = self.queue.WatchPosition(queue_pb2.WatchPositionRequest(work_order_id=work_order_id))
        async for response in call:
            yield response.position

    async def queue_stats(self) -> queue_pb2.GetQueueStatsResponse:
        """Waiting and running counts, the limits, and whether the queue accepts work."""
        return await self.queue.GetQueueStats(queue_pb2.GetQueueStatsRequest(), timeout=self.timeout)

    # -- runs and their results (persistence) -------------------------------------

    async def run(self, run_id: str) -> common_pb2.Run | None:
        """A run, or None when persistence has none (yet)."""
        try:
            response = await self.persistence.GetRun(persistence_pb2.GetRunRequest(run_id=run_id), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return response.run

    async def runs(self, work_order_id: str = "", limit: int = 50) -> list[common_pb2.Run]:
        """The newest runs, of one work order or of all."""
        found: list[common_pb2.Run] = []
        token = ""
        while len(found) < limit:
            request = persistence_pb2.ListRunsRequest(
                work_order_id=work_order_id, page_size=min(limit - len(found), 1000), page_token=token
            )
            response = await self.persistence.ListRuns(request, timeout=self.timeout)
            found.extend(response.runs)
            token = response.next_page_token
            if not token:
                break
        return found

    async def status(self, ident: str) -> WorkOrderStatus:
        """A work order (by its id or its run's id) with its run."""
        work_order_id = ident
        if is_run_id(ident):
            run = await self.run(ident)
            if run is None:
                raise LookupError(f"no run {ident}")
            work_order_id = run.work_order_id
        work_order = await self.work_order(work_order_id)
        return WorkOrderStatus(work_order=work_order, run=await self.run(work_order.run_id))

    async def wait(self, work_order_id: str, timeout: float | None = None, poll: float = 0.2) -> WorkOrderStatus:
        """Waits until the work order ended; TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                status = await self.status(work_order_id)
                if status.done:
                    return status
                await asyncio.sleep(poll)

    async def agent_result(self, run_id: str, iteration: int) -> common_pb2.AgentResult:
        """The full agent result of one iteration (agent-N.json); NOT_FOUND when absent."""
        request = persistence_pb2.GetAgentResultRequest(run_id=run_id, iteration=iteration)
        return (await self.persistence.GetAgentResult(request, timeout=self.timeout)).result

    async def agent_results(self, run_id: str) -> list[common_pb2.AgentResult]:
        """The agent results of a run, by iteration."""
        request = persistence_pb2.ListAgentResultsRequest(run_id=run_id)
        return list((await self.persistence.ListAgentResults(request, timeout=self.timeout)).results)

    async def verification_report(self, run_id: str, iteration: int) -> common_pb2.VerificationReport:
        """The verification report of one iteration (verification-N.json); NOT_FOUND when absent."""
        request = persistence_pb2.GetVerificationReportRequest(run_id=run_id, iteration=iteration)
        return (await self.persistence.GetVerificationReport(request, timeout=self.timeout)).report

    async def verification_reports(self, run_id: str) -> list[common_pb2.VerificationReport]:
        """The verification reports of a run, by iteration."""
        request = persistence_pb2.ListVerificationReportsRequest(run_id=run_id)
        return list((await self.persistence.ListVerificationReports(request, timeout=self.timeout)).reports)

    async def iteration(self, run_id: str, iteration: int) -> common_pb2.IterationData:
        """One iteration (iteration-N.json); NOT_FOUND when absent."""
        request = persistence_pb2.GetIterationRequest(run_id=run_id, iteration=iteration)
        return (await self.persistence.GetIteration(request, timeout=self.timeout)).iteration

    async def iterations(self, run_id: str) -> list[common_pb2.IterationData]:
        """The iterations of a run, in order."""
        request = persistence_pb2.ListIterationsRequest(run_id=run_id)
        return list((await self.persistence.ListIterations(request, timeout=self.timeout)).iterations)

    # -- events ---------------------------------------------------------------------

    async def events(
        self, work_order_id: str = "", run_id: str = "", after_seq: int = 0, follow: bool = True
    ) -> AsyncIterator[events_pb2.RunEvent]:
        """The events of a work order (or run) with seq > `after_seq`; with `follow`, live
        until its run ends. A dropped stream (persistence restarted, follower too slow) is
        resumed from the last seq seen, so no event is missed or repeated."""
        last = after_seq
        attempt = 0
        while True:
            request = persistence_pb2.StreamEventsRequest(
                work_order_id=work_order_id, run_id=run_id, after_seq=last, follow=follow
            )
            try:
                async for response in self.persistence.StreamEvents(request):
                    attempt = 0
                    event = response.event
                    if event.seq <= last:
                        continue
                    last = event.seq
                    yield event
                return
            except grpc.aio.AioRpcError as exc:
                attempt += 1
                if not should_reconnect(exc, attempt):
                    raise
                await asyncio.sleep(reconnect_delay(attempt))
