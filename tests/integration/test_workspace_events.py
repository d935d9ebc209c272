"""The workspace:* and snapshot:* events of a run (docs/workspaces.md, docs/observability.md), on the four services in one
event loop: a retried agent attempt starts from the iteration's snapshot (snapshot:restored),
so what a timed-out attempt left behind never reaches the next one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from agentgate.v1 import common_pb2, workspace_pb2, workspace_pb2_grpc

from .inprocess_suite import InProcessSuite

FIXED = "def add(a, b):\n    return a + b\n"


@pytest.fixture
async def suite(home: Path):
    running = await InProcessSuite.start(home)
    yield running
    await running.stop()


def git(cwd: str, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


async def test_a_retried_attempt_starts_from_the_snapshot_and_the_events_say_so(
    suite: InProcessSuite, tmp_path: Path
) -> None:
    root = tmp_path / "project"
    root.mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (root / "verify.yaml").write_text('version: "1"\ntests:\n  - {name: unit, command: "grep -q \'a + b\' calc.py"}\n')
    script = (
        "iterations:\n  1:\n    attempts:\n"
        "      1: [{write: {path: half-done.txt, content: junk}}, {sleep: 30}]\n"
        "      2: [{write: {path: calc.py, content: " + json.dumps(FIXED) + "}}]\n"
    )
    spec = common_pb2.WorkOrderSpec(
        task_prompt="Fix add()", agent=common_pb2.AgentSpec(name="scripted", options={"script": script})
    )
    spec.source.local_path = str(root)
    spec.harness.loop_strategy.max_iterations = 1
    spec.harness.limits.agent_timeout_seconds = 1
    spec.harness.retry.max_attempts = 2
    spec.harness.retry.initial_backoff_seconds = 0.05
    # The workspace is inspected below (docs/workspaces.md, "Retention").
    spec.harness.retention.workspace = common_pb2.WORKSPACE_RETENTION_KEEP

    work_order = await suite.submit(spec)
    final = await suite.wait_terminal(work_order.id, timeout=90)
    run = await suite.run(work_order.run_id)
    assert final.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED, run.error
    events = await suite.events(work_order.id)
    types = [e.type for e in events]

    # The order of the workspace's events around the retry.
    expected = ["workspace:acquired", "agent:started", "agent:failed", "snapshot:restored", "agent:started",
                "agent:complete", "snapshot:created", "workspace:released", "run:complete"]
    assert [kind for kind in types if kind in expected] == expected, types

    acquired = events[types.index("workspace:acquired")].workspace_changed
    stub = workspace_pb2_grpc.WorkspaceServiceStub(suite._channel("workspace"))
    workspace = (await stub.GetWorkspace(workspace_pb2.GetWorkspaceRequest(workspace_id=acquired.workspace_id))).workspace
    restored = events[types.index("snapshot:restored")].snapshot_restored.commit
    # Nothing had been snapshotted since the start: the restore is the initial snapshot itself.
    assert restored == workspace.base_commit
    created = events[types.index("snapshot:created")].snapshot_created
    assert list(created.changed_files) == ["calc.py"], "the timed-out attempt's file leaked into the snapshot"
    assert not (Path(acquired.path) / "half-done.txt").exists()
    # Snapshots live in the workspace's trusted git directory (docs/security.md, "Git").
    trusted = suite.home / "gitdirs" / f"{acquired.workspace_id}.git"
    assert git(str(trusted), "show", "--stat", "--format=", created.commit).startswith("calc.py")
    assert not workspace.leased, "the run released its workspace"
    released = events[types.index("workspace:released")].workspace_changed
    assert released.workspace_id == acquired.workspace_id
