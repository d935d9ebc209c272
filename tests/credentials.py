"""Credentials for tests that play a service: auth is on by default, and writing run records
or leasing work takes a service or worker credential (docs/security.md), not the client token."""

from __future__ import annotations

from pathlib import Path

from agentgate.common import security
from agentgate.common.config import agentgate_home


def service_credential(home: Path | None = None, name: str = "test") -> str:
    """A service credential of `home` (default $AGENTGATE_HOME): may call every RPC."""
    return security.service_credential(security.load_service_key(home or agentgate_home()), "service", name)


def worker_credential(worker_id: str, home: Path | None = None) -> str:
    """The credential of worker `worker_id` of `home` (default $AGENTGATE_HOME)."""
    return security.service_credential(security.load_service_key(home or agentgate_home()), "worker", worker_id)
