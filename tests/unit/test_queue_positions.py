"""Ordering, positions, wait estimates, position events, lease renewal and the shared
position board, on a real SQLite file with an injected clock (no sleeps)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agentgate.orchestrator.worker import heartbeat_interval
from agentgate.queue.positions import PositionBoard
from agentgate.queue.store import (
    POSITION_EVENT_PLACES,
    RECENT_WAITS,
    RUNNING,
    SUCCEEDED,
    NotFound,
    QueueStore,
    WaitStats,
)
from agentgate.v1 import common_pb2


class FakeClock:
    """Epoch seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def spec(prompt: str, priority: int = 0) -> common_pb2.WorkOrderSpec:
    return common_pb2.WorkOrderSpec(task_prompt=prompt, priority=priority)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock, database_url: str):
    opened = await QueueStore.open(tmp_path / "queue.db", max_lease_attempts=3, clock=clock, database_url=database_url)
    yield opened
    await opened.close()


async def submit_all(store: QueueStore, *items: tuple[str, int]) -> dict[str, str]:
    ids = {}
    for prompt, priority in items:
        work_order, _ = await store.submit(spec(prompt, priority), max_queue_size=1000)
        ids[prompt] = work_order.id
    return ids


async def positions(store: QueueStore, ids: dict[str, str]) -> dict[str, int]:
    return {name: (await store.position(wid)).position for name, wid in ids.items()}


async def position_events(store: QueueStore) -> list[tuple[str, int]]:
    return [
        (event.work_order_id, event.work_order_position.position)
        for _, event in await store.outbox_batch(10_000)
        if event.type == "work_order:position"
    ]


async def test_positions_follow_priority_then_time_through_every_change(store: QueueStore) -> None:
    ids = await submit_all(store, ("a", 0), ("b", 1), ("c", 0), ("d", 1))
    assert await positions(store, ids) == {"b": 1, "d": 2, "a": 3, "c": 4}

    lease = await store.lease_next("w", max_concurrent=5, lease_seconds=30)
    assert lease is not None and lease.work_order.id == ids["b"]
    assert await positions(store, ids) == {"b": 0, "d": 1, "a": 2, "c": 3}
    where = await store.position(ids["b"])
    assert (where.state, where.ahead, where.estimated_wait_seconds) == ("running", 0, None)

    # A higher priority goes in front of everything that waits, not in front of runs.
    ids |= await submit_all(store, ("urgent", 5))
    assert await positions(store, ids) == {"b": 0, "urgent": 1, "d": 2, "a": 3, "c": 4}

    await store.cancel(ids["d"])
    assert await positions(store, ids) == {"b": 0, "urgent": 1, "d": 0, "a": 2, "c": 3}
    where = await store.position(ids["a"])
    assert (where.position, where.ahead, where.state) == (2, 1, "waiting")
    assert (await store.position(ids["d"])).state == "canceled"

    await store.complete(lease.lease_id, SUCCEEDED)
    assert (await store.position(ids["b"])).state == "succeeded"
    assert await store.waiting_order() == [
        (ids[name], (await store.position(ids[name])).enqueued_at_us) for name in ("urgent", "a", "c")
    ]


async def test_no_estimate_until_a_work_order_was_leased(store: QueueStore) -> None:
    ids = await submit_all(store, ("a", 0), ("b", 0))
    assert await store.wait_stats() == WaitStats(None, None)
    assert (await store.position(ids["b"])).estimated_wait_seconds is None


async def test_estimates_come_from_recent_waits_and_positions(store: QueueStore, clock: FakeClock) -> None:
    ids = await submit_all(store, ("a", 0), ("b", 0), ("c", 0), ("d", 0))
    assert await store.lease_next("w", max_concurrent=5, lease_seconds=30) is not None  # a waited 0s from place 1
    clock.now += 10
    assert await store.lease_next("w", max_concurrent=5, lease_seconds=30) is not None  # b waited 10s from place 2
    stats = await store.wait_stats()
    assert stats.average_wait_seconds == pytest.approx(5.0)
    # 10 s of waiting over 1 + 2 places: 3.33 s a place.
    assert stats.seconds_per_place == pytest.approx(10 / 3)
    c, d = await store.position(ids["c"]), await store.position(ids["d"])
    assert (c.position, d.position) == (1, 2)
    assert c.estimated_wait_seconds == pytest.approx(10 / 3)
    assert d.estimated_wait_seconds == pytest.approx(20 / 3)
    assert stats.estimate(0) is None


