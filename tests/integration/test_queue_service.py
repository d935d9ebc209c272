"""The queue service through its gRPC stub, with the real persistence service, on real
grpc.aio servers on 127.0.0.1.

Persistence listens on a port fixed per test, so a test can start it after the queue (the
outbox keeps the events until then). It keeps its index in SQLite (persistence.db beside
queue.db) whatever the queue's backend: the queue only reaches it over gRPC, and sharing the
test's PostgreSQL database made the file ~10% slower for no case of the queue's
(tests/integration/test_persistence_service.py runs persistence on both backends). Tests
read what it stored through its StreamEvents.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agentgate.common.channels import aio_channel
from agentgate.common.config import ServiceSettings
from agentgate.common.errors import FieldViolation, field_violations
from agentgate.common.events import WORK_ORDER_QUEUED, make_event
from agentgate.common.server import RunningServer, start_server
from agentgate.persistence.server import PersistenceApp
from agentgate.queue.server import QueueApp
from agentgate.v1 import common_pb2, events_pb2, persistence_pb2, persistence_pb2_grpc, queue_pb2, queue_pb2_grpc
from tests.credentials import service_credential
from tests.ports import free_port

from ..queue_helpers import dead_letters, outbox_add, outbox_size

PENDING = common_pb2.WORK_ORDER_STATUS_PENDING
RUNNING = common_pb2.WORK_ORDER_STATUS_RUNNING
SUCCEEDED = common_pb2.WORK_ORDER_STATUS_SUCCEEDED
FAILED = common_pb2.WORK_ORDER_STATUS_FAILED
CANCELED = common_pb2.WORK_ORDER_STATUS_CANCELED
TIMED_OUT = common_pb2.WORK_ORDER_STATUS_TIMED_OUT

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass
class Cluster:
    """Starts queues and the persistence service for one test and stops them after."""

    home: Path
    #: '' for SQLite, else the PostgreSQL database every queue of the test shares.
    database_url: str = ""
    persistence_port: int = field(default_factory=free_port)
    _persistence: tuple[RunningServer, grpc.aio.Channel] | None = None
    _queues: list[tuple[RunningServer, grpc.aio.Channel]] = field(default_factory=list)

    async def start_persistence(self) -> None:
        """Starts the persistence service (on SQLite) on `persistence_port`, where every queue
        sends its events."""
        address = f"127.0.0.1:{self.persistence_port}"
        settings = ServiceSettings.load("persistence", address, str(self.home))
        running = await start_server(PersistenceApp(settings, database_url=""), address)
        self._persistence = running, aio_channel(address, credential=service_credential(self.home))

    async def events_of(self, work_order_id: str) -> list[events_pb2.RunEvent]:
        """The events persistence stored for a work order, in seq order ([] before its first)."""
        assert self._persistence is not None, "persistence is not started"
        stub = persistence_pb2_grpc.PersistenceServiceStub(self._persistence[1])
        call = stub.StreamEvents(persistence_pb2.StreamEventsRequest(work_order_id=work_order_id), timeout=5)
        try:
            return [response.event async for response in call]
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise

    async def types_of(self, work_order_id: str) -> list[str]:
        """The types of `events_of(work_order_id)`."""
        return [event.type for event in await self.events_of(work_order_id)]

    async def start_queue(self, **options: Any) -> queue_pb2_grpc.QueueServiceStub:
        options.setdefault("persistence_address", f"127.0.0.1:{self.persistence_port}")
        options.setdefault("reap_interval", 0.1)
        options.setdefault("lease_flush_timeout", 0.5)
        options.setdefault("database_url", self.database_url)
        app = QueueApp(ServiceSettings.load("queue", "127.0.0.1:0", str(self.home)), **options)
        running = await start_server(app, "127.0.0.1:0")
        channel = aio_channel(f"127.0.0.1:{running.port}", credential=service_credential(self.home))
        self._queues.append((running, channel))
        return queue_pb2_grpc.QueueServiceStub(channel)

    def app(self, index: int = -1) -> QueueApp:
        return self._queues[index][0].app  # type: ignore[return-value]

    async def stop_queue(self, index: int = -1) -> None:
        running, channel = self._queues.pop(index)
        await channel.close()
        await running.stop(0)

    async def close(self) -> None:
        while self._queues:
            await self.stop_queue()
        if self._persistence is not None:
            running, channel = self._persistence
            await channel.close()
            await running.stop(0)


@pytest.fixture
async def cluster(home: Path, database_url: str) -> AsyncIterator[Cluster]:
    made = Cluster(home, database_url)
    yield made
    await made.close()


@pytest.fixture
async def queue(cluster: Cluster) -> queue_pb2_grpc.QueueServiceStub:
    """A queue (max_concurrent 2) with persistence up."""
    await cluster.start_persistence()
    return await cluster.start_queue()


def make_spec(tmp_path: Path, prompt: str = "Add a subtract command", **fields: Any) -> common_pb2.WorkOrderSpec:
    return common_pb2.WorkOrderSpec(
        task_prompt=prompt,
        source=common_pb2.WorkspaceSource(local_path=str(tmp_path)),
        agent=common_pb2.AgentSpec(name="command", options={"command": "true"}),
        **fields,
    )


async def submit(stub, tmp_path: Path, prompt: str = "task", **fields: Any) -> common_pb2.WorkOrder:
    response = await stub.Submit(queue_pb2.SubmitRequest(spec=make_spec(tmp_path, prompt, **fields)))
    return response.work_order


async def lease(stub, wait: float = 0.2, worker: str = "worker-1") -> queue_pb2.LeaseResponse:
    return await stub.Lease(queue_pb2.LeaseRequest(worker_id=worker, wait_seconds=wait), timeout=wait + 5)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Waits until `check()` holds (for effects of background tasks)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def status_of(stub, work_order_id: str) -> int:
    response = await stub.GetWorkOrder(queue_pb2.GetWorkOrderRequest(work_order_id=work_order_id))
    return response.work_order.status


# -- submit and reads ---------------------------------------------------------------


async def test_submit_get_position_stats(queue, tmp_path: Path) -> None:
    first = await queue.Submit(
        queue_pb2.SubmitRequest(spec=make_spec(tmp_path, "first\nmore"), traceparent=TRACEPARENT)
    )
    assert first.position == 1
    assert first.work_order.status == PENDING
    assert first.work_order.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert first.work_order.traceparent == TRACEPARENT
    second = await queue.Submit(queue_pb2.SubmitRequest(spec=make_spec(tmp_path, "second")))
    assert second.position == 2

    got = await queue.GetWorkOrder(queue_pb2.GetWorkOrderRequest(work_order_id=first.work_order.id))
    assert got.work_order == first.work_order

    where = await queue.GetPosition(queue_pb2.GetPositionRequest(work_order_id=second.work_order.id))
    assert (where.position, where.ahead, where.state) == (2, 1, "waiting")
    assert where.enqueued_at == second.work_order.created_at

    stats = await queue.GetQueueStats(queue_pb2.GetQueueStatsRequest())
    assert (stats.waiting, stats.running, stats.max_concurrent, stats.max_queue_size, stats.accepting) == (
        2,
        0,
        2,
        1000,
        True,
    )

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await queue.GetWorkOrder(queue_pb2.GetWorkOrderRequest(work_order_id="wo-ffffffffffff"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await queue.GetPosition(queue_pb2.GetPositionRequest(work_order_id="wo-ffffffffffff"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_traceparent_from_metadata(queue, tmp_path: Path) -> None:
    response = await queue.Submit(
        queue_pb2.SubmitRequest(spec=make_spec(tmp_path)), metadata=(("traceparent", TRACEPARENT),)
    )
    assert response.work_order.traceparent == TRACEPARENT
    assert response.work_order.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    bogus = await queue.Submit(queue_pb2.SubmitRequest(spec=make_spec(tmp_path), traceparent="not-a-trace"))
    assert bogus.work_order.trace_id == ""


def _invalid(tmp_path: Path) -> list[tuple[str, common_pb2.WorkOrderSpec]]:
    cases = []
    spec = make_spec(tmp_path, "  ")
    cases.append(("spec.task_prompt", spec))
    spec = make_spec(tmp_path)
    spec.source.local_path = str(tmp_path / "missing")
    cases.append(("spec.source.local_path", spec))
    spec = make_spec(tmp_path)
    spec.agent.name = "nonexistent"
    cases.append(("spec.agent.name", spec))
    spec = make_spec(tmp_path)
    spec.harness.profile = "nope"
    cases.append(("spec.harness.profile", spec))
    spec = make_spec(tmp_path)
    spec.harness.loop_strategy.mode = 77
    cases.append(("spec.harness.loop_strategy.mode", spec))
    spec = make_spec(tmp_path)
    spec.source.github_repo = "octo/repo/extra"
    cases.append(("spec.source.github_repo", spec))
    return cases


async def test_invalid_specs_are_refused_and_nothing_is_stored(queue, tmp_path: Path) -> None:
    for expected_field, spec in _invalid(tmp_path):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await queue.Submit(queue_pb2.SubmitRequest(spec=spec))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert expected_field in err.value.details()
        assert [v.field for v in field_violations(err.value)] == [expected_field]

    # Several at once: every field named.
    spec = make_spec(tmp_path, "")
    spec.agent.name = "ghost"
    spec.harness.verification.skip_levels.append("L5")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await queue.Submit(queue_pb2.SubmitRequest(spec=spec))
    assert [v.field for v in field_violations(err.value)] == [
        "spec.task_prompt",
        "spec.agent.name",
        "spec.harness.verification.skip_levels",
    ]

    listed = await queue.ListWorkOrders(queue_pb2.ListWorkOrdersRequest())
    assert list(listed.work_orders) == []
    assert (await queue.GetQueueStats(queue_pb2.GetQueueStatsRequest())).waiting == 0


async def test_list_filters_pages_and_refuses_bad_tokens(queue, tmp_path: Path) -> None:
    ids = [(await submit(queue, tmp_path, f"task {i}")).id for i in range(5)]
    await queue.CancelWorkOrder(queue_pb2.CancelWorkOrderRequest(work_order_id=ids[0]))
    seen, token = [], ""
    while True:
        page = await queue.ListWorkOrders(queue_pb2.ListWorkOrdersRequest(page_size=2, page_token=token))
        assert len(page.work_orders) <= 2
        seen += [w.id for w in page.work_orders]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    pending = await queue.ListWorkOrders(queue_pb2.ListWorkOrdersRequest(statuses=[PENDING]))
    assert [w.id for w in pending.work_orders] == list(reversed(ids[1:]))

    for request, bad_field in [
        (queue_pb2.ListWorkOrdersRequest(page_token="garbage!"), "page_token"),
        (queue_pb2.ListWorkOrdersRequest(page_size=-1), "page_size"),
        (queue_pb2.ListWorkOrdersRequest(statuses=[42]), "statuses"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await queue.ListWorkOrders(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in field_violations(err.value)] == [bad_field]


# -- leases -------------------------------------------------------------------------


async def test_lease_long_poll_wakes_on_submit(queue, tmp_path: Path) -> None:
    waiting = asyncio.create_task(lease(queue, wait=10))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    submitted_at = time.monotonic()
    work_order = await submit(queue, tmp_path)
    response = await waiting
    assert time.monotonic() - submitted_at < 1.0
    assert response.leased and response.work_order.id == work_order.id
    assert response.work_order.status == RUNNING and response.work_order.attempts == 1
    assert response.work_order.started_at.seconds > 0
    assert response.lease_seconds == 30 and response.lease_id


async def test_lease_returns_unleased_after_the_wait(queue) -> None:
    started = time.monotonic()
    response = await lease(queue, wait=0.4)
    elapsed = time.monotonic() - started
    assert not response.leased and not response.lease_id
    assert 0.35 <= elapsed < 1.5


async def test_lease_respects_the_client_deadline(queue) -> None:
    started = time.monotonic()
    response = await queue.Lease(queue_pb2.LeaseRequest(worker_id="w", wait_seconds=30), timeout=0.8)
    assert not response.leased
    assert time.monotonic() - started < 0.8


async def test_negative_wait_is_invalid(queue) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await queue.Lease(queue_pb2.LeaseRequest(worker_id="w", wait_seconds=-1))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(err.value)] == ["wait_seconds"]


async def test_concurrent_leases_respect_max_concurrent(queue, tmp_path: Path) -> None:
    for i in range(4):
        await submit(queue, tmp_path, f"task {i}")
    responses = await asyncio.gather(*(lease(queue, wait=0.5, worker=f"w{i}") for i in range(6)))
    leased = [r for r in responses if r.leased]
    assert len(leased) == 2
    assert len({r.work_order.id for r in leased}) == 2
    stats = await queue.GetQueueStats(queue_pb2.GetQueueStatsRequest())
    assert (stats.running, stats.waiting) == (2, 2)

    # Completing one frees a slot: a waiting long poll gets the next work order at once.
    waiter = asyncio.create_task(lease(queue, wait=10))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    freed_at = time.monotonic()
    await queue.Complete(queue_pb2.CompleteRequest(lease_id=leased[0].lease_id, status=SUCCEEDED))
    assert (await waiter).leased
    assert time.monotonic() - freed_at < 1.0


async def test_leases_follow_priority_then_submission_order(queue, tmp_path: Path) -> None:
    names = {}
    for prompt, priority in [("low-1", 0), ("high-1", 5), ("low-2", 0), ("high-2", 5), ("top", 9)]:
        names[(await submit(queue, tmp_path, prompt, priority=priority)).id] = prompt
    order = []
    for _ in range(5):
        response = await lease(queue)
        order.append(names[response.work_order.id])
        await queue.Complete(queue_pb2.CompleteRequest(lease_id=response.lease_id, status=SUCCEEDED))
    assert order == ["top", "high-1", "high-2", "low-1", "low-2"]


async def test_heartbeat_and_complete(queue, tmp_path: Path) -> None:
    work_order = await submit(queue, tmp_path)
    leased = await lease(queue)
    beat = await queue.Heartbeat(queue_pb2.HeartbeatRequest(lease_id=leased.lease_id))
    assert not beat.cancel_requested
    assert beat.lease_expires_at.seconds >= int(time.time()) + 29

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await queue.Complete(queue_pb2.CompleteRequest(lease_id=leased.lease_id, status=RUNNING))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(err.value)] == ["status"]

    done = await queue.Complete(
        queue_pb2.CompleteRequest(lease_id=leased.lease_id, status=FAILED, error="agent_crash: exit 1")
    )
    assert done.work_order.status == FAILED and done.work_order.error == "agent_crash: exit 1"
    assert done.work_order.finished_at.seconds > 0
    where = await queue.GetPosition(queue_pb2.GetPositionRequest(work_order_id=work_order.id))
    assert (where.position, where.ahead, where.state) == (0, 0, "failed")

    for call in (
        queue.Heartbeat(queue_pb2.HeartbeatRequest(lease_id="unknown-lease")),
        queue.Complete(queue_pb2.CompleteRequest(lease_id="unknown-lease", status=SUCCEEDED)),
        queue.Heartbeat(queue_pb2.HeartbeatRequest(lease_id=leased.lease_id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # Terminal statuses never change.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await queue.Complete(queue_pb2.CompleteRequest(lease_id=leased.lease_id, status=SUCCEEDED))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await status_of(queue, work_order.id) == FAILED


async def test_expired_lease_requeues_in_place_then_fails(cluster: Cluster, tmp_path: Path) -> None:
    await cluster.start_persistence()
    queue = await cluster.start_queue(lease_seconds=1, max_lease_attempts=2, max_concurrent=1)
    first = await submit(queue, tmp_path, "first")
    second = await submit(queue, tmp_path, "second")

    lost = await lease(queue)
    assert lost.work_order.id == first.id
    # The worker dies: no heartbeat. The only slot is taken until the lease expires,
    # then a waiting long poll gets the same work order back, from its old place.
    again = await lease(queue, wait=5, worker="worker-2")
    assert again.leased and again.work_order.id == first.id and again.work_order.attempts == 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await queue.Heartbeat(queue_pb2.HeartbeatRequest(lease_id=lost.lease_id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "expired" in err.value.details()

    # Lost again: attempts used up.
    third = await lease(queue, wait=5, worker="worker-3")
    assert third.work_order.id == second.id
    failed = await queue.GetWorkOrder(queue_pb2.GetWorkOrderRequest(work_order_id=first.id))
    assert failed.work_order.status == FAILED
    assert failed.work_order.error == "system_error: lease expired 2 times (worker lost)"
    # Requeued at place 1: one position event, then the end the queue records for a lost worker.
    await eventually(lambda: _stored(cluster, first.id, ["work_order:queued", "work_order:position", "run:failed"]))


async def _stored(cluster: Cluster, work_order_id: str, types: list[str]) -> bool:
    """Whether persistence holds exactly events of `types` for the work order."""
    return await cluster.types_of(work_order_id) == types


async def test_expired_lease_requeue_keeps_priority_place(cluster: Cluster, tmp_path: Path) -> None:
    await cluster.start_persistence()
    queue = await cluster.start_queue(lease_seconds=1, max_lease_attempts=3)
    first = await submit(queue, tmp_path, "first")
    lost = await lease(queue)
    second = await submit(queue, tmp_path, "second")
    await eventually(lambda: _status_is(queue, first.id, PENDING))
    got = await queue.GetWorkOrder(queue_pb2.GetWorkOrderRequest(work_order_id=first.id))
    assert got.work_order.attempts == 1
    where = await queue.GetPosition(queue_pb2.GetPositionRequest(work_order_id=first.id))
    assert where.position == 1  # ahead of `second`, submitted later
    assert (await queue.GetPosition(queue_pb2.GetPositionRequest(work_order_id=second.id))).position == 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await queue.Complete(queue_pb2.CompleteRequest(lease_id=lost.lease_id, status=SUCCEEDED))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def _status_is(stub, work_order_id: str, status: int) -> bool:
    return await status_of(stub, work_order_id) == status


# -- cancel, capacity, wait limit ---------------------------------------------------


async def test_cancel_waiting_and_running(queue, tmp_path: Path) -> None:
    running = await submit(queue, tmp_path, "running")
    waiting = await submit(queue, tmp_path, "waiting")
    leased = await lease(queue)
    assert leased.work_order.id == running.id

    canceled = await queue.CancelWorkOrder(
        queue_pb2.CancelWorkOrderRequest(work_order_id=waiting.id, reason="changed my mind")
    )
    assert canceled.work_order.status == CANCELED
    flagged = await queue.CancelWorkOrder(queue_pb2.CancelWorkOrderRequest(work_order_id=running.id))
    assert flagged.work_order.status == RUNNING
    beat = await queue.Heartbeat(queue_pb2.HeartbeatRequest(lease_id=leased.lease_id))
    assert beat.cancel_requested
    done = await queue.Complete(queue_pb2.CompleteRequest(lease_id=leased.lease_id, status=CANCELED))
    assert done.work_order.status == CANCELED

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await queue.CancelWorkOrder(queue_pb2.CancelWorkOrderRequest(work_order_id=waiting.id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already canceled" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await queue.CancelWorkOrder(queue_pb2.CancelWorkOrderRequest(work_order_id="wo-000000000000"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_full_queue_refuses_with_queue_full(cluster: Cluster, tmp_path: Path) -> None:
    await cluster.start_persistence()
    queue = await cluster.start_queue(max_queue_size=2, max_concurrent=1)
    await submit(queue, tmp_path)
    await submit(queue, tmp_path)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(queue, tmp_path)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(err.value)
    assert status is not None
    reasons = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reasons.append(info.reason)
    assert reasons == ["QUEUE_FULL"]
    assert not (await queue.GetQueueStats(queue_pb2.GetQueueStatsRequest())).accepting

    # A running work order leaves the queue: room again, though every runner is busy.
    assert (await lease(queue)).leased
    await submit(queue, tmp_path)
    stats = await queue.GetQueueStats(queue_pb2.GetQueueStatsRequest())
    assert (stats.waiting, stats.running) == (2, 1)


async def test_max_queue_wait_times_out(queue, cluster: Cluster, tmp_path: Path) -> None:
    limited = await submit(queue, tmp_path, "impatient", max_queue_wait_seconds=1)
    patient = await submit(queue, tmp_path, "patient")
    await eventually(lambda: _status_is(queue, limited.id, TIMED_OUT), timeout=4)
    assert await status_of(queue, patient.id) == PENDING
    where = await queue.GetPosition(queue_pb2.GetPositionRequest(work_order_id=limited.id))
    assert where.state == "timed_out"
    await eventually(lambda: _stored(cluster, limited.id, ["work_order:queued", "work_order:timed_out"]))
    # The patient one is next now.
    assert (await lease(queue)).work_order.id == patient.id


# -- durability ---------------------------------------------------------------------


async def test_restart_keeps_everything(cluster: Cluster, tmp_path: Path) -> None:
    await cluster.start_persistence()
    queue = await cluster.start_queue(max_concurrent=5)
    names = {}
    for prompt, priority in [("a", 0), ("b", 3), ("c", 0), ("d", 3)]:
        names[prompt] = (await submit(queue, tmp_path, prompt, priority=priority)).id
    running = await lease(queue)
    assert running.work_order.id == names["b"]
    await queue.CancelWorkOrder(queue_pb2.CancelWorkOrderRequest(work_order_id=names["c"]))
    before = await queue.ListWorkOrders(queue_pb2.ListWorkOrdersRequest())
    await cluster.stop_queue()

    queue = await cluster.start_queue(max_concurrent=5)
    after = await queue.ListWorkOrders(queue_pb2.ListWorkOrdersRequest())
    assert after == before
    # The worker's lease survived the restart.
    assert not (await queue.Heartbeat(queue_pb2.HeartbeatRequest(lease_id=running.lease_id))).cancel_requested
    where = await queue.GetPosition(queue_pb2.GetPositionRequest(work_order_id=names["a"]))
    assert (where.position, where.state) == (2, "waiting")
    order = [(await lease(queue)).work_order.id for _ in range(2)]
    assert order == [names["d"], names["a"]]


# -- outbox to persistence ----------------------------------------------------------


async def test_queued_event_reaches_persistence_before_the_lease(queue, cluster: Cluster, tmp_path: Path) -> None:
    response = await queue.Submit(
        queue_pb2.SubmitRequest(
            spec=make_spec(tmp_path, "Fix the parser\nwith details", priority=4), traceparent=TRACEPARENT
        )
    )
    leased = await lease(queue)
    # Lease flushes the work order's events: persistence has them when it returns.
    [event] = await cluster.events_of(leased.work_order.id)
    assert event.type == "work_order:queued" and event.seq == 1
    assert event.run_id == response.work_order.run_id
    assert event.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert event.work_order_queued.priority == 4
    assert event.work_order_queued.position == 1
    assert event.work_order_queued.task_summary == "Fix the parser"


async def test_canceled_event(queue, cluster: Cluster, tmp_path: Path) -> None:
    work_order = await submit(queue, tmp_path)
    await queue.CancelWorkOrder(queue_pb2.CancelWorkOrderRequest(work_order_id=work_order.id, reason="dup"))
    await eventually(lambda: _stored(cluster, work_order.id, ["work_order:queued", "work_order:canceled"]))
    last = (await cluster.events_of(work_order.id))[-1]
    assert last.type == "work_order:canceled"
    assert last.work_order_ended.status == CANCELED and last.work_order_ended.reason == "dup"


async def test_events_wait_for_persistence_and_survive_a_restart(cluster: Cluster, tmp_path: Path) -> None:
    queue = await cluster.start_queue()  # persistence is down
    early = await submit(queue, tmp_path, "early")
    await cluster.stop_queue()
    queue = await cluster.start_queue()
    late = await submit(queue, tmp_path, "late")
    canceled = await submit(queue, tmp_path, "canceled")
    await queue.CancelWorkOrder(queue_pb2.CancelWorkOrderRequest(work_order_id=canceled.id))
    await asyncio.sleep(0.3)
    assert outbox_size(cluster.app().settings.database_path, cluster.database_url) == 4

    await cluster.start_persistence()
    await eventually(lambda: _stored(cluster, canceled.id, ["work_order:queued", "work_order:canceled"]))
    await eventually(lambda: _outbox_empty(cluster))
    stored = [(e.type, e.seq) for wo in (early, late, canceled) for e in await cluster.events_of(wo.id)]
    assert stored == [
        ("work_order:queued", 1),
        ("work_order:queued", 1),
        ("work_order:queued", 1),
        ("work_order:canceled", 2),
    ]


async def _outbox_empty(cluster: Cluster) -> bool:
    return outbox_size(cluster.app().settings.database_path, cluster.database_url) == 0


async def test_lease_flushes_events_once_persistence_is_back(cluster: Cluster, tmp_path: Path) -> None:
    queue = await cluster.start_queue(lease_flush_timeout=3.0)
    work_order = await submit(queue, tmp_path)
    await asyncio.sleep(0.8)  # a few failed deliveries: the forwarder is backing off
    await cluster.start_persistence()
    leased = await lease(queue)
    assert leased.work_order.id == work_order.id
    assert await cluster.types_of(work_order.id) == ["work_order:queued"]


async def test_lease_does_not_wait_long_for_a_missing_persistence(cluster: Cluster, tmp_path: Path) -> None:
    queue = await cluster.start_queue(lease_flush_timeout=0.3)
    await submit(queue, tmp_path)
    started = time.monotonic()
    assert (await lease(queue)).leased
    assert time.monotonic() - started < 1.5


async def test_refused_event_does_not_block_the_rest(cluster: Cluster, tmp_path: Path) -> None:
    """An event persistence refuses as invalid is set aside; the later ones still arrive.

    The queue's API only makes valid events (its own ids), so the refused one, with a run
    id persistence will not take as a folder name, is written into the outbox with the
    store's statement, ahead of a good one, while persistence is down."""
    queue = await cluster.start_queue()
    database = cluster.app().settings.database_path
    poison = make_event(WORK_ORDER_QUEUED, "wo-poison", "../outside")
    poison.event_id = "poison-1"
    outbox_add(database, cluster.database_url, poison)
    good = await submit(queue, tmp_path, "good")
    assert outbox_size(database, cluster.database_url) == 2

    await cluster.start_persistence()
    await eventually(lambda: _stored(cluster, good.id, ["work_order:queued"]))
    await eventually(lambda: _outbox_empty(cluster))
    # Persistence itself refused it, naming the field; the queue kept it aside.
    [(work_order_id, error)] = dead_letters(database, cluster.database_url)
    assert work_order_id == "wo-poison" and "events[0].run_id" in error
    assert await cluster.events_of("wo-poison") == []


