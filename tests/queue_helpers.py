"""Reads of the queue's database for tests: what `QueueStore` keeps must match them.

Each opens its own connection (to the SQLite file, or to PostgreSQL when a database URL is
given), so it sees what the store committed and nothing it holds in memory.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import psycopg

from agentgate.common.database import qmark
from agentgate.v1 import common_pb2


def _query(path: Path, database_url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    if database_url:
        with psycopg.connect(database_url) as pg:
            return list(pg.execute(qmark(sql), params).fetchall())  # type: ignore[arg-type]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return list(conn.execute(sql, params).fetchall())


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
