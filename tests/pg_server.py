"""A private PostgreSQL server for tests: its own data folder and socket folder in a temp
dir and a free TCP port on 127.0.0.1, started and stopped by the `pg_server` fixture
(tests/conftest.py). It touches no other PostgreSQL cluster.

`initdb` refuses to run as root: as root the cluster is made and run by the `postgres`
user, in a temp dir that user owns. Durability settings are off (fsync, synchronous
commit): the data lives only as long as the test session.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from tests.ports import free_port


def find_binary(name: str) -> str | None:
    """`initdb` / `pg_ctl` on PATH, else in Debian's /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


@dataclass
class PgServer:
    """A running private server; `url(db)` addresses one of its databases."""

    root: Path
    port: int
    pg_ctl: str
    as_postgres: bool

    @classmethod
    def start(cls) -> PgServer:
        """initdb + pg_ctl start; raises RuntimeError when PostgreSQL is not installed."""
        initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found: run `make pg-deps`")
        root = Path(tempfile.mkdtemp(prefix="agentgate-pg-"))
        (root / "sock").mkdir()
        as_postgres = os.geteuid() == 0
        if as_postgres:
            user = pwd.getpwnam("postgres")
            for path in (root, root / "sock"):
                os.chown(path, user.pw_uid, user.pw_gid)
        server = cls(root, free_port(), pg_ctl, as_postgres)
        server._run(initdb, "-D", str(root / "data"), "-A", "trust", "-U", "agentgate", "-E", "UTF8", "--no-sync")
        options = (
            f"-k {root / 'sock'} -p {server.port} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        server._run(pg_ctl, "start", "-w", "-D", str(root / "data"), "-l", str(root / "log"), "-o", options)
        return server

    def _run(self, *argv: str) -> None:
        command = ["runuser", "-u", "postgres", "--", *argv] if self.as_postgres else list(argv)
        subprocess.run(command, check=True, capture_output=True, cwd=self.root)

    def url(self, database: str = "postgres") -> str:
        """A libpq URL of one database of this server."""
        return f"postgresql://agentgate@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def stop(self) -> None:
        """Stops the server at once and removes its folder."""
        try:
            self._run(self.pg_ctl, "stop", "-D", str(self.root / "data"), "-m", "immediate", "-w")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