async def test_unexpected_failure_is_internal_with_a_message(cluster: Cluster, tmp_path: Path) -> None:
    def broken_check(agent: common_pb2.AgentSpec) -> list[FieldViolation]:
        raise RuntimeError("driver registry exploded")

    queue = await cluster.start_queue(agent_check=broken_check)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(queue, tmp_path)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "driver registry exploded" in err.value.details()
    # The service is still up.
    assert (await queue.GetQueueStats(queue_pb2.GetQueueStatsRequest())).waiting == 0


async def test_agents_are_checked_against_the_real_driver_registry(cluster: Cluster, tmp_path: Path) -> None:
    await cluster.start_persistence()
    queue = await cluster.start_queue(agent_check=None)
    cases = [
        (common_pb2.AgentSpec(name="no-such-driver"), "spec.agent.name"),
        (common_pb2.AgentSpec(name="scripted", options={"script": "{{{ not yaml"}), "spec.agent.options.script"),
        (common_pb2.AgentSpec(name="command"), "spec.agent.options.command"),
    ]
    for agent, expected_field in cases:
        spec = make_spec(tmp_path)
        spec.agent.CopyFrom(agent)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await queue.Submit(queue_pb2.SubmitRequest(spec=spec))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert expected_field in [v.field for v in field_violations(err.value)]
    accepted = await submit(queue, tmp_path)  # command driver with a command
    assert accepted.status == PENDING


