"""A workspace starts from one consistent state of a live source (docs/workspaces.md,
"Sources"): a repository that `git gc` packs during the preparation, files deleted and
rewritten while they are copied, a linked worktree, submodules. The source is never
written."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from agentgate.common.channels import aio_channel
from agentgate.common.config import ServiceSettings
from agentgate.common.server import start_server
from agentgate.v1 import common_pb2, workspace_pb2, workspace_pb2_grpc
from agentgate.workspace import sources
from agentgate.workspace.server import WorkspaceApp

from ..fake_github import git, tree_digest
from .inprocess_suite import InProcessSuite

VERIFY_YAML = 'version: "1"\nname: t\ntests:\n  - name: t\n    kind: test\n    command: "test -f made.txt && test -f data/r0-299.txt && grep -q edited notes.txt"\n'


def make_repo(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=root)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "first", cwd=root)
    return root


def loose_objects(repo: Path) -> int:
    count = git("count-objects", cwd=repo).split()[0]
    return int(count)


@pytest.fixture
async def stub(home: Path) -> AsyncIterator[workspace_pb2_grpc.WorkspaceServiceStub]:
    settings = ServiceSettings.load("workspace", "127.0.0.1:0", str(home))
    running = await start_server(WorkspaceApp(settings, kill_grace_seconds=1.0), "127.0.0.1:0")
    channel = aio_channel(f"127.0.0.1:{running.port}")
    try:
        yield workspace_pb2_grpc.WorkspaceServiceStub(channel)
    finally:
        await channel.close()
        await running.stop(grace=1)


async def prepare(stub, source: Path, run_id: str = "run-1") -> workspace_pb2.Workspace:
    request = workspace_pb2.PrepareForRunRequest(run_id=run_id, source=common_pb2.WorkspaceSource(local_path=str(source)))
    return (await stub.PrepareForRun(request, timeout=60)).workspace


def trusted(home: Path, workspace: workspace_pb2.Workspace) -> Path:
    return home / "gitdirs" / f"{workspace.id}.git"


def folder_exists(path: str) -> bool:
    return Path(path).exists()


def files_of(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


# --- git gc during the preparation ------------------------------------------------------------


GIT_WRAPPER = """\
#!/bin/sh
# The service's read of the source (`git pack-objects` there) starts only once a
# `git gc --prune=now` of the source is running; the gc's outcome is logged when both are done.
case " $* " in
  *" pack-objects "*)
    rm -f "$SOURCE/.git/gc.pid"
    "$REAL_GIT" -C "$SOURCE" gc --prune=now --quiet >/dev/null 2>&1 &
    gc=$!
    seen=no
    while kill -0 $gc 2>/dev/null; do
      if [ -e "$SOURCE/.git/gc.pid" ]; then seen=yes; break; fi
    done
    "$REAL_GIT" "$@"; rc=$?
    wait $gc; gc_rc=$?
    echo "gc=$gc_rc running-at-read=$seen read=$rc" >> "$GC_LOG"
    exit $rc;;
