"""The index of the persistence service: $AGENTGATE_HOME/persistence.db (SQLite), or a
PostgreSQL database shared by several persistence replicas (docs/deployment.md).

It holds every run, result, report, iteration and event as its serialized proto plus the
columns that list/filter queries need, so answers never depend on reading the files, and
on PostgreSQL every replica answers from the same records.

The SQL is written once (`?` placeholders, the upsert syntax both databases share). On
SQLite: two connections, one writer used under a lock (a connection has one transaction,
so two coroutines writing through it would commit or roll back each other's work) and one
reader, which in WAL mode sees only committed data and never waits for the writer. On
PostgreSQL: a psycopg connection pool, one connection per transaction.

Event seqs come from one counter row per work order, incremented in the transaction that
stores the events: on PostgreSQL the row lock makes a second replica appending to the same
work order wait for the first one's commit, so seqs stay gap-free and in commit order.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from agentgate.common.database import migrate, qmark, unreachable_as_unavailable
from agentgate.common.errors import DiskFull, is_disk_full
from agentgate.common.events import TERMINAL_EVENT_TYPES
from agentgate.common.storage import open_database
from agentgate.common.timeutil import utcnow
from agentgate.persistence.pagination import PageCursor, normalize_states
from agentgate.v1 import common_pb2, events_pb2

# RunEvent.event_id: an appender's retry of an event already stored stores nothing.
_EVENT_IDS = """
    ALTER TABLE events ADD COLUMN event_id TEXT;
    CREATE UNIQUE INDEX events_by_event_id ON events (work_order_id, event_id) WHERE event_id IS NOT NULL;
"""

MIGRATIONS = [
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        work_order_id TEXT NOT NULL,
        state INTEGER NOT NULL,
        result INTEGER NOT NULL,
        -- nanoseconds since the epoch: sortable, and exact for keyset pagination
        created_at INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        data BLOB NOT NULL
    );
    CREATE INDEX runs_by_created ON runs (created_at DESC, id DESC);
    CREATE INDEX runs_by_work_order ON runs (work_order_id, created_at DESC, id DESC);
    CREATE TABLE agent_results (
        run_id TEXT NOT NULL,
        iteration INTEGER NOT NULL,
        file TEXT NOT NULL,
        success INTEGER NOT NULL,
        saved_at TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (run_id, iteration)
    );
    CREATE TABLE verification_reports (
        run_id TEXT NOT NULL,
        iteration INTEGER NOT NULL,
        file TEXT NOT NULL,
        passed INTEGER NOT NULL,
        saved_at TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (run_id, iteration)
    );
    CREATE TABLE iterations (
        run_id TEXT NOT NULL,
        iteration INTEGER NOT NULL,
        file TEXT NOT NULL,
        state INTEGER NOT NULL,
        saved_at TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (run_id, iteration)
    );
    CREATE TABLE events (
        work_order_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        run_id TEXT NOT NULL,
        type TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (work_order_id, seq)
    );
    CREATE INDEX events_by_run ON events (run_id, seq);
    """,
    # The patches of a run's change (docs/results.md): iteration 0 is the cumulative one.
    """
    CREATE TABLE patches (
        run_id TEXT NOT NULL,
        iteration INTEGER NOT NULL,
        file TEXT NOT NULL,
        saved_at TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (run_id, iteration)
    );
    """,
    """
    -- The last seq given out per work order: appends increment it in their transaction.
    CREATE TABLE event_counters (
        work_order_id TEXT PRIMARY KEY,
        last_seq INTEGER NOT NULL
    );
    INSERT INTO event_counters (work_order_id, last_seq)
        SELECT work_order_id, MAX(seq) FROM events GROUP BY work_order_id;
    """,
    _EVENT_IDS,
]

