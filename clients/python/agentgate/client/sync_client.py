"""A blocking client over the generated stubs: what the CLI and scripts use."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from agentgate.common.channels import sync_channel
from agentgate.common.config import service_address
from agentgate.common.errors import FieldViolation, field_violations
from agentgate.v1 import (
    common_pb2,
    events_pb2,
    persistence_pb2,
    persistence_pb2_grpc,
    queue_pb2,
    queue_pb2_grpc,
)

RPC_TIMEOUT_SECONDS = 30.0
# Codes after which a follower reconnects from its last seq instead of giving up.
_RECONNECT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


class SubmitError(Exception):
    """The queue refused a work order; `violations` name the wrong fields."""

    def __init__(self, code: grpc.StatusCode, message: str, violations: list[FieldViolation]):
        super().__init__(message)
        self.code = code
        self.violations = violations


class AgentGateClient:
    """Talks to the queue (work orders) and persistence (runs, events)."""

    def __init__(self, queue_address: str | None = None, persistence_address: str | None = None):
        self._queue_channel = sync_channel(service_address("queue", queue_address))
        self._persistence_channel = sync_channel(service_address("persistence", persistence_address))
        self.queue = queue_pb2_grpc.QueueServiceStub(self._queue_channel)
        self.persistence = persistence_pb2_grpc.PersistenceServiceStub(self._persistence_channel)

    def close(self) -> None:
        """Closes the channels."""
        self._queue_channel.close()
        self._persistence_channel.close()

    def __enter__(self) -> AgentGateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, spec: common_pb2.WorkOrderSpec) -> tuple[common_pb2.WorkOrder, int]:
        """Submits a work order; returns it and its queue position. Raises SubmitError."""
        try:
            response = self.queue.Submit(queue_pb2.SubmitRequest(spec=spec), timeout=RPC_TIMEOUT_SECONDS)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):  # type: ignore[attr-defined]
                raise SubmitError(exc.code(), exc.details(), field_violations(exc)) from exc  # type: ignore[attr-defined]
            raise
        return response.work_order, response.position

    def work_order(self, work_order_id: str) -> common_pb2.WorkOrder:
        """One work order (grpc NOT_FOUND when unknown)."""
        request = queue_pb2.GetWorkOrderRequest(work_order_id=work_order_id)
        return self.queue.GetWorkOrder(request, timeout=RPC_TIMEOUT_SECONDS).work_order

    def work_orders(self, statuses: list[int] | None = None, limit: int = 50) -> list[common_pb2.WorkOrder]:
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
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                return None
            raise

    def cancel(self, work_order_id: str, reason: str = "") -> common_pb2.WorkOrder:
        """Cancels a work order."""
        request = queue_pb2.CancelWorkOrderRequest(work_order_id=work_order_id, reason=reason)
        return self.queue.CancelWorkOrder(request, timeout=RPC_TIMEOUT_SECONDS).work_order

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
                if exc.code() not in _RECONNECT_CODES or retries >= 30:  # type: ignore[attr-defined]
                    raise
                retries += 1
                time.sleep(min(0.2 * retries, 2.0))
