"""Durable queue state: work orders, leases and the event outbox in one SQLite file, or in
a PostgreSQL database shared by several queue replicas (docs/deployment.md).

Every state change is one transaction, and the events it causes are written to the outbox
in that same transaction (see `agentgate.queue.outbox`). The statements and the schema are
in `agentgate.queue.sql`. Times are stored as integer microseconds since the Unix epoch
(UTC). Lease order is `priority DESC, seq ASC`, where `seq` is the submission order; a
requeued work order keeps both, so it returns to its old place.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from agentgate.common import events as event_names
from agentgate.common.database import PgConnection, advisory_key
from agentgate.common.disk_reserve import DiskReserve
from agentgate.common.errors import (
    DiskFull,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    ServiceError,
    is_disk_full,
)
from agentgate.common.storage import SqliteThread, open_sqlite
from agentgate.harness.statuses import TERMINAL_STATUSES
from agentgate.queue import outbox, sql
from agentgate.queue.pending import PendingIndex, SharedPendingIndex
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

#: How many of the latest leases the wait average and estimates come from.
RECENT_WAITS = 20
#: `work_order:position` is recorded only for the first this many places (see
#: `QueueStore._report_positions`), so a long queue costs O(1) events per change.
POSITION_EVENT_PLACES = 10

LEASE_ACTIVE = "active"
LEASE_COMPLETED = "completed"
LEASE_EXPIRED = "expired"

#: PostgreSQL: every write transaction holds this advisory lock (see `PgConnection.begin`).
WRITE_LOCK = advisory_key("agentgate-queue-write")
#: PostgreSQL: the replica whose connection holds this lock delivers the shared outbox.
OUTBOX_LOCK = advisory_key("agentgate-queue-outbox")
#: PostgreSQL: NOTIFY channel telling every replica what a commit changed (`QueueNotice`).
NOTIFY_CHANNEL = "agentgate_queue"

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


def status_name(status: common_pb2.WorkOrderStatus.ValueType) -> str:
    """`WORK_ORDER_STATUS_TIMED_OUT` -> `timed_out`."""
    return common_pb2.WorkOrderStatus.Name(status).removeprefix("WORK_ORDER_STATUS_").lower()


@dataclass
class Transaction:
    """One write transaction, as its function sees it on the database thread: the
    connection, the time it runs at, and what it changed, which the store acts on after
    the commit (wake-ups, outbox bookkeeping) or after a rollback (the index)."""

    conn: Any
    now: int
    #: A work order became PENDING or a run slot was freed.
    work_changed: bool = False
    #: The waiting work orders or their order changed.
    order_changed: bool = False
    #: The in-memory `PendingIndex` was changed (a rollback must rebuild it).
    index_touched: bool = False
    #: (work_order_id, outbox id) of every event added, in order.
    new_events: list[tuple[str, int]] = field(default_factory=list)
    #: Every outbox event up to this id was delivered.
    delivered_up_to: int | None = None
    #: The caller's error, raised after the commit: the changes made before it stand
    #: (a lease found expired is reaped even though the late worker gets an error).
    error: ServiceError | None = None


class QueueStore:
    """The queue's durable state. One instance per database file; every method is safe to
    call from concurrent tasks.

    Every transaction (and every read) is ONE plain function run on the connection's own
    thread (`SqliteThread`): one hand-off between the event loop and that thread per
    call, instead of two or three per SQL statement. The thread runs one function at a
    time, so transactions never interleave, and the in-memory `PendingIndex` (waiting
    count and positions) is only touched there, always matching what was committed.

    On PostgreSQL (`database_url`) the same functions run on a psycopg connection on that
    thread (`PgConnection`, the same `sqlite3`-like calls). Other replicas write the same
    tables, so each write transaction first takes WRITE_LOCK (writes of all replicas apply
    one at a time, as on one SQLite file), counts and positions come from the database
    (`SharedPendingIndex`), nothing in memory is the record, and each commit NOTIFYs the
    other replicas (`QueueNotice`). The threads and transaction functions are sync by
    design (one hand-off per transaction); psycopg's async API is used where the event
    loop itself waits on the database (LISTEN, and persistence's pool).
    """

    def __init__(
        self,
        db: SqliteThread,
        max_lease_attempts: int = 3,
        clock: Callable[[], float] = time.time,
        dialect: sql.Dialect = sql.SQLITE,
    ):
        self._db = db
        self.max_lease_attempts = max_lease_attempts
        self._clock = clock
        self._sql = dialect
        #: On PostgreSQL other replicas share the database: nothing in this process's
        #: memory is the record of waiting work orders or undelivered events.
        self.shared = dialect is sql.POSTGRES
        #: The waiting work orders in lease order (built by `open`).
        self._pending: PendingIndex | SharedPendingIndex = PendingIndex()
        #: PostgreSQL: the connection generation that holds OUTBOX_LOCK (this replica
        #: delivers the outbox); 0 = none. A new connection has lost the lock.
        self._outbox_owner = 0
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
        #: Room released for a completion that finds the disk full (common/disk_reserve.py).
        self.reserve: DiskReserve | None = None
        #: The database's file name, for the disk-full message.
        self.file = "queue.db"

    @classmethod
    async def open(
        cls,
        path: Path,
        max_lease_attempts: int = 3,
        clock: Callable[[], float] = time.time,
        database_url: str = "",
    ) -> QueueStore:
        """Opens (creating or migrating) the queue database, the SQLite file at `path` or
        the PostgreSQL database at `database_url`, and builds the in-memory index of
        waiting work orders and undelivered events from it (SQLite only)."""
        if database_url:
            db = await SqliteThread.start(
                "queue-postgresql", lambda: PgConnection.connect(database_url, "queue", sql.POSTGRES.migrations)
            )
            store = cls(db, max_lease_attempts=max_lease_attempts, clock=clock, dialect=sql.POSTGRES)
            store.file = "the queue database"
        else:
            db = await SqliteThread.start(f"sqlite-{path.name}", lambda: open_sqlite(path, sql.SQLITE.migrations))
            store = cls(db, max_lease_attempts=max_lease_attempts, clock=clock)
            store.file = path.name
        await db.run(store._load_memory)
        return store

    async def close(self) -> None:
        """Closes the database after any transaction in progress (the thread runs queued
        functions in order, so the close comes after them)."""
        await self._db.close()

    def hear(self, notice: str) -> None:
        """Runs the after-commit callbacks another replica's commit asked for (a
        `QueueNotice` payload heard through LISTEN on PostgreSQL)."""
        if QueueNotice.EVENTS in notice and self.on_events is not None:
            self.on_events()
        if QueueNotice.WORK in notice and self.on_work_changed is not None:
            self.on_work_changed()
        if QueueNotice.ORDER in notice and self.on_order_changed is not None:
            self.on_order_changed()

    def now_us(self) -> int:
        """Now, in epoch microseconds, from the store's clock."""
        return int(self._clock() * 1_000_000)

    # -- transactions -------------------------------------------------------------

    def _load_memory(self, conn: Any) -> None:
        if self.shared:
            self._pending = SharedPendingIndex(conn, PENDING)
            return
        self._pending = PendingIndex.load(conn, PENDING)
        self._undelivered = {row[0]: row[1] for row in conn.execute(sql.UNDELIVERED)}

    async def _write(self, body: Callable[[Transaction], T]) -> T:
        # Shielded: a client that hangs up mid-request must not lose the wake-ups of a
        # change that commits regardless (the function runs on the thread to its end).
        return await asyncio.shield(self._write_now(body))

    async def _write_now(self, body: Callable[[Transaction], T]) -> T:
        try:
            tx, result = await self._db.run(lambda conn: self._transaction(conn, body))
        except (sqlite3.Error, OSError) as exc:
            if is_disk_full(exc):
                # Rolled back: nothing of it is stored.
                raise DiskFull(self.file) from exc
            raise
        if tx.new_events and self.on_events is not None:
            self.on_events()
        if tx.work_changed and self.on_work_changed is not None:
            self.on_work_changed()
        if tx.order_changed and self.on_order_changed is not None:
            self.on_order_changed()
        if tx.error is not None:
            raise tx.error
        return result

    def _transaction(self, conn: Any, body: Callable[[Transaction], T]) -> tuple[Transaction, T]:
        """Runs `body` in one IMMEDIATE transaction on the database thread (on PostgreSQL,
        one holding WRITE_LOCK): committed when it returns, rolled back when it raises."""
        if self.shared:
            conn.begin(WRITE_LOCK)
            # After the lock: the clock reads no earlier than the commits it waited for.
            tx = Transaction(conn, self.now_us())
        else:
            tx = Transaction(conn, self.now_us())
            conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(tx)
            if tx.order_changed:
                self._report_positions(tx)
            if self.shared:
                notice = QueueNotice.of(tx)
                if notice:
                    # Delivered at commit to every replica's listener (`QueueApp`).
                    conn.execute("SELECT pg_notify(?, ?)", (NOTIFY_CHANNEL, notice))
            conn.commit()
        except BaseException:
            conn.rollback()
            if tx.index_touched and not self.shared:
                # The index took changes the database just dropped: read it again.
                self._pending = PendingIndex.load(conn, PENDING)
            raise
        if self.shared:
            return tx, result
        if tx.delivered_up_to is not None:
            self._forget_delivered(tx.delivered_up_to)
        for work_order_id, outbox_id in tx.new_events:
            self._undelivered.pop(work_order_id, None)
            self._undelivered[work_order_id] = outbox_id
        return tx, result

    def _add_event(self, tx: Transaction, event: events_pb2.RunEvent) -> None:
        self._add_events(tx, [event])

    def _add_events(self, tx: Transaction, events: list[events_pb2.RunEvent]) -> None:
        """Records events in the outbox, in order, with one statement."""
        if not events:
            return
        params: list[object] = []
        for event in events:
            # Delivery is at least once; the id lets persistence store a resent event once.
            event.event_id = event.event_id or uuid.uuid4().hex
            params += (event.work_order_id, event.SerializeToString(), tx.now)
        rows = tx.conn.execute(sql.insert_events(len(events)), params).fetchall()
        # Ids grow in insertion order; RETURNING's own row order is not promised.
        outbox_ids = sorted(row[0] for row in rows)
        tx.new_events += [(event.work_order_id, outbox_id) for event, outbox_id in zip(events, outbox_ids, strict=True)]

    def _index_add(self, tx: Transaction, row: Any) -> int:
        tx.index_touched = True
        return self._pending.add(row["id"], row["priority"], row["seq"], tx.now)

    def _index_remove(self, tx: Transaction, work_order_id: str) -> None:
        tx.index_touched = True
        self._pending.remove(work_order_id)

    def _report_positions(self, tx: Transaction) -> None:
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
        rows = tx.conn.execute(sql.reported_positions(len(ids)), ids).fetchall()
        by_id = {row["id"]: row for row in rows}
        moved: list[tuple[int, str]] = []
        for place, work_order_id in enumerate(ids, start=1):
            if by_id[work_order_id]["reported_position"] != place:
                moved.append((place, work_order_id))
        # One statement each for all of them: on PostgreSQL a round trip is the cost
        # (psycopg pipelines executemany), and a lease moves up to ten work orders.
        tx.conn.executemany(sql.SET_REPORTED_POSITION, moved)
        events = []
        for place, work_order_id in moved:
            row = by_id[work_order_id]
            events.append(outbox.position_event(work_order_id, row["run_id"], row["trace_id"], place))
        self._add_events(tx, events)

    # -- work orders --------------------------------------------------------------

    async def submit(
        self,
        spec: common_pb2.WorkOrderSpec,
        max_queue_size: int,
        traceparent: str = "",
        trace_id: str = "",
        idempotency_key: str = "",
    ) -> tuple[common_pb2.WorkOrder, int]:
        """Stores a validated spec as a PENDING work order, records `work_order:queued`,
        and returns it with its position. Raises QueueFull when `max_queue_size` wait.
        With an `idempotency_key` already used, returns that work order (position 0 once
        it no longer waits) and changes nothing."""
        spec_bytes = spec.SerializeToString()

        def body(tx: Transaction) -> tuple[common_pb2.WorkOrder, int]:
            if idempotency_key:
                known = tx.conn.execute(sql.WORK_ORDER_BY_KEY, (idempotency_key,)).fetchone()
                if known is not None:
                    return _to_work_order(known), self._pending.position(known["id"]) or 0
            waiting = len(self._pending)
            if waiting >= max_queue_size:
                raise QueueFull(f"the queue is full: {waiting} work orders waiting (max_queue_size {max_queue_size})")
            seq = _scalar(tx.conn, sql.NEXT_SEQ, ())
            work_order_id = new_work_order_id()
            position = self._pending.position_for(spec.priority, seq)
            tx.conn.execute(
                sql.INSERT_WORK_ORDER,
                (
                    work_order_id,
                    new_run_id(),
                    PENDING,
                    spec.priority,
                    seq,
                    tx.now,
                    tx.now,
                    spec.max_queue_wait_seconds,
                    spec_bytes,
                    traceparent,
                    trace_id,
                    position,
                    position,
                    idempotency_key or None,
                ),
            )
            row = _row(tx.conn, work_order_id)
            assert row is not None
            work_order = _to_work_order(row)
            self._index_add(tx, row)
            self._add_event(tx, outbox.queued_event(work_order, position))
            tx.work_changed = True
            tx.order_changed = True
            return work_order, position

        return await self._write(body)

    async def get(self, work_order_id: str) -> common_pb2.WorkOrder:
        """One work order; NotFound when unknown."""
        row = await self._db.run(lambda conn: _row(conn, work_order_id))
        if row is None:
            raise NotFound(f"work order {work_order_id!r} not found")
        return _to_work_order(row)

    async def list_work_orders(
        self, statuses: list[int], page_size: int, before_seq: int | None = None
    ) -> tuple[list[common_pb2.WorkOrder], int | None]:
        """Work orders newest first (optionally only `statuses`), starting below
        `before_seq`; returns the page and the seq to continue from (None at the end)."""
        query = sql.list_work_orders(len(statuses), before_seq is not None)
        params = [*statuses, *([] if before_seq is None else [before_seq]), page_size + 1]
        rows = await self._db.run(lambda conn: conn.execute(query, params).fetchall())
        next_seq = rows[page_size - 1]["seq"] if len(rows) > page_size else None
        return [_to_work_order(row) for row in rows[:page_size]], next_seq

    async def cancel(self, work_order_id: str, reason: str = "") -> common_pb2.WorkOrder:
        """A waiting work order ends CANCELED (with `work_order:canceled`); a running one is
        flagged for its worker. FailedPrecondition when it already ended."""

        def body(tx: Transaction) -> common_pb2.WorkOrder:
            row = _row(tx.conn, work_order_id)
            if row is None:
                raise NotFound(f"work order {work_order_id!r} not found")
            status = row["status"]
            if status in TERMINAL_STATUSES:
                raise FailedPrecondition(f"work order {work_order_id} already {status_name(status)}")
            if status == RUNNING:
                tx.conn.execute(sql.REQUEST_CANCEL, (reason, work_order_id))
            else:
                self._end(tx, row, CANCELED, _cancel_error(reason))
                ended = _load(tx.conn, work_order_id)
                self._add_event(tx, outbox.ended_event(event_names.WORK_ORDER_CANCELED, ended, reason or "canceled"))
                tx.order_changed = True
            return _load(tx.conn, work_order_id)

        return await self._write(body)

    def _end(self, tx: Transaction, row: Any, status: int, error: str) -> None:
        tx.conn.execute(sql.END_WORK_ORDER, (status, error, tx.now, row["id"]))
        if row["status"] == PENDING:
            self._index_remove(tx, row["id"])

    # -- leases -------------------------------------------------------------------

    async def lease_next(self, worker_id: str, max_concurrent: int, lease_seconds: int) -> Lease | None:
        """Hands the next PENDING work order (priority, then submission order) to
        `worker_id`, unless none waits or `max_concurrent` already run."""

        def body(tx: Transaction) -> Lease | None:
            first = self._pending.first()
            if first is None:
                return None
            running = _scalar(tx.conn, sql.COUNT_WITH_STATUS, (RUNNING,))
            if running >= max_concurrent:
                return None
            row = _row(tx.conn, first)
            assert row is not None and row["status"] == PENDING, first
            lease_id = str(uuid.uuid4())
            now = tx.now
            expires = now + lease_seconds * 1_000_000
            attempt = row["attempts"] + 1
            tx.conn.execute(sql.START_LEASE, (RUNNING, attempt, lease_id, worker_id, expires, now, row["id"]))
            tx.conn.execute(
                sql.INSERT_LEASE,
                (lease_id, row["id"], worker_id, attempt, now, max(now - row["enqueued_at"], 0),
                 row["queued_position"]),
            )
            self._index_remove(tx, row["id"])
            tx.order_changed = True
            return Lease(_load(tx.conn, row["id"]), lease_id, expires)

        return await self._write(body)

    async def heartbeat(self, lease_id: str, lease_seconds: int) -> tuple[bool, int]:
        """Extends a live lease by `lease_seconds`; returns (cancel_requested, new expiry).
        NotFound / LeaseExpired when the lease is unknown or no longer live.

        Workers heartbeat often (about every second, so a cancel reaches them fast);
        while a lease still has more than two thirds of its time left, the answer comes
        from a read and nothing is written."""
        now = self.now_us()

        def read(conn: Any) -> tuple[Any, Any]:
            lease = _lease_row(conn, lease_id)
            row = _row(conn, lease["work_order_id"]) if lease is not None else None
            return lease, row

        lease, row = await self._db.run(read)
        if (
            lease is not None
            and row is not None
            and lease["outcome"] == LEASE_ACTIVE
            and row["lease_id"] == lease_id
            and row["status"] == RUNNING
            and row["lease_expires_at"] - now > lease_seconds * 2_000_000 // 3
        ):
            return bool(row["cancel_requested"]), row["lease_expires_at"]

        def body(tx: Transaction) -> tuple[bool, int] | None:
            row = self._live_lease(tx, lease_id)
            if row is None:
                return None
            expires = tx.now + lease_seconds * 1_000_000
            tx.conn.execute(sql.EXTEND_LEASE, (expires, row["id"]))
            return bool(row["cancel_requested"]), expires

        extended = await self._write(body)
        assert extended is not None  # None only with `tx.error`, which `_write` raised
        return extended

    async def complete(self, lease_id: str, status: int, error: str = "") -> common_pb2.WorkOrder:
        """Ends a live lease with the work order's final status (SUCCEEDED, FAILED or
        CANCELED). Completing the same lease again with the same status returns the work
        order unchanged, so a worker may safely retry."""
        if status not in COMPLETION_STATUSES:
            raise ValueError(f"status {status} is not a completion status")

        def body(tx: Transaction) -> common_pb2.WorkOrder | None:
            lease = _lease_row(tx.conn, lease_id)
            if lease is not None and lease["outcome"] == LEASE_COMPLETED:
                row = _row(tx.conn, lease["work_order_id"])
                assert row is not None  # a lease's work order is never deleted
                if row["status"] == status:
                    return _to_work_order(row)
                raise FailedPrecondition(f"work order {row['id']} already {status_name(row['status'])} by this lease")
            row = self._live_lease(tx, lease_id)
            if row is None:
                return None
            reason = error
            if status == CANCELED and not reason:
                reason = _cancel_error(row["cancel_reason"])
            self._end(tx, row, status, reason)
            tx.conn.execute(sql.END_LEASE, (LEASE_COMPLETED, tx.now, lease_id))
            tx.work_changed = True
            return _load(tx.conn, row["id"])

        try:
            completed = await self._write(body)
        except DiskFull:
            # The end of a work order is what the reserve is for: without it the work
            # order would read RUNNING, and `exec` wait, until its lease ran out.
            if self.reserve is None or not await self.reserve.release():
                raise
            completed = await self._write(body)
        assert completed is not None  # None only with `tx.error`, which `_write` raised
        return completed

    def _live_lease(self, tx: Transaction, lease_id: str) -> Any:
        """The RUNNING work order holding `lease_id`. A lease past its expiry is reaped
        here, in this transaction, so a late worker and the reaper agree on the outcome:
        then None, and the caller gets LeaseExpired after the commit (`tx.error`)."""
        lease = _lease_row(tx.conn, lease_id)
        if lease is None:
            raise NotFound(f"lease {lease_id!r} not found")
        if lease["outcome"] == LEASE_EXPIRED:
            raise LeaseExpired(f"lease {lease_id} expired")
        if lease["outcome"] != LEASE_ACTIVE:
            raise NotFound(f"lease {lease_id} already ended ({lease['outcome']})")
        row = _row(tx.conn, lease["work_order_id"])
        if row is None or row["lease_id"] != lease_id or row["status"] != RUNNING:
            raise NotFound(f"lease {lease_id} no longer holds its work order")
        if row["lease_expires_at"] < tx.now:
            self._expire(tx, row)
            tx.error = LeaseExpired(f"lease {lease_id} expired")
            return None
        return row

    def _expire(self, tx: Transaction, row: Any) -> str:
        """An expired lease: requeue at the old place, or end the work order when it was
        canceled or has used up its attempts. Returns what happened."""
        tx.conn.execute(sql.END_LEASE, (LEASE_EXPIRED, tx.now, row["lease_id"]))
        # Whatever happens next, the run slot is free.
        tx.work_changed = True
        if row["cancel_requested"]:
            # The worker died before it could honour the cancel: the user still wants it gone.
            self._end(tx, row, CANCELED, _cancel_error(row["cancel_reason"]))
            ended = _load(tx.conn, row["id"])
            self._add_event(
                tx, outbox.ended_event(event_names.WORK_ORDER_CANCELED, ended, row["cancel_reason"] or "canceled")
            )
            return "canceled"
        if row["attempts"] >= self.max_lease_attempts:
            error = f"system_error: lease expired {row['attempts']} times (worker lost)"
            self._end(tx, row, FAILED, error)
            self._add_event(tx, outbox.worker_lost_event(_load(tx.conn, row["id"])))
            return "failed"
        position = self._index_add(tx, row)
        tx.conn.execute(sql.REQUEUE, (PENDING, tx.now, position, row["id"]))
        tx.order_changed = True
        return "requeued"

    async def renew_running_leases(self, lease_seconds: int) -> int:
        """Gives every running work order a full lease from now; returns how many.

        Called when the queue service starts: while it was down no worker could
        heartbeat, so a lease that lapsed meanwhile says nothing about its worker. A
        worker that really died is still found out `lease_seconds` later."""

        def body(tx: Transaction) -> int:
            return tx.conn.execute(self._sql.renew_leases, (tx.now + lease_seconds * 1_000_000, RUNNING)).rowcount

        return await self._write(body)

    async def reap(self) -> ReapResult:
        """Expires leases past their time and times out work orders that waited longer
        than their `max_queue_wait_seconds`."""

        def body(tx: Transaction) -> ReapResult:
            counts = {"requeued": 0, "failed": 0, "canceled": 0, "timed_out": 0}
            for row in tx.conn.execute(sql.EXPIRED_LEASES, (RUNNING, tx.now)).fetchall():
                counts[self._expire(tx, row)] += 1
            overdue = sorted(tx.conn.execute(self._sql.overdue_waits, (tx.now,)).fetchall(), key=lambda row: row["seq"])
            for row in overdue:
                reason = f"waited longer than max_queue_wait_seconds={row['max_queue_wait_seconds']} in the queue"
                self._end(tx, row, TIMED_OUT, f"queue_timeout: {reason}")
                ended = _load(tx.conn, row["id"])
                self._add_event(tx, outbox.ended_event(event_names.WORK_ORDER_TIMED_OUT, ended, reason))
                counts["timed_out"] += 1
                tx.order_changed = True
            return ReapResult(**counts)

        return await self._write(body)

    # -- positions and counts -----------------------------------------------------

    async def position(self, work_order_id: str) -> Position:
        """Where the work order stands in lease order, with its estimated wait."""

        def read(conn: Any) -> Position:
            place = self._pending.position(work_order_id)
            if place is not None:
                enqueued_at = self._pending.enqueued_at(work_order_id)
                assert enqueued_at is not None
                stats = _wait_stats(conn)
                return Position(place, place - 1, "waiting", enqueued_at, stats.estimate(place))
            row = _row(conn, work_order_id)
            if row is None:
                raise NotFound(f"work order {work_order_id!r} not found")
            return ended_position(row["status"], row["enqueued_at"])

        return await self._db.run(read)

    async def next_deadline_us(self) -> int | None:
        """The earliest lease expiry or wait limit still ahead of the reaper (None: none)."""

        def read(conn: Any) -> int | None:
            lease_due = _scalar(conn, sql.NEXT_LEASE_EXPIRY, (RUNNING,))
            wait_due = _scalar(conn, self._sql.next_wait_deadline, ())
            found = [due for due in (lease_due, wait_due) if due is not None]
            return min(found) if found else None

        return await self._db.run(read)

    async def waiting_order(self) -> list[tuple[str, int]]:
        """(id, enqueued_at) of every waiting work order, next first."""
        return await self._db.run(lambda conn: self._pending.order())

    async def wait_stats(self) -> WaitStats:
        """Average wait and seconds per place of the latest RECENT_WAITS leases."""
        return await self._db.run(_wait_stats)

    async def counts(self) -> tuple[int, int]:
        """(waiting, running)."""

        def read(conn: Any) -> tuple[int, int]:
            return len(self._pending), _scalar(conn, sql.COUNT_WITH_STATUS, (RUNNING,))

        return await self._db.run(read)

    # -- outbox -------------------------------------------------------------------

    def undelivered_last_id(self, work_order_id: str) -> int | None:
        """Id of the newest undelivered event of a work order, None when all are
        delivered. From memory: no database call (SQLite only; see `undelivered_now`)."""
        return self._undelivered.get(work_order_id)

    async def undelivered_now(self, work_order_id: str) -> int | None:
        """`undelivered_last_id` read from the database: on PostgreSQL the outbox is
        shared and another replica may be the one delivering it."""
        return await self._db.run(lambda conn: conn.execute(sql.UNDELIVERED_OF, (work_order_id,)).fetchone()[0])

    async def outbox_batch(self, limit: int) -> list[tuple[int, events_pb2.RunEvent]]:
        """The oldest `limit` undelivered events, oldest first. On PostgreSQL only the
        replica holding OUTBOX_LOCK delivers (one at a time keeps the order; the lock
        passes to another replica when its holder's connection ends): [] elsewhere."""

        def read(conn: Any) -> list[Any]:
            if self.shared and self._outbox_owner != conn.generation:
                if not conn.execute("SELECT pg_try_advisory_lock(?)", (OUTBOX_LOCK,)).fetchone()[0]:
                    return []
                self._outbox_owner = conn.generation
            return list(conn.execute(sql.OUTBOX_BATCH, (limit,)).fetchall())

        rows = await self._db.run(read)
        return [(row["id"], events_pb2.RunEvent.FromString(row["event"])) for row in rows]

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

        def body(tx: Transaction) -> None:
            tx.conn.executemany(sql.DELETE_EVENT, [(i,) for i in ids])
            if ids:
                tx.delivered_up_to = max(ids)

        await self._write(body)

    async def outbox_dead_letter(self, outbox_id: int, error: str) -> None:
        """Moves an event persistence refused to `outbox_dead`."""

        def body(tx: Transaction) -> None:
            tx.conn.execute(sql.DEAD_LETTER, (tx.now, error, outbox_id))
            tx.conn.execute(sql.DELETE_EVENT, (outbox_id,))
            tx.delivered_up_to = outbox_id

        await self._write(body)


