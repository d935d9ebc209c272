"""Reads of the queue's database for tests: what `QueueStore` keeps must match them; and
one write, an outbox event the queue's own API never records (`outbox_add`).

Each opens its own connection (to the SQLite file, or to PostgreSQL when a database URL is
given), so it sees what the store committed and nothing it holds in memory.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import psycopg

from agentgate.common.database import qmark
from agentgate.queue import sql
from agentgate.v1 import common_pb2, events_pb2


def _query(path: Path, database_url: str, statement: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    if database_url:
        with psycopg.connect(database_url) as pg:
            return list(pg.execute(qmark(statement), params).fetchall())  # type: ignore[arg-type]
    # The inner `with conn` commits (a write) when the statement succeeded.
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        return list(conn.execute(statement, params).fetchall())


def scan_waiting_order(path: Path, database_url: str = "") -> list[tuple[str, int]]:
    """(id, enqueued_at) of every PENDING work order in lease order, read from the database
    itself: what the store's in-memory index must always equal."""
    rows = _query(
        path,
        database_url,
        "SELECT id, enqueued_at FROM work_orders WHERE status = ? ORDER BY priority DESC, seq ASC",
        (common_pb2.WORK_ORDER_STATUS_PENDING,),
    )
    return [(work_order_id, enqueued_at) for work_order_id, enqueued_at in rows]


def outbox_size(path: Path, database_url: str = "") -> int:
    """How many events wait in the outbox for delivery to persistence."""
    return int(_query(path, database_url, "SELECT COUNT(*) FROM outbox")[0][0])


def outbox_add(path: Path, database_url: str, event: events_pb2.RunEvent) -> None:
    """Records `event` in the outbox with the store's own statement, as if the queue had:
    for events its API never makes (one persistence refuses). Delivered at the forwarder's
    next read of the outbox (after the next commit of the queue wakes it)."""
    _query(
        path,
        database_url,
        sql.insert_events(1),
        (event.work_order_id, event.SerializeToString(), time.time_ns() // 1000),
    )


def dead_letters(path: Path, database_url: str = "") -> list[tuple[str, str]]:
    """(work_order_id, persistence's error) of every event set aside in `outbox_dead`, oldest first."""
    rows = _query(path, database_url, "SELECT work_order_id, error FROM outbox_dead ORDER BY id")
    return [(work_order_id, error) for work_order_id, error in rows]