#: The same schema in PostgreSQL's types, reached in one version.
PG_MIGRATIONS = [
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        work_order_id TEXT NOT NULL,
        state INTEGER NOT NULL,
        result INTEGER NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at TEXT NOT NULL,
        data BYTEA NOT NULL
    );
    CREATE INDEX runs_by_created ON runs (created_at DESC, id DESC);
    CREATE INDEX runs_by_work_order ON runs (work_order_id, created_at DESC, id DESC);
    CREATE TABLE agent_results (
        run_id TEXT NOT NULL,
        iteration BIGINT NOT NULL,
        file TEXT NOT NULL,
        success INTEGER NOT NULL,
        saved_at TEXT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (run_id, iteration)
    );
    CREATE TABLE verification_reports (
        run_id TEXT NOT NULL,
        iteration BIGINT NOT NULL,
        file TEXT NOT NULL,
        passed INTEGER NOT NULL,
        saved_at TEXT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (run_id, iteration)
    );
    CREATE TABLE iterations (
        run_id TEXT NOT NULL,
        iteration BIGINT NOT NULL,
        file TEXT NOT NULL,
        state INTEGER NOT NULL,
        saved_at TEXT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (run_id, iteration)
    );
    CREATE TABLE events (
        work_order_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        run_id TEXT NOT NULL,
        type TEXT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (work_order_id, seq)
    );
    CREATE INDEX events_by_run ON events (run_id, seq);
    CREATE TABLE event_counters (
        work_order_id TEXT PRIMARY KEY,
        last_seq BIGINT NOT NULL
    );
    CREATE TABLE patches (
        run_id TEXT NOT NULL,
        iteration BIGINT NOT NULL,
        file TEXT NOT NULL,
        saved_at TEXT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (run_id, iteration)
    );
    """,
    _EVENT_IDS,
]

#: PostgreSQL: NOTIFY channel of appended events (payload: see `EventNotice`).
EVENTS_CHANNEL = "agentgate_events"

# The tables of Save*: (table, name of the summary column).
_RESULT_TABLES = {
    "agent_results": "success",
    "verification_reports": "passed",
    "iterations": "state",
}

#: PostgreSQL: connections of one replica's pool.
POOL_SIZE = 10
#: PostgreSQL: how long a call waits for a pool connection.
POOL_WAIT_SECONDS = 5.0

# SQLite integers are signed 64-bit; a uint64 after_seq above this matches nothing anyway.
MAX_SEQ = 2**63 - 1


def created_ns(run: common_pb2.Run) -> int:
    """A run's created_at as integer nanoseconds (the sort key of ListRuns)."""
    return run.created_at.seconds * 1_000_000_000 + run.created_at.nanos


#: Event ids looked up per query (well under both databases' limits on parameters).
_EVENT_ID_CHUNK = 500


async def _stored_by_event_id(
    db: Any, events: Sequence[events_pb2.RunEvent]
) -> dict[tuple[str, str], events_pb2.RunEvent]:
    """The events of `events`' (work_order_id, event_id) pairs that are stored already."""
    ids: dict[str, list[str]] = {}
    for event in events:
        if event.event_id:
            ids.setdefault(event.work_order_id, []).append(event.event_id)
    found: dict[tuple[str, str], events_pb2.RunEvent] = {}
    for work_order_id, wanted in ids.items():
        unique = list(dict.fromkeys(wanted))
        for start in range(0, len(unique), _EVENT_ID_CHUNK):
            chunk = unique[start : start + _EVENT_ID_CHUNK]
            marks = ", ".join("?" * len(chunk))
            cursor = await db.execute(
                f"SELECT event_id, data FROM events WHERE work_order_id = ? AND event_id IN ({marks})",
                (work_order_id, *chunk),
            )
            for row in await cursor.fetchall():
                found[(work_order_id, str(row["event_id"]))] = events_pb2.RunEvent.FromString(bytes(row["data"]))
    return found


class _PgTransaction:
    """A psycopg connection in a transaction, taking the `?` SQL the store is written in."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]):
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.AsyncCursor[Any]:
        """Runs one statement; the cursor has `rowcount` and `await fetchone()`."""
        return await self._conn.execute(qmark(sql), tuple(params))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Runs one statement for each row of parameters (one round trip per batch)."""
        async with self._conn.cursor() as cursor:
            await cursor.executemany(qmark(sql), [tuple(row) for row in rows])


