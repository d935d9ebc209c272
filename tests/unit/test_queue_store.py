"""Queue state on a real SQLite file and on a real PostgreSQL database
(agentgate.queue.store), with a controllable clock."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import psycopg
import pytest

from agentgate.queue import sql
from agentgate.queue.store import (
    CANCELED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    TIMED_OUT,
    FailedPrecondition,
    LeaseExpired,
    NotFound,
    QueueFull,
    QueueStore,
)
from agentgate.v1 import common_pb2, events_pb2
from tests.pg_server import PgServer

from ..queue_helpers import outbox_size


class FakeClock:
    """Epoch seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def spec(prompt: str, priority: int = 0, max_wait: int = 0) -> common_pb2.WorkOrderSpec:
    return common_pb2.WorkOrderSpec(task_prompt=prompt, priority=priority, max_queue_wait_seconds=max_wait)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock, database_url: str):
    opened = await QueueStore.open(tmp_path / "queue.db", max_lease_attempts=2, clock=clock, database_url=database_url)
    yield opened
    await opened.close()


async def lease_order(store: QueueStore) -> list[str]:
    """Prompts in the order workers get them."""
    order = []
    while (lease := await store.lease_next("w", max_concurrent=100, lease_seconds=30)) is not None:
        order.append(lease.work_order.spec.task_prompt)
    return order


async def test_ids_and_initial_state(store: QueueStore) -> None:
    work_order, position = await store.submit(spec("first"), max_queue_size=10, traceparent="tp", trace_id="t" * 32)
    assert re.fullmatch(r"wo-[0-9a-f]{12}", work_order.id)
    assert re.fullmatch(r"run-[0-9a-f]{12}", work_order.run_id)
    assert work_order.status == PENDING and work_order.attempts == 0
    assert work_order.traceparent == "tp" and work_order.trace_id == "t" * 32
    assert position == 1
    assert (await store.get(work_order.id)) == work_order
    with pytest.raises(NotFound):
        await store.get("wo-000000000000")


async def test_priority_first_then_submission_order(store: QueueStore) -> None:
    for prompt, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1), ("f", 9)]:
        await store.submit(spec(prompt, priority), max_queue_size=10)
    assert await lease_order(store) == ["f", "b", "d", "a", "c", "e"]


async def test_positions_follow_lease_order(store: QueueStore) -> None:
    a, pos_a = await store.submit(spec("a"), max_queue_size=10)
    b, pos_b = await store.submit(spec("b"), max_queue_size=10)
    c, pos_c = await store.submit(spec("c", priority=1), max_queue_size=10)
    assert (pos_a, pos_b, pos_c) == (1, 2, 1)  # c jumped ahead of both
    assert (await store.position(a.id)).position == 2
    where_b = await store.position(b.id)
    assert (where_b.position, where_b.ahead, where_b.state) == (3, 2, "waiting")
    await store.lease_next("w", max_concurrent=5, lease_seconds=30)  # takes c
    assert (await store.position(c.id)).state == "running"
    assert (await store.position(c.id)).position == 0
    assert (await store.position(a.id)).position == 1


async def test_max_concurrent_and_queue_size(store: QueueStore) -> None:
    for prompt in "abc":
        await store.submit(spec(prompt), max_queue_size=3)
    with pytest.raises(QueueFull):
        await store.submit(spec("d"), max_queue_size=3)
    assert await store.lease_next("w", max_concurrent=1, lease_seconds=30) is not None
    assert await store.lease_next("w", max_concurrent=1, lease_seconds=30) is None
    # Running work orders do not count against the queue size.
    await store.submit(spec("d"), max_queue_size=3)
    assert await store.counts() == (3, 1)


