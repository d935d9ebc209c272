"""PostgreSQL beside SQLite: the database URL setting, versioned migrations under a lock, and
an adapter that lets the services' SQL (written with `?` placeholders) run on psycopg 3.

Without a database URL the queue and persistence keep their SQLite file under
$AGENTGATE_HOME (docs/deployment.md). With `postgresql://...` several replicas of each
share one PostgreSQL database (docs/deployment.md, "Several replicas on PostgreSQL").

One migration discipline for both backends (see `agentgate.common.storage.open_sqlite`):
`migrations[i]` takes the schema from version i to i+1 and `schema_migrations` records the
version reached. On PostgreSQL each service's migrations run under a session advisory
lock, so two replicas starting at once apply each version exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import RowMaker

from agentgate.common.config import ConfigError
from agentgate.common.errors import Unavailable

log = logging.getLogger(__name__)

DATABASE_URL_ENV = "AGENTGATE_DATABASE_URL"
#: Pause before a lost LISTEN connection is opened again.
LISTEN_RETRY_SECONDS = 1.0
_SCHEMES = ("postgresql://", "postgres://")


def database_url(flag_value: str | None = None) -> str:
    """The database URL from the flag, else AGENTGATE_DATABASE_URL; '' means SQLite.
    ConfigError for anything but a postgresql:// URL."""
    url = (flag_value if flag_value is not None else os.environ.get(DATABASE_URL_ENV, "")).strip()
    if url and not url.startswith(_SCHEMES):
        raise ConfigError(f"--database-url / {DATABASE_URL_ENV}: must start with postgresql://, got {url[:40]!r}")
    return url


def advisory_key(name: str) -> int:
    """A stable 32-bit advisory lock key for `name` (one per service and purpose)."""
    return zlib.crc32(name.encode())


def qmark(sql: str) -> str:
    """SQLite's `?` placeholders in psycopg's spelling (`%s`); a literal % is doubled."""
    return sql.replace("%", "%%").replace("?", "%s")


class Row(tuple[Any, ...]):
    """A result row read by position or by column name, like `sqlite3.Row`."""

    _names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)


def row_factory(cursor: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> RowMaker[Row]:
    """psycopg row factory making `Row`s."""
    names = {column.name: index for index, column in enumerate(cursor.description or ())}
    row_type = type("Row", (Row,), {"_names": names})

    def make(values: Sequence[Any]) -> Row:
        return row_type(values)

    return make


def migrate(conn: psycopg.Connection[Any], service: str, migrations: Sequence[str]) -> None:
    """Applies `service`'s pending migrations on a PostgreSQL connection (autocommit off),
    under a session advisory lock: a second replica starting at once waits, then finds
    them applied. Each version commits with its `schema_migrations` row."""
    key = advisory_key(f"agentgate-migrate-{service}")
    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
    conn.commit()
    try:
        table = f"{service}_schema_migrations"
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ)")
        conn.commit()
        row = conn.execute(f"SELECT COALESCE(MAX(version), 0) FROM {table}").fetchone()
        current = int(row[0]) if row else 0
        for version in range(current, len(migrations)):
            conn.execute(migrations[version])  # our own schema text
            conn.execute(f"INSERT INTO {table} (version, applied_at) VALUES (%s, now())", (version + 1,))
            conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        conn.commit()