# Replicas share state only on PostgreSQL.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_replicas_on_postgresql_share_one_queue(cluster: Cluster, tmp_path: Path) -> None:
    """Two queue replicas on one PostgreSQL database (docs/deployment.md): workers asking
    either replica at once get each work order once, `max_concurrent` counts runs on both,
    positions and Submit's capacity check see both, a long poll on one wakes for a Submit
    on the other, and a cancel through one reaches the worker heartbeating the other."""
    await cluster.start_persistence()
    a = await cluster.start_queue(max_concurrent=3, max_queue_size=12)
    b = await cluster.start_queue(max_concurrent=3, max_queue_size=12)
    # A long poll on B, woken by a Submit on A.
    poll = asyncio.create_task(lease(b, wait=10, worker="early"))
    await asyncio.sleep(0.3)
    first = await submit(a, tmp_path, "first")
    woken = await asyncio.wait_for(poll, 5)
    assert woken.leased and woken.work_order.id == first.id
    for i in range(11):
        await submit(a if i % 2 else b, tmp_path, f"task-{i}", priority=i % 3)
    # 11 wait: one more fits, whichever replica takes it; then the queue is full on both.
    await submit(b, tmp_path, "last")
    for stub in (a, b):
        with pytest.raises(grpc.aio.AioRpcError) as full:
            await submit(stub, tmp_path, "too many")
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Eight workers at once, half on each replica: 2 more slots (3 running in all).
    leases = await asyncio.gather(*(lease(a if w % 2 else b, wait=0.5, worker=f"w{w}") for w in range(8)))
    granted = [response for response in leases if response.leased]
    assert len(granted) == 2
    assert len({response.work_order.id for response in granted} | {first.id}) == 3
    stats = await b.GetQueueStats(queue_pb2.GetQueueStatsRequest())
    assert (stats.waiting, stats.running) == (10, 3)
    # Cancel through A; the worker heartbeats B and hears it.
    await a.CancelWorkOrder(queue_pb2.CancelWorkOrderRequest(work_order_id=first.id, reason="stop"))
    beat = await b.Heartbeat(queue_pb2.HeartbeatRequest(lease_id=woken.lease_id))
    assert beat.cancel_requested
    done = await a.Complete(
        queue_pb2.CompleteRequest(lease_id=woken.lease_id, status=common_pb2.WORK_ORDER_STATUS_CANCELED)
    )
    assert done.work_order.status == CANCELED
    # The next in lease order is the same whichever replica is asked.
    order_a = await a.ListWorkOrders(queue_pb2.ListWorkOrdersRequest(statuses=[PENDING], page_size=100))
    order_b = await b.ListWorkOrders(queue_pb2.ListWorkOrdersRequest(statuses=[PENDING], page_size=100))
    assert [w.id for w in order_a.work_orders] == [w.id for w in order_b.work_orders]
    # Every event of every work order reached persistence exactly once, whoever delivered it.
    await eventually(lambda: _outbox_empty(cluster))
    stored = await a.ListWorkOrders(queue_pb2.ListWorkOrdersRequest(page_size=100))
    assert len(stored.work_orders) == 13
    for work_order in stored.work_orders:
        assert (await cluster.types_of(work_order.id)).count("work_order:queued") == 1


