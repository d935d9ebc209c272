"""The agent driver registry: the drivers this service runs, by name.

Each driver implements a schema of `agentgate.harness.drivers` (its name, description and
options, checked there); `list_driver_infos` says which can run here (a model CLI driver
needs its executable on PATH).
"""

from __future__ import annotations

from agentgate.harness.drivers import DRIVERS as SCHEMAS
from agentgate.harness.drivers import driver_availability
from agentgate.v1 import workspace_pb2
from agentgate.workspace.drivers.api import AgentDriver, AgentInvocation, OutputCallback
from agentgate.workspace.drivers.claude_code import ClaudeCodeDriver
from agentgate.workspace.drivers.codex import CodexDriver
from agentgate.workspace.drivers.command import CommandDriver
from agentgate.workspace.drivers.scripted import ScriptedDriver

__all__ = [
    "DRIVERS",
    "AgentDriver",
    "AgentInvocation",
    "OutputCallback",
    "driver_names",
    "get_driver",
    "list_driver_infos",
    "register_driver",
]

#: Registered drivers by name.
DRIVERS: dict[str, AgentDriver] = {}


def register_driver(driver: AgentDriver) -> None:
    """Adds a driver to the registry (a second driver with the same name, or one without
    a schema the queue could check its options with, is a bug)."""
    if driver.name in DRIVERS:
        raise ValueError(f"agent driver {driver.name!r} is already registered")
    if driver.name not in SCHEMAS:
        raise ValueError(f"agent driver {driver.name!r} has no schema in agentgate.harness.drivers")
    DRIVERS[driver.name] = driver


def get_driver(name: str) -> AgentDriver | None:
    """The driver registered under `name`, or None."""
    return DRIVERS.get(name)


def driver_names() -> list[str]:
    """Names of the registered drivers, sorted."""
    return sorted(DRIVERS)


def list_driver_infos() -> list[workspace_pb2.AgentDriverInfo]:
    """Every registered driver with its description and availability (looks at PATH:
    call off-loop)."""
    infos = []
    for name in driver_names():
        schema = SCHEMAS[name]
        missing = driver_availability(schema)
        infos.append(
            workspace_pb2.AgentDriverInfo(
                name=name, description=schema.description, available=not missing, missing=missing
            )
        )
    return infos


for _builtin in (CommandDriver(), ScriptedDriver(), ClaudeCodeDriver(), CodexDriver()):
    register_driver(_builtin)
