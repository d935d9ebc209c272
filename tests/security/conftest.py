"""Fixtures of the sandbox attack tests: a fake services' home, a tmp $AGENTGATE_HOME with
two runs, and a factory of sandboxes in either mode (each attack runs with both)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentgate.workspace.sandbox import Limits, Sandbox, SandboxSpec

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

SECRET_KEY = "-----BEGIN OPENSSH PRIVATE KEY----- fake-test-key"
OTHER_RUN_SECRET = "other run's result, not yours"


@dataclass
class Layout:
    """Where things are: the fake home, the agentgate home, this run and the writable dir."""

    services_home: Path
    agentgate_home: Path
    run_dir: Path
    other_run_dir: Path
    writable: Path
    outside: Path


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    """A fake home with a toolchain and credentials, and an agentgate home with two runs."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text(SECRET_KEY)
    (home / ".config" / "gh").mkdir(parents=True)
    (home / ".config" / "gh" / "hosts.yml").write_text("oauth_token: gho_fake")
    (home / ".pyenv" / "bin").mkdir(parents=True)
    tool = home / ".pyenv" / "bin" / "tool"
    tool.write_text("#!/bin/sh\necho toolchain-ok\n")
    tool.chmod(0o755)
    agentgate_home = tmp_path / "agentgate-home"
    run_dir = agentgate_home / "runs" / "run-mine"
    other = agentgate_home / "runs" / "run-other"
    run_dir.mkdir(parents=True)
    other.mkdir(parents=True)
    (run_dir / "prompt.md").write_text("my prompt")
    (other / "result.json").write_text(OTHER_RUN_SECRET)
    (agentgate_home / "persistence.db").write_text("database")
    writable = agentgate_home / "cleanrooms" / "run-mine-1"
    writable.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    return Layout(home, agentgate_home, run_dir, other, writable, outside)


SandboxFactory = Callable[..., Sandbox]


@pytest.fixture
def make_sandbox(layout: Layout) -> SandboxFactory:
    """make_sandbox(mode, **spec fields) -> a Sandbox over the layout's writable dir."""

    def make(mode: str, limits: Limits | None = None, **fields: Any) -> Sandbox:
        on_refused = fields.pop("on_refused", None)
        spec = SandboxSpec(
            writable_dir=layout.writable,
            mode=mode,
            limits=limits or Limits(),
            run_dir=layout.run_dir,
            agentgate_home=layout.agentgate_home,
            services_home=layout.services_home,
            **fields,
        )
        return Sandbox(spec, on_refused=on_refused)

    return make