# Replicas share state only on PostgreSQL.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_client_naming_both_replicas_fails_over_when_one_dies(cluster: Cluster, tmp_path: Path) -> None:
    """A channel to `a,b` keeps working when replica a stops: calls go to b (and one that
    meets the dead replica is sent again to b); a retried Submit with its idempotency key
    stores one work order."""
    await cluster.start_persistence()
    await cluster.start_queue()
    await cluster.start_queue()
    ports = [running.port for running, _ in cluster._queues]
    channel = aio_channel(",".join(f"127.0.0.1:{port}" for port in ports), credential=service_credential(cluster.home))
    stub = queue_pb2_grpc.QueueServiceStub(channel)
    try:
        request = queue_pb2.SubmitRequest(spec=make_spec(tmp_path, "once"), idempotency_key="key-1")
        first = await stub.Submit(request, timeout=5)
        await cluster.stop_queue(0)
        for _ in range(6):  # round robin would pick the dead replica for some of these
            again = await stub.Submit(request, timeout=5)
            assert again.work_order.id == first.work_order.id
            stats = await stub.GetQueueStats(queue_pb2.GetQueueStatsRequest(), timeout=5)
            assert stats.waiting == 1
        leased = await lease(stub, wait=1)
        assert leased.work_order.id == first.work_order.id
    finally:
        await channel.close()


async def test_submit_idempotency_key_is_bounded_and_reused(queue, tmp_path: Path) -> None:
    too_long = queue_pb2.SubmitRequest(spec=make_spec(tmp_path), idempotency_key="k" * 129)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await queue.Submit(too_long)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(refused.value)] == ["idempotency_key"]
    request = queue_pb2.SubmitRequest(spec=make_spec(tmp_path), idempotency_key="k" * 128)
    first, again = await queue.Submit(request), await queue.Submit(request)
    assert again.work_order.id == first.work_order.id and again.position == first.position == 1
