"""SQLite helpers shared by the services: WAL mode and a versioned schema."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import aiosqlite


async def open_database(path: Path, migrations: Sequence[str]) -> aiosqlite.Connection:
    """Opens (creating) a service's SQLite file in WAL mode and applies pending migrations.

    `migrations[i]` is the SQL script that takes the schema from version i to i+1; the
    version reached is kept in the `schema_migrations` table.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path)
    db.row_factory = aiosqlite.Row
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA synchronous=NORMAL")
    await db.execute("PRAGMA busy_timeout=5000")
    await db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT)"
    )
    async with db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") as cur:
        row = await cur.fetchone()
    current = int(row[0]) if row else 0
    for version in range(current, len(migrations)):
        await db.executescript(migrations[version])
        await db.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?, datetime('now'))",
            (version + 1,),
        )
    await db.commit()
    return db