async def test_expired_lease_requeues_at_its_old_place_then_fails(store: QueueStore, clock: FakeClock) -> None:
    first, _ = await store.submit(spec("first"), max_queue_size=10)
    await store.submit(spec("second"), max_queue_size=10)
    lease = await store.lease_next("w1", max_concurrent=1, lease_seconds=10)
    assert lease is not None and lease.work_order.id == first.id and lease.work_order.attempts == 1
    clock.now += 5
    assert not (await store.reap()).changed
    clock.now += 6
    assert (await store.reap()).requeued == 1
    requeued = await store.get(first.id)
    assert requeued.status == PENDING and requeued.attempts == 1
    assert (await store.position(first.id)).position == 1
    with pytest.raises(LeaseExpired):
        await store.heartbeat(lease.lease_id, lease_seconds=10)

    again = await store.lease_next("w2", max_concurrent=1, lease_seconds=10)
    assert again is not None and again.work_order.id == first.id and again.work_order.attempts == 2
    clock.now += 11
    assert (await store.reap()).failed == 1
    failed = await store.get(first.id)
    assert failed.status == FAILED
    assert failed.error == "system_error: lease expired 2 times (worker lost)"
    events = [event for _, event in await store.outbox_batch(100)]
    assert [e.type for e in events if e.type != "work_order:position"] == [
        "work_order:queued",
        "work_order:queued",
        "run:failed",
    ]
    assert events[-1].run_ended.result == common_pb2.RUN_RESULT_FAILED_SYSTEM
    # second moved up when first was leased, back when first was requeued in front of it.
    moves = [(e.work_order_id == first.id, e.work_order_position.position) for e in events if e.work_order_position.position]
    assert moves == [(False, 1), (True, 1), (False, 2), (False, 1)]


async def test_heartbeat_and_complete_on_a_lapsed_lease_reap_it(store: QueueStore, clock: FakeClock) -> None:
    work_order, _ = await store.submit(spec("x"), max_queue_size=10)
    lease = await store.lease_next("w", max_concurrent=1, lease_seconds=10)
    assert lease is not None
    clock.now += 8
    cancel_requested, expires = await store.heartbeat(lease.lease_id, lease_seconds=10)
    assert not cancel_requested and expires == store.now_us() + 10_000_000
    clock.now += 11  # past the extended expiry, reaper not run yet
    with pytest.raises(LeaseExpired):
        await store.complete(lease.lease_id, SUCCEEDED)
    assert (await store.get(work_order.id)).status == PENDING


async def test_complete_is_final_and_idempotent(store: QueueStore) -> None:
    work_order, _ = await store.submit(spec("x"), max_queue_size=10)
    lease = await store.lease_next("w", max_concurrent=1, lease_seconds=10)
    assert lease is not None
    done = await store.complete(lease.lease_id, SUCCEEDED)
    assert done.status == SUCCEEDED and done.finished_at.seconds > 0
    assert (await store.complete(lease.lease_id, SUCCEEDED)) == done
    with pytest.raises(FailedPrecondition):
        await store.complete(lease.lease_id, FAILED)
    with pytest.raises(FailedPrecondition, match="already succeeded"):
        await store.cancel(work_order.id)
    with pytest.raises(NotFound):
        await store.heartbeat(lease.lease_id, lease_seconds=10)
    with pytest.raises(NotFound):
        await store.complete("no-such-lease", SUCCEEDED)


async def test_cancel_waiting_and_running(store: QueueStore, clock: FakeClock) -> None:
    running, _ = await store.submit(spec("running"), max_queue_size=10)
    waiting, _ = await store.submit(spec("waiting"), max_queue_size=10)
    lease = await store.lease_next("w", max_concurrent=1, lease_seconds=10)
    assert lease is not None

    canceled = await store.cancel(waiting.id, "not needed")
    assert canceled.status == CANCELED and canceled.error == "canceled: not needed"

    flagged = await store.cancel(running.id, "stop")
    assert flagged.status == RUNNING
    assert (await store.heartbeat(lease.lease_id, lease_seconds=10))[0] is True
    ended = await store.complete(lease.lease_id, CANCELED)
    assert ended.status == CANCELED and ended.error == "canceled: stop"

    events = [event for _, event in await store.outbox_batch(100)]
    ended_events = [e for e in events if e.type == "work_order:canceled"]
    assert len(ended_events) == 1 and ended_events[0].work_order_ended.reason == "not needed"


