"""Fixtures shared by every test: an isolated $AGENTGATE_HOME per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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
