"""The workspace service's Push RPC and github_repo sources, against a real grpc.aio server,
real bare repositories, and a fake GitHub git host (git's own http-backend behind a real
HTTP server that demands the token)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from agentgate.common.channels import aio_channel
from agentgate.common.config import ServiceSettings
from agentgate.common.errors import field_violations
from agentgate.common.server import start_server
from agentgate.v1 import common_pb2, workspace_pb2, workspace_pb2_grpc
from agentgate.workspace.server import WorkspaceApp

from ..fake_github import FakeGitHost, git, grep_tree, make_remote_and_clone, tree_digest
from .inprocess_suite import free_address

TOKEN = "ghp_pushTestToken0123456789abcdefABCDEF"


def write(root: str, name: str, text: str) -> None:
    Path(root, name).write_text(text)


def read(root: str, name: str) -> str:
    return Path(root, name).read_text()


@pytest.fixture
async def stub(home: Path) -> AsyncIterator[workspace_pb2_grpc.WorkspaceServiceStub]:
    address = free_address()
    running = await start_server(WorkspaceApp(ServiceSettings("workspace", address, home)), address)
    channel = aio_channel(address)
    yield workspace_pb2_grpc.WorkspaceServiceStub(channel)
    await channel.close()
    await running.stop(grace=1.0)


@pytest.fixture
def git_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGitHost]:
    host = FakeGitHost(tmp_path / "git-host", token=TOKEN).start()
    monkeypatch.setenv("AGENTGATE_GITHUB_GIT_URL", host.url)
    monkeypatch.setenv("AGENTGATE_GITHUB_TOKEN", TOKEN)
    yield host
    host.stop()


async def prepare(stub, source: common_pb2.WorkspaceSource, run_id: str = "run-push-1", **extra):
    return (
        await stub.PrepareForRun(workspace_pb2.PrepareForRunRequest(run_id=run_id, source=source, **extra), timeout=60)
    ).workspace


async def test_push_sends_the_run_branch_to_the_remote_and_leaves_the_user_clone_alone(stub, tmp_path: Path):
    bare, clone = make_remote_and_clone(tmp_path, {"calc.py": "def add(a, b):\n    return a - b\n"})
    before = tree_digest(clone)
    ws = await prepare(stub, common_pb2.WorkspaceSource(local_path=str(clone)), branch_pattern="bots/{run_id}/fix")
    assert ws.branch == "bots/run-push-1/fix"
    write(ws.path, "calc.py", "def add(a, b):\n    return a + b\n")
    snapshot = await stub.CreateSnapshot(workspace_pb2.CreateSnapshotRequest(workspace_id=ws.id, message="fix"))

    pushed = await stub.Push(workspace_pb2.PushRequest(workspace_id=ws.id), timeout=60)
    assert pushed.branch == "bots/run-push-1/fix"
    assert pushed.commit == snapshot.snapshot_id
    assert pushed.remote_url == str(bare)
    assert git("rev-parse", "refs/heads/bots/run-push-1/fix", cwd=bare).strip() == snapshot.snapshot_id
    assert "a + b" in git("show", "bots/run-push-1/fix:calc.py", cwd=bare)
    assert tree_digest(clone) == before, "the user's repository was changed"
    # Pushing again is a no-op, not an error.
    again = await stub.Push(workspace_pb2.PushRequest(workspace_id=ws.id), timeout=60)
    assert again.commit == pushed.commit


async def test_push_errors_say_what_is_wrong(stub, tmp_path: Path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.txt").write_text("a\n")
    ws = await prepare(stub, common_pb2.WorkspaceSource(local_path=str(plain)))
    with pytest.raises(grpc.aio.AioRpcError) as no_remote:
        await stub.Push(workspace_pb2.PushRequest(workspace_id=ws.id))
    assert no_remote.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "has no git remote 'origin'" in no_remote.value.details()

    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.Push(workspace_pb2.PushRequest(workspace_id=ws.id, branch="a b", remote="-x"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(bad.value)] == ["remote", "branch"]

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.Push(workspace_pb2.PushRequest(workspace_id="ws-0000000000000000"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    # A remote that does not answer: worth retrying, so UNAVAILABLE. The remote is the
    # source's origin, resolved when the workspace was made.
    git("init", "-q", cwd=plain)
    git("remote", "add", "origin", "http://127.0.0.1:9/octo/proj.git", cwd=plain)
    unreachable = await prepare(stub, common_pb2.WorkspaceSource(local_path=str(plain)), run_id="run-push-9")
    with pytest.raises(grpc.aio.AioRpcError) as down:
        await stub.Push(workspace_pb2.PushRequest(workspace_id=unreachable.id), timeout=60)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "git push to http://127.0.0.1:9/octo/proj.git failed" in down.value.details()


async def test_github_repo_is_cloned_and_pushed_with_the_token_never_written(stub, git_host, home, tmp_path):
    bare = git_host.bare_repo("octo", "proj")
    make_remote_and_clone(tmp_path, {"README.md": "hello\n"}, bare=bare)
    git("branch", "dev", "main", cwd=bare)
    ws = await prepare(stub, common_pb2.WorkspaceSource(github_repo="octo/proj", ref="dev"))
    assert read(ws.path, "README.md") == "hello\n"
    write(ws.path, "NEW.md", "new\n")
    await stub.CreateSnapshot(workspace_pb2.CreateSnapshotRequest(workspace_id=ws.id))
    pushed = await stub.Push(workspace_pb2.PushRequest(workspace_id=ws.id), timeout=60)
    assert pushed.remote_url == f"{git_host.url}/octo/proj.git"
    assert git("show", "agentgate/run-push-1:NEW.md", cwd=bare) == "new\n"
    # Every request to the git host carried the token, and it is nowhere on disk.
    assert git_host.auth_headers and set(git_host.auth_headers) == {git_host.expected_authorization}
    assert grep_tree(home, [TOKEN, git_host.expected_authorization.split()[1]]) == []


async def test_github_repo_without_the_right_token_fails_clearly(stub, git_host, monkeypatch):
    make_remote_and_clone(git_host.root.parent, {"README.md": "x\n"}, bare=git_host.bare_repo("octo", "private"))
    monkeypatch.setenv("AGENTGATE_GITHUB_TOKEN", "ghp_wrongTokenWrongTokenWrongToken0123")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await prepare(stub, common_pb2.WorkspaceSource(github_repo="octo/private"), run_id="run-push-2")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"{git_host.url}/octo/private.git" in refused.value.details()
    assert "ghp_wrongToken" not in refused.value.details()