esac
exec "$REAL_GIT" "$@"
"""


async def test_work_orders_succeed_while_git_gc_packs_the_source_during_preparation(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path / "repo", {"verify.yaml": VERIFY_YAML, "notes.txt": "notes\n"})
    wrapper_dir = tmp_path / "bin"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "git"
    wrapper.write_text(GIT_WRAPPER)
    wrapper.chmod(0o755)
    log = tmp_path / "gc.log"
    real_git = shutil.which("git")
    assert real_git
    monkeypatch.setenv("REAL_GIT", real_git)
    monkeypatch.setenv("SOURCE", str(repo))
    monkeypatch.setenv("GC_LOG", str(log))
    suite = await InProcessSuite.start(home)
    try:
        for round_number in range(10):
            # Each round the source has hundreds of loose objects for gc to pack and prune,
            # plus an uncommitted edit.
            data = repo / "data"
            data.mkdir(exist_ok=True)
            for i in range(300):
                (data / f"r{round_number}-{i}.txt").write_text(f"round {round_number} file {i}\n")
            git("add", "-A", cwd=repo)
            git("commit", "-q", "-m", f"round {round_number}", cwd=repo)
            (repo / "notes.txt").write_text(f"edited in round {round_number}\n")
            assert loose_objects(repo) >= 300
            before = files_of(repo)

            spec = common_pb2.WorkOrderSpec(
                task_prompt="make a file",
                agent=common_pb2.AgentSpec(name="command", options={"command": "echo made > made.txt"}),
            )
            spec.source.local_path = str(repo)
            spec.harness.loop_strategy.max_iterations = 1
            monkeypatch.setenv("PATH", f"{wrapper_dir}{os.pathsep}{os.environ['PATH']}")
            try:
                work_order = await suite.submit(spec)
                final = await suite.wait_terminal(work_order.id, timeout=120)
            finally:
                monkeypatch.setenv("PATH", os.environ["PATH"].split(os.pathsep, 1)[1])
            assert final.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED, (round_number, final)
            # gc ran during the preparation (it was running when the read started, and
            # the service waited for it), packed and pruned every loose object.
            lines = log.read_text().splitlines()
            assert len(lines) == round_number + 1 and lines[-1] == "gc=0 running-at-read=yes read=0", lines
            assert loose_objects(repo) == 0
            # The user's files are unchanged (inside .git, gc did its own work).
            assert files_of(repo) == before
    finally:
        await suite.stop()


# --- files that change during the copy --------------------------------------------------------


def patch_copy(monkeypatch: pytest.MonkeyPatch, source: Path, always: bool = False) -> list[str]:
    """Makes the copy of `rewritten.txt` race a writer (the source is rewritten right after
    its first copy, or after every copy with `always`), and `gone.txt` vanish just before
    it is copied. Returns the names copied, in order."""
    original = shutil.copyfile
    copied: list[str] = []

    def racing_copy(src, dst, *, follow_symlinks=True):  # type: ignore[no-untyped-def]
        name = Path(src).name
        copied.append(name)
        if name == "gone.txt":
            os.unlink(src)
        result = original(src, dst, follow_symlinks=follow_symlinks)
        if name == "rewritten.txt" and (always or copied.count(name) == 1):
            Path(src).write_text(f"rewritten while copied {len(copied)} " + "y" * 5000 + "\n")
        return result

    monkeypatch.setattr(sources.shutil, "copyfile", racing_copy)
    return copied


@pytest.mark.parametrize("kind", ["plain", "git"])
async def test_a_file_deleted_and_one_rewritten_during_the_copy(
    stub, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    source = tmp_path / "src"
    if kind == "git":
        make_repo(source, {"tracked.txt": "t\n"})
    else:
        source.mkdir()
        (source / "tracked.txt").write_text("t\n")
    (source / "rewritten.txt").write_text("first version\n")
    (source / "gone.txt").write_text("about to go\n")
    copied = patch_copy(monkeypatch, source)
    workspace = await prepare(stub, source)
    path = Path(workspace.path)
    assert copied.count("rewritten.txt") == 2, copied  # copied again after the change
    assert (path / "rewritten.txt").read_text() == (source / "rewritten.txt").read_text()
    assert (path / "rewritten.txt").read_text().startswith("rewritten while copied")
    assert not (path / "gone.txt").exists() and not (source / "gone.txt").exists()
    assert (path / "tracked.txt").read_text() == "t\n"
    names = git("--git-dir", str(trusted(home, workspace)), "ls-tree", "-r", "--name-only", "HEAD", cwd=tmp_path)
    assert names.split() == ["rewritten.txt", "tracked.txt"]


async def test_a_file_that_keeps_changing_fails_the_preparation_naming_it(
    stub, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "rewritten.txt").write_text("hot\n")
    patch_copy(monkeypatch, source, always=True)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await prepare(stub, source)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"{source / 'rewritten.txt'} kept changing" in caught.value.details()
    assert list((home / "workspaces").iterdir()) == [] and list((home / "gitdirs").iterdir()) == []


# --- linked worktrees and submodules ---------------------------------------------------------


async def test_a_linked_worktree_source(stub, home: Path, tmp_path: Path) -> None:
    main = make_repo(tmp_path / "main", {"a.txt": "a\n"})
    linked = tmp_path / "linked"
    git("worktree", "add", "-q", "-b", "feature", str(linked), cwd=main)
    (linked / "a.txt").write_text("a on feature\n")
    git("commit", "-q", "-am", "feature work", cwd=linked)
    feature = git("rev-parse", "HEAD", cwd=linked).strip()
    (linked / "b.txt").write_text("untracked on feature\n")
    before = (tree_digest(main), tree_digest(linked))

    workspace = await prepare(stub, linked)
    assert (tree_digest(main), tree_digest(linked)) == before, "the user's repository was written"
    path = Path(workspace.path)
    assert files_of(path) == {"a.txt": "a on feature\n", "b.txt": "untracked on feature\n"}
    gitdir = str(trusted(home, workspace))
    assert git("--git-dir", gitdir, "rev-parse", "HEAD~1", cwd=tmp_path).strip() == feature
    # Nothing in our git directory points back into the user's repository.
    assert not (trusted(home, workspace) / "objects" / "info" / "alternates").exists()


async def test_a_clean_source_is_copied_as_one_pack_and_a_shallow_one_is_fetched(
    stub, home: Path, tmp_path: Path
) -> None:
    full = make_repo(tmp_path / "full", {"a.txt": "1\n"})
    for n in (2, 3):
        (full / "a.txt").write_text(f"{n}\n")
        git("commit", "-q", "-am", f"c{n}", cwd=full)
    workspace = await prepare(stub, full)
    gitdir = trusted(home, workspace)
    # Every commit of the history, in one pack, whole (fsck), and nothing else written.
    assert git("--git-dir", str(gitdir), "rev-list", "--count", "HEAD", cwd=tmp_path).strip() == "4"
    assert len(list((gitdir / "objects" / "pack").glob("*.pack"))) == 1
    git("--git-dir", str(gitdir), "fsck", "--no-progress", "--no-dangling", cwd=tmp_path)
    assert not (gitdir / "shallow").exists()

    # A shallow clone's oldest commit names a parent it does not have: its pack is not
    # whole, so the commit is fetched, with the shallow boundary.
    shallow = tmp_path / "shallow"
    git("clone", "-q", "--depth", "1", f"file://{full}", str(shallow), cwd=tmp_path)
    before = tree_digest(shallow)
    workspace = await prepare(stub, shallow, run_id="run-2")
    assert tree_digest(shallow) == before, "the user's repository was written"
    gitdir = trusted(home, workspace)
    assert files_of(Path(workspace.path)) == {"a.txt": "3\n"}
    assert (gitdir / "shallow").read_text().strip() == git("rev-parse", "HEAD", cwd=shallow).strip()
    assert git("--git-dir", str(gitdir), "rev-list", "--count", "HEAD", cwd=tmp_path).strip() == "2"
    git("--git-dir", str(gitdir), "fsck", "--no-progress", "--no-dangling", cwd=tmp_path)


async def test_a_source_with_a_submodule_and_a_submodule_as_source(stub, home: Path, tmp_path: Path) -> None:
    lib = make_repo(tmp_path / "lib", {"lib.txt": "library\n"})
    superproject = make_repo(tmp_path / "super", {"app.txt": "app\n"})
    git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "lib", cwd=superproject)
    git("commit", "-q", "-m", "add lib", cwd=superproject)
    (superproject / "app.txt").write_text("app, edited\n")
    (superproject / "lib" / "lib.txt").write_text("library, edited in the submodule\n")
    before = tree_digest(superproject)

    workspace = await prepare(stub, superproject)
    assert tree_digest(superproject) == before, "the user's repository was written"
    path = Path(workspace.path)
    assert (path / "app.txt").read_text() == "app, edited\n"
    gitdir = str(trusted(home, workspace))
    # The submodule stays what the commit records: a gitlink, as a clean room sees it.
    entry = git("--git-dir", gitdir, "ls-tree", "HEAD", "lib", cwd=tmp_path)
    assert entry.startswith("160000 commit ")
    assert not (path / "lib" / "lib.txt").exists()

    # The submodule itself as a source: its `.git` is a file into the superproject's.
    inner = await prepare(stub, superproject / "lib", run_id="run-2")
    assert tree_digest(superproject) == before
    assert files_of(Path(inner.path)) == {"lib.txt": "library, edited in the submodule\n"}


def test_copy_entry_keeps_links_and_modes(tmp_path: Path) -> None:
    source = tmp_path / "s"
    source.mkdir()
    (source / "run.sh").write_text("#!/bin/sh\n")
    (source / "run.sh").chmod(0o755)
    (source / "link").symlink_to("run.sh")
    assert sources.copy_entry(source / "run.sh", tmp_path / "d" / "run.sh")
    assert sources.copy_entry(source / "link", tmp_path / "d" / "link")
    assert stat.S_IMODE((tmp_path / "d" / "run.sh").stat().st_mode) == 0o755
    assert os.readlink(tmp_path / "d" / "link") == "run.sh"
    assert not sources.copy_entry(source / "missing", tmp_path / "d" / "missing")



async def test_the_push_url_is_the_users_resolved_at_preparation(stub, home: Path, tmp_path: Path) -> None:
    """A relative origin is read from the source's top; the user's own pushurl counts."""
    fetch_remote = tmp_path / "fetch.git"
    push_remote = tmp_path / "push.git"
    for bare in (fetch_remote, push_remote):
        git("init", "-q", "--bare", str(bare), cwd=tmp_path)
    source = make_repo(tmp_path / "src", {"a.txt": "a\n"})
    git("remote", "add", "origin", "../fetch.git", cwd=source)
    git("config", "remote.origin.pushurl", "../push.git", cwd=source)
    workspace = await prepare(stub, source)
    (Path(workspace.path) / "a.txt").write_text("changed\n")
    await stub.CreateSnapshot(workspace_pb2.CreateSnapshotRequest(workspace_id=workspace.id))
    pushed = await stub.Push(workspace_pb2.PushRequest(workspace_id=workspace.id), timeout=60)
    assert pushed.remote_url == str(push_remote)
    assert git("rev-parse", f"refs/heads/{workspace.branch}", cwd=push_remote).strip() == pushed.commit


async def test_deleting_a_workspace_deletes_its_trusted_git_directory(stub, home: Path, tmp_path: Path) -> None:
    workspace = await prepare(stub, make_repo(tmp_path / "src", {"a.txt": "a\n"}))
    assert trusted(home, workspace).is_dir()
    await stub.DeleteWorkspace(workspace_pb2.DeleteWorkspaceRequest(workspace_id=workspace.id, force=True))
    assert not trusted(home, workspace).exists() and not folder_exists(workspace.path)
