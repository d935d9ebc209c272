"""Retention and gc (docs/workspaces.md) on the four real services in one event loop: runs
leave nothing on disk unless kept, an agent's hostile tree is deleted without following its
symlinks, and `gc` removes what a dead run left but never a live run's workspace."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agentgate.client import housekeeping
from agentgate.common.channels import sync_channel
from agentgate.common.security import client_token
from agentgate.v1 import (
    common_pb2,
    persistence_pb2,
    persistence_pb2_grpc,
    queue_pb2,
    workspace_pb2,
    workspace_pb2_grpc,
)

from .inprocess_suite import InProcessSuite

W = common_pb2.WorkOrderStatus
KEEP = common_pb2.WORKSPACE_RETENTION_KEEP
ON_FAILURE = common_pb2.WORKSPACE_RETENTION_ON_FAILURE

PASSING = "default:\n  - write: {path: notes.txt, content: \"A\\n\"}\n"
FAILING = "default:\n  - append: {path: other.txt, content: \"nothing useful\\n\"}\n"


def hostile(outside: Path) -> str:
    """An agent that leaves a tree that resists deletion: directories without rights, a
    read-only one, symlinks out of the workspace (to a folder and to a file)."""
    command = (
        "mkdir -p locked/inner readonly && echo x > locked/inner/f && echo y > readonly/g"
        f" && ln -s {outside} out-dir && ln -s {outside}/keep.txt out-file"
        " && chmod 000 locked/inner && chmod 000 locked && chmod 500 readonly"
    )
    return f"default:\n  - run: \"{command}\"\n  - write: {{path: notes.txt, content: \"A\\n\"}}\n"


@pytest.fixture
async def suite(home: Path):
    running = await InProcessSuite.start(home, max_concurrent=2)
    yield running
    await running.stop()


def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "notes.txt").write_text("start\n")
    (root / "verify.yaml").write_text('version: "1"\ntests:\n  - {name: has-A, kind: test, command: "grep -qx A notes.txt"}\n')
    return root


def spec(root: Path, script: str, retention: int = 0) -> common_pb2.WorkOrderSpec:
    built = common_pb2.WorkOrderSpec(
        task_prompt="Write the notes", agent=common_pb2.AgentSpec(name="scripted", options={"script": script})
    )
    built.source.local_path = str(root)
    built.harness.loop_strategy.max_iterations = 1
    if retention:
        built.harness.retention.workspace = retention  # type: ignore[assignment]
    return built


def exists(path: str | Path) -> bool:
    return Path(path).exists()


def entries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def on_disk(home: Path) -> dict[str, list[str]]:
    """What runs left: workspaces, git directories, clean rooms and agent files."""
    return {name: entries(home / name) for name in ("workspaces", "gitdirs", "cleanrooms", "agent-files",
                                                     "prompts", "agent-homes")}


async def test_twenty_work_orders_leave_no_workspace_or_clean_room(suite: InProcessSuite, home: Path, tmp_path: Path):
    root = project(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the agent's\n")
    scripts = [PASSING, FAILING, hostile(outside), PASSING]
    work_orders = [await suite.submit(spec(root, scripts[i % len(scripts)])) for i in range(20)]
    finals = [await suite.wait_terminal(wo.id, timeout=240) for wo in work_orders]
    statuses = [final.status for final in finals]
    assert statuses.count(W.WORK_ORDER_STATUS_FAILED) == 5, [final.error for final in finals]
    assert statuses.count(W.WORK_ORDER_STATUS_SUCCEEDED) == 15
    # Every run ran (its workspace existed) and is gone, hostile trees included.
    run = await suite.run(finals[2].run_id)
    assert run.workspace_id and not exists(run.workspace_path)
    assert on_disk(home) == {name: [] for name in on_disk(home)}
    # The symlinks were removed, never followed.
    assert (outside / "keep.txt").read_text() == "not the agent's\n"
    events = await suite.events(finals[0].id)
    released = [e.workspace_changed for e in events if e.type == "workspace:released"]
    assert len(released) == 1 and released[0].deleted


async def test_keep_and_on_failure_keep_the_workspace(suite: InProcessSuite, tmp_path: Path):
    root = project(tmp_path)
    kept = await suite.wait_terminal((await suite.submit(spec(root, PASSING, KEEP))).id)
    failed = await suite.wait_terminal((await suite.submit(spec(root, FAILING, ON_FAILURE))).id)
    passed = await suite.wait_terminal((await suite.submit(spec(root, PASSING, ON_FAILURE))).id)
    assert [kept.status, failed.status, passed.status] == [
        W.WORK_ORDER_STATUS_SUCCEEDED, W.WORK_ORDER_STATUS_FAILED, W.WORK_ORDER_STATUS_SUCCEEDED
    ]
    for final, expected in ((kept, True), (failed, True), (passed, False)):
        run = await suite.run(final.run_id)
        assert exists(run.workspace_path) is expected, final


def sync_stubs(suite: InProcessSuite) -> tuple[workspace_pb2_grpc.WorkspaceServiceStub,
                                              persistence_pb2_grpc.PersistenceServiceStub, list]:
    token = client_token({"AGENTGATE_HOME": str(suite.home)})
    channels = [sync_channel(suite.addresses[name], token) for name in ("workspace", "persistence")]
    return (workspace_pb2_grpc.WorkspaceServiceStub(channels[0]),
            persistence_pb2_grpc.PersistenceServiceStub(channels[1]), channels)


async def test_gc_removes_dead_runs_leftovers_and_never_a_live_runs(suite: InProcessSuite, home: Path, tmp_path: Path):
    root = project(tmp_path)
    workspace, persistence, channels = sync_stubs(suite)
    try:
        # A live run: its agent is still working when gc runs.
        live = await suite.submit(spec(root, "default:\n  - sleep: 30\n"))
        # A dead run: prepared, recorded as BUILDING, then its worker died holding the lease.
        ws = workspace_pb2_grpc.WorkspaceServiceStub(suite.service_channel("workspace"))
        source = common_pb2.WorkspaceSource(local_path=str(root))
        dead = (await ws.PrepareForRun(workspace_pb2.PrepareForRunRequest(run_id="run-dead", source=source))).workspace
        record = common_pb2.Run(id="run-dead", work_order_id="wo-dead", state=common_pb2.RUN_STATE_BUILDING)
        record.created_at.GetCurrentTime()
        service_persistence = persistence_pb2_grpc.PersistenceServiceStub(suite.service_channel("persistence"))
        await service_persistence.CreateRun(persistence_pb2.CreateRunRequest(run=record))
        # A run persistence never heard of, whose workspace nobody holds.
        orphan = (await ws.PrepareForRun(workspace_pb2.PrepareForRunRequest(run_id="run-orphan", source=source))).workspace
        await ws.ReleaseLease(workspace_pb2.ReleaseLeaseRequest(workspace_id=orphan.id))
        (home / "cleanrooms" / "run-orphan-1-0123abcd").mkdir(parents=True)

        for _ in range(600):
            if any(e.type == "agent:started" for e in await _events_so_far(suite, live.id)):
                break
            await asyncio.sleep(0.1)
        live_run = await suite.run(live.run_id)

        plan = await asyncio.to_thread(housekeeping.plan_gc, workspace, persistence)
        assert {item.run_id for item, _ in plan.delete} == {"run-orphan"}
        assert {item.run_id for item, _ in plan.keep} == {live.run_id, "run-dead"}
        deleted = await asyncio.to_thread(housekeeping.apply_gc, workspace, plan)
        assert deleted == [orphan.id]
        assert not exists(orphan.path) and not exists(home / "cleanrooms" / "run-orphan-1-0123abcd")
        assert exists(live_run.workspace_path) and exists(dead.path)

        # The dead run ends (as a restarted worker would record it): its leased workspace goes.
        record.state = common_pb2.RUN_STATE_FAILED
        record.finished_at.GetCurrentTime()
        await service_persistence.UpdateRun(persistence_pb2.UpdateRunRequest(run=record))
        plan = await asyncio.to_thread(housekeeping.plan_gc, workspace, persistence)
        assert {item.run_id for item, _ in plan.delete} == {"run-dead"}
        assert await asyncio.to_thread(housekeeping.apply_gc, workspace, plan) == [dead.id]
        assert not exists(dead.path) and not exists(home / "gitdirs" / f"{dead.id}.git")
        assert exists(live_run.workspace_path), "gc removed a live run's workspace"

        # --runs: the finished run's records and files go; the live one's stay.
        now = record.finished_at.ToSeconds() + 10
        old = await asyncio.to_thread(housekeeping.delete_old_runs, persistence, 0, False, now)
        assert list(old.run_ids) == ["run-dead"]
        assert (await asyncio.to_thread(housekeeping._run_or_none, persistence, "run-dead")) is None
        assert (await suite.run(live.run_id)).id == live.run_id

        usage = await asyncio.to_thread(housekeeping.disk_usage, workspace, persistence)
        assert usage["workspaces"] and usage["run_files"] and usage["total"] >= usage["workspaces"]
        # Canceled, the live run ends, and its workspace goes with it.
        await suite.queue.CancelWorkOrder(queue_pb2.CancelWorkOrderRequest(work_order_id=live.id, reason="test over"))
        await suite.wait_terminal(live.id)
        for _ in range(100):
            if not exists(live_run.workspace_path):
                break
            await asyncio.sleep(0.1)
        assert not exists(live_run.workspace_path)
    finally:
        for channel in channels:
            channel.close()


async def _events_so_far(suite: InProcessSuite, work_order_id: str) -> list:
    call = suite.persistence.StreamEvents(
        persistence_pb2.StreamEventsRequest(work_order_id=work_order_id, follow=False), timeout=5
    )
    return [response.event async for response in call]




async def test_a_restarted_workspace_service_removes_what_its_predecessor_left(home: Path, tmp_path: Path):
    """A preparation cut short leaves folders the index never heard of, a verification a
    clean room: the next workspace service removes them at start, and keeps what it knows."""
    first = await InProcessSuite.start(home)
    try:
        kept = await first.wait_terminal((await first.submit(spec(project(tmp_path), PASSING, KEEP))).id)
        run = await first.run(kept.run_id)
    finally:
        await first.stop()
    orphans = [home / "workspaces" / "ws-0123456789abcdef", home / "gitdirs" / "ws-0123456789abcdef.git",
               home / "cleanrooms" / "run-x-1-0123abcd"]
    for folder in orphans:
        (folder / "sub").mkdir(parents=True)
    second = await InProcessSuite.start(home)
    await second.stop()
    assert [exists(folder) for folder in orphans] == [False, False, False]
    assert exists(run.workspace_path) and exists(home / "gitdirs" / f"{run.workspace_id}.git")
