"""The agent driver registry: the drivers this service runs, by name.

Each driver implements a schema of `agentgate.harness.drivers` (its name, description and
options, checked there); `list_driver_infos` says which can run here (a model CLI driver
needs its executable on PATH).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

from agentgate.harness.drivers import DRIVERS as SCHEMAS
from agentgate.harness.drivers import driver_availability
from agentgate.v1 import workspace_pb2
from agentgate.workspace.drivers.api import AgentDriver, AgentInvocation, OutputCallback
from agentgate.workspace.drivers.claude_code import ClaudeCodeDriver
from agentgate.workspace.drivers.codex import CodexDriver, configured_endpoints, source_home
from agentgate.workspace.drivers.command import CommandDriver
from agentgate.workspace.drivers.endpoint_probe import sandbox_reachability
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

#: A CLI that takes longer than this to print its version is reported without one.
VERSION_TIMEOUT_SECONDS = 5.0

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


def cli_version(executable: str, timeout: float = VERSION_TIMEOUT_SECONDS) -> str:
    """The first line `EXECUTABLE --version` prints ('' when it fails): blocking, call off-loop."""
    try:
        done = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else ""


def configured_endpoint(name: str) -> str:
    """The model endpoint the driver's CLI talks to with this service's configuration
    ('' for a driver without one)."""
    schema = SCHEMAS[name]
    if name == "codex":
        urls = configured_endpoints(source_home(os.environ), {}, os.environ)
        return urls[0] if urls else schema.default_endpoint
    if schema.endpoint_env:
        return os.environ.get(schema.endpoint_env) or schema.default_endpoint
    return ""


async def list_driver_infos(agentgate_home: Path) -> list[workspace_pb2.AgentDriverInfo]:
    """Every registered driver with its description, availability, the version of its CLI
    and whether its model endpoint can be reached from inside this service's agent sandbox
    (runs the CLIs, and the probes of drivers/endpoint_probe.py side by side)."""
    infos = []
    probes = []
    for name in driver_names():
        schema = SCHEMAS[name]
        missing = driver_availability(schema)
        info = workspace_pb2.AgentDriverInfo(
            name=name, description=schema.description, available=not missing, missing=missing
        )
        if schema.executable and not missing:
            info.version = await asyncio.to_thread(cli_version, shutil.which(schema.executable) or schema.executable)
        if url := configured_endpoint(name):
            probes.append((info, sandbox_reachability(url, driver=name, agentgate_home=agentgate_home)))
        infos.append(info)
    answers = await asyncio.gather(*(probe for _, probe in probes))
    for (info, _), answer in zip(probes, answers, strict=True):
        info.endpoint = answer
    return infos


for _builtin in (CommandDriver(), ScriptedDriver(), ClaudeCodeDriver(), CodexDriver()):
    register_driver(_builtin)
