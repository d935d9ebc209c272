"""How the workspace service turns a run's sandbox settings into sandboxes
(services/agentgate/workspace/sandbox/service.py; docs/sandbox.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agentgate.v1 import common_pb2
from agentgate.workspace.sandbox import defaults
from agentgate.workspace.sandbox import service as sandbox_service

ON, OFF = common_pb2.SANDBOX_MODE_ON, common_pb2.SANDBOX_MODE_OFF


@pytest.mark.parametrize(
    ("mode", "env", "expected"),
    [
        (ON, "off", "on"),  # the run's explicit setting wins over the service's default
        (OFF, "on", "off"),
        (common_pb2.SANDBOX_MODE_UNSPECIFIED, "off", "off"),
        (common_pb2.SANDBOX_MODE_UNSPECIFIED, "", defaults.SERVICE_DEFAULT_MODE),
    ],
)
def test_the_runs_mode_else_the_services_default(mode, env, expected, monkeypatch) -> None:
    monkeypatch.setenv(defaults.SANDBOX_ENV_VAR, env)
    assert sandbox_service.effective_mode(common_pb2.SandboxSettings(mode=mode)) == expected


def test_the_service_default_is_on(monkeypatch) -> None:
    monkeypatch.delenv(defaults.SANDBOX_ENV_VAR, raising=False)
    assert sandbox_service.effective_mode(None) == "on"


def test_off_makes_no_sandbox(tmp_path: Path) -> None:
    settings = common_pb2.SandboxSettings(mode=OFF)
    assert sandbox_service.check_sandbox(room=tmp_path, agentgate_home=tmp_path, settings=settings) is None


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_settings_reach_the_spec(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(defaults.READ_ONLY_ENV_VAR, "/srv/operator")
    settings = common_pb2.SandboxSettings(
        mode=ON, read_only_paths=["/opt/tools"], allowed_hosts=["pypi.org"], memory_mb=256, max_processes=32
    )
    agent = sandbox_service.agent_sandbox(
        workspace=tmp_path, agentgate_home=tmp_path, files_dir=tmp_path, prompt_dir=tmp_path,
        driver="claude-code", settings=settings,
    )
    assert agent is not None
    assert agent.spec.allowed_hosts == (*defaults.DRIVER_API_HOSTS["claude-code"], "pypi.org")
    assert agent.spec.extra_read_only == (Path("/srv/operator"), Path("/opt/tools"))
    assert (agent.spec.limits.memory_mb, agent.spec.limits.max_processes) == (256, 32)
    check = sandbox_service.check_sandbox(room=tmp_path, agentgate_home=tmp_path, max_disk_mb=7.5, settings=settings)
    assert check is not None and check.spec.limits.max_disk_mb == 8
    assert check.spec.limits.max_processes == 32
