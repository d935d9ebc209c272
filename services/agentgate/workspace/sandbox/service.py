"""The sandboxes the workspace service makes: one for an agent execution, one for the checks
of a gate run. Settings come from the environment until profiles carry them (see
docs/sandbox.md): AGENTGATE_SANDBOX=on|off, AGENTGATE_SANDBOX_READ_ONLY=path:path.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from agentgate.common.errors import FailedPrecondition
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


def _extra_read_only() -> tuple[Path, ...]:
    raw = os.environ.get(defaults.READ_ONLY_ENV_VAR, "")
    return tuple(Path(p) for p in raw.split(os.pathsep) if p)


def agent_sandbox(
    *,
    workspace: Path,
    agentgate_home: Path,
    files_dir: Path,
    prompt_dir: Path,
    driver: str,
    on_refused: RefusalCallback | None = None,
    agent_home: Path | None = None,
) -> Sandbox | None:
    """The sandbox of one agent execution (None when the service runs with the sandbox off):
    the workspace, the driver's files folder and the run's agent home (a CLI's config and
    sessions, docs/agents.md) writable, the prompt folder readable, egress
    only to the driver's model API hosts through the proxy."""
    if service_mode() == defaults.MODE_OFF:
        return None
    spec = SandboxSpec(
        writable_dir=workspace,
        network=defaults.NETWORK_PROXY,
        allowed_hosts=defaults.DRIVER_API_HOSTS.get(driver, ()),
        agentgate_home=agentgate_home,
        run_dir=prompt_dir,
        extra_writable=(files_dir,) if agent_home is None else (files_dir, agent_home),
        extra_read_only=_extra_read_only(),
    )
    return _make(spec, on_refused)


def check_sandbox(
    *, room: Path, agentgate_home: Path, network: bool = False, max_disk_mb: float | None = None
) -> Sandbox | None:
    """The sandbox of a gate's checks in the clean room `room` (None when off): no network
    unless the plan's `policy.network` allows it, `policy.max_disk_mb` enforced."""
    if service_mode() == defaults.MODE_OFF:
        return None
    disk = defaults.DEFAULT_MAX_DISK_MB if max_disk_mb is None else max(1, math.ceil(max_disk_mb))
    spec = SandboxSpec(
        writable_dir=room,
        network=defaults.NETWORK_HOST if network else defaults.NETWORK_NONE,
        agentgate_home=agentgate_home,
        limits=Limits(max_disk_mb=disk),
        extra_read_only=_extra_read_only(),
    )
    return _make(spec, None)


def _make(spec: SandboxSpec, on_refused: RefusalCallback | None) -> Sandbox:
    try:
        return Sandbox(spec, on_refused=on_refused)
    except SandboxUnavailable as error:
        # Refused with a message saying how to install bubblewrap (FAILED_PRECONDITION).
        raise FailedPrecondition(str(error)) from error
