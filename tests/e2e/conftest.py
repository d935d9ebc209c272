"""End-to-end fixtures: the four services as real processes, started by the real CLI."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from agentgate.common import security
from tests.ports import free_port

AGENTGATE = str(Path(sys.executable).parent / "agentgate")
SERVICES = ("queue", "orchestrator", "workspace", "persistence")


@dataclass
class Suite:
    """A running suite: its home, the environment that reaches it, and a CLI runner."""

    home: Path
    env: dict[str, str]

    def address(self, service: str) -> str:
        return self.env[f"AGENTGATE_{service.upper()}_ADDR"]

    @property
    def token(self) -> str:
        """The client token `agentgate up` made for this suite (auth is on by default)."""
        return (self.home / "auth" / "token").read_text().strip()

    def channel(self, address: str) -> grpc.Channel:
        """A blocking channel to `address` that sends this suite's client token."""
        return security.intercept_sync_channel(grpc.insecure_channel(address), self.token)

    def cli(self, *args: str, timeout: float = 180, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Runs `agentgate ARGS` against this suite."""
        result = subprocess.run(
            [AGENTGATE, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(f"agentgate {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def cli_json(self, *args: str, timeout: float = 180) -> tuple[int, dict]:
        result = self.cli(*args, "--json", timeout=timeout)
        assert result.stdout.strip(), f"no JSON output; stderr:\n{result.stderr}"
        return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text()[-3000:]}" for log in sorted((self.home / "logs").glob("*.log"))
        )


def suite_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["AGENTGATE_HOME"] = str(home)
    for service in SERVICES:
        env[f"AGENTGATE_{service.upper()}_ADDR"] = f"127.0.0.1:{free_port()}"
    env["AGENTGATE_GATEWAY_ADDR"] = f"127.0.0.1:{free_port()}"
    return env


@contextlib.contextmanager
def running_suite(home: Path, env: dict[str, str], up_timeout: float = 60) -> Iterator[Suite]:
    """`agentgate up --detach` with this home and environment; `agentgate down` after."""
    running = Suite(home=home, env=env)
    up = running.cli("up", "--detach", timeout=up_timeout)
    if up.returncode != 0:
        running.cli("down")
        raise AssertionError(f"agentgate up failed:\n{up.stdout}\n{up.stderr}\n{running.logs()}")
    yield running
    down = running.cli("down", timeout=60)
    assert down.returncode == 0, down.stderr


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    """`agentgate up --detach` on free ports and a fresh home; `agentgate down` after."""
    home = tmp_path_factory.mktemp("suite-home")
    with running_suite(home, suite_env(home)) as running:
        yield running