@contextlib.contextmanager
def unreachable_as_unavailable(what: str) -> Iterator[None]:
    """A lost or refused database connection becomes `Unavailable` (UNAVAILABLE): the
    caller retries, here or on another replica, instead of reading INTERNAL."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise Unavailable(f"{what} is unreachable: {exc}".strip()) from exc


class PgCursor:
    """The part of `sqlite3.Cursor` the queue store uses, over a psycopg cursor."""

    def __init__(self, cursor: psycopg.Cursor[Row]):
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        """Rows the statement changed."""
        return self._cursor.rowcount

    def fetchone(self) -> Row | None:
        """The next row, or None."""
        return self._cursor.fetchone()

    def fetchall(self) -> list[Row]:
        """The remaining rows."""
        return self._cursor.fetchall()

    def __iter__(self) -> Any:
        return iter(self._cursor)


class PgConnection:
    """A psycopg connection with the `sqlite3.Connection` calls the queue store makes
    (`execute`, `executemany`, `commit`, `rollback`, `close`), so one set of transaction
    functions serves both backends. Used on one thread only (`SqliteThread`)."""

    def __init__(self, conn: psycopg.Connection[Row], url: str):
        self.raw = conn
        self._url = url
        #: Counts connections made: session state (advisory locks) belongs to one of them.
        self.generation = 1
        #: Inside begin() .. commit()/rollback(): never reconnect there (the statements
        #: after it would run outside the transaction).
        self._in_transaction = False

    @classmethod
    def connect(cls, url: str, service: str, migrations: Sequence[str]) -> PgConnection:
        """Connects (a blocking call) and applies the pending migrations."""
        conn = psycopg.connect(url, row_factory=row_factory)
        try:
            migrate(conn, service, migrations)
            # Reads outside `begin()` see the latest commit and hold no transaction open.
            conn.autocommit = True
        except BaseException:
            conn.close()
            raise
        return cls(conn, url)

    def _ensure_connected(self) -> None:
        """Opens a new connection when the last one broke (PostgreSQL restarted, the
        network failed): the call that found it broken failed, the next one works again."""
        if not self.raw.closed and not self.raw.broken:
            return
        self.raw.close()
        self.raw = psycopg.connect(self._url, row_factory=row_factory, autocommit=True)
        self.generation += 1

    def execute(self, sql: str, params: Sequence[Any] = ()) -> PgCursor:
        """Runs one statement written with `?` placeholders."""
        with unreachable_as_unavailable("the database"):
            if not self._in_transaction:
                self._ensure_connected()
            return PgCursor(self.raw.execute(qmark(sql), tuple(params)))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Runs one statement per parameter row."""
        with unreachable_as_unavailable("the database"), self.raw.cursor() as cursor:
            cursor.executemany(qmark(sql), rows)

    def begin(self, lock_key: int) -> None:
        """Starts a write transaction that holds `lock_key` (a transaction advisory lock)
        until it ends: write transactions of every replica run one at a time, as SQLite's
        BEGIN IMMEDIATE makes them on one machine."""
        with unreachable_as_unavailable("the database"):
            self._ensure_connected()
            self._in_transaction = True
            self.raw.execute("BEGIN")
            self.raw.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key,))

    def commit(self) -> None:
        """Commits the open transaction."""
        with unreachable_as_unavailable("the database"):
            self._in_transaction = False
            self.raw.execute("COMMIT")

    def rollback(self) -> None:
        """Rolls back the open transaction (nothing when none is open, e.g. the
        connection failed)."""
        self._in_transaction = False
        if not self.raw.closed and self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self.raw.execute("ROLLBACK")

    def close(self) -> None:
        """Closes the connection."""
        self.raw.close()


class Listener:
    """LISTENs on one PostgreSQL channel in a background task and hands each payload to
    `on_notify`. After the connection is (re)established `on_connected` runs: whatever was
    notified while it was down is lost, so the caller looks again at everything."""

    def __init__(
        self,
        url: str,
        channel: str,
        on_notify: Callable[[str], None],
        on_connected: Callable[[], None] | None = None,
    ):
        self._url = url
        self._channel = channel
        self._on_notify = on_notify
        self._on_connected = on_connected
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    async def start(self, timeout: float = 10.0) -> None:
        """Starts listening; returns once the first LISTEN is in place (a commit after
        this is heard), or raises TimeoutError."""
        self._task = asyncio.create_task(self._run(), name=f"listen-{self._channel}")
        async with asyncio.timeout(timeout):
            await self._listening.wait()

    async def stop(self) -> None:
        """Stops listening and closes the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as conn:
                    await conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(self._channel)))
                    self._listening.set()
                    if self._on_connected is not None:
                        self._on_connected()
                    async for notice in conn.notifies():
                        self._on_notify(notice.payload)
            except psycopg.Error as err:
                log.warning("LISTEN %s: connection lost (%s); retrying", self._channel, err)
            await asyncio.sleep(LISTEN_RETRY_SECONDS)
