"""Fixtures shared by every test: an isolated $AGENTGATE_HOME per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentgate.common.database import DATABASE_URL_ENV
from tests.pg_server import PgServer


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh AGENTGATE_HOME for this test."""
    path = tmp_path / "agentgate-home"
    path.mkdir()
    monkeypatch.setenv("AGENTGATE_HOME", str(path))
    return path


@pytest.fixture(autouse=True)
def _fallback_agentgate_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that never ask for `home` still get an AGENTGATE_HOME away from the user's: a
    server or client started without one would make or read ~/.agentgate/auth (auth is on
    by default)."""
    if "AGENTGATE_HOME" not in os.environ:
        monkeypatch.setenv("AGENTGATE_HOME", str(tmp_path_factory.getbasetemp() / "fallback-agentgate-home"))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One private PostgreSQL server for the whole session (tests/pg_server.py)."""
    server = PgServer.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per state backend: '' for SQLite, else the URL of a fresh
    PostgreSQL database of the session's server. Also set as AGENTGATE_DATABASE_URL, so
    services a test starts use it."""
    if request.param == "sqlite":
        monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
        return ""
    url: str = request.getfixturevalue("pg_server").create_database()
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    return url
