"""The queue's SQL: the schema migrations and every statement `agentgate.queue.store`
runs, so the store holds the queue's rules and this module the database's spelling of them.

Statements are written once, with `?` placeholders, in the SQL that SQLite and PostgreSQL
share; the few that differ are in a `Dialect` (`SQLITE`, `POSTGRES`), and so are the
migrations (PostgreSQL's start at the schema SQLite reached in two steps).

Times are integer microseconds since the Unix epoch (UTC). Statuses are bound as parameters
(`agentgate.v1.WorkOrderStatus` numbers), except where a partial index needs a literal.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentgate.v1 import common_pb2

_PENDING = common_pb2.WORK_ORDER_STATUS_PENDING

# Submit's idempotency key (SubmitRequest.idempotency_key): one work order per key.
_IDEMPOTENCY_KEYS = """
    ALTER TABLE work_orders ADD COLUMN idempotency_key TEXT;
    CREATE UNIQUE INDEX work_orders_idempotency_key ON work_orders (idempotency_key)
        WHERE idempotency_key IS NOT NULL;
"""

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
    _IDEMPOTENCY_KEYS,
]

PG_MIGRATIONS = [
    """
    CREATE TABLE work_orders (
        id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL UNIQUE,
        status INTEGER NOT NULL,
        priority INTEGER NOT NULL,
        seq BIGINT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL,
        enqueued_at BIGINT NOT NULL,
        max_queue_wait_seconds BIGINT NOT NULL DEFAULT 0,
        spec BYTEA NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        lease_id TEXT,
        worker_id TEXT NOT NULL DEFAULT '',
        lease_expires_at BIGINT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        cancel_reason TEXT NOT NULL DEFAULT '',
        started_at BIGINT,
        finished_at BIGINT,
        error TEXT NOT NULL DEFAULT '',
        traceparent TEXT NOT NULL DEFAULT '',
        trace_id TEXT NOT NULL DEFAULT '',
        queued_position INTEGER NOT NULL DEFAULT 0,
        reported_position INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX work_orders_lease_order ON work_orders (status, priority DESC, seq);
    CREATE UNIQUE INDEX work_orders_lease_id ON work_orders (lease_id) WHERE lease_id IS NOT NULL;
    CREATE INDEX work_orders_wait_deadline ON work_orders ((enqueued_at + max_queue_wait_seconds * 1000000))
        WHERE status = 1 AND max_queue_wait_seconds > 0;

    CREATE TABLE leases (
        -- SQLite's implicit rowid, spelled out: the grant order of leases with equal times.
        rowid BIGSERIAL,
        lease_id TEXT PRIMARY KEY,
        work_order_id TEXT NOT NULL REFERENCES work_orders (id),
        worker_id TEXT NOT NULL DEFAULT '',
        attempt INTEGER NOT NULL,
        granted_at BIGINT NOT NULL,
        ended_at BIGINT,
        outcome TEXT NOT NULL DEFAULT 'active',
        waited_us BIGINT,
        queued_position INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX leases_granted ON leases (granted_at);

    CREATE TABLE outbox (
        id BIGSERIAL PRIMARY KEY,
        work_order_id TEXT NOT NULL,
        event BYTEA NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX outbox_work_order ON outbox (work_order_id, id);

    CREATE TABLE outbox_dead (
        id BIGINT PRIMARY KEY,
        work_order_id TEXT NOT NULL,
        event BYTEA NOT NULL,
        created_at BIGINT NOT NULL,
        failed_at BIGINT NOT NULL,
        error TEXT NOT NULL
    );
    """,
    _IDEMPOTENCY_KEYS,
]

_WAIT_DEADLINE = "enqueued_at + max_queue_wait_seconds * 1000000"
# The partial index above, as a query must spell it to use it (a literal status, not a
# bound parameter: SQLite matches a partial index's WHERE at prepare time).
_WAIT_LIMITED = f"status = {_PENDING} AND max_queue_wait_seconds > 0"


@dataclass(frozen=True)
class Dialect:
    """What differs between the backends: migrations and a few statements."""

    name: str
    migrations: list[str]
    #: Every RUNNING lease expires no sooner than the bound time (binds: time, status).
    renew_leases: str
    #: Waiting work orders past their wait limit (binds: now).
    overdue_waits: str
    #: The earliest wait limit of a waiting work order.
    next_wait_deadline: str


SQLITE = Dialect(
    "sqlite",
    MIGRATIONS,
    renew_leases="UPDATE work_orders SET lease_expires_at = MAX(lease_expires_at, ?) WHERE status = ?",
    overdue_waits=f"SELECT * FROM work_orders INDEXED BY work_orders_wait_deadline WHERE {_WAIT_LIMITED}"
    f" AND {_WAIT_DEADLINE} < ?",
    next_wait_deadline=f"SELECT MIN({_WAIT_DEADLINE}) FROM work_orders INDEXED BY work_orders_wait_deadline"
    f" WHERE {_WAIT_LIMITED}",
)

POSTGRES = Dialect(
    "postgresql",
    PG_MIGRATIONS,
    renew_leases="UPDATE work_orders SET lease_expires_at = GREATEST(lease_expires_at, ?) WHERE status = ?",
    overdue_waits=f"SELECT * FROM work_orders WHERE {_WAIT_LIMITED} AND {_WAIT_DEADLINE} < ?",
    next_wait_deadline=f"SELECT MIN({_WAIT_DEADLINE}) FROM work_orders WHERE {_WAIT_LIMITED}",
)


# -- work orders ------------------------------------------------------------------

WORK_ORDER = "SELECT * FROM work_orders WHERE id = ?"
WORK_ORDER_BY_KEY = "SELECT * FROM work_orders WHERE idempotency_key = ?"
COUNT_WITH_STATUS = "SELECT COUNT(*) FROM work_orders WHERE status = ?"
NEXT_SEQ = "SELECT COALESCE(MAX(seq), 0) + 1 FROM work_orders"
INSERT_WORK_ORDER = """INSERT INTO work_orders (id, run_id, status, priority, seq, created_at, enqueued_at,
       max_queue_wait_seconds, spec, traceparent, trace_id, queued_position, reported_position, idempotency_key)
   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
REQUEST_CANCEL = "UPDATE work_orders SET cancel_requested = 1, cancel_reason = ? WHERE id = ?"
END_WORK_ORDER = """UPDATE work_orders SET status = ?, error = ?, finished_at = ?, lease_id = NULL,
       lease_expires_at = NULL WHERE id = ?"""
START_LEASE = """UPDATE work_orders SET status = ?, attempts = ?, lease_id = ?, worker_id = ?,
       lease_expires_at = ?, started_at = COALESCE(started_at, ?) WHERE id = ?"""
EXTEND_LEASE = "UPDATE work_orders SET lease_expires_at = ? WHERE id = ?"
REQUEUE = """UPDATE work_orders SET status = ?, lease_id = NULL, lease_expires_at = NULL,
       worker_id = '', enqueued_at = ?, reported_position = 0, queued_position = ? WHERE id = ?"""
EXPIRED_LEASES = "SELECT * FROM work_orders WHERE status = ? AND lease_expires_at < ? ORDER BY seq"
NEXT_LEASE_EXPIRY = "SELECT MIN(lease_expires_at) FROM work_orders WHERE status = ?"
SET_REPORTED_POSITION = "UPDATE work_orders SET reported_position = ? WHERE id = ?"


def reported_positions(count: int) -> str:
    """Run id, trace id and last reported position of `count` work orders (ids bound)."""
    marks = ", ".join("?" * count)
    return f"SELECT id, run_id, trace_id, reported_position FROM work_orders WHERE id IN ({marks})"


def list_work_orders(statuses: int, before_seq: bool) -> str:
    """A page of work orders, newest first. Binds `statuses` status values (none: any
    status), then the seq to start below when `before_seq`, then the row limit."""
    clauses = []
    if statuses:
        clauses.append(f"status IN ({', '.join('?' * statuses)})")
    if before_seq:
        clauses.append("seq < ?")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return f"SELECT * FROM work_orders {where} ORDER BY seq DESC LIMIT ?"


# -- leases -----------------------------------------------------------------------

LEASE = "SELECT * FROM leases WHERE lease_id = ?"
INSERT_LEASE = """INSERT INTO leases (lease_id, work_order_id, worker_id, attempt, granted_at, waited_us,
       queued_position) VALUES (?, ?, ?, ?, ?, ?, ?)"""
END_LEASE = "UPDATE leases SET outcome = ?, ended_at = ? WHERE lease_id = ?"
LATEST_WAITS = """SELECT waited_us, queued_position FROM leases WHERE waited_us IS NOT NULL
       ORDER BY granted_at DESC, rowid DESC LIMIT ?"""

# -- the waiting order, asked of the database (PostgreSQL: shared by every replica) ---

PENDING_COUNT_AHEAD = """SELECT COUNT(*) FROM work_orders WHERE status = ?
       AND (priority > ? OR (priority = ? AND seq < ?))"""
PENDING_ENTRY = "SELECT priority, seq, enqueued_at FROM work_orders WHERE id = ? AND status = ?"
PENDING_ORDER = "SELECT id, enqueued_at FROM work_orders WHERE status = ? ORDER BY priority DESC, seq ASC"
PENDING_FIRST = "SELECT id FROM work_orders WHERE status = ? ORDER BY priority DESC, seq ASC LIMIT ?"

# -- outbox -----------------------------------------------------------------------

def insert_events(count: int) -> str:
    """Adds `count` outbox events (binds work_order_id, event, created_at of each), returning their ids."""
    values = ", ".join(["(?, ?, ?)"] * count)
    return f"INSERT INTO outbox (work_order_id, event, created_at) VALUES {values} RETURNING id"


#: The newest undelivered event of one work order (None when all are delivered).
UNDELIVERED_OF = "SELECT MAX(id) FROM outbox WHERE work_order_id = ?"
#: Per work order, the id of its newest undelivered event, oldest of those first.
UNDELIVERED = "SELECT work_order_id, MAX(id) AS last FROM outbox GROUP BY work_order_id ORDER BY last"
OUTBOX_BATCH = "SELECT id, event FROM outbox ORDER BY id LIMIT ?"
DELETE_EVENT = "DELETE FROM outbox WHERE id = ?"
DEAD_LETTER = """INSERT INTO outbox_dead (id, work_order_id, event, created_at, failed_at, error)
   SELECT id, work_order_id, event, created_at, ?, ? FROM outbox WHERE id = ?"""
