"""The queue's in-memory index of waiting work orders (agentgate.queue.pending) stays equal
to what SQLite says after any sequence of state changes, and after a reopen."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentgate.queue.pending import PendingIndex
from agentgate.queue.store import PENDING, SUCCEEDED, FailedPrecondition, NotFound, QueueStore, Transaction
from agentgate.v1 import common_pb2

from ..queue_helpers import scan_waiting_order


class FakeClock:
    """Epoch seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_index_orders_by_priority_then_seq_and_ranks() -> None:
    index = PendingIndex()
    assert index.add("a", 0, 1, 10) == 1
    assert index.add("b", 5, 2, 20) == 1
    assert index.add("c", 0, 3, 30) == 3
    assert index.position_for(0, 4) == 4
    assert index.position_for(5, 0) == 1
    assert [wid for wid, _ in index.order()] == ["b", "a", "c"]
    assert index.position("a") == 2 and index.enqueued_at("a") == 10
    assert index.first() == "b" and index.first_ids(2) == ["b", "a"]
    assert index.remove("b") and not index.remove("b")
    assert index.position("b") is None and len(index) == 2 and "b" not in index
    # Re-adding an id replaces its entry (a requeue keeps priority and seq).
    assert index.add("a", 0, 1, 99) == 1
    assert len(index) == 2 and index.enqueued_at("a") == 99


# One step of a random history: what to do and a number to pick the target with.
OPS = st.lists(
    st.tuples(
        st.sampled_from(["submit", "submit", "lease", "complete", "cancel", "expire", "timeout", "reopen"]),
        st.integers(min_value=0, max_value=1000),
    ),
    min_size=1,
    max_size=40,
)


async def check_consistent(store: QueueStore, path: Path) -> None:
    """Index == scan, positions are ranks, counts match COUNT(*), and a fresh load agrees."""
    in_memory = await store.waiting_order()
    scanned = scan_waiting_order(path)
    assert in_memory == scanned
    waiting, _running = await store.counts()
    with sqlite3.connect(path) as conn:
        count = conn.execute("SELECT COUNT(*) FROM work_orders WHERE status = ?", (PENDING,)).fetchone()[0]
        fresh = PendingIndex.load(conn, PENDING)
    assert waiting == count == len(scanned)
    assert fresh.order() == scanned
    for place, (work_order_id, enqueued_at) in enumerate(scanned, start=1):
        where = await store.position(work_order_id)
        assert (where.position, where.ahead, where.state, where.enqueued_at_us) == (
            place,
            place - 1,
            "waiting",
            enqueued_at,
        )


async def run_history(ops: list[tuple[str, int]], directory: Path) -> None:
    path = directory / "queue.db"
    clock = FakeClock()
    store = await QueueStore.open(path, max_lease_attempts=2, clock=clock)
    leases: list[str] = []
    ids: list[str] = []
    try:
        for op, pick in ops:
            if op == "submit":
                spec = common_pb2.WorkOrderSpec(
                    task_prompt=f"task {pick}", priority=pick % 3 - 1, max_queue_wait_seconds=pick % 2 * 5
                )
                work_order, position = await store.submit(spec, max_queue_size=25)
                ids.append(work_order.id)
                assert position == (await store.position(work_order.id)).position
            elif op == "lease":
                lease = await store.lease_next("w", max_concurrent=3, lease_seconds=10)
                if lease is not None:
                    leases.append(lease.lease_id)
            elif op == "complete" and leases:
                lease_id = leases.pop(pick % len(leases))
                try:
                    await store.complete(lease_id, SUCCEEDED)
                except NotFound:
                    pass  # expired meanwhile (requeued or failed by the reaper)
            elif op == "cancel" and ids:
                try:
                    await store.cancel(ids[pick % len(ids)], "test")
                except FailedPrecondition:
                    pass  # already ended
            elif op == "expire":
                # Past every lease (requeue or fail) and some wait limits (time out).
                clock.now += 11
                await store.reap()
            elif op == "timeout":
                clock.now += 3
                await store.reap()
            elif op == "reopen":
                await store.close()
                store = await QueueStore.open(path, max_lease_attempts=2, clock=clock)
            await check_consistent(store, path)
    finally:
        await store.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_index_matches_sqlite_after_random_operations(ops: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(run_history(ops, Path(directory)))


async def test_index_is_rebuilt_when_a_transaction_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    store = await QueueStore.open(path)
    try:
        first, _ = await store.submit(common_pb2.WorkOrderSpec(task_prompt="one"), max_queue_size=10)

        def failing_body(tx: Transaction) -> None:
            # Touches the index, then fails: the database rolls back, so must the index.
            row = tx.conn.execute("SELECT * FROM work_orders WHERE id = ?", (first.id,)).fetchone()
            store._end(tx, row, SUCCEEDED, "")
            raise RuntimeError("boom")

        try:
            await store._write(failing_body)
        except RuntimeError:
            pass
        else:
            raise AssertionError("the body's error must reach the caller")
        assert await store.waiting_order() == scan_waiting_order(path)
        assert (await store.position(first.id)).position == 1
    finally:
        await store.close()


async def test_lease_flush_needs_no_wait_once_events_are_delivered(tmp_path: Path) -> None:
    store = await QueueStore.open(tmp_path / "queue.db")
    try:
        work_order, _ = await store.submit(common_pb2.WorkOrderSpec(task_prompt="one"), max_queue_size=10)
        other, _ = await store.submit(common_pb2.WorkOrderSpec(task_prompt="two"), max_queue_size=10)
        batch = await store.outbox_batch(100)
        assert store.undelivered_last_id(work_order.id) is not None
        first_ids = [outbox_id for outbox_id, event in batch if event.work_order_id == work_order.id]
        await store.outbox_delete(first_ids)
        assert store.undelivered_last_id(work_order.id) is None
        assert store.undelivered_last_id(other.id) is not None
        await store.close()
        # Undelivered events survive a restart, and so does their tracking.
        store = await QueueStore.open(tmp_path / "queue.db")
        assert store.undelivered_last_id(work_order.id) is None
        assert store.undelivered_last_id(other.id) == max(i for i, _ in batch)
    finally:
        await store.close()