async def test_queue_wait_limit(store: QueueStore, clock: FakeClock) -> None:
    limited, _ = await store.submit(spec("limited", max_wait=30), max_queue_size=10)
    unlimited, _ = await store.submit(spec("unlimited"), max_queue_size=10)
    clock.now += 29
    assert not (await store.reap()).changed
    clock.now += 2
    assert (await store.reap()).timed_out == 1
    timed_out = await store.get(limited.id)
    assert timed_out.status == TIMED_OUT and timed_out.error.startswith("queue_timeout")
    assert (await store.position(limited.id)).state == "timed_out"
    assert (await store.get(unlimited.id)).status == PENDING
    *_, last, moved = [event for _, event in await store.outbox_batch(100)]
    assert last.type == "work_order:timed_out" and last.work_order_ended.status == TIMED_OUT
    # The one behind it is next now.
    assert moved.type == "work_order:position" and moved.work_order_id == unlimited.id
    assert (moved.work_order_position.position, moved.work_order_position.ahead) == (1, 0)


async def test_everything_survives_reopening(tmp_path: Path, clock: FakeClock, database_url: str) -> None:
    path = tmp_path / "queue.db"
    store = await QueueStore.open(path, clock=clock, database_url=database_url)
    ids = {}
    for prompt, priority in [("a", 0), ("b", 2), ("c", 0), ("d", 2), ("e", 1)]:
        work_order, _ = await store.submit(spec(prompt, priority), max_queue_size=10)
        ids[prompt] = work_order.id
    lease = await store.lease_next("w", max_concurrent=5, lease_seconds=60)  # takes b
    assert lease is not None
    await store.cancel(ids["c"])
    before = [await store.get(i) for i in ids.values()]
    outbox_before = await store.outbox_batch(100)
    await store.close()

    reopened = await QueueStore.open(path, clock=clock, database_url=database_url)
    try:
        assert [await reopened.get(i) for i in ids.values()] == before
        assert await reopened.outbox_batch(100) == outbox_before
        # The lease outlives the restart; the worker keeps heartbeating.
        assert (await reopened.heartbeat(lease.lease_id, lease_seconds=60))[0] is False
        assert await lease_order(reopened) == ["d", "e", "a"]
        # Submission order continues after the old work orders.
        late, _ = await reopened.submit(spec("late", 2), max_queue_size=10)
        page, _ = await reopened.list_work_orders([], page_size=1)
        assert page[0].id == late.id
    finally:
        await reopened.close()


async def test_list_newest_first_with_filter_and_pages(store: QueueStore) -> None:
    ids = [(await store.submit(spec(str(i)), max_queue_size=10))[0].id for i in range(5)]
    await store.cancel(ids[1])
    page, next_seq = await store.list_work_orders([], page_size=2)
    assert [w.id for w in page] == [ids[4], ids[3]]
    page, next_seq = await store.list_work_orders([], page_size=2, before_seq=next_seq)
    assert [w.id for w in page] == [ids[2], ids[1]]
    page, next_seq = await store.list_work_orders([], page_size=2, before_seq=next_seq)
    assert [w.id for w in page] == [ids[0]] and next_seq is None
    canceled, _ = await store.list_work_orders([CANCELED], page_size=10)
    assert [w.id for w in canceled] == [ids[1]]


async def test_outbox_delivery_bookkeeping(store: QueueStore, tmp_path: Path, database_url: str) -> None:
    a, _ = await store.submit(spec("a"), max_queue_size=10)
    b, _ = await store.submit(spec("b"), max_queue_size=10)
    batch = await store.outbox_batch(10)
    assert [event.work_order_id for _, event in batch] == [a.id, b.id]
    assert isinstance(batch[0][1], events_pb2.RunEvent)
    assert await store.undelivered_now(a.id) == batch[0][0]
    if not store.shared:
        assert store.undelivered_last_id(a.id) == batch[0][0]
    await store.outbox_delete([batch[0][0]])
    assert await store.undelivered_now(a.id) is None
    assert store.undelivered_last_id(a.id) is None
    await store.outbox_dead_letter(batch[1][0], "refused")
    assert outbox_size(tmp_path / "queue.db", database_url) == 0


