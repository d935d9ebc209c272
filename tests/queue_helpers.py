"""Reads of the queue's SQLite file for tests: what `QueueStore` keeps must match them.

Each opens its own connection, so it sees what the store committed and nothing it holds
in memory.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from agentgate.v1 import common_pb2


def scan_waiting_order(path: Path) -> list[tuple[str, int]]:
    """(id, enqueued_at) of every PENDING work order in lease order, read from SQLite itself:
    what the store's in-memory index must always equal."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT id, enqueued_at FROM work_orders WHERE status = ? ORDER BY priority DESC, seq ASC",
            (common_pb2.WORK_ORDER_STATUS_PENDING,),
        ).fetchall()
    return [(work_order_id, enqueued_at) for work_order_id, enqueued_at in rows]


def outbox_size(path: Path) -> int:
    """How many events wait in the outbox for delivery to persistence."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
