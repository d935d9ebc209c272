"""The agent driver registry: drivers by name, and `validate_agent` for the queue's submit.

New drivers join with `register_driver(driver)`; `list_driver_infos` says which can run
here (a model CLI driver needs its executable on PATH). Import-light on purpose: the queue imports
`validate_agent`, which must stay cheap (no process is started, nothing is read from disk).
"""

from __future__ import annotations

from collections.abc import Mapping

from agentgate.common.errors import FieldViolation
from agentgate.v1 import common_pb2, workspace_pb2
from agentgate.workspace.driver_api import AgentDriver, AgentInvocation, OutputCallback
from agentgate.workspace.driver_claude_code import ClaudeCodeDriver
from agentgate.workspace.driver_codex import CodexDriver
from agentgate.workspace.driver_command import CommandDriver
from agentgate.workspace.driver_scripted import ScriptedDriver

__all__ = [
    "DRIVERS",
    "AgentDriver",
    "AgentInvocation",
    "OutputCallback",
    "agent_unavailable",
    "driver_names",
    "get_driver",
    "list_driver_infos",
    "register_driver",
    "validate_agent",
]

#: Registered drivers by name.
DRIVERS: dict[str, AgentDriver] = {}


def register_driver(driver: AgentDriver) -> None:
    """Adds a driver to the registry (a second driver with the same name is a bug)."""
    if driver.name in DRIVERS:
        raise ValueError(f"agent driver {driver.name!r} is already registered")
    DRIVERS[driver.name] = driver


def get_driver(name: str) -> AgentDriver | None:
    """The driver registered under `name`, or None."""
    return DRIVERS.get(name)


def driver_names() -> list[str]:
    """Names of the registered drivers, sorted."""
    return sorted(DRIVERS)


def validate_agent(agent: common_pb2.AgentSpec, field_prefix: str = "spec.agent") -> list[FieldViolation]:
    """Problems with an AgentSpec: unknown or empty driver name, or bad options.

    Field paths start with `field_prefix` (`spec.agent` for a work order, `agent` for a
    RunAgent request).
    """
    known = ", ".join(driver_names())
    if not agent.name:
        return [FieldViolation(f"{field_prefix}.name", f"an agent driver is required (known drivers: {known})")]
    driver = get_driver(agent.name)
    if driver is None:
        return [FieldViolation(f"{field_prefix}.name", f"unknown agent driver {agent.name!r} (known drivers: {known})")]
    violations = driver.validate_options(dict(agent.options))
    if field_prefix != "spec.agent":
        violations = [
            FieldViolation(field_prefix + v.field.removeprefix("spec.agent"), v.description)
            if v.field.startswith("spec.agent")
            else v
            for v in violations
        ]
    return violations


def driver_availability(driver: AgentDriver, options: Mapping[str, str] | None = None) -> str:
    """What `driver` is missing on this machine ('' = it can run). Drivers without an
    `availability` method need nothing beyond AgentGate itself."""
    check = getattr(driver, "availability", None)
    return check(dict(options or {})) if check is not None else ""


def agent_unavailable(agent: common_pb2.AgentSpec) -> str:
    """Why the agent of a valid AgentSpec cannot run here ('' = it can; unknown drivers are
    `validate_agent`'s business)."""
    driver = get_driver(agent.name)
    if driver is None:
        return ""
    missing = driver_availability(driver, agent.options)
    return f"agent driver {agent.name!r} is not available here: {missing}" if missing else ""


def list_driver_infos() -> list[workspace_pb2.AgentDriverInfo]:
    """Every registered driver with its description and availability (looks at PATH:
    call off-loop)."""
    infos = []
    for name in driver_names():
        driver = DRIVERS[name]
        missing = driver_availability(driver)
        infos.append(
            workspace_pb2.AgentDriverInfo(
                name=name,
                description=getattr(driver, "description", ""),
                available=not missing,
                missing=missing,
            )
        )
    return infos


for _builtin in (CommandDriver(), ScriptedDriver(), ClaudeCodeDriver(), CodexDriver()):
    register_driver(_builtin)