# The disk of a PostgreSQL server is its operator's (docs/deployment.md).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_completion_that_finds_the_disk_full_uses_the_reserve(
    store: QueueStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from agentgate.common.disk_reserve import DiskReserve
    from agentgate.common.errors import DiskFull

    await store.submit(spec("x"), max_queue_size=10)
    lease = await store.lease_next("w", max_concurrent=1, lease_seconds=10)
    assert lease is not None
    run = store._db.run
    full_writes = []

    async def full_once(fn):  # type: ignore[no-untyped-def]
        if not full_writes:
            full_writes.append(fn)
            raise sqlite3.OperationalError("database or disk is full")
        return await run(fn)

    monkeypatch.setattr(store._db, "run", full_once)
    with pytest.raises(DiskFull, match="^no space left on device while writing queue.db$"):
        await store.complete(lease.lease_id, FAILED, "disk")  # no reserve: the error, named
    full_writes.clear()
    store.reserve = DiskReserve(tmp_path / "queue.reserve", size=4096)
    assert await store.reserve.ensure()
    done = await store.complete(lease.lease_id, FAILED, "disk")
    assert done.status == FAILED and len(full_writes) == 1
    assert not store.reserve.path.exists()  # spent on this completion


async def test_a_submit_with_a_used_idempotency_key_returns_the_first_work_order(store: QueueStore) -> None:
    first, position = await store.submit(spec("a"), max_queue_size=2, idempotency_key="k-1")
    again, again_position = await store.submit(spec("different"), max_queue_size=2, idempotency_key="k-1")
    assert again == first and again_position == position == 1
    other, _ = await store.submit(spec("b"), max_queue_size=2, idempotency_key="k-2")
    # The queue is full now, but a retry of a stored Submit still answers.
    assert (await store.submit(spec("b"), max_queue_size=2, idempotency_key="k-2"))[0] == other
    with pytest.raises(QueueFull):
        await store.submit(spec("c"), max_queue_size=2, idempotency_key="k-3")
    await store.lease_next("w", max_concurrent=1, lease_seconds=10)
    assert await store.submit(spec("a"), max_queue_size=2, idempotency_key="k-1") == (await store.get(first.id), 0)
    assert len([e for _, e in await store.outbox_batch(100) if e.type == "work_order:queued"]) == 2


# SQLite has no connection to lose.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_lost_database_connection_is_unavailable_then_reconnects(store: QueueStore, database_url: str) -> None:
    """PostgreSQL restarted or the network dropped: the call that finds the connection gone
    fails UNAVAILABLE (a client retries), the next one reconnects."""
    from agentgate.common.errors import Unavailable

    await store.submit(spec("a"), max_queue_size=10)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    with pytest.raises(Unavailable, match="unreachable"):
        await store.counts()
    assert await store.counts() == (1, 0)
    assert (await store.submit(spec("b"), max_queue_size=10))[1] == 2


async def test_two_replicas_start_and_lease_concurrently_on_postgresql(pg_server: PgServer, clock: FakeClock) -> None:
    """Two queue stores opened at once on a new database (one migration), then eight lease
    loops spread over both: every work order is leased exactly once, never more than
    `max_concurrent` at a time, in priority order per replica."""
    url = pg_server.create_database()
    replicas = await asyncio.gather(
        *(QueueStore.open(Path("unused"), clock=clock, database_url=url) for _ in range(2))
    )
    try:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT COUNT(*) FROM queue_schema_migrations").fetchone() == (len(sql.PG_MIGRATIONS),)
        for i in range(40):
            await replicas[i % 2].submit(spec(f"task-{i}", priority=i % 3), max_queue_size=100)
        leased: list[str] = []
        running = 0
        peak = 0

        async def worker(store: QueueStore) -> None:
            nonlocal running, peak
            while True:
                lease = await store.lease_next("w", max_concurrent=3, lease_seconds=60)
                if lease is None:
                    if len(leased) >= 40:
                        return
                    await asyncio.sleep(0.001)
                    continue
                running += 1
                peak = max(peak, running)
                leased.append(lease.work_order.id)
                await asyncio.sleep(0)
                running -= 1
                await store.complete(lease.lease_id, SUCCEEDED)

        await asyncio.wait_for(asyncio.gather(*(worker(replicas[w % 2]) for w in range(8))), 60)
        assert len(leased) == len(set(leased)) == 40
        assert peak <= 3
        assert await replicas[1].counts() == (0, 0)
    finally:
        for store in replicas:
            await store.close()
