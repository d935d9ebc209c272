"""The workspace service with AGENTGATE_SANDBOX=on: an agent (scripted `run:` steps) and the
gate's checks run confined; with the sandbox off the same attacks work (docs/sandbox.md)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentgate.common.channels import aio_channel
from agentgate.common.config import ServiceSettings
from agentgate.common.server import start_server
from agentgate.v1 import workspace_pb2, workspace_pb2_grpc
from agentgate.workspace.server import WorkspaceApp
from tests.integration.test_workspace_service import Service, git, scripted, verify

from .conftest import pytestmark  # noqa: F401

ATTACKS = """\
version: "1"
name: attacks
tests:
  - name: read-agentgate-home
    kind: test
    command: "cat {home}/workspace.db > /dev/null"
  - name: reach-the-service-port
    kind: test
    command: "python3 -c \\"import socket; socket.create_connection(('127.0.0.1', {port}), 2)\\""
  - name: write-outside
    kind: test
    command: "echo pwned > {outside}/from-check"
"""


@pytest.fixture
async def service(home: Path) -> AsyncIterator[Service]:
    """The workspace service on an ephemeral port (as in test_workspace_service.py)."""
    settings = ServiceSettings.load("workspace", "127.0.0.1:0", str(home))
    running = await start_server(WorkspaceApp(settings, kill_grace_seconds=1.0), "127.0.0.1:0")
    address = f"127.0.0.1:{running.port}"
    channel = aio_channel(address)
    try:
        yield Service(workspace_pb2_grpc.WorkspaceServiceStub(channel), home, address)
    finally:
        await channel.close()
        await running.stop(grace=1)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project: one file in a git repository."""
    root = tmp_path / "project"
    root.mkdir()
    git(root, "init", "-q")
    (root / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    return root


def _report(service: Service, project: Path, outside: Path) -> str:
    port = service.address.rsplit(":", 1)[1]
    plan = ATTACKS.format(home=service.home, port=port, outside=outside)
    (project / "verify.yaml").write_text(plan)
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "attacks")
    return plan


@pytest.mark.parametrize("mode", ["off", "on"])
async def test_agent_and_checks_are_confined_by_the_service(
    mode: str, service: Service, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTGATE_SANDBOX", mode)
    outside = tmp_path / "outside"
    outside.mkdir()
    _report(service, project, outside)
    workspace = (await service.prepare(project)).workspace
    script = textwrap.dedent(
        f"""\
        default:
          - run: {json.dumps(f"echo pwned > {outside}/from-agent; cat {service.home}/workspace.db | wc -c")}
          - write: {{path: done.txt, content: "agent wrote its workspace"}}
        """
    )
    _, result = await service.run_agent(workspace, scripted(script))
    assert (Path(workspace.path) / "done.txt").exists()  # the workspace stays writable
    snapshot = await service.stub.CreateSnapshot(workspace_pb2.CreateSnapshotRequest(workspace_id=workspace.id))
    report = await verify(service, workspace.id, snapshot.snapshot_id)
    checks = {c.name: c for level in report.levels for c in level.checks}
    attacks = ["read-agentgate-home", "reach-the-service-port", "write-outside"]
    if mode == "off":
        assert (outside / "from-agent").exists() and (outside / "from-check").exists()
        assert all(checks[name].passed for name in attacks), report.summary
    else:
        assert not (outside / "from-agent").exists() and not (outside / "from-check").exists()
        assert not any(checks[name].passed for name in attacks), report.summary
