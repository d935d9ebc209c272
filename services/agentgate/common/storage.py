"""SQLite helpers shared by the services: WAL mode and a versioned schema."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

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
    """A plain `sqlite3` connection owned by one thread of its own.

    `await run(fn)` runs `fn(connection)` there: a whole transaction or read is one
    hand-off between the event loop and the thread, instead of one per statement. The
    thread runs one function at a time, in submission order, so functions never
    interleave and state they share needs no lock.

    Why not `loop.run_in_executor` on a one-worker `ThreadPoolExecutor`: its futures,
    semaphores and chained callbacks cost tens of microseconds of CPU per hand-off,
    comparable to a whole queue read; a `SimpleQueue` and `call_soon_threadsafe` do not.
    """

    def __init__(self, name: str):
        self._jobs: queue.SimpleQueue[tuple[asyncio.Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run_jobs, name=name, daemon=True)
        self._conn: Any = None

    @classmethod
    async def open(cls, path: Path, migrations: Sequence[str]) -> SqliteThread:
        """`open_sqlite` on a new thread that keeps the connection (sqlite3 checks that
        only the thread that opened a connection uses it)."""
        return await cls.start(f"sqlite-{path.name}", lambda: open_sqlite(path, migrations))

    @classmethod
    async def start(cls, name: str, connect: Callable[[], Any]) -> SqliteThread:
        """A new thread that opens its connection with `connect()` and keeps it (also a
        PostgreSQL one: `agentgate.common.database.PgConnection`)."""
        db = cls(name)
        db._thread.start()
        try:
            db._conn = await db._submit(connect)
        except BaseException:
            db._jobs.put(None)
            raise
        return db

    async def run(self, fn: Callable[[Any], T]) -> T:
        """`fn(connection)` on the connection's thread, after every function submitted
        before it. It runs to its end even when the caller is canceled meanwhile."""
        conn = self._conn
        assert conn is not None, "SqliteThread used before open or after close"
        return await self._submit(lambda: fn(conn))

    async def close(self) -> None:
        """Closes the connection after every function already submitted, then ends the
        thread. Closing again does nothing."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        await self._submit(conn.close)
        self._jobs.put(None)

    def _submit(self, job: Callable[[], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((future, job))
        return future

    def _run_jobs(self) -> None:
        while (item := self._jobs.get()) is not None:
            future, job = item
            try:
                result = job()
            except BaseException as error:  # noqa: BLE001 - the caller gets any error; the thread lives on
                future.get_loop().call_soon_threadsafe(_settle, future, None, error)
            else:
                future.get_loop().call_soon_threadsafe(_settle, future, result, None)


def _settle(future: asyncio.Future[Any], result: object, error: BaseException | None) -> None:
    # On the event loop; a caller that was canceled no longer wants the outcome.
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
