"""The shared SQLite helpers (agentgate.common.storage): migrations, and SqliteThread's
one-thread ordering, errors and close."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from agentgate.common.storage import SqliteThread, open_database, open_sqlite

MIGRATIONS = ["CREATE TABLE t (x INTEGER);", "ALTER TABLE t ADD COLUMN y INTEGER NOT NULL DEFAULT 0;"]


def test_open_sqlite_migrates_once_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "s.db"
    open_sqlite(path, MIGRATIONS[:1]).close()
    conn = open_sqlite(path, MIGRATIONS)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert [row[0] for row in conn.execute("SELECT version FROM schema_migrations")] == [1, 2]
        assert [row["name"] for row in conn.execute("PRAGMA table_info(t)")] == ["x", "y"]
    finally:
        conn.close()


async def test_open_database_is_the_same_schema(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "s.db", MIGRATIONS)
    try:
        async with db.execute("SELECT MAX(version) FROM schema_migrations") as cursor:
            assert (await cursor.fetchone())[0] == 2
    finally:
        await db.close()


async def test_functions_run_in_order_on_one_thread(tmp_path: Path) -> None:
    db = await SqliteThread.open(tmp_path / "s.db", MIGRATIONS)
    try:
        threads: set[int] = set()

        def body(conn: sqlite3.Connection, x: int) -> int:
            threads.add(threading.get_ident())
            conn.execute("INSERT INTO t (x) VALUES (?)", (x,))
            conn.commit()
            return x

        results = await asyncio.gather(*(db.run(lambda conn, x=x: body(conn, x)) for x in range(20)))
        assert results == list(range(20))
        rows = await db.run(lambda conn: [row[0] for row in conn.execute("SELECT x FROM t ORDER BY rowid")])
        assert rows == list(range(20)) and len(threads) == 1 and threading.get_ident() not in threads
    finally:
        await db.close()


async def test_errors_reach_the_caller_and_the_thread_serves_on(tmp_path: Path) -> None:
    db = await SqliteThread.open(tmp_path / "s.db", MIGRATIONS)
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await db.run(lambda conn: conn.execute("SELECT * FROM missing"))
    assert await db.run(lambda conn: conn.execute("SELECT 1").fetchone()[0]) == 1
    await db.close()
    await db.close()  # a second close does nothing
    with pytest.raises(AssertionError):
        await db.run(lambda conn: None)


async def test_a_canceled_caller_does_not_stop_its_function(tmp_path: Path) -> None:
    db = await SqliteThread.open(tmp_path / "s.db", MIGRATIONS)
    try:
        release = threading.Event()
        blocker = asyncio.ensure_future(db.run(lambda conn: release.wait(5)))
        write = asyncio.ensure_future(db.run(lambda conn: conn.execute("INSERT INTO t (x) VALUES (7)")))
        await asyncio.sleep(0.01)
        write.cancel()
        release.set()
        await blocker
        assert await db.run(lambda conn: conn.execute("SELECT x FROM t").fetchall()[0][0]) == 7
    finally:
        await db.close()
