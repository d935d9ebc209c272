"""The huey side of bench_peer: a SqliteHuey instance and its no-op task.

Imported by the producer and the consumer processes; the database file and the SQLite
`synchronous` level come from the environment so both processes open the same queue.
"""

from __future__ import annotations

import os
import time

from huey import Huey
from huey.storage import SqliteStorage

DB_ENV = "BENCH_HUEY_DB"
SYNC_ENV = "BENCH_HUEY_SYNCHRONOUS"


class TunedSqliteStorage(SqliteStorage):
    """huey's SQLite storage (WAL, as huey defaults) with an explicit `synchronous` level,
    so it can run with the same durability setting as the AgentGate queue (NORMAL)."""

    def _create_connection(self):  # type: ignore[no-untyped-def]
        conn = super()._create_connection()
        conn.execute(f"pragma synchronous={os.environ.get(SYNC_ENV, 'FULL')}")
        return conn


huey = Huey("bench", storage_class=TunedSqliteStorage, filename=os.environ.get(DB_ENV, "huey-bench.db"))


@huey.task()
def noop() -> float:
    """Does nothing; returns when it ran (stored as the task's result)."""
    return time.time()
