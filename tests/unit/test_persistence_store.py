"""The SQLite index against a real database file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import psycopg
import pytest

from agentgate.common.events import RUN_COMPLETE, RUN_STARTED, WORK_ORDER_QUEUED, make_event
from agentgate.persistence.store import MIGRATIONS, PG_MIGRATIONS, PersistenceStore
from agentgate.v1 import common_pb2
from tests.pg_server import PgServer


@pytest.fixture
async def store(tmp_path: Path, database_url: str) -> AsyncIterator[PersistenceStore]:
    opened = await PersistenceStore.open(tmp_path / "persistence.db", database_url)
    yield opened
    await opened.close()


#: A test of SQLite's own file, connections or triggers runs on SQLite only.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def make_run(run_id: str, work_order_id: str = "wo-1", created_seconds: int = 1_700_000_000) -> common_pb2.Run:
    run = common_pb2.Run(id=run_id, work_order_id=work_order_id, state=common_pb2.RUN_STATE_PREPARING)
    run.created_at.seconds = created_seconds
    return run


@sqlite_only
async def test_schema_is_versioned_and_in_wal_mode(tmp_path: Path, store: PersistenceStore) -> None:
    async with aiosqlite.connect(tmp_path / "persistence.db") as db:
        async with db.execute("SELECT MAX(version) FROM schema_migrations") as cur:
            assert (await cur.fetchone())[0] == len(MIGRATIONS)
        async with db.execute("PRAGMA journal_mode") as cur:
            assert (await cur.fetchone())[0] == "wal"


async def test_insert_get_replace_run(store: PersistenceStore) -> None:
    run = make_run("run-1")
    assert await store.insert_run(run)
    assert not await store.insert_run(make_run("run-1", "other"))  # taken: nothing changes
    assert await store.get_run("run-1") == run
    run.state = common_pb2.RUN_STATE_SUCCEEDED
    run.result = common_pb2.RUN_RESULT_SUCCEEDED
    assert await store.replace_run(run)
    assert (await store.get_run("run-1")).state == common_pb2.RUN_STATE_SUCCEEDED
    assert not await store.replace_run(make_run("missing"))
    assert await store.get_run("missing") is None


async def test_list_runs_newest_first_with_keyset_pages(store: PersistenceStore) -> None:
    for i in range(7):
        await store.insert_run(make_run(f"run-{i}", "wo-a" if i % 2 else "wo-b", 1_000 + i))
    await store.insert_run(make_run("run-tie", "wo-a", 1_005))  # same created_at as run-5

    seen: list[str] = []
    cursor = None
    while True:
        runs, cursor = await store.list_runs("", 3, cursor)
        seen += [r.id for r in runs]
        if cursor is None:
            break
    assert seen == ["run-6", "run-tie", "run-5", "run-4", "run-3", "run-2", "run-1", "run-0"]

    runs, cursor = await store.list_runs("wo-a", 10, None)
    assert [r.id for r in runs] == ["run-tie", "run-5", "run-3", "run-1"]
    assert cursor is None


async def test_saving_needs_an_existing_run_and_replaces_same_iteration(store: PersistenceStore) -> None:
    result = common_pb2.AgentResult(run_id="run-1", iteration=1, success=False)
    assert not await store.save_agent_result(result, "agent-1.json")
    await store.insert_run(make_run("run-1"))
    assert await store.save_agent_result(result, "agent-1.json")
    result.success = True
    assert await store.save_agent_result(result, "agent-1.json")
    assert await store.save_verification_report(
        common_pb2.VerificationReport(run_id="run-1", iteration=1), "verification-1.json"
    )
    assert await store.save_iteration(common_pb2.IterationData(run_id="run-1", iteration=1), "iteration-1.json")
    assert await store.saved_files("agent_results", "run-1") == [(1, "agent-1.json")]
    assert await store.saved_files("iterations", "run-1") == [(1, "iteration-1.json")]
    with pytest.raises(ValueError):
        await store.saved_files("runs; DROP TABLE runs", "run-1")


async def test_event_seqs_are_per_work_order_from_one(store: PersistenceStore) -> None:
    stored = await store.append_events(
        [
            make_event(WORK_ORDER_QUEUED, "wo-1", "run-1"),
            make_event(WORK_ORDER_QUEUED, "wo-2", "run-2"),
            make_event(RUN_STARTED, "wo-1", "run-1"),
        ]
    )
    assert [(e.work_order_id, e.seq) for e in stored] == [("wo-1", 1), ("wo-2", 1), ("wo-1", 2)]
    more = await store.append_events([make_event(RUN_COMPLETE, "wo-1", "run-1")])
    assert more[0].seq == 3
    assert [e.seq for e in await store.read_events("wo-1", 0, 100)] == [1, 2, 3]
    assert [e.seq for e in await store.read_events("wo-1", 1, 1)] == [2]
    assert await store.read_events("wo-1", 2**64 - 1, 10) == []  # uint64 after_seq is clamped


@sqlite_only
async def test_event_batch_is_one_transaction(store: PersistenceStore) -> None:
    await store.append_events([make_event(RUN_STARTED, "wo-1", "run-1")])
    # A trigger makes the second insert of the next batch fail, like a disk error halfway.
    await store._writer.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON events WHEN NEW.type = 'boom' BEGIN SELECT RAISE(ABORT, 'boom'); END"
    )
    await store._writer.commit()
    with pytest.raises(aiosqlite.IntegrityError, match="boom"):
        await store.append_events([make_event("a", "wo-1", "run-1"), make_event("boom", "wo-1", "run-1")])
    assert [e.seq for e in await store.read_events("wo-1", 0, 10)] == [1]  # no partial batch
    await store._writer.execute("DROP TRIGGER boom")
    await store._writer.commit()
    stored = await store.append_events([make_event("a", "wo-1", "run-1")])
    assert stored[0].seq == 2  # and no gap afterwards


async def test_terminal_and_lookup_queries(store: PersistenceStore) -> None:
    await store.append_events(
        [
            make_event(WORK_ORDER_QUEUED, "wo-1", "run-1"),
            make_event(RUN_COMPLETE, "wo-1", "run-1"),
        ]
    )
    assert not await store.has_terminal_event("wo-1", 1)
    assert await store.has_terminal_event("wo-1", 2)
    assert not await store.has_terminal_event("wo-1", 2, run_id="run-other")
    assert await store.work_order_of_run("run-1") == "wo-1"
    await store.insert_run(make_run("run-9", "wo-9"))
    assert await store.work_order_of_run("run-9") == "wo-9"
    assert await store.work_order_of_run("nope") is None
    assert await store.work_order_known("wo-1") and await store.work_order_known("wo-9")
    assert not await store.work_order_known("wo-0")


async def test_reopening_keeps_data_and_continues_seqs(tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "persistence.db"
    first = await PersistenceStore.open(path, database_url)
    await first.insert_run(make_run("run-1"))
    await first.append_events([make_event(RUN_STARTED, "wo-1", "run-1")] * 2)
    await first.close()
    second = await PersistenceStore.open(path, database_url)
    try:
        assert (await second.get_run("run-1")).id == "run-1"
        stored = await second.append_events([make_event(RUN_COMPLETE, "wo-1", "run-1")])
        assert stored[0].seq == 3
    finally:
        await second.close()


@sqlite_only
async def test_reader_does_not_see_uncommitted_writes(store: PersistenceStore) -> None:
    await store._writer.execute(
        "INSERT INTO events (work_order_id, seq, run_id, type, data) VALUES ('wo-x', 1, 'r', 't', x'')"
    )
    try:
        assert await store.read_events("wo-x", 0, 10) == []
    finally:
        await store._writer.rollback()


async def test_replicas_starting_at_once_migrate_once_and_share_gap_free_seqs(pg_server: PgServer) -> None:
    """Two stores on one new PostgreSQL database, opened at once (two replicas starting),
    then appending to the same work orders concurrently: each schema version is applied
    once, and every work order's seqs are 1..n with no gap and no repeat."""
    url = pg_server.create_database()
    replicas = await asyncio.gather(*(PersistenceStore.open(Path("unused"), url) for _ in range(2)))
    try:
        with psycopg.connect(url) as conn:
            versions = conn.execute("SELECT version FROM persistence_schema_migrations").fetchall()
        assert [v for (v,) in versions] == list(range(1, len(PG_MIGRATIONS) + 1))

        async def append(store: PersistenceStore, n: int) -> None:
            for i in range(n):
                # Batches that span two work orders in either order: no deadlock either.
                ids = ["wo-a", "wo-b"] if i % 2 else ["wo-b", "wo-a"]
                await store.append_events([make_event(RUN_STARTED, wid, "run-1") for wid in ids])

        await asyncio.gather(*(append(store, 25) for store in replicas for _ in range(2)))
        for work_order_id in ("wo-a", "wo-b"):
            seqs = [e.seq for e in await replicas[0].read_events(work_order_id, 0, 1000)]
            assert seqs == list(range(1, 101))
    finally:
        for store in replicas:
            await store.close()


async def test_an_event_id_is_stored_once(store: PersistenceStore) -> None:
    """A retried append (same event ids) stores nothing again and returns the first seqs."""
    first = make_event(RUN_STARTED, "wo-1", "run-1")
    first.event_id = "e-1"
    second = make_event(RUN_COMPLETE, "wo-1", "run-1")
    second.event_id = "e-2"
    every, stored = await store.append_events_once([first, second])
    assert [e.seq for e in every] == [1, 2] and len(stored) == 2
    plain = make_event(RUN_STARTED, "wo-1", "run-1")  # no id: never de-duplicated
    every, stored = await store.append_events_once([second, plain, first, second])
    assert [e.seq for e in every] == [2, 3, 1, 2] and [e.seq for e in stored] == [3]
    assert [e.seq for e in await store.read_events("wo-1", 0, 10)] == [1, 2, 3]
    other = make_event(RUN_STARTED, "wo-2", "run-2")
    other.event_id = "e-1"  # ids are per work order
    assert [e.seq for e in await store.append_events([other])] == [1]
