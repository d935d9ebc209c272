"""Seq assignment under concurrency, live fan-out, and replay-then-follow streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agentgate.common.events import (
    AGENT_OUTPUT,
    RUN_COMPLETE,
    RUN_STARTED,
    WORK_ORDER_CANCELED,
    WORK_ORDER_QUEUED,
    make_event,
)
from agentgate.persistence import streaming
from agentgate.persistence.event_log import EventLog, EventLogClosed, SubscriberTooSlow
from agentgate.persistence.run_files import RunFiles
from agentgate.persistence.store import PersistenceStore
from agentgate.persistence.streaming import stream_events
from agentgate.v1 import events_pb2


@pytest.fixture
async def log(tmp_path: Path, database_url: str) -> AsyncIterator[EventLog]:
    store = await PersistenceStore.open(tmp_path / "persistence.db", database_url)
    event_log = EventLog(store, RunFiles(tmp_path), subscriber_queue_size=50)
    yield event_log
    event_log.close()
    await store.close()


def ev(event_type: str, work_order_id: str = "wo-1", run_id: str = "run-1") -> events_pb2.RunEvent:
    return make_event(event_type, work_order_id, run_id)


async def collect(iterator: AsyncIterator[events_pb2.RunEvent]) -> list[events_pb2.RunEvent]:
    return [event async for event in iterator]


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


async def test_concurrent_appends_get_unique_gapless_seqs(tmp_path: Path, log: EventLog) -> None:
    async def client(name: str, batches: int) -> list[list[int]]:
        got = []
        for i in range(batches):
            size = 1 + i % 3
            stored = await log.append([ev(f"{name}:{i}") for _ in range(size)])
            got.append([e.seq for e in stored])
        return got

    results = await asyncio.gather(*(client(f"c{n}", 10) for n in range(20)))
    all_seqs = [seq for per_client in results for batch in per_client for seq in batch]
    assert sorted(all_seqs) == list(range(1, len(all_seqs) + 1))  # no duplicate, no gap
    for per_client in results:
        for batch in per_client:
            assert batch == list(range(batch[0], batch[0] + len(batch)))  # a batch is contiguous

    lines = (tmp_path / "runs" / "run-1" / "events.jsonl").read_text().splitlines()
    assert [int(json.loads(line)["seq"]) for line in lines] == list(range(1, len(all_seqs) + 1))


async def test_appended_events_get_a_timestamp(log: EventLog) -> None:
    bare = events_pb2.RunEvent(type=RUN_STARTED, work_order_id="wo-1", run_id="run-1")
    stored = await log.append([bare])
    assert stored[0].timestamp.seconds > 0


async def test_slow_subscriber_is_dropped_without_slowing_others(log: EventLog) -> None:
    slow = log.subscribe("wo-1")
    fast = log.subscribe("wo-1")
    fast.limit = 1000
    for _ in range(60):  # more than the slow one's limit of 50
        await log.append([ev(AGENT_OUTPUT)])
    assert slow.overflowed
    assert log.dropped_subscribers == 1
    assert log.subscriber_count("wo-1") == 1
    with pytest.raises(SubscriberTooSlow):
        await slow.next()
    assert [(await fast.next()).seq for _ in range(60)] == list(range(1, 61))


async def test_replay_from_after_seq_gives_exactly_the_rest(log: EventLog) -> None:
    await log.append([ev(WORK_ORDER_QUEUED), ev(RUN_STARTED), ev(AGENT_OUTPUT), ev(RUN_COMPLETE)])
    await log.append([ev(WORK_ORDER_QUEUED, "wo-2", "run-2")])
    everything = await collect(stream_events(log.store, log, "wo-1", 0, follow=False))
    assert [e.seq for e in everything] == [1, 2, 3, 4]
    rest = await collect(stream_events(log.store, log, "wo-1", 2, follow=False))
    assert [(e.seq, e.type) for e in rest] == [(3, AGENT_OUTPUT), (4, RUN_COMPLETE)]
    assert log.subscriber_count() == 0


async def test_replay_pages_through_long_logs(log: EventLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming, "REPLAY_PAGE", 3)
    await log.append([ev(AGENT_OUTPUT) for _ in range(10)])
    got = await collect(stream_events(log.store, log, "wo-1", 1, follow=False))
    assert [e.seq for e in got] == list(range(2, 11))


async def test_follow_streams_live_events_until_terminal(log: EventLog) -> None:
    await log.append([ev(WORK_ORDER_QUEUED)])
    task = asyncio.create_task(collect(stream_events(log.store, log, "wo-1", 0, follow=True)))
    await wait_for(lambda: log.subscriber_count("wo-1") == 1)
    await log.append([ev(RUN_STARTED)])
    await log.append([ev(AGENT_OUTPUT), ev(RUN_COMPLETE), ev("late:event")])
    got = await asyncio.wait_for(task, 5)
    assert [e.type for e in got] == [WORK_ORDER_QUEUED, RUN_STARTED, AGENT_OUTPUT, RUN_COMPLETE]
    assert log.subscriber_count() == 0


async def test_follow_ends_after_terminal_in_replay_or_before_after_seq(log: EventLog) -> None:
    await log.append([ev(WORK_ORDER_QUEUED), ev(WORK_ORDER_CANCELED), ev("run:canceled")])
    got = await asyncio.wait_for(collect(stream_events(log.store, log, "wo-1", 0, follow=True)), 5)
    assert [e.seq for e in got] == [1, 2]
    # Reconnecting after the end: nothing more will come, so the stream ends at once.
    got = await asyncio.wait_for(collect(stream_events(log.store, log, "wo-1", 3, follow=True)), 5)
    assert got == []


async def test_follow_while_appending_misses_and_doubles_nothing(
    log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streaming, "REPLAY_PAGE", 4)
    log.subscriber_queue_size = 10_000

    async def producer() -> None:
        for i in range(40):
            await log.append([ev(AGENT_OUTPUT) for _ in range(1 + i % 4)])
            await asyncio.sleep(0)
        await log.append([ev(RUN_COMPLETE)])

    await log.append([ev(WORK_ORDER_QUEUED) for _ in range(20)])
    followers = [asyncio.create_task(collect(stream_events(log.store, log, "wo-1", n, follow=True))) for n in (0, 5)]
    await producer()
    first, second = await asyncio.wait_for(asyncio.gather(*followers), 10)
    total = first[-1].seq
    assert [e.seq for e in first] == list(range(1, total + 1))
    assert [e.seq for e in second] == list(range(6, total + 1))
    assert first[-1].type == RUN_COMPLETE


async def test_follow_by_run_filters_other_runs(log: EventLog) -> None:
    await log.append([ev(RUN_STARTED, run_id="run-old"), ev(RUN_STARTED), ev(RUN_COMPLETE, run_id="run-old")])
    task = asyncio.create_task(collect(stream_events(log.store, log, "wo-1", 0, follow=True, run_id="run-1")))
    await wait_for(lambda: log.subscriber_count("wo-1") == 1)
    await log.append([ev(AGENT_OUTPUT), ev(RUN_COMPLETE)])
    got = await asyncio.wait_for(task, 5)
    assert [(e.seq, e.run_id) for e in got] == [(2, "run-1"), (4, "run-1"), (5, "run-1")]


async def test_live_gap_is_filled_from_the_log(log: EventLog) -> None:
    task = asyncio.create_task(collect(stream_events(log.store, log, "wo-1", 0, follow=True)))
    await wait_for(lambda: log.subscriber_count("wo-1") == 1)
    await asyncio.sleep(0.05)  # let the (empty) replay finish; the follower now waits live
    # Commit three events but publish only the last, as if a wake-up had been lost.
    stored = await log.store.append_events([ev(RUN_STARTED), ev(AGENT_OUTPUT), ev(RUN_COMPLETE)])
    log._publish(stored[-1:])
    got = await asyncio.wait_for(task, 5)
    assert [e.seq for e in got] == [1, 2, 3]


async def test_cancelled_follower_unsubscribes(log: EventLog) -> None:
    task = asyncio.create_task(collect(stream_events(log.store, log, "wo-1", 0, follow=True)))
    await wait_for(lambda: log.subscriber_count("wo-1") == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log.subscriber_count() == 0


async def test_close_ends_followers(log: EventLog) -> None:
    task = asyncio.create_task(collect(stream_events(log.store, log, "wo-1", 0, follow=True)))
    await wait_for(lambda: log.subscriber_count("wo-1") == 1)
    log.close()
    with pytest.raises(EventLogClosed):
        await asyncio.wait_for(task, 5)
