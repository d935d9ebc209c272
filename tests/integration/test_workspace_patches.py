"""ExportPatch and PrepareForRun with stored patches (docs/results.md), through a real
workspace service and real git: binary files, renames, deletions and non-UTF-8 text survive
the round trip; an oversized patch is refused; a patch that no longer applies fails the
preparation and leaves no workspace."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from agentgate.common.patches import MAX_PATCH_BYTES
from agentgate.v1 import common_pb2, workspace_pb2
from tests.integration.workspace_client import WorkspaceClient, git, workspace_service, write_files

BINARY = bytes(range(256)) * 8
LATIN1 = "caf\xe9\n".encode("latin-1")


def make_repo(root: Path) -> Path:
    root.mkdir()
    git(root, "init", "-q")
    write_files(root, {"keep.txt": "one\ntwo\n", "old-name.txt": "rename me\n" * 20, "gone.txt": "bye\n"})
    git(root, "add", "-A")
    git(root, "commit", "-qm", "start")
    # An uncommitted change: in the workspace, and so in the cumulative patch.
    write_files(root, {"keep.txt": "one\ntwo\nthree\n"})
    return root


def tree_of(client: WorkspaceClient, workspace: workspace_pb2.Workspace, commit: str) -> str:
    git_dir = client.home / "gitdirs" / f"{workspace.id}.git"
    return git(git_dir, f"--git-dir={git_dir}", "rev-parse", f"{commit}^{{tree}}")


async def export(client: WorkspaceClient, workspace_id: str, old: str = "", new: str = "") -> workspace_pb2.ExportPatchResponse:
    request = workspace_pb2.ExportPatchRequest(workspace_id=workspace_id, from_snapshot_id=old, to_snapshot_id=new)
    return await client.stub.ExportPatch(request)


async def test_patches_round_trip_binary_renames_and_resume(tmp_path: Path, home: Path) -> None:
    source = make_repo(tmp_path / "src")
    head = git(source, "rev-parse", "HEAD")
    async with workspace_service(home) as client:
        first = await client.prepare(source, run_id="run-p")
        path = Path(first.path)
        write_files(path, {"data.bin": BINARY, "latin.txt": LATIN1, "gone.txt": None})
        os.rename(path / "old-name.txt", path / "new-name.txt")
        one = await client.snapshot(first, "iteration 1")
        write_files(path, {"data.bin": BINARY[::-1], "keep.txt": "changed\n"})
        two = await client.snapshot(first, "iteration 2")

        patch1 = await export(client, first.id, first.base_commit, one)
        assert b"GIT binary patch" in patch1.patch and b"rename from old-name.txt" in patch1.patch
        assert patch1.to_commit == one and patch1.to_tree == tree_of(client, first, one)
        patch2 = await export(client, first.id, one, two)
        cumulative = await export(client, first.id)
        assert cumulative.from_commit == head  # against what the user's repository has
        assert cumulative.to_commit == two and "keep.txt" in cumulative.changed_files

        # The cumulative patch on the source's commit gives the last snapshot's tree.
        check = tmp_path / "check"
        git(tmp_path, "clone", "-q", str(source), str(check))
        (tmp_path / "c.diff").write_bytes(cumulative.patch)
        git(check, "apply", "--index", "--binary", str(tmp_path / "c.diff"))
        assert git(check, "write-tree") == cumulative.to_tree

        # A resumed run: a new workspace from the source plus the iteration patches.
        request = workspace_pb2.PrepareForRunRequest(
            run_id="run-p",
            source=common_pb2.WorkspaceSource(local_path=str(source)),
            patches=[patch1.patch, patch2.patch],
        )
        resumed = await client.stub.PrepareForRun(request)
        assert len(resumed.patch_snapshots) == 2
        assert tree_of(client, resumed.workspace, resumed.patch_snapshots[0]) == patch1.to_tree
        assert tree_of(client, resumed.workspace, resumed.patch_snapshots[1]) == patch2.to_tree
        assert (Path(resumed.workspace.path) / "data.bin").read_bytes() == BINARY[::-1]
        assert (Path(resumed.workspace.path) / "latin.txt").read_bytes() == LATIN1
        # Snapshots go on from there.
        after = await client.snapshot(resumed.workspace, "iteration 3")
        assert after == resumed.patch_snapshots[1]


async def test_a_patch_that_no_longer_applies_fails_and_leaves_nothing(tmp_path: Path, home: Path) -> None:
    source = make_repo(tmp_path / "src")
    async with workspace_service(home) as client:
        first = await client.prepare(source, run_id="run-q")
        write_files(Path(first.path), {"keep.txt": "agent's\n"})
        await client.snapshot(first)
        patch = await export(client, first.id, first.base_commit)
        write_files(source, {"keep.txt": "the user moved on\n"})
        before = set(os.listdir(client.home / "workspaces"))
        request = workspace_pb2.PrepareForRunRequest(
            run_id="run-q", source=common_pb2.WorkspaceSource(local_path=str(source)), patches=[patch.patch]
        )
        with pytest.raises(grpc.RpcError) as caught:
            await client.stub.PrepareForRun(request)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "iteration 1" in (caught.value.details() or "") and "keep.txt" in (caught.value.details() or "")
        assert set(os.listdir(client.home / "workspaces")) == before


async def test_export_refuses_an_oversized_patch(tmp_path: Path, home: Path) -> None:
    source = make_repo(tmp_path / "src")
    async with workspace_service(home) as client:
        ws = await client.prepare(source, run_id="run-r")
        # Random bytes do not compress: the base85 patch is larger than the file.
        write_files(Path(ws.path), {"huge.bin": os.urandom(MAX_PATCH_BYTES)})
        await client.snapshot(ws)
        with pytest.raises(grpc.RpcError) as caught:
            await export(client, ws.id)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over the limit" in (caught.value.details() or "")
