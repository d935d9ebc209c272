"""Configuration shared by every service and client: home folder and service addresses.

Precedence everywhere: command-line flag > environment variable > default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SERVICES = ("queue", "orchestrator", "workspace", "persistence")

DEFAULT_ADDRESSES = {
    "queue": "127.0.0.1:50051",
    "orchestrator": "127.0.0.1:50052",
    "workspace": "127.0.0.1:50053",
    "persistence": "127.0.0.1:50054",
}

#: The dashboard's HTTP gateway (docs/dashboard.md): not a gRPC service, so apart from
#: SERVICES; loopback by default.
GATEWAY = "gateway"
GATEWAY_ADDRESS_ENV = "AGENTGATE_GATEWAY_ADDR"
DEFAULT_GATEWAY_ADDRESS = "127.0.0.1:50080"

# Generous but explicit: agent results of 1 MiB stdout + 1 MiB stderr must fit.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class ConfigError(ValueError):
    """Invalid configuration; the message names the key."""


def agentgate_home(override: str | None = None) -> Path:
    """The folder that holds every service's data ($AGENTGATE_HOME, default ~/.agentgate)."""
    raw = override or os.environ.get("AGENTGATE_HOME") or str(Path.home() / ".agentgate")
    return Path(raw).expanduser().resolve()


def address_env_var(service: str) -> str:
    """Name of the variable that holds a service's address, e.g. AGENTGATE_QUEUE_ADDR."""
    return f"AGENTGATE_{service.upper()}_ADDR"


def service_address(service: str, override: str | None = None) -> str:
    """host:port of a service, from the flag, its AGENTGATE_*_ADDR variable or the default.
    A client's address may list several replicas, `host:port,host:port`, or be
    `dns:///name:port` (see `agentgate.common.channels.channel_target`)."""
    if service not in DEFAULT_ADDRESSES:
        raise ConfigError(f"unknown service {service!r}")
    addr = override or os.environ.get(address_env_var(service)) or DEFAULT_ADDRESSES[service]
    problem = f"{addr!r} is not host:port (or a comma-separated list)"
    for part in addr.removeprefix("dns:///").split(","):
        _checked_address(address_env_var(service), part.strip(), problem)
    return addr


def gateway_address(override: str | None = None) -> str:
    """host:port of the dashboard gateway, from the flag, AGENTGATE_GATEWAY_ADDR or the default."""
    addr = override or os.environ.get(GATEWAY_ADDRESS_ENV) or DEFAULT_GATEWAY_ADDRESS
    return _checked_address(GATEWAY_ADDRESS_ENV, addr, f"{addr!r} is not host:port")


def _checked_address(key: str, addr: str, problem: str) -> str:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: {problem}")
    return addr


def env_int(key: str, default: int, minimum: int = 0) -> int:
    """An integer setting from the environment; a bad value fails naming the key."""
    raw = os.environ.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key}: {raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{key}: must be at least {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class ServiceSettings:
    """What every service process needs: its name, address and home folder."""

    name: str
    address: str
    home: Path

    @property
    def database_path(self) -> Path:
        """This service's own SQLite file."""
        return self.home / f"{self.name}.db"

    @classmethod
    def load(cls, name: str, address: str | None = None, home: str | None = None) -> ServiceSettings:
        """Settings from flags (arguments) > environment > defaults."""
        return cls(name=name, address=service_address(name, address), home=agentgate_home(home))