async def test_only_the_latest_waits_count(store: QueueStore, clock: FakeClock) -> None:
    # Old, long waits first; then RECENT_WAITS quick ones push them out of the average.
    await submit_all(store, *[(f"old{i}", 0) for i in range(5)])
    clock.now += 100
    for _ in range(5):
        lease = await store.lease_next("w", max_concurrent=100, lease_seconds=30)
        assert lease is not None
    assert (await store.wait_stats()).average_wait_seconds == pytest.approx(100)
    for i in range(RECENT_WAITS):
        await submit_all(store, (f"new{i}", 0))
        clock.now += 2
        assert await store.lease_next("w", max_concurrent=100, lease_seconds=30) is not None
    stats = await store.wait_stats()
    assert stats.average_wait_seconds == pytest.approx(2.0)
    assert stats.seconds_per_place == pytest.approx(2.0)


async def test_requeued_wait_counts_from_the_requeue(store: QueueStore, clock: FakeClock) -> None:
    ids = await submit_all(store, ("a", 0))
    clock.now += 4
    assert await store.lease_next("w", max_concurrent=1, lease_seconds=10) is not None
    clock.now += 11
    assert (await store.reap()).requeued == 1
    clock.now += 2
    again = await store.lease_next("w2", max_concurrent=1, lease_seconds=10)
    assert again is not None and again.work_order.id == ids["a"] and again.work_order.attempts == 2
    # Waits 4 s (first lease) and 2 s (after the requeue).
    assert (await store.wait_stats()).average_wait_seconds == pytest.approx(3.0)


async def test_position_events_only_for_the_first_places(store: QueueStore) -> None:
    count = POSITION_EVENT_PLACES + 5
    ids = await submit_all(store, *[(f"w{i:02}", 0) for i in range(count)])
    order = [ids[f"w{i:02}"] for i in range(count)]
    # Submitting at the back moves nobody: the queued events carry the places.
    assert await position_events(store) == []

    assert await store.lease_next("w", max_concurrent=100, lease_seconds=30) is not None
    # Everyone moved up one place, but only the first places are recorded.
    assert await position_events(store) == [(order[i], i) for i in range(1, POSITION_EVENT_PLACES + 1)]

    # Going to the front of the line pushes the first places back by one.
    before = len(await position_events(store))
    urgent = (await store.submit(spec("urgent", 9), max_queue_size=1000))[0]
    pushed = (await position_events(store))[before:]
    assert pushed == [(order[i], i + 1) for i in range(1, POSITION_EVENT_PLACES)]
    assert (await store.position(urgent.id)).position == 1

    # A work order that reaches the first places from far back is told its place.
    await store.cancel(urgent.id)
    for _ in range(4):
        assert await store.lease_next("w", max_concurrent=100, lease_seconds=30) is not None
    last = order[-1]
    assert (await store.position(last)).position == count - 5
    assert [place for wid, place in await position_events(store) if wid == last] == [count - 5]


async def test_heartbeats_write_only_when_the_lease_needs_it(store: QueueStore, clock: FakeClock) -> None:
    await submit_all(store, ("a", 0))
    lease = await store.lease_next("w", max_concurrent=1, lease_seconds=30)
    assert lease is not None
    clock.now += 1
    # Plenty of time left: the expiry is kept (answered from a read).
    assert await store.heartbeat(lease.lease_id, lease_seconds=30) == (False, lease.expires_at_us)
    clock.now += 10
    # Less than two thirds left: extended to a full lease from now.
    cancel_requested, expires = await store.heartbeat(lease.lease_id, lease_seconds=30)
    assert not cancel_requested and expires == store.now_us() + 30_000_000
    # A cancel is seen on the very next heartbeat, extended or not.
    await store.cancel(lease.work_order.id, "stop")
    clock.now += 1
    assert (await store.heartbeat(lease.lease_id, lease_seconds=30))[0] is True