def _scalar(db: Any, query: str, params: tuple[object, ...]) -> int:
    row = db.execute(query, params).fetchone()
    return row[0] if row else 0


def _row(db: Any, work_order_id: str) -> Any:
    return db.execute(sql.WORK_ORDER, (work_order_id,)).fetchone()


def _load(db: Any, work_order_id: str) -> common_pb2.WorkOrder:
    """A work order known to exist (read back inside the transaction that changed it)."""
    row = _row(db, work_order_id)
    assert row is not None, work_order_id
    return _to_work_order(row)


def _lease_row(db: Any, lease_id: str) -> Any:
    return db.execute(sql.LEASE, (lease_id,)).fetchone()


def ended_position(status: common_pb2.WorkOrderStatus.ValueType, enqueued_at_us: int) -> Position:
    """The position of a work order that no longer waits: 0, state running or its end."""
    state = "running" if status == RUNNING else status_name(status)
    return Position(0, 0, state, enqueued_at_us)


def _wait_stats(db: Any) -> WaitStats:
    rows = db.execute(sql.LATEST_WAITS, (RECENT_WAITS,)).fetchall()
    if not rows:
        return WaitStats()
    total_wait = sum(row["waited_us"] for row in rows) / 1_000_000
    # A work order leased at once may have been queued at position 0 by an old schema:
    # count every wait as at least one place.
    places = sum(max(row["queued_position"], 1) for row in rows)
    return WaitStats(total_wait / len(rows), total_wait / places)


def _cancel_error(reason: str) -> str:
    return f"canceled: {reason}" if reason else "canceled"


def _to_work_order(row: Any) -> common_pb2.WorkOrder:
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


class QueueNotice:
    """The payload of a PostgreSQL NOTIFY on NOTIFY_CHANNEL: which of the store's
    after-commit callbacks the other replicas should run ("w" work changed, "o" order
    changed, "e" new outbox events)."""

    WORK = "w"
    ORDER = "o"
    EVENTS = "e"

    @staticmethod
    def of(tx: Transaction) -> str:
        """The letters for what `tx` changed ('' when nothing another replica cares about)."""
        return (
            (QueueNotice.WORK if tx.work_changed else "")
            + (QueueNotice.ORDER if tx.order_changed else "")
            + (QueueNotice.EVENTS if tx.new_events else "")
        )
