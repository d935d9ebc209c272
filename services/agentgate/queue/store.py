"""Durable queue state: work orders, leases and the event outbox in one SQLite file.

Every state change is one transaction, and the events it causes are written to the outbox
in that same transaction (see `agentgate.queue.outbox`). Times are stored as integer
microseconds since the Unix epoch (UTC). Lease order is `priority DESC, seq ASC`, where
`seq` is the submission order; a requeued work order keeps both, so it returns to its old
place.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiosqlite
from google.protobuf.timestamp_pb2 import Timestamp

from agentgate.common import events as event_names
from agentgate.common.errors import FailedPrecondition, NotFound, ResourceExhausted
from agentgate.common.storage import open_database
from agentgate.harness.statuses import TERMINAL_STATUSES
from agentgate.queue import outbox
from agentgate.queue.pending import PendingIndex
from agentgate.v1 import common_pb2, events_pb2

Status = common_pb2.WorkOrderStatus
PENDING = common_pb2.WORK_ORDER_STATUS_PENDING
RUNNING = common_pb2.WORK_ORDER_STATUS_RUNNING
SUCCEEDED = common_pb2.WORK_ORDER_STATUS_SUCCEEDED
FAILED = common_pb2.WORK_ORDER_STATUS_FAILED
CANCELED = common_pb2.WORK_ORDER_STATUS_CANCELED
TIMED_OUT = common_pb2.WORK_ORDER_STATUS_TIMED_OUT

#: What a worker may report in Complete.
COMPLETION_STATUSES = frozenset({SUCCEEDED, FAILED, CANCELED})

MIGRATIONS = [
    """
    CREATE TABLE work_orders (
        id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL UNIQUE,
        status INTEGER NOT NULL,
        priority INTEGER NOT NULL,
        seq INTEGER NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        -- Last time it became PENDING (created_at, or when an expired lease requeued it):
        -- the queue wait limit counts from here.
        enqueued_at INTEGER NOT NULL,
        max_queue_wait_seconds INTEGER NOT NULL DEFAULT 0,
        spec BLOB NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        lease_id TEXT,
        worker_id TEXT NOT NULL DEFAULT '',
        lease_expires_at INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        cancel_reason TEXT NOT NULL DEFAULT '',
        started_at INTEGER,
        finished_at INTEGER,
        error TEXT NOT NULL DEFAULT '',
        traceparent TEXT NOT NULL DEFAULT '',
        trace_id TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX work_orders_lease_order ON work_orders (status, priority DESC, seq);
    CREATE UNIQUE INDEX work_orders_lease_id ON work_orders (lease_id) WHERE lease_id IS NOT NULL;

    -- Every lease ever granted, so a late heartbeat can be told "expired" rather than "unknown".
    CREATE TABLE leases (
        lease_id TEXT PRIMARY KEY,
        work_order_id TEXT NOT NULL REFERENCES work_orders (id),
        worker_id TEXT NOT NULL DEFAULT '',
        attempt INTEGER NOT NULL,
        granted_at INTEGER NOT NULL,
        ended_at INTEGER,
        outcome TEXT NOT NULL DEFAULT 'active'
    );

    -- AUTOINCREMENT: ids are never reused, so "delivered up to id N" stays meaningful.
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        work_order_id TEXT NOT NULL,
        event BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX outbox_work_order ON outbox (work_order_id, id);

    -- Events persistence refused as invalid: kept for inspection, never silently dropped.
    CREATE TABLE outbox_dead (
        id INTEGER PRIMARY KEY,
        work_order_id TEXT NOT NULL,
        event BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        failed_at INTEGER NOT NULL,
        error TEXT NOT NULL
    );
    """,
    """
    -- Position when it (last) became PENDING: with the wait it had, this gives the
    -- seconds one place in the queue takes, for estimates.
    ALTER TABLE work_orders ADD COLUMN queued_position INTEGER NOT NULL DEFAULT 0;
    -- Last position told to persistence (work_order:queued / work_order:position).
    ALTER TABLE work_orders ADD COLUMN reported_position INTEGER NOT NULL DEFAULT 0;
    -- How long the work order waited for this lease, and from which position.
    ALTER TABLE leases ADD COLUMN waited_us INTEGER;
    ALTER TABLE leases ADD COLUMN queued_position INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX leases_granted ON leases (granted_at);
    -- When each waiting work order with a wait limit times out (1 = PENDING): the reaper
    -- finds the next one without reading every waiting work order.
    CREATE INDEX work_orders_wait_deadline ON work_orders (enqueued_at + max_queue_wait_seconds * 1000000)
        WHERE status = 1 AND max_queue_wait_seconds > 0;
    """,
]

# The partial index above, as a query must spell it to use it (a literal status, not a
# bound parameter: SQLite matches a partial index's WHERE at prepare time).
_WAIT_DEADLINE = "enqueued_at + max_queue_wait_seconds * 1000000"
_WITH_WAIT_LIMIT = (
    f"work_orders INDEXED BY work_orders_wait_deadline WHERE status = {PENDING} AND max_queue_wait_seconds > 0"
)

#: How many of the latest leases the wait average and estimates come from.
RECENT_WAITS = 20
#: `work_order:position` is recorded only for the first this many places (see
#: `QueueStore._report_positions`), so a long queue costs O(1) events per change.
POSITION_EVENT_PLACES = 10

LEASE_ACTIVE = "active"
LEASE_COMPLETED = "completed"
LEASE_EXPIRED = "expired"

T = TypeVar("T")


class LeaseExpired(NotFound):
    """The lease existed but expired; its work order went back to the queue (or failed)."""


class QueueFull(ResourceExhausted):
    """`max_queue_size` work orders are already waiting."""

    reason = "QUEUE_FULL"


@dataclass(frozen=True)
class Lease:
    """A work order handed to a worker."""

    work_order: common_pb2.WorkOrder
    lease_id: str
    expires_at_us: int


@dataclass(frozen=True)
class WaitStats:
    """What the latest leases say about waiting: their average wait, and the seconds one
    place in the queue took (total wait / total positions they were queued at). Both None
    until a work order has been leased."""

    average_wait_seconds: float | None = None
    seconds_per_place: float | None = None

    def estimate(self, position: int) -> float | None:
        """Expected wait of a work order now at `position` (None without data)."""
        if self.seconds_per_place is None or position < 1:
            return None
        return position * self.seconds_per_place


@dataclass(frozen=True)
class Position:
    """Where a work order stands: position 1 = next, 0 = running or ended."""

    position: int
    ahead: int
    state: str
    enqueued_at_us: int
    #: Only for a waiting work order, once there is wait data.
    estimated_wait_seconds: float | None = None


@dataclass(frozen=True)
class ReapResult:
    """What one pass of the reaper changed."""

    requeued: int = 0
    failed: int = 0
    canceled: int = 0
    timed_out: int = 0

    @property
    def changed(self) -> bool:
        """True when any work order changed."""
        return bool(self.requeued or self.failed or self.canceled or self.timed_out)


def new_work_order_id() -> str:
    """`wo-` + 12 hex characters."""
    return f"wo-{uuid.uuid4().hex[:12]}"


def new_run_id() -> str:
    """`run-` + 12 hex characters."""
    return f"run-{uuid.uuid4().hex[:12]}"


def timestamp_from_us(micros: int | None) -> Timestamp:
    """A protobuf Timestamp from epoch microseconds (unset when None)."""
    ts = Timestamp()
    if micros is not None:
        ts.FromMicroseconds(micros)
    return ts


def status_name(status: int) -> str:
    """`WORK_ORDER_STATUS_TIMED_OUT` -> `timed_out`."""
    return common_pb2.WorkOrderStatus.Name(status).removeprefix("WORK_ORDER_STATUS_").lower()


class QueueStore:
    """The queue's durable state. One instance per database file; every method is safe to
    call from concurrent tasks.

    Every transaction (and every read) is ONE plain function run on the database thread
    of the aiosqlite connection: one hand-off between the event loop and that thread per
    call, instead of two or three per SQL statement. The thread runs one function at a
    time, so transactions never interleave, and the in-memory `PendingIndex` (waiting
    count and positions) is only touched there, always matching what was committed.
    """

    def __init__(
        self,
        db: aiosqlite.Connection,
        max_lease_attempts: int = 3,
        clock: Callable[[], float] = time.time,
    ):
        self._db = db
        self.max_lease_attempts = max_lease_attempts
        self._clock = clock
        # Per-transaction flags, set by the transaction's functions on the database thread.
        self._events_added = False
        self._work_changed = False
        self._order_changed = False
        self._index_touched = False
        self._new_events: list[tuple[str, int]] = []
        self._delivered_up_to: int | None = None
        #: The waiting work orders in lease order (built by `open`).
        self._pending = PendingIndex()
        #: work_order_id -> id of its newest undelivered outbox event, in ascending id
        #: order (an entry is moved to the end when it gets a newer event), so delivery
        #: prunes it from the front. Lease waits for delivery only when its work order is
        #: here.
        self._undelivered: dict[str, int] = {}
        #: Called after a commit that added outbox events (wakes the forwarder).
        self.on_events: Callable[[], None] | None = None
        #: Called after a commit that may let a Lease succeed: a work order became
        #: PENDING or a run slot was freed (wakes lease long polls). Called from the
        #: committing task itself, so a caller that hangs up cannot swallow the wake-up.
        self.on_work_changed: Callable[[], None] | None = None
        #: Called after a commit that changed the waiting work orders or their order
        #: (submit, lease, cancel, requeue, timeout): wakes WatchPosition streams.
        self.on_order_changed: Callable[[], None] | None = None

    @classmethod
    async def open(cls, path: Path, max_lease_attempts: int = 3, clock: Callable[[], float] = time.time) -> QueueStore:
        """Opens (creating or migrating) the queue database at `path` and builds the
        in-memory index of waiting work orders and undelivered events from it."""
        db = await open_database(path, MIGRATIONS)
        store = cls(db, max_lease_attempts=max_lease_attempts, clock=clock)
        await store._run(store._load_memory)
        return store

    async def close(self) -> None:
        """Closes the database after any transaction in progress (the thread runs queued
        functions in order, so the close comes after them)."""
        await self._db.close()

    def now_us(self) -> int:
        """Now, in epoch microseconds, from the store's clock."""
        return int(self._clock() * 1_000_000)

    # -- transactions -------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        # aiosqlite 0.22 (pinned) runs `fn(*args)` on its connection thread and resolves
        # the future on this loop: one hand-off for the whole function.
        return await self._db._execute(fn, *args)

    @property
    def _conn(self) -> sqlite3.Connection:
        # Only valid on the database thread.
        return self._db._conn

    def _load_memory(self) -> None:
        conn = self._conn
        self._pending = PendingIndex.load(conn, PENDING)
        rows = conn.execute(
            "SELECT work_order_id, MAX(id) AS last FROM outbox GROUP BY work_order_id ORDER BY last"
        ).fetchall()
        self._undelivered = {row[0]: row[1] for row in rows}

    async def _write(self, body: Callable[[sqlite3.Connection, int], T]) -> T:
        # Shielded: a client that hangs up mid-request must not lose the wake-ups of a
        # change that commits regardless (the function runs on the thread to its end).
        return await asyncio.shield(self._write_now(body))

    async def _write_now(self, body: Callable[[sqlite3.Connection, int], T]) -> T:
        result, carried, added, work_changed, order_changed = await self._run(self._transaction, body)
        if added and self.on_events is not None:
            self.on_events()
        if work_changed and self.on_work_changed is not None:
            self.on_work_changed()
        if order_changed and self.on_order_changed is not None:
            self.on_order_changed()
        if carried is not None:
            raise carried
        return result

    def _transaction(
        self, body: Callable[[sqlite3.Connection, int], T]
    ) -> tuple[T | None, Exception | None, bool, bool, bool]:
        """Runs `body` in one IMMEDIATE transaction on the database thread."""
        conn = self._conn
        if conn.in_transaction:
            conn.rollback()
        self._events_added = False
        self._work_changed = False
        self._order_changed = False
        self._index_touched = False
        self._new_events = []
        self._delivered_up_to = None
        conn.execute("BEGIN IMMEDIATE")
        carried: Exception | None = None
        result: T | None = None
        now = self.now_us()
        try:
            try:
                result = body(conn, now)
            except _Committed as committed:
                carried = committed.error
            if self._order_changed:
                self._report_positions(conn, now)
            conn.commit()
        except BaseException:
            conn.rollback()
            if self._index_touched:
                # The index took changes the database just dropped: read it again.
                self._pending = PendingIndex.load(conn, PENDING)
            raise
        if self._delivered_up_to is not None:
            self._forget_delivered(self._delivered_up_to)
        for work_order_id, outbox_id in self._new_events:
            self._undelivered.pop(work_order_id, None)
            self._undelivered[work_order_id] = outbox_id
        return result, carried, self._events_added, self._work_changed, self._order_changed

    def _add_event(self, db: sqlite3.Connection, event: events_pb2.RunEvent, now: int) -> None:
        cursor = db.execute(
            "INSERT INTO outbox (work_order_id, event, created_at) VALUES (?, ?, ?)",
            (event.work_order_id, event.SerializeToString(), now),
        )
        assert cursor.lastrowid is not None
        self._new_events.append((event.work_order_id, cursor.lastrowid))
        self._events_added = True

    def _index_add(self, row: sqlite3.Row, enqueued_at: int) -> int:
        self._index_touched = True
        return self._pending.add(row["id"], row["priority"], row["seq"], enqueued_at)

    def _index_remove(self, work_order_id: str) -> None:
        self._index_touched = True
        self._pending.remove(work_order_id)

    def _report_positions(self, db: sqlite3.Connection, now: int) -> None:
        """Records `work_order:position` for each of the first POSITION_EVENT_PLACES
        waiting work orders whose place differs from the one last recorded for it.

        Why only the first places: every lease moves every waiting work order up one
        place, so an event per change per work order would cost O(n²) events for n
        waiting. Here each change costs at most POSITION_EVENT_PLACES events, and a work
        order gets about that many position events in its life (plus one per time it is
        pushed back by a higher priority). Further back, GetPosition/WatchPosition tell
        the exact place at any time.
        """
        ids = self._pending.first_ids(POSITION_EVENT_PLACES)
        if not ids:
            return
        marks = ", ".join("?" * len(ids))
        rows = db.execute(
            f"SELECT id, run_id, trace_id, reported_position FROM work_orders WHERE id IN ({marks})", ids
        ).fetchall()
        by_id = {row["id"]: row for row in rows}
        for place, work_order_id in enumerate(ids, start=1):
            row = by_id[work_order_id]
            if row["reported_position"] == place:
                continue
            db.execute("UPDATE work_orders SET reported_position = ? WHERE id = ?", (place, work_order_id))
            self._add_event(db, outbox.position_event(work_order_id, row["run_id"], row["trace_id"], place), now)

    # -- work orders --------------------------------------------------------------

    async def submit(
        self,
        spec: common_pb2.WorkOrderSpec,
        max_queue_size: int,
        traceparent: str = "",
        trace_id: str = "",
    ) -> tuple[common_pb2.WorkOrder, int]:
        """Stores a validated spec as a PENDING work order, records `work_order:queued`,
        and returns it with its position. Raises QueueFull when `max_queue_size` wait."""
        spec_bytes = spec.SerializeToString()

        def body(db: sqlite3.Connection, now: int) -> tuple[common_pb2.WorkOrder, int]:
            waiting = len(self._pending)
            if waiting >= max_queue_size:
                raise QueueFull(f"the queue is full: {waiting} work orders waiting (max_queue_size {max_queue_size})")
            seq = _scalar(db, "SELECT COALESCE(MAX(seq), 0) + 1 FROM work_orders", ())
            work_order_id = new_work_order_id()
            position = self._pending.position_for(spec.priority, seq)
            db.execute(
                """INSERT INTO work_orders (id, run_id, status, priority, seq, created_at, enqueued_at,
                       max_queue_wait_seconds, spec, traceparent, trace_id, queued_position, reported_position)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    work_order_id,
                    new_run_id(),
                    PENDING,
                    spec.priority,
                    seq,
                    now,
                    now,
                    spec.max_queue_wait_seconds,
                    spec_bytes,
                    traceparent,
                    trace_id,
                    position,
                    position,
                ),
            )
            row = _row(db, work_order_id)
            assert row is not None
            work_order = _to_work_order(row)
            self._index_add(row, now)
            self._add_event(db, outbox.queued_event(work_order, position), now)
            self._work_changed = True
            self._order_changed = True
            return work_order, position

        return await self._write(body)

    async def get(self, work_order_id: str) -> common_pb2.WorkOrder:
        """One work order; NotFound when unknown."""
        row = await self._run(lambda: _row(self._conn, work_order_id))
        if row is None:
            raise NotFound(f"work order {work_order_id!r} not found")
        return _to_work_order(row)

    async def list_work_orders(
        self, statuses: list[int], page_size: int, before_seq: int | None = None
    ) -> tuple[list[common_pb2.WorkOrder], int | None]:
        """Work orders newest first (optionally only `statuses`), starting below
        `before_seq`; returns the page and the seq to continue from (None at the end)."""
        clauses, params = [], []
        if statuses:
            clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        if before_seq is not None:
            clauses.append("seq < ?")
            params.append(before_seq)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""

        def read() -> list[sqlite3.Row]:
            sql = f"SELECT * FROM work_orders {where} ORDER BY seq DESC LIMIT ?"
            return self._conn.execute(sql, (*params, page_size + 1)).fetchall()

        rows = await self._run(read)
        next_seq = rows[page_size - 1]["seq"] if len(rows) > page_size else None
        return [_to_work_order(row) for row in rows[:page_size]], next_seq

    async def cancel(self, work_order_id: str, reason: str = "") -> common_pb2.WorkOrder:
        """A waiting work order ends CANCELED (with `work_order:canceled`); a running one is
        flagged for its worker. FailedPrecondition when it already ended."""

        def body(db: sqlite3.Connection, now: int) -> common_pb2.WorkOrder:
            row = _row(db, work_order_id)
            if row is None:
                raise NotFound(f"work order {work_order_id!r} not found")
            status = row["status"]
            if status in TERMINAL_STATUSES:
                raise FailedPrecondition(f"work order {work_order_id} already {status_name(status)}")
            if status == RUNNING:
                db.execute(
                    "UPDATE work_orders SET cancel_requested = 1, cancel_reason = ? WHERE id = ?",
                    (reason, work_order_id),
                )
            else:
                self._end(db, row, CANCELED, _cancel_error(reason), now)
                ended = _load(db, work_order_id)
                self._add_event(
                    db, outbox.ended_event(event_names.WORK_ORDER_CANCELED, ended, reason or "canceled"), now
                )
                self._order_changed = True
            return _load(db, work_order_id)

        return await self._write(body)

    def _end(self, db: sqlite3.Connection, row: sqlite3.Row, status: int, error: str, now: int) -> None:
        db.execute(
            """UPDATE work_orders SET status = ?, error = ?, finished_at = ?, lease_id = NULL,
                   lease_expires_at = NULL WHERE id = ?""",
            (status, error, now, row["id"]),
        )
        if row["status"] == PENDING:
            self._index_remove(row["id"])

    # -- leases -------------------------------------------------------------------

    async def lease_next(self, worker_id: str, max_concurrent: int, lease_seconds: int) -> Lease | None:
        """Hands the next PENDING work order (priority, then submission order) to
        `worker_id`, unless none waits or `max_concurrent` already run."""

        def body(db: sqlite3.Connection, now: int) -> Lease | None:
            first = self._pending.first()
            if first is None:
                return None
            running = _scalar(db, "SELECT COUNT(*) FROM work_orders WHERE status = ?", (RUNNING,))
            if running >= max_concurrent:
                return None
            row = _row(db, first)
            assert row is not None and row["status"] == PENDING, first
            lease_id = str(uuid.uuid4())
            expires = now + lease_seconds * 1_000_000
            attempt = row["attempts"] + 1
            db.execute(
                """UPDATE work_orders SET status = ?, attempts = ?, lease_id = ?, worker_id = ?,
                       lease_expires_at = ?, started_at = COALESCE(started_at, ?) WHERE id = ?""",
                (RUNNING, attempt, lease_id, worker_id, expires, now, row["id"]),
            )
            db.execute(
                """INSERT INTO leases (lease_id, work_order_id, worker_id, attempt, granted_at, waited_us,
                       queued_position) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (lease_id, row["id"], worker_id, attempt, now, max(now - row["enqueued_at"], 0),
                 row["queued_position"]),
            )
            self._index_remove(row["id"])
            self._order_changed = True
            return Lease(_load(db, row["id"]), lease_id, expires)

        return await self._write(body)

    async def heartbeat(self, lease_id: str, lease_seconds: int) -> tuple[bool, int]:
        """Extends a live lease by `lease_seconds`; returns (cancel_requested, new expiry).
        NotFound / LeaseExpired when the lease is unknown or no longer live.

        Workers heartbeat often (about every second, so a cancel reaches them fast);
        while a lease still has more than two thirds of its time left, the answer comes
        from a read and nothing is written."""
        now = self.now_us()

        def read() -> tuple[sqlite3.Row | None, sqlite3.Row | None]:
            lease = _lease_row(self._conn, lease_id)
            row = _row(self._conn, lease["work_order_id"]) if lease is not None else None
            return lease, row

        lease, row = await self._run(read)
        if (
            lease is not None
            and row is not None
            and lease["outcome"] == LEASE_ACTIVE
            and row["lease_id"] == lease_id
            and row["status"] == RUNNING
            and row["lease_expires_at"] - now > lease_seconds * 2_000_000 // 3
        ):
            return bool(row["cancel_requested"]), row["lease_expires_at"]

        def body(db: sqlite3.Connection, now: int) -> tuple[bool, int]:
            row = self._live_lease(db, lease_id, now)
            expires = now + lease_seconds * 1_000_000
            db.execute("UPDATE work_orders SET lease_expires_at = ? WHERE id = ?", (expires, row["id"]))
            return bool(row["cancel_requested"]), expires

        return await self._write(body)

    async def complete(self, lease_id: str, status: int, error: str = "") -> common_pb2.WorkOrder:
        """Ends a live lease with the work order's final status (SUCCEEDED, FAILED or
        CANCELED). Completing the same lease again with the same status returns the work
        order unchanged, so a worker may safely retry."""
        if status not in COMPLETION_STATUSES:
            raise ValueError(f"status {status} is not a completion status")

        def body(db: sqlite3.Connection, now: int) -> common_pb2.WorkOrder:
            lease = _lease_row(db, lease_id)
            if lease is not None and lease["outcome"] == LEASE_COMPLETED:
                row = _row(db, lease["work_order_id"])
                if row["status"] == status:
                    return _to_work_order(row)
                raise FailedPrecondition(f"work order {row['id']} already {status_name(row['status'])} by this lease")
            row = self._live_lease(db, lease_id, now)
            reason = error
            if status == CANCELED and not reason:
                reason = _cancel_error(row["cancel_reason"])
            self._end(db, row, status, reason, now)
            db.execute(
                "UPDATE leases SET outcome = ?, ended_at = ? WHERE lease_id = ?", (LEASE_COMPLETED, now, lease_id)
            )
            self._work_changed = True
            return _load(db, row["id"])

        return await self._write(body)

    def _live_lease(self, db: sqlite3.Connection, lease_id: str, now: int) -> sqlite3.Row:
        """The RUNNING work order holding `lease_id`. A lease past its expiry is reaped
        here, in this transaction, so a late worker and the reaper agree on the outcome."""
        lease = _lease_row(db, lease_id)
        if lease is None:
            raise NotFound(f"lease {lease_id!r} not found")
        if lease["outcome"] == LEASE_EXPIRED:
            raise LeaseExpired(f"lease {lease_id} expired")
        if lease["outcome"] != LEASE_ACTIVE:
            raise NotFound(f"lease {lease_id} already ended ({lease['outcome']})")
        row = _row(db, lease["work_order_id"])
        if row is None or row["lease_id"] != lease_id or row["status"] != RUNNING:
            raise NotFound(f"lease {lease_id} no longer holds its work order")
        if row["lease_expires_at"] < now:
            self._expire(db, row, now)
            # The reap must be committed even though the caller gets an error.
            raise _Committed(LeaseExpired(f"lease {lease_id} expired"))
        return row

    def _expire(self, db: sqlite3.Connection, row: sqlite3.Row, now: int) -> str:
        """An expired lease: requeue at the old place, or end the work order when it was
        canceled or has used up its attempts. Returns what happened."""
        db.execute(
            "UPDATE leases SET outcome = ?, ended_at = ? WHERE lease_id = ?", (LEASE_EXPIRED, now, row["lease_id"])
        )
        # Whatever happens next, the run slot is free.
        self._work_changed = True
        if row["cancel_requested"]:
            # The worker died before it could honour the cancel: the user still wants it gone.
            self._end(db, row, CANCELED, _cancel_error(row["cancel_reason"]), now)
            ended = _load(db, row["id"])
            self._add_event(
                db, outbox.ended_event(event_names.WORK_ORDER_CANCELED, ended, row["cancel_reason"] or "canceled"), now
            )
            return "canceled"
        if row["attempts"] >= self.max_lease_attempts:
            error = f"system_error: lease expired {row['attempts']} times (worker lost)"
            self._end(db, row, FAILED, error, now)
            self._add_event(db, outbox.worker_lost_event(_load(db, row["id"])), now)
            return "failed"
        position = self._index_add(row, now)
        db.execute(
            """UPDATE work_orders SET status = ?, lease_id = NULL, lease_expires_at = NULL,
                   worker_id = '', enqueued_at = ?, reported_position = 0, queued_position = ? WHERE id = ?""",
            (PENDING, now, position, row["id"]),
        )
        self._order_changed = True
        return "requeued"

    async def renew_running_leases(self, lease_seconds: int) -> int:
        """Gives every running work order a full lease from now; returns how many.

        Called when the queue service starts: while it was down no worker could
        heartbeat, so a lease that lapsed meanwhile says nothing about its worker. A
        worker that really died is still found out `lease_seconds` later."""

        def body(db: sqlite3.Connection, now: int) -> int:
            cursor = db.execute(
                "UPDATE work_orders SET lease_expires_at = MAX(lease_expires_at, ?) WHERE status = ?",
                (now + lease_seconds * 1_000_000, RUNNING),
            )
            return cursor.rowcount

        return await self._write(body)

    async def reap(self) -> ReapResult:
        """Expires leases past their time and times out work orders that waited longer
        than their `max_queue_wait_seconds`."""

        def body(db: sqlite3.Connection, now: int) -> ReapResult:
            counts = {"requeued": 0, "failed": 0, "canceled": 0, "timed_out": 0}
            expired = db.execute(
                "SELECT * FROM work_orders WHERE status = ? AND lease_expires_at < ? ORDER BY seq", (RUNNING, now)
            ).fetchall()
            for row in expired:
                counts[self._expire(db, row, now)] += 1
            overdue = sorted(
                db.execute(f"SELECT * FROM {_WITH_WAIT_LIMIT} AND {_WAIT_DEADLINE} < ?", (now,)).fetchall(),
                key=lambda row: row["seq"],
            )
            for row in overdue:
                reason = f"waited longer than max_queue_wait_seconds={row['max_queue_wait_seconds']} in the queue"
                self._end(db, row, TIMED_OUT, f"queue_timeout: {reason}", now)
                ended = _load(db, row["id"])
                self._add_event(db, outbox.ended_event(event_names.WORK_ORDER_TIMED_OUT, ended, reason), now)
                counts["timed_out"] += 1
                self._order_changed = True
            return ReapResult(**counts)

        return await self._write(body)

    # -- positions and counts -----------------------------------------------------

    async def position(self, work_order_id: str) -> Position:
        """Where the work order stands in lease order, with its estimated wait."""

        def read() -> Position:
            place = self._pending.position(work_order_id)
            if place is not None:
                enqueued_at = self._pending.enqueued_at(work_order_id)
                assert enqueued_at is not None
                stats = _wait_stats(self._conn)
                return Position(place, place - 1, "waiting", enqueued_at, stats.estimate(place))
            row = _row(self._conn, work_order_id)
            if row is None:
                raise NotFound(f"work order {work_order_id!r} not found")
            return ended_position(row["status"], row["enqueued_at"])

        return await self._run(read)

    async def next_deadline_us(self) -> int | None:
        """The earliest lease expiry or wait limit still ahead of the reaper (None: none)."""

        def read() -> int | None:
            conn = self._conn
            lease_due = _scalar(conn, "SELECT MIN(lease_expires_at) FROM work_orders WHERE status = ?", (RUNNING,))
            wait_due = _scalar(conn, f"SELECT MIN({_WAIT_DEADLINE}) FROM {_WITH_WAIT_LIMIT}", ())
            found = [due for due in (lease_due, wait_due) if due is not None]
            return min(found) if found else None

        return await self._run(read)

    async def waiting_order(self) -> list[tuple[str, int]]:
        """(id, enqueued_at) of every waiting work order, next first."""
        return await self._run(lambda: self._pending.order())

    async def wait_stats(self) -> WaitStats:
        """Average wait and seconds per place of the latest RECENT_WAITS leases."""
        return await self._run(lambda: _wait_stats(self._conn))

    async def counts(self) -> tuple[int, int]:
        """(waiting, running)."""

        def read() -> tuple[int, int]:
            running = _scalar(self._conn, "SELECT COUNT(*) FROM work_orders WHERE status = ?", (RUNNING,))
            return len(self._pending), running

        return await self._run(read)

    async def scan_waiting_order(self) -> list[tuple[str, int]]:
        """The waiting order read from SQLite itself (no index): what the in-memory index
        must always equal. For tests and diagnostics."""

        def read() -> list[tuple[str, int]]:
            rows = self._conn.execute(
                "SELECT id, enqueued_at FROM work_orders WHERE status = ? ORDER BY priority DESC, seq ASC", (PENDING,)
            ).fetchall()
            return [(row["id"], row["enqueued_at"]) for row in rows]

        return await self._run(read)

    # -- outbox -------------------------------------------------------------------

    def undelivered_last_id(self, work_order_id: str) -> int | None:
        """Id of the newest undelivered event of a work order, None when all are
        delivered. From memory: no database call."""
        return self._undelivered.get(work_order_id)

    async def outbox_batch(self, limit: int) -> list[tuple[int, events_pb2.RunEvent]]:
        """The oldest `limit` undelivered events, oldest first."""
        rows = await self._run(
            lambda: self._conn.execute("SELECT id, event FROM outbox ORDER BY id LIMIT ?", (limit,)).fetchall()
        )
        return [(row["id"], events_pb2.RunEvent.FromString(row["event"])) for row in rows]

    async def outbox_last_id(self, work_order_id: str) -> int | None:
        """Id of the newest undelivered event of a work order, None when all are delivered."""
        return self.undelivered_last_id(work_order_id)

    def _forget_delivered(self, up_to_id: int) -> None:
        # Delivery is in id order: every entry at or below `up_to_id` was delivered.
        undelivered = self._undelivered
        while undelivered:
            work_order_id = next(iter(undelivered))
            if undelivered[work_order_id] > up_to_id:
                break
            del undelivered[work_order_id]

    async def outbox_delete(self, ids: list[int]) -> None:
        """Removes delivered events."""

        def body(db: sqlite3.Connection, now: int) -> None:
            db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

            if ids:
                self._delivered_up_to = max(ids)

        await self._write(body)

    async def outbox_dead_letter(self, outbox_id: int, error: str) -> None:
        """Moves an event persistence refused to `outbox_dead`."""

        def body(db: sqlite3.Connection, now: int) -> None:
            db.execute(
                """INSERT INTO outbox_dead (id, work_order_id, event, created_at, failed_at, error)
                   SELECT id, work_order_id, event, created_at, ?, ? FROM outbox WHERE id = ?""",
                (now, error, outbox_id),
            )
            db.execute("DELETE FROM outbox WHERE id = ?", (outbox_id,))
            self._delivered_up_to = outbox_id

        await self._write(body)

    async def outbox_size(self) -> int:
        """How many events wait for delivery."""
        return await self._run(lambda: _scalar(self._conn, "SELECT COUNT(*) FROM outbox", ()))


class _Committed(Exception):
    """Carries an error out of a transaction whose changes must still be committed."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def _scalar(db: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> int:
    row = db.execute(sql, params).fetchone()
    return row[0] if row else 0


def _row(db: sqlite3.Connection, work_order_id: str) -> sqlite3.Row | None:
    return db.execute("SELECT * FROM work_orders WHERE id = ?", (work_order_id,)).fetchone()


def _load(db: sqlite3.Connection, work_order_id: str) -> common_pb2.WorkOrder:
    """A work order known to exist (read back inside the transaction that changed it)."""
    row = _row(db, work_order_id)
    assert row is not None, work_order_id
    return _to_work_order(row)


def _lease_row(db: sqlite3.Connection, lease_id: str) -> sqlite3.Row | None:
    return db.execute("SELECT * FROM leases WHERE lease_id = ?", (lease_id,)).fetchone()


def ended_position(status: int, enqueued_at_us: int) -> Position:
    """The position of a work order that no longer waits: 0, state running or its end."""
    state = "running" if status == RUNNING else status_name(status)
    return Position(0, 0, state, enqueued_at_us)


def _wait_stats(db: sqlite3.Connection) -> WaitStats:
    rows = db.execute(
        """SELECT waited_us, queued_position FROM leases WHERE waited_us IS NOT NULL
               ORDER BY granted_at DESC, rowid DESC LIMIT ?""",
        (RECENT_WAITS,),
    ).fetchall()
    if not rows:
        return WaitStats()
    total_wait = sum(row["waited_us"] for row in rows) / 1_000_000
    # A work order leased at once may have been queued at position 0 by an old schema:
    # count every wait as at least one place.
    places = sum(max(row["queued_position"], 1) for row in rows)
    return WaitStats(total_wait / len(rows), total_wait / places)


def _cancel_error(reason: str) -> str:
    return f"canceled: {reason}" if reason else "canceled"


def _to_work_order(row: sqlite3.Row) -> common_pb2.WorkOrder:
    work_order = common_pb2.WorkOrder(
        id=row["id"],
        run_id=row["run_id"],
        spec=common_pb2.WorkOrderSpec.FromString(row["spec"]),
        status=row["status"],
        attempts=row["attempts"],
        error=row["error"],
        traceparent=row["traceparent"],
        trace_id=row["trace_id"],
    )
    work_order.created_at.CopyFrom(timestamp_from_us(row["created_at"]))
    if row["started_at"] is not None:
        work_order.started_at.CopyFrom(timestamp_from_us(row["started_at"]))
    if row["finished_at"] is not None:
        work_order.finished_at.CopyFrom(timestamp_from_us(row["finished_at"]))
    return work_order