class PersistenceStore:
    """Async access to the index. Create with `await PersistenceStore.open(path)` (SQLite)
    or `await PersistenceStore.open(path, database_url)` (PostgreSQL)."""

    def __init__(
        self,
        writer: aiosqlite.Connection | None,
        reader: aiosqlite.Connection | None,
        file: str = "persistence.db",
        pool: AsyncConnectionPool[Any] | None = None,
    ):
        self._writer = writer
        self._reader = reader
        self._pool = pool
        self._write_lock = asyncio.Lock()
        #: The database's file name, for the disk-full message.
        self.file = file
        #: On PostgreSQL other replicas append too (see `EventLog`).
        self.shared = pool is not None
        #: PostgreSQL: tells other replicas' followers about appended events.
        self.replica_id = uuid.uuid4().hex[:12]

    @classmethod
    async def open(cls, path: Path, database_url: str = "") -> PersistenceStore:
        """Opens (creating and migrating) the database: the SQLite file at `path`, or the
        PostgreSQL database at `database_url` when given."""
        if database_url:

            def migrate_now() -> None:
                with psycopg.connect(database_url) as conn:
                    migrate(conn, "persistence", PG_MIGRATIONS)

            await asyncio.to_thread(migrate_now)
            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                database_url,
                min_size=1,
                max_size=POOL_SIZE,
                open=False,
                kwargs={"row_factory": dict_row},
                # A database that is down fails a call in seconds (UNAVAILABLE), not 30.
                timeout=POOL_WAIT_SECONDS,
            )
            await pool.open(wait=True)
            return cls(None, None, "the persistence database", pool=pool)
        writer = await open_database(path, MIGRATIONS)
        try:
            reader = await open_database(path, MIGRATIONS)
        except BaseException:
            await writer.close()
            raise
        return cls(writer, reader, path.name)

    async def close(self) -> None:
        """Closes the connections, after any write in progress has finished."""
        if self._pool is not None:
            await self._pool.close()
            return
        assert self._writer is not None and self._reader is not None
        async with self._write_lock:
            await self._writer.close()
            await self._reader.close()

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Any]:
        if self._pool is not None:
            with unreachable_as_unavailable(self.file):
                async with self._pool.connection() as conn, conn.transaction():
                    yield _PgTransaction(conn)
            return
        assert self._writer is not None
        async with self._write_lock:
            try:
                yield self._writer
                await self._writer.commit()
            except BaseException as exc:
                await self._writer.rollback()
                if is_disk_full(exc):
                    # SQLite rolled the transaction back: nothing of it is stored.
                    raise DiskFull(self.file) from exc
                raise

    async def _pg_fetchall(self, sql: str, params: Sequence[Any]) -> list[Any]:
        assert self._pool is not None
        with unreachable_as_unavailable(self.file):
            async with self._pool.connection() as conn:
                cursor = await conn.execute(qmark(sql), tuple(params))
                return list(await cursor.fetchall())

    async def _fetchall(self, sql: str, params: Sequence[Any]) -> list[Any]:
        if self._pool is not None:
            # Shielded: psycopg answers a cancellation mid-query by cancelling it on the
            # server, which can surface as QueryCanceled or be lost; a reader that goes
            # away (a follower hanging up) gets its CancelledError now, and the read ends
            # on its own.
            return await asyncio.shield(self._pg_fetchall(sql, params))
        assert self._reader is not None
        async with self._reader.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    # -- runs ---------------------------------------------------------------------------

    async def insert_run(self, run: common_pb2.Run) -> bool:
        """Stores a new run; False when its id is taken (nothing changed)."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO runs (id, work_order_id, state, result, created_at, updated_at, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
                (run.id, run.work_order_id, run.state, run.result, created_ns(run), _now(), run.SerializeToString()),
            )
            return cursor.rowcount == 1

    async def replace_run(self, run: common_pb2.Run) -> bool:
        """Replaces a stored run; False when there is none with that id."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE runs SET work_order_id = ?, state = ?, result = ?, created_at = ?,"
                " updated_at = ?, data = ? WHERE id = ?",
                (run.work_order_id, run.state, run.result, created_ns(run), _now(), run.SerializeToString(), run.id),
            )
            return cursor.rowcount == 1

    async def get_run(self, run_id: str) -> common_pb2.Run | None:
        """The run with that id, or None."""
        data = await self.run_data(run_id)
        return common_pb2.Run.FromString(data) if data is not None else None

    async def run_data(self, run_id: str) -> bytes | None:
        """The serialized run with that id, or None."""
        rows = await self._fetchall("SELECT data FROM runs WHERE id = ?", (run_id,))
        return bytes(rows[0]["data"]) if rows else None

    async def list_runs(
        self, work_order_id: str, limit: int, after: PageCursor | None, states: Sequence[int] = ()
    ) -> tuple[list[common_pb2.Run], PageCursor | None]:
        """Up to `limit` runs, newest first, optionally of one work order and of some states,
        after the cursor. Returns them with the cursor of the next page (None on the last page)."""
        where: list[str] = []
        params: list[Any] = []
        wanted = normalize_states(states)
        if work_order_id:
            where.append("work_order_id = ?")
            params.append(work_order_id)
        if wanted:
            where.append(f"state IN ({', '.join('?' for _ in wanted)})")
            params.extend(wanted)
        if after is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            params.extend((after.created_ns, after.created_ns, after.run_id))
        sql = "SELECT id, created_at, data FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        # One extra row tells whether another page exists without a COUNT query.
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(limit + 1)
        rows = await self._fetchall(sql, params)
        runs = [common_pb2.Run.FromString(row["data"]) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = PageCursor(work_order_id, int(last["created_at"]), str(last["id"]), wanted)
        return runs, next_cursor

    async def terminal_runs_finished_before(self, cutoff_ns: int, terminal_states: frozenset[int]) -> list[str]:
        """The ids of runs in `terminal_states` whose finished_at is before `cutoff_ns`."""
        states = sorted(terminal_states)
        rows = await self._fetchall(
            f"SELECT id, data FROM runs WHERE state IN ({', '.join('?' for _ in states)}) ORDER BY created_at",
            states,
        )
        found = []
        for row in rows:
            run = common_pb2.Run.FromString(row["data"])
            if run.HasField("finished_at") and run.finished_at.ToNanoseconds() < cutoff_ns:
                found.append(str(row["id"]))
        return found

    async def delete_run(self, run_id: str) -> None:
        """Removes a run with its results, reports, iterations, patches and events from the index."""
        async with self._transaction() as db:
            for table in ("agent_results", "verification_reports", "iterations", "patches", "events"):
                await db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))  # noqa: S608 - fixed names
            await db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    # -- agent results, verification reports, iterations -----------------------------------

    async def save_agent_result(self, result: common_pb2.AgentResult, file: str) -> bool:
        """Indexes iteration N's agent result (replacing an earlier one); False when the run is unknown."""
        return await self._save(
            "agent_results", result.run_id, result.iteration, file, int(result.success), result.SerializeToString()
        )

    async def save_verification_report(self, report: common_pb2.VerificationReport, file: str) -> bool:
        """Indexes iteration N's verification report; False when the run is unknown."""
        return await self._save(
            "verification_reports",
            report.run_id,
            report.iteration,
            file,
            int(report.passed),
            report.SerializeToString(),
        )

    async def save_iteration(self, iteration: common_pb2.IterationData, file: str) -> bool:
        """Indexes iteration N's data; False when the run is unknown."""
        return await self._save(
            "iterations",
            iteration.run_id,
            iteration.iteration,
            file,
            int(iteration.state),
            iteration.SerializeToString(),
        )

    async def saved_files(self, table: str, run_id: str) -> list[tuple[int, str]]:
        """(iteration, file) pairs indexed for a run in one of the Save* tables."""
        _check_table(table)
        rows = await self._fetchall(
            f"SELECT iteration, file FROM {table} WHERE run_id = ? ORDER BY iteration", (run_id,)
        )
        return [(int(row["iteration"]), str(row["file"])) for row in rows]

    async def record(self, table: str, run_id: str, iteration: int) -> bytes | None:
        """The serialized record of iteration N in one of the Save* tables, or None."""
        _check_table(table)
        rows = await self._fetchall(
            f"SELECT data FROM {table} WHERE run_id = ? AND iteration = ?", (run_id, iteration)
        )
        return bytes(rows[0]["data"]) if rows else None

    async def records(self, table: str, run_id: str) -> list[tuple[int, bytes]]:
        """(iteration, serialized record) of a run in one of the Save* tables, by iteration."""
        _check_table(table)
        rows = await self._fetchall(
            f"SELECT iteration, data FROM {table} WHERE run_id = ? ORDER BY iteration", (run_id,)
        )
        return [(int(row["iteration"]), bytes(row["data"])) for row in rows]

    async def _save(self, table: str, run_id: str, iteration: int, file: str, summary: int, data: bytes) -> bool:
        column = _RESULT_TABLES[table]
        async with self._transaction() as db:
            # Insert only when the run exists, checked inside the same transaction.
            cursor = await db.execute(
                f"INSERT INTO {table} (run_id, iteration, file, {column}, saved_at, data)"
                " SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM runs WHERE id = ?)"
                f" ON CONFLICT (run_id, iteration) DO UPDATE SET file = excluded.file, {column} = excluded.{column},"
                " saved_at = excluded.saved_at, data = excluded.data",
                (run_id, iteration, file, summary, _now(), data, run_id),
            )
            return cursor.rowcount == 1

    # -- patches --------------------------------------------------------------------------

    async def save_patches(self, patches: Sequence[tuple[common_pb2.RunPatch, str]]) -> bool:
        """Indexes patches (each with its file) in one transaction, an iteration's replacing
        the one an earlier attempt stored; False (nothing stored) when the run is unknown."""
        async with self._transaction() as db:
            for patch, file in patches:
                cursor = await db.execute(
                    "INSERT INTO patches (run_id, iteration, file, saved_at, data)"
                    " SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM runs WHERE id = ?)"
                    " ON CONFLICT (run_id, iteration) DO UPDATE SET file = excluded.file,"
                    " saved_at = excluded.saved_at, data = excluded.data",
                    (patch.run_id, patch.iteration, file, _now(), patch.SerializeToString(), patch.run_id),
                )
                if cursor.rowcount != 1:
                    return False
            return True

    async def patch(self, run_id: str, iteration: int) -> common_pb2.RunPatch | None:
        """The patch of iteration N (0 = the cumulative one) of a run, or None."""
        rows = await self._fetchall("SELECT data FROM patches WHERE run_id = ? AND iteration = ?", (run_id, iteration))
        return common_pb2.RunPatch.FromString(bytes(rows[0]["data"])) if rows else None

    # -- events ---------------------------------------------------------------------------

    async def append_events(self, events: Sequence[events_pb2.RunEvent]) -> list[events_pb2.RunEvent]:
        """Stores a batch of events in one transaction, giving each the next seq of its work
        order (from 1). Returns copies of the events with their seq set (see
        `append_events_once` for events already stored)."""
        return (await self.append_events_once(events))[0]

    async def append_events_once(
        self, events: Sequence[events_pb2.RunEvent]
    ) -> tuple[list[events_pb2.RunEvent], list[events_pb2.RunEvent]]:
        """`append_events`, where an event whose (work_order_id, event_id) is already stored
        (a retried append) is not stored again and comes back as stored before. Returns
        (every event with its seq, in order; the events stored by this call)."""
        result: list[events_pb2.RunEvent | None] = [None] * len(events)
        async with self._transaction() as db:
            # Already stored, or twice in this batch: the first copy stands. One query per
            # work order and chunk of ids, not one per event: an append is hundreds of events.
            stored_before = await _stored_by_event_id(db, events)
            seen: dict[tuple[str, str], int] = {}
            fresh: list[int] = []
            for index, event in enumerate(events):
                if event.event_id:
                    key = (event.work_order_id, event.event_id)
                    if key in seen:
                        continue
                    if key in stored_before:
                        result[index] = stored_before[key]
                        continue
                    seen[key] = index
                fresh.append(index)
            counts: dict[str, int] = {}
            for index in fresh:
                counts[events[index].work_order_id] = counts.get(events[index].work_order_id, 0) + 1
            next_seq: dict[str, int] = {}
            # Counters in one order (sorted ids): two replicas appending to the same work
            # orders lock their rows in the same order and cannot deadlock.
            for work_order_id in sorted(counts):
                cursor = await db.execute(
                    "INSERT INTO event_counters (work_order_id, last_seq) VALUES (?, ?) ON CONFLICT (work_order_id)"
                    " DO UPDATE SET last_seq = event_counters.last_seq + excluded.last_seq RETURNING last_seq",
                    (work_order_id, counts[work_order_id]),
                )
                row = await cursor.fetchone()
                assert row is not None
                next_seq[work_order_id] = int(row["last_seq"]) - counts[work_order_id] + 1
            stored: list[events_pb2.RunEvent] = []
            for index in fresh:
                copy = events_pb2.RunEvent()
                copy.CopyFrom(events[index])
                copy.seq = next_seq[copy.work_order_id]
                next_seq[copy.work_order_id] += 1
                result[index] = copy
                stored.append(copy)
            await db.executemany(
                "INSERT INTO events (work_order_id, seq, run_id, type, data, event_id) VALUES (?, ?, ?, ?, ?, ?)",
                [(e.work_order_id, e.seq, e.run_id, e.type, e.SerializeToString(), e.event_id or None) for e in stored],
            )
            for index, event in enumerate(events):
                if result[index] is None:  # the second copy of an id within this batch
                    result[index] = result[seen[(event.work_order_id, event.event_id)]]
            if self._pool is not None:
                # Heard by every replica's listener at commit (EventLog follows them).
                for work_order_id in sorted(counts):
                    last = next_seq[work_order_id] - 1
                    notice = EventNotice(self.replica_id, work_order_id, last - counts[work_order_id] + 1, last)
                    await db.execute("SELECT pg_notify(?, ?)", (EVENTS_CHANNEL, notice.payload()))
        return [event for event in result if event is not None], stored

    async def read_events(
        self, work_order_id: str, after_seq: int, limit: int, up_to_seq: int = MAX_SEQ
    ) -> list[events_pb2.RunEvent]:
        """Up to `limit` events of a work order with after_seq < seq <= up_to_seq, in seq order."""
        rows = await self._fetchall(
            "SELECT data FROM events WHERE work_order_id = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (work_order_id, min(after_seq, MAX_SEQ), min(up_to_seq, MAX_SEQ), limit),
        )
        return [events_pb2.RunEvent.FromString(row["data"]) for row in rows]

    async def has_terminal_event(self, work_order_id: str, up_to_seq: int, run_id: str = "") -> bool:
        """True when the work order's log (of `run_id` only, when given) holds a terminal
        event with seq <= up_to_seq."""
        types = sorted(TERMINAL_EVENT_TYPES)
        sql = f"SELECT 1 FROM events WHERE work_order_id = ? AND seq <= ? AND type IN ({', '.join('?' for _ in types)})"
        params: list[Any] = [work_order_id, min(up_to_seq, MAX_SEQ), *types]
        if run_id:
            sql += " AND run_id = ?"
            params.append(run_id)
        return bool(await self._fetchall(sql + " LIMIT 1", params))

    async def work_order_of_run(self, run_id: str) -> str | None:
        """The work order a run belongs to, from its events or else its run row."""
        rows = await self._fetchall("SELECT work_order_id FROM events WHERE run_id = ? LIMIT 1", (run_id,))
        if not rows:
            rows = await self._fetchall("SELECT work_order_id FROM runs WHERE id = ?", (run_id,))
        return str(rows[0]["work_order_id"]) if rows else None

    async def work_order_known(self, work_order_id: str) -> bool:
        """True when any event or run refers to the work order."""
        rows = await self._fetchall(
            "SELECT 1 FROM events WHERE work_order_id = ? UNION ALL SELECT 1 FROM runs WHERE work_order_id = ? LIMIT 1",
            (work_order_id, work_order_id),
        )
        return bool(rows)


@dataclass(frozen=True)
class EventNotice:
    """What a PostgreSQL append tells other replicas: which replica stored seqs
    first..last of which work order."""

    replica_id: str
    work_order_id: str
    first: int
    last: int

    def payload(self) -> str:
        """The NOTIFY payload (ids never contain spaces: `agentgate.persistence.ids`)."""
        return f"{self.replica_id} {self.work_order_id} {self.first} {self.last}"

    @classmethod
    def parse(cls, payload: str) -> EventNotice | None:
        """The notice in a payload; None for anything else."""
        parts = payload.split(" ")
        if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), int(parts[3]))


def _check_table(table: str) -> None:
    if table not in _RESULT_TABLES:  # the name goes into SQL text
        raise ValueError(f"unknown table {table!r}")


def _now() -> str:
    return utcnow().isoformat()
