"""GetPosition, WatchPosition and GetQueueStats through the queue's gRPC stub (a real
grpc.aio server; a recording fake persistence, as in test_queue_service)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from agentgate.common.errors import field_violations
from agentgate.v1 import common_pb2, queue_pb2

from .test_queue_service import Cluster, eventually, lease, submit
from .test_queue_service import cluster as cluster  # noqa: F401 - fixture
from .test_queue_service import queue as queue  # noqa: F401 - fixture

SUCCEEDED = common_pb2.WORK_ORDER_STATUS_SUCCEEDED


async def position(stub, work_order_id: str) -> queue_pb2.GetPositionResponse:
    return await stub.GetPosition(queue_pb2.GetPositionRequest(work_order_id=work_order_id), timeout=5)


async def test_estimate_and_average_wait_appear_once_a_work_order_was_leased(queue, tmp_path: Path) -> None:
    first = await submit(queue, tmp_path, "first")
    second = await submit(queue, tmp_path, "second")
    where = await position(queue, second.id)
    assert (where.work_order_id, where.position, where.ahead, where.state) == (second.id, 2, 1, "waiting")
    assert not where.HasField("estimated_wait_seconds")
    stats = await queue.GetQueueStats(queue_pb2.GetQueueStatsRequest())
    assert not stats.HasField("average_wait_seconds")

    await asyncio.sleep(0.2)
    leased = await lease(queue)
    assert leased.work_order.id == first.id
    where = await position(queue, second.id)
    assert where.position == 1 and where.HasField("estimated_wait_seconds")
    assert 0.2 <= where.estimated_wait_seconds < 5
    stats = await queue.GetQueueStats(queue_pb2.GetQueueStatsRequest())
    assert (stats.waiting, stats.running) == (1, 1)
    assert 0.2 <= stats.average_wait_seconds < 5
    running = await position(queue, first.id)
    assert (running.position, running.state) == (0, "running")
    assert not running.HasField("estimated_wait_seconds")


async def test_watch_streams_each_change_until_it_runs(queue, tmp_path: Path) -> None:
    ids = [(await submit(queue, tmp_path, f"task {i}")).id for i in range(3)]
    call = queue.WatchPosition(queue_pb2.WatchPositionRequest(work_order_id=ids[2]), timeout=30)
    seen: list[tuple[int, str]] = []

    async def read() -> None:
        async for response in call:
            seen.append((response.position.position, response.position.state))

    reader = asyncio.create_task(read())
    await eventually(lambda: _async(seen == [(3, "waiting")]))
    # Submitted with a higher priority: goes in front, pushing it back.
    urgent = await submit(queue, tmp_path, "urgent", priority=5)
    await eventually(lambda: _async(seen[-1] == (4, "waiting")))
    await queue.CancelWorkOrder(queue_pb2.CancelWorkOrderRequest(work_order_id=urgent.id))
    await eventually(lambda: _async(seen[-1] == (3, "waiting")))
    first = await lease(queue)
    await eventually(lambda: _async(seen[-1] == (2, "waiting")))
    await queue.Complete(queue_pb2.CompleteRequest(lease_id=first.lease_id, status=SUCCEEDED))
    await lease(queue)
    await eventually(lambda: _async(seen[-1] == (1, "waiting")))
    await lease(queue)
    await asyncio.wait_for(reader, 5)
    assert seen == [(3, "waiting"), (4, "waiting"), (3, "waiting"), (2, "waiting"), (1, "waiting"), (0, "running")]


async def test_watch_of_a_canceled_work_order_ends_with_its_state(queue, tmp_path: Path) -> None:
    work_order = await submit(queue, tmp_path)
    call = queue.WatchPosition(queue_pb2.WatchPositionRequest(work_order_id=work_order.id), timeout=30)
    stream = call.__aiter__()
    assert (await anext(stream)).position.position == 1
    await queue.CancelWorkOrder(queue_pb2.CancelWorkOrderRequest(work_order_id=work_order.id))
    last = await asyncio.wait_for(anext(stream), 5)
    assert (last.position.position, last.position.state) == (0, "canceled")
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_watch_refuses_unknown_and_empty_ids(queue) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in queue.WatchPosition(queue_pb2.WatchPositionRequest(work_order_id="wo-000000000000")):
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in queue.WatchPosition(queue_pb2.WatchPositionRequest()):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(err.value)] == ["work_order_id"]


async def test_watch_ends_unavailable_when_the_queue_stops(cluster: Cluster, tmp_path: Path) -> None:
    await cluster.start_persistence()
    stub = await cluster.start_queue()
    work_order = await submit(stub, tmp_path)
    call = stub.WatchPosition(queue_pb2.WatchPositionRequest(work_order_id=work_order.id), timeout=30)
    stream = call.__aiter__()
    assert (await anext(stream)).position.position == 1
    running = cluster._queues[-1][0]
    stopping = asyncio.create_task(running.stop(5))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(anext(stream), 5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    await stopping
    await cluster._queues.pop()[1].close()


async def _async(value: bool) -> bool:
    return value
