"""The queue's reaper wakes at the next deadline, not at its polling interval: wait limits
and lease expiry are acted on on time even with a long `reap_interval`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from agentgate.v1 import common_pb2, queue_pb2

from .test_queue_service import Cluster, lease, status_of, submit
from .test_queue_service import cluster as cluster  # noqa: F401 - fixture

TIMED_OUT = common_pb2.WORK_ORDER_STATUS_TIMED_OUT
PENDING = common_pb2.WORK_ORDER_STATUS_PENDING


async def wait_status(stub, work_order_id: str, status: int, timeout: float) -> float:
    """Seconds until the work order has `status`."""
    started = time.monotonic()
    while await status_of(stub, work_order_id) != status:
        assert time.monotonic() - started < timeout, f"not {status} after {timeout}s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_wait_limit_is_enforced_on_time(cluster: Cluster, tmp_path: Path) -> None:
    await cluster.start_persistence()
    queue = await cluster.start_queue(reap_interval=30, max_concurrent=1)
    await submit(queue, tmp_path, "blocker")
    assert (await lease(queue)).leased
    # Submitted later with a shorter limit: the reaper must look again and wake for it.
    await asyncio.sleep(0.2)
    limited = await submit(queue, tmp_path, "impatient", max_queue_wait_seconds=1)
    waited = await wait_status(queue, limited.id, TIMED_OUT, timeout=5)
    assert 0.9 <= waited < 1.6, waited
    where = await queue.GetPosition(queue_pb2.GetPositionRequest(work_order_id=limited.id))
    assert (where.position, where.state) == (0, "timed_out")


async def test_lost_lease_is_requeued_on_time(cluster: Cluster, tmp_path: Path) -> None:
    await cluster.start_persistence()
    queue = await cluster.start_queue(reap_interval=30, lease_seconds=1)
    work_order = await submit(queue, tmp_path)
    assert (await lease(queue)).leased
    waited = await wait_status(queue, work_order.id, PENDING, timeout=5)
    assert waited < 1.6, waited
    assert (await lease(queue, worker="worker-2")).work_order.attempts == 2
