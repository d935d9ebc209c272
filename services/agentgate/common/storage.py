"""SQLite helpers shared by the services: WAL mode and a versioned schema."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import aiosqlite

T = TypeVar("T")

#: Settings of every connection (WAL itself is stored in the file, the others are not).
CONNECTION_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA busy_timeout=5000")


def open_sqlite(path: Path, migrations: Sequence[str]) -> sqlite3.Connection:
    """Opens (creating) a service's SQLite file in WAL mode and applies pending migrations;
    a blocking call that returns a plain `sqlite3` connection with `sqlite3.Row` rows.

    `migrations[i]` is the SQL script that takes the schema from version i to i+1; the
    version reached is kept in the `schema_migrations` table.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.row_factory = sqlite3.Row
        for pragma in CONNECTION_PRAGMAS:
            conn.execute(pragma)
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT)")
        current = int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0])
        for version in range(current, len(migrations)):
            conn.executescript(migrations[version])
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, datetime('now'))", (version + 1,)
            )
        conn.commit()
    except BaseException:
        conn.close()
        raise
    return conn


async def open_database(path: Path, migrations: Sequence[str]) -> aiosqlite.Connection:
    """`open_sqlite` as an aiosqlite connection: the file is created and migrated off the
    event loop, then opened with the same connection settings."""

    def migrate() -> None:
        with contextlib.closing(open_sqlite(path, migrations)):
            pass

    await asyncio.to_thread(migrate)
    db = await aiosqlite.connect(path)
    db.row_factory = aiosqlite.Row
    for pragma in CONNECTION_PRAGMAS:
        await db.execute(pragma)
    return db


class SqliteThread:
    """A plain `sqlite3` connection owned by one thread (a one-worker executor).

    `await run(fn)` runs `fn(connection)` there: a whole transaction or read is one
    hand-off between the event loop and the thread, instead of one per statement. The
    thread runs one function at a time, in submission order, so functions never
    interleave and state they share needs no lock.
    """

    def __init__(self, executor: ThreadPoolExecutor, conn: sqlite3.Connection):
        self._executor = executor
        self._conn = conn

    @classmethod
    async def open(cls, path: Path, migrations: Sequence[str]) -> SqliteThread:
        """`open_sqlite` on a new thread that keeps the connection (sqlite3 checks that
        only the thread that opened a connection uses it)."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{path.name}")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(executor, open_sqlite, path, migrations)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, conn)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` on the connection's thread, after every function submitted
        before it. A caller canceled before `fn` starts may skip it: shield a write."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self._conn)

    async def close(self) -> None:
        """Closes the connection after every function already submitted, then ends the thread."""
        await self.run(sqlite3.Connection.close)
        self._executor.shutdown()
