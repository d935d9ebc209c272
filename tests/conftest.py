"""Fixtures shared by every test: an isolated $AGENTGATE_HOME per test."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh AGENTGATE_HOME for this test."""
    path = tmp_path / "agentgate-home"
    path.mkdir()
    monkeypatch.setenv("AGENTGATE_HOME", str(path))
    return path
