"""The rest of the workspace facade (docs/workspaces.md) through its stub, on a real grpc.aio server and
real git: CreateWorkspace, AcquireLease and lease expiry, RestoreSnapshot, ListSnapshots,
GetDiff, CleanupRun, ListWorkspaces, DeleteWorkspace.

Lease expiry uses the manager's injectable clock, so no test waits for a lease to run out.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from agentgate.common.channels import aio_channel
from agentgate.common.config import ServiceSettings
from agentgate.common.errors import field_violations
from agentgate.common.server import start_server
from agentgate.v1 import common_pb2, workspace_pb2, workspace_pb2_grpc
from agentgate.workspace import snapshots
from agentgate.workspace.server import WorkspaceApp

W = workspace_pb2


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    )
    return done.stdout.strip()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Facade:
    stub: workspace_pb2_grpc.WorkspaceServiceStub
    app: WorkspaceApp
    home: Path
    clock: Clock

    async def prepare(self, source: Path, run_id: str = "run-1", **kwargs: int) -> W.Workspace:
        request = W.PrepareForRunRequest(
            run_id=run_id, source=common_pb2.WorkspaceSource(local_path=str(source)), **kwargs
        )
        return (await self.stub.PrepareForRun(request)).workspace

    async def get(self, workspace_id: str) -> W.Workspace:
        return (await self.stub.GetWorkspace(W.GetWorkspaceRequest(workspace_id=workspace_id))).workspace

    async def snapshot(self, workspace_id: str, message: str) -> str:
        response = await self.stub.CreateSnapshot(W.CreateSnapshotRequest(workspace_id=workspace_id, message=message))
        return response.snapshot_id


@pytest.fixture
async def facade(home: Path) -> AsyncIterator[Facade]:
    settings = ServiceSettings.load("workspace", "127.0.0.1:0", str(home))
    app = WorkspaceApp(settings, kill_grace_seconds=1.0)
    running = await start_server(app, "127.0.0.1:0")
    clock = Clock()
    app.manager.clock = clock
    channel = aio_channel(f"127.0.0.1:{running.port}")
    try:
        yield Facade(workspace_pb2_grpc.WorkspaceServiceStub(channel), app, home, clock)
    finally:
        await channel.close()
        await running.stop(grace=1)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A plain directory (not a git repository) with a file ignored by its .gitignore."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (root / "notes.txt").write_text("first\n")
    (root / ".gitignore").write_text("build/\n")
    return root


def exists(path: str) -> bool:
    return Path(path).exists()


def is_dir(path: str) -> bool:
    return Path(path).is_dir()


def files_of(root: Path) -> dict[str, str]:
    """Every file outside .git with its content."""
    return {
        str(path.relative_to(root)): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.is_file() and ".git" not in path.relative_to(root).parts
    }


async def expect_error(call, code: grpc.StatusCode, text: str = "") -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    assert text in (info.value.details() or ""), info.value.details()
    return info.value


# --- CreateWorkspace --------------------------------------------------------------------


async def test_create_workspace_without_run_has_no_branch_of_ours_no_lease_and_a_base_snapshot(
    facade: Facade, project: Path
) -> None:
    before = files_of(project)
    response = await facade.stub.CreateWorkspace(
        W.CreateWorkspaceRequest(source=common_pb2.WorkspaceSource(local_path=str(project)))
    )
    workspace = response.workspace
    assert workspace.id.startswith("ws-")
    assert workspace.run_id == ""
    assert not workspace.leased
    assert workspace.branch == "main"  # a fresh repository's branch, not agentgate/...
    assert workspace.HasField("created_at")
    path = Path(workspace.path)
    assert path.parent == facade.home / "workspaces"
    assert files_of(path) == before
    assert git(path, "rev-parse", "HEAD") == workspace.base_commit
    listed = (await facade.stub.ListSnapshots(W.ListSnapshotsRequest(workspace_id=workspace.id))).snapshots
    assert [s.id for s in listed] == [workspace.base_commit]
    assert files_of(project) == before, "the source was written"


async def test_create_workspace_refuses_bad_sources(facade: Facade, tmp_path: Path) -> None:
    error = await expect_error(
        facade.stub.CreateWorkspace(W.CreateWorkspaceRequest(source=common_pb2.WorkspaceSource(local_path="relative"))),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert [v.field for v in field_violations(error)] == ["source.local_path"]
    await expect_error(
        facade.stub.CreateWorkspace(W.CreateWorkspaceRequest()), grpc.StatusCode.INVALID_ARGUMENT, "source"
    )
    await expect_error(
        facade.stub.CreateWorkspace(
            W.CreateWorkspaceRequest(source=common_pb2.WorkspaceSource(local_path=str(tmp_path / "missing")))
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "does not exist",
    )
    assert list((facade.home / "workspaces").iterdir()) == [], "a failed create left files behind"


async def test_create_workspace_from_a_git_url_at_a_ref_checks_out_that_commit(facade: Facade, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    first = git(repo, "rev-parse", "HEAD")
    (repo / "a.txt").write_text("two\n")
    git(repo, "commit", "-q", "-am", "two")
    response = await facade.stub.CreateWorkspace(
        W.CreateWorkspaceRequest(source=common_pb2.WorkspaceSource(git_url=f"file://{repo}", ref=first))
    )
    path = Path(response.workspace.path)
    assert (path / "a.txt").read_text() == "one\n"
    assert response.workspace.branch == ""  # detached at the ref


# --- leases -----------------------------------------------------------------------------


async def test_acquire_lease_takes_renews_refuses_others_and_expires(facade: Facade, project: Path) -> None:
    created = (
        await facade.stub.CreateWorkspace(
            W.CreateWorkspaceRequest(source=common_pb2.WorkspaceSource(local_path=str(project)))
        )
    ).workspace
    error = await expect_error(
        facade.stub.AcquireLease(W.AcquireLeaseRequest(workspace_id=created.id)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert [v.field for v in field_violations(error)] == ["holder"]
    error = await expect_error(
        facade.stub.AcquireLease(W.AcquireLeaseRequest(workspace_id=created.id, holder="a", lease_seconds=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert [v.field for v in field_violations(error)] == ["lease_seconds"]

    taken = (
        await facade.stub.AcquireLease(W.AcquireLeaseRequest(workspace_id=created.id, holder="alice", lease_seconds=60))
    ).workspace
    assert taken.leased and taken.lease_holder == "alice"
    assert taken.lease_expires_at.seconds == int(facade.clock.now) + 60

    # The default length is an hour; the holder renews its own lease.
    facade.clock.now += 30
    renewed = (await facade.stub.AcquireLease(W.AcquireLeaseRequest(workspace_id=created.id, holder="alice"))).workspace
    assert renewed.lease_expires_at.seconds == int(facade.clock.now) + 3600

    await expect_error(
        facade.stub.AcquireLease(W.AcquireLeaseRequest(workspace_id=created.id, holder="bob")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "leased by alice",
    )

    facade.clock.now += 3601  # alice's lease ran out: the workspace is free again
    assert not (await facade.get(created.id)).leased
    bob = (await facade.stub.AcquireLease(W.AcquireLeaseRequest(workspace_id=created.id, holder="bob"))).workspace
    assert bob.leased and bob.lease_holder == "bob"

    await expect_error(
        facade.stub.AcquireLease(W.AcquireLeaseRequest(workspace_id="ws-0000000000000000", holder="bob")),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_a_run_workspace_lease_expires_and_then_refuses_changes(facade: Facade, project: Path) -> None:
    workspace = await facade.prepare(project, run_id="run-exp", lease_seconds=120)
    assert workspace.leased and workspace.lease_holder == "run-exp"
    assert workspace.lease_expires_at.seconds == int(facade.clock.now) + 120
    await facade.snapshot(workspace.id, "while leased")  # allowed

    facade.clock.now += 121
    assert not (await facade.get(workspace.id)).leased
    await expect_error(
        facade.stub.CreateSnapshot(W.CreateSnapshotRequest(workspace_id=workspace.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "lease expired",
    )
    await expect_error(
        facade.stub.RestoreSnapshot(W.RestoreSnapshotRequest(workspace_id=workspace.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "lease expired",
    )
    # An expired lease blocks nobody: the workspace may be deleted without force.
    await facade.stub.DeleteWorkspace(W.DeleteWorkspaceRequest(workspace_id=workspace.id))
    await expect_error(facade.get(workspace.id), grpc.StatusCode.NOT_FOUND)


async def test_prepare_refuses_a_bad_lease_length(facade: Facade, project: Path) -> None:
    error = await expect_error(facade.prepare(project, lease_seconds=-5), grpc.StatusCode.INVALID_ARGUMENT)
    assert [v.field for v in field_violations(error)] == ["lease_seconds"]
    default = await facade.prepare(project, run_id="run-default")
    assert default.lease_expires_at.seconds == int(facade.clock.now) + 3600


# --- snapshots --------------------------------------------------------------------------


async def test_snapshots_list_diff_and_restore(facade: Facade, project: Path) -> None:
    workspace = await facade.prepare(project, run_id="run-snap")
    path = Path(workspace.path)
    base_files = files_of(path)

    (path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (path / "new.txt").write_text("new\n")
    s1 = await facade.snapshot(workspace.id, "iteration 1")
    state1 = files_of(path)
    (path / "notes.txt").unlink()
    (path / "more.txt").write_text("more\n")
    s2 = await facade.snapshot(workspace.id, "iteration 2")

    listed = (await facade.stub.ListSnapshots(W.ListSnapshotsRequest(workspace_id=workspace.id))).snapshots
    assert [s.id for s in listed] == [s2, s1, workspace.base_commit]
    assert [s.message for s in listed[:2]] == ["iteration 2", "iteration 1"]
    assert all(s.HasField("created_at") for s in listed)

    whole = await facade.stub.GetDiff(W.GetDiffRequest(workspace_id=workspace.id))
    assert sorted(whole.changed_files) == ["calc.py", "more.txt", "new.txt", "notes.txt"]
    assert "+    return a + b" in whole.diff and "-first" in whole.diff and not whole.truncated
    step = await facade.stub.GetDiff(W.GetDiffRequest(workspace_id=workspace.id, from_snapshot_id=s1, to_snapshot_id=s2))
    assert sorted(step.changed_files) == ["more.txt", "notes.txt"]

    # Restore to s1 with an uncommitted edit, an untracked file and an ignored one around.
    (path / "calc.py").write_text("broken on purpose\n")
    (path / "scratch.txt").write_text("untracked\n")
    (path / "build").mkdir()
    (path / "build" / "out.bin").write_text("ignored build output\n")
    restored = (
        await facade.stub.RestoreSnapshot(W.RestoreSnapshotRequest(workspace_id=workspace.id, snapshot_id=s1))
    ).snapshot_id
    assert restored not in (s1, s2)
    # Snapshots live in the workspace's trusted git directory, not in the agent's `.git`.
    trusted = path.parent.parent / "gitdirs" / f"{workspace.id}.git"
    assert git(trusted, "rev-parse", "HEAD") == restored
    assert git(trusted, "rev-parse", f"{restored}^{{tree}}") == git(trusted, "rev-parse", f"{s1}^{{tree}}")
    assert {k: v for k, v in files_of(path).items() if not k.startswith("build/")} == state1
    assert (path / "build" / "out.bin").exists(), "files ignored by git are left alone"
    listed = (await facade.stub.ListSnapshots(W.ListSnapshotsRequest(workspace_id=workspace.id))).snapshots
    assert [s.id for s in listed] == [restored, s2, s1, workspace.base_commit], "history is kept"
    assert listed[0].message.startswith("agentgate: restore snapshot")

    # The restore is the last snapshot now: an empty id discards everything changed since.
    (path / "calc.py").write_text("another bad edit\n")
    again = (await facade.stub.RestoreSnapshot(W.RestoreSnapshotRequest(workspace_id=workspace.id))).snapshot_id
    assert again == restored, "no new commit when the files already match"
    assert (path / "calc.py").read_text() == state1["calc.py"]

    # Back to the initial snapshot.
    await facade.stub.RestoreSnapshot(
        W.RestoreSnapshotRequest(workspace_id=workspace.id, snapshot_id=workspace.base_commit)
    )
    assert {k: v for k, v in files_of(path).items() if not k.startswith("build/")} == base_files
    nothing = await facade.stub.GetDiff(W.GetDiffRequest(workspace_id=workspace.id))
    assert nothing.diff == "" and list(nothing.changed_files) == []


async def test_snapshot_requests_with_bad_ids_are_refused(facade: Facade, project: Path) -> None:
    workspace = await facade.prepare(project, run_id="run-bad")
    error = await expect_error(
        facade.stub.RestoreSnapshot(W.RestoreSnapshotRequest(workspace_id=workspace.id, snapshot_id="--hard")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert [v.field for v in field_violations(error)] == ["snapshot_id"]
    await expect_error(
        facade.stub.RestoreSnapshot(W.RestoreSnapshotRequest(workspace_id=workspace.id, snapshot_id="f" * 40)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "is not a snapshot",
    )
    error = await expect_error(
        facade.stub.GetDiff(W.GetDiffRequest(workspace_id=workspace.id, to_snapshot_id="a b")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert [v.field for v in field_violations(error)] == ["to_snapshot_id"]
    await expect_error(
        facade.stub.ListSnapshots(W.ListSnapshotsRequest(workspace_id="../../etc")), grpc.StatusCode.NOT_FOUND
    )
    await facade.stub.ReleaseLease(W.ReleaseLeaseRequest(workspace_id=workspace.id))
    await expect_error(
        facade.stub.RestoreSnapshot(W.RestoreSnapshotRequest(workspace_id=workspace.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "released",
    )


async def test_a_large_diff_is_cut_and_flagged(facade: Facade, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshots, "MAX_DIFF_BYTES", 300)
    workspace = await facade.prepare(project, run_id="run-big")
    (Path(workspace.path) / "big.txt").write_text("é line of text\n" * 200)
    await facade.snapshot(workspace.id, "big")
    response = await facade.stub.GetDiff(W.GetDiffRequest(workspace_id=workspace.id))
    assert response.truncated
    assert len(response.diff.encode()) <= 300
    assert response.changed_files == ["big.txt"]


# --- inventory --------------------------------------------------------------------------


async def test_list_workspaces_newest_first_in_pages(facade: Facade, project: Path) -> None:
    made = [(await facade.prepare(project, run_id=f"run-{i}")).id for i in range(5)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        response = await facade.stub.ListWorkspaces(W.ListWorkspacesRequest(page_size=2, page_token=token))
        seen += [w.id for w in response.workspaces]
        pages += 1
        token = response.next_page_token
        if not token:
            break
    assert seen == list(reversed(made))
    assert pages == 3
    everything = await facade.stub.ListWorkspaces(W.ListWorkspacesRequest())
    assert [w.id for w in everything.workspaces] == list(reversed(made)) and not everything.next_page_token
    assert all(w.leased and w.run_id for w in everything.workspaces)
    for request, field in [
        (W.ListWorkspacesRequest(page_token="not-a-token"), "page_token"),
        (W.ListWorkspacesRequest(page_size=-1), "page_size"),
    ]:
        error = await expect_error(facade.stub.ListWorkspaces(request), grpc.StatusCode.INVALID_ARGUMENT)
        assert [v.field for v in field_violations(error)] == [field]


async def test_delete_workspace_refuses_a_leased_one_unless_forced(facade: Facade, project: Path) -> None:
    workspace = await facade.prepare(project, run_id="run-del")
    agent_files = facade.home / "agent-files" / workspace.id
    agent_files.mkdir(parents=True)
    (agent_files / "prompt.md").write_text("x")
    await expect_error(
        facade.stub.DeleteWorkspace(W.DeleteWorkspaceRequest(workspace_id=workspace.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "leased by run-del",
    )
    assert is_dir(workspace.path)
    await facade.stub.DeleteWorkspace(W.DeleteWorkspaceRequest(workspace_id=workspace.id, force=True))
    assert not exists(workspace.path)
    assert not agent_files.exists()
    await expect_error(facade.get(workspace.id), grpc.StatusCode.NOT_FOUND)
    await expect_error(
        facade.stub.DeleteWorkspace(W.DeleteWorkspaceRequest(workspace_id=workspace.id)), grpc.StatusCode.NOT_FOUND
    )


async def test_cleanup_run_deletes_only_that_runs_workspaces_and_clean_rooms(facade: Facade, project: Path) -> None:
    first = await facade.prepare(project, run_id="r1")
    second = await facade.prepare(project, run_id="r1")
    other = await facade.prepare(project, run_id="r1-x")
    rooms = facade.home / "cleanrooms"
    rooms.mkdir(parents=True, exist_ok=True)
    mine = [rooms / "r1-1-deadbeef", rooms / "r1-2-0badf00d"]
    theirs = rooms / "r1-x-1-abcdef01"  # run "r1-x": a prefix match would take it
    for room in [*mine, theirs]:
        room.mkdir()
        (room / "file").write_text("x")
    (rooms / ".r1-1-deadbeef.index").write_text("index")

    await expect_error(
        facade.stub.CleanupRun(W.CleanupRunRequest(run_id="r1")), grpc.StatusCode.FAILED_PRECONDITION, "leased"
    )
    assert is_dir(first.path) and all(room.exists() for room in mine), "a refused cleanup deleted something"

    for workspace in (first, second):
        await facade.stub.ReleaseLease(W.ReleaseLeaseRequest(workspace_id=workspace.id))
    response = await facade.stub.CleanupRun(W.CleanupRunRequest(run_id="r1"))
    assert list(response.deleted_workspace_ids) == [first.id, second.id]
    assert not exists(first.path) and not exists(second.path)
    assert not any(room.exists() for room in mine)
    assert not (rooms / ".r1-1-deadbeef.index").exists()
    assert theirs.exists() and is_dir(other.path)
    assert (await facade.get(other.id)).run_id == "r1-x"

    assert list((await facade.stub.CleanupRun(W.CleanupRunRequest(run_id="r1"))).deleted_workspace_ids) == []
    error = await expect_error(
        facade.stub.CleanupRun(W.CleanupRunRequest(run_id="../etc")), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert [v.field for v in field_violations(error)] == ["run_id"]