async def test_running_leases_are_renewed_after_a_restart(store: QueueStore, clock: FakeClock) -> None:
    ids = await submit_all(store, ("a", 0), ("b", 0))
    lease = await store.lease_next("w", max_concurrent=1, lease_seconds=10)
    assert lease is not None
    clock.now += 60  # the queue was down: no heartbeat could arrive
    assert await store.renew_running_leases(10) == 1
    assert not (await store.reap()).changed
    assert (await store.heartbeat(lease.lease_id, lease_seconds=10))[0] is False
    clock.now += 11  # but a worker that is really gone is still found out
    assert (await store.reap()).requeued == 1
    assert (await store.get(ids["a"])).status != RUNNING
    assert await store.renew_running_leases(10) == 0


async def test_next_deadline_is_the_earliest_expiry_or_wait_limit(store: QueueStore, clock: FakeClock) -> None:
    assert await store.next_deadline_us() is None
    await store.submit(common_pb2.WorkOrderSpec(task_prompt="patient"), max_queue_size=10)
    assert await store.next_deadline_us() is None
    start = store.now_us()
    await store.submit(common_pb2.WorkOrderSpec(task_prompt="w", max_queue_wait_seconds=50), max_queue_size=10)
    assert await store.next_deadline_us() == start + 50_000_000
    clock.now += 1
    lease = await store.lease_next("w", max_concurrent=5, lease_seconds=10)  # the patient one
    assert lease is not None and lease.work_order.spec.task_prompt == "patient"
    assert await store.next_deadline_us() == lease.expires_at_us == start + 11_000_000
    await store.complete(lease.lease_id, SUCCEEDED)
    assert await store.next_deadline_us() == start + 50_000_000


async def test_board_watch_sends_each_change_until_the_work_order_runs(store: QueueStore) -> None:
    board = PositionBoard(store)
    store.on_order_changed = board.notify
    ids = await submit_all(store, ("a", 0), ("b", 0), ("c", 0))
    seen: asyncio.Queue[tuple[int, int, str]] = asyncio.Queue()

    async def watch() -> None:
        async for where in board.watch(ids["c"]):
            await seen.put((where.position, where.ahead, where.state))

    task = asyncio.create_task(watch())
    assert await seen.get() == (3, 2, "waiting")
    # Something behind it changes nothing for c: no message.
    await store.submit(spec("later"), max_queue_size=1000)
    await asyncio.sleep(0.05)
    assert seen.empty()
    for expected in [(2, 1, "waiting"), (1, 0, "waiting"), (0, 0, "running")]:
        assert await store.lease_next("w", max_concurrent=5, lease_seconds=30) is not None
        assert await asyncio.wait_for(seen.get(), 2) == expected
    await asyncio.wait_for(task, 2)  # the stream ended once c ran


async def test_board_reads_the_order_once_per_change_for_all_watchers(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    board = PositionBoard(store)
    store.on_order_changed = board.notify
    ids = await submit_all(store, *[(f"w{i}", 0) for i in range(6)])
    reads = 0
    real = store.waiting_order

    async def counted() -> list[tuple[str, int]]:
        nonlocal reads
        reads += 1
        return await real()

    monkeypatch.setattr(store, "waiting_order", counted)
    firsts = [await anext(board.watch(ids[f"w{i}"])) for i in range(1, 6)]
    assert [where.position for where in firsts] == [2, 3, 4, 5, 6]
    assert reads == 1
    assert await store.lease_next("w", max_concurrent=5, lease_seconds=30) is not None
    assert [(await board.position(ids[f"w{i}"])).position for i in range(1, 6)] == [1, 2, 3, 4, 5]
    assert reads == 2


async def test_board_watch_of_an_ended_or_unknown_work_order(store: QueueStore) -> None:
    board = PositionBoard(store)
    store.on_order_changed = board.notify
    ids = await submit_all(store, ("a", 0))
    await store.cancel(ids["a"])
    assert [(w.position, w.state) async for w in board.watch(ids["a"])] == [(0, "canceled")]
    with pytest.raises(NotFound):
        await anext(board.watch("wo-000000000000"))


async def test_board_close_ends_watches(store: QueueStore) -> None:
    board = PositionBoard(store)
    ids = await submit_all(store, ("a", 0))
    stream = board.watch(ids["a"])
    assert (await anext(stream)).position == 1
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.01)
    board.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 2)


@pytest.mark.parametrize(("lease_seconds", "interval"), [(30, 1.0), (3, 1.0), (1.5, 0.5), (0.3, 0.2)])
def test_heartbeat_interval_is_prompt_enough_for_cancels(lease_seconds: float, interval: float) -> None:
    assert heartbeat_interval(lease_seconds) == pytest.approx(interval)
