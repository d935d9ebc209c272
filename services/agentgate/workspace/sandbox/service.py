"""The sandboxes the workspace service makes: one for an agent execution, one for the checks
of a gate run, from the run's sandbox settings (the harness's `sandbox` section, kept with
the workspace at PrepareForRun; see docs/sandbox.md and docs/profiles.md).

A request whose settings have no mode gets the service's default: AGENTGATE_SANDBOX=on|off,
else `defaults.SERVICE_DEFAULT_MODE` (on). AGENTGATE_SANDBOX_READ_ONLY=path:path adds
read-only paths for every execution of this service (an operator's setting, beside the
profile's `sandbox.read_only_paths`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from agentgate.common.errors import FailedPrecondition
from agentgate.v1 import common_pb2
from agentgate.workspace.sandbox import defaults
from agentgate.workspace.sandbox.limits import Limits
from agentgate.workspace.sandbox.proxy import RefusalCallback
from agentgate.workspace.sandbox.runner import Sandbox
from agentgate.workspace.sandbox.spec import SandboxSpec, SandboxUnavailable


def service_mode() -> str:
    """"on" or "off", from AGENTGATE_SANDBOX (default: defaults.SERVICE_DEFAULT_MODE)."""
    mode = os.environ.get(defaults.SANDBOX_ENV_VAR, "").strip().lower() or defaults.SERVICE_DEFAULT_MODE
    if mode not in defaults.MODES:
        raise ValueError(f"{defaults.SANDBOX_ENV_VAR} must be one of {', '.join(defaults.MODES)}, got {mode!r}")
    return mode


def effective_mode(settings: common_pb2.SandboxSettings | None) -> str:
    """The mode a run's executions get: its settings' mode, else the service's default."""
    if settings is not None and settings.mode == common_pb2.SANDBOX_MODE_OFF:
        return defaults.MODE_OFF
    if settings is not None and settings.mode == common_pb2.SANDBOX_MODE_ON:
        return defaults.MODE_ON
    return service_mode()


def _extra_read_only(settings: common_pb2.SandboxSettings | None) -> tuple[Path, ...]:
    raw = os.environ.get(defaults.READ_ONLY_ENV_VAR, "")
    paths = [p for p in raw.split(os.pathsep) if p]
    if settings is not None:
        paths += list(settings.read_only_paths)
    return tuple(Path(p) for p in dict.fromkeys(paths))


def _limits(
    settings: common_pb2.SandboxSettings | None, max_disk_mb: int | None = defaults.DEFAULT_MAX_DISK_MB
) -> Limits:
    """The settings' memory and process limits (0 = the default) and `max_disk_mb`."""
    memory = settings.memory_mb if settings is not None and settings.memory_mb > 0 else 0
    processes = settings.max_processes if settings is not None and settings.max_processes > 0 else 0
    return Limits(
        memory_mb=memory or defaults.DEFAULT_MEMORY_MB,
        max_processes=processes or defaults.DEFAULT_MAX_PROCESSES,
        max_disk_mb=max_disk_mb,
    )


def agent_sandbox(
    *,
    workspace: Path,
    agentgate_home: Path,
    files_dir: Path,
    prompt_dir: Path,
    driver: str,
    settings: common_pb2.SandboxSettings | None = None,
    on_refused: RefusalCallback | None = None,
    agent_home: Path | None = None,
) -> Sandbox | None:
    """The sandbox of one agent execution (None when the run's sandbox is off): the
    workspace, the driver's files folder and the run's agent home (a CLI's config and
    sessions, docs/agents.md) writable, the prompt folder readable, egress only to the
    driver's model API hosts and the settings' `allowed_hosts` through the proxy.
    FAILED_PRECONDITION, saying how to install bubblewrap, when it is missing."""
    if effective_mode(settings) == defaults.MODE_OFF:
        return None
    hosts = list(defaults.DRIVER_API_HOSTS.get(driver, ()))
    if settings is not None:
        hosts += list(settings.allowed_hosts)
    spec = SandboxSpec(
        writable_dir=workspace,
        network=defaults.NETWORK_PROXY,
        allowed_hosts=tuple(dict.fromkeys(hosts)),
        agentgate_home=agentgate_home,
        run_dir=prompt_dir,
        limits=_limits(settings),
        extra_writable=(files_dir,) if agent_home is None else (files_dir, agent_home),
        extra_read_only=_extra_read_only(settings),
    )
    return _make(spec, on_refused)


def check_sandbox(
    *,
    room: Path,
    agentgate_home: Path,
    network: bool = False,
    max_disk_mb: float | None = None,
    settings: common_pb2.SandboxSettings | None = None,
) -> Sandbox | None:
    """The sandbox of a gate's checks in the clean room `room` (None when the run's sandbox
    is off): no network unless the plan's `policy.network` allows it, `policy.max_disk_mb`
    enforced."""
    if effective_mode(settings) == defaults.MODE_OFF:
        return None
    disk = defaults.DEFAULT_MAX_DISK_MB if max_disk_mb is None else max(1, math.ceil(max_disk_mb))
    spec = SandboxSpec(
        writable_dir=room,
        network=defaults.NETWORK_HOST if network else defaults.NETWORK_NONE,
        agentgate_home=agentgate_home,
        limits=_limits(settings, disk),
        extra_read_only=_extra_read_only(settings),
    )
    return _make(spec, None)


def _make(spec: SandboxSpec, on_refused: RefusalCallback | None) -> Sandbox:
    try:
        return Sandbox(spec, on_refused=on_refused)
    except SandboxUnavailable as error:
        # Refused with a message saying how to install bubblewrap (FAILED_PRECONDITION).
        raise FailedPrecondition(str(error)) from error
