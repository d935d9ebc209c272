"""Puts the stand-in model CLI (tests/fixtures/agents/standin_cli.py) on PATH under a
CLI's name, for the claude-code and codex drivers to run as if it were the real one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "agents"
STANDIN = FIXTURES / "standin_cli.py"


def install_standin(bin_dir: Path, name: str) -> Path:
    """Writes `bin_dir/name`, an executable that runs the stand-in; returns its path."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    target = bin_dir / name
    target.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" "$@"\n')
    target.chmod(0o755)
    return target


def stream(cli: str, name: str) -> Path:
    """A recorded stream: tests/fixtures/agents/{cli}/{name}.jsonl (or a folder)."""
    path = FIXTURES / cli / name
    return path if path.is_dir() else path.with_suffix(".jsonl")


def invocations(log: Path) -> list[dict]:
    """What the stand-in recorded: one dict (argv, prompt, cwd, iteration) per run."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
