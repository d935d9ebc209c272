"""The git shortcuts of the workspace: HEAD read from the ref files, `nothing to commit`
recognised, a clean room made by one read-tree, a workspace started on its branch."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from agentgate.v1 import common_pb2
from agentgate.workspace import git as gitops
from agentgate.workspace.gate import cleanroom
from agentgate.workspace.workspaces import WorkspaceManager


def _git(repo: Path, *args: str) -> str:
    base = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    return subprocess.run([*base, *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _commit(repo: Path, message: str) -> str:
    """Commits everything in `repo`; its new HEAD."""
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("a\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "one")
    return repo


async def test_read_head_ref_matches_rev_parse_on_a_branch_and_detached(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    assert gitops.read_head_ref(repo / ".git") == _git(repo, "rev-parse", "HEAD")
    _git(repo, "checkout", "-q", "--detach")
    assert gitops.read_head_ref(repo / ".git") == _git(repo, "rev-parse", "HEAD")
    assert await gitops.head_commit_fast(repo / ".git") == _git(repo, "rev-parse", "HEAD")


async def test_read_head_ref_gives_up_on_packed_refs_and_the_fallback_still_answers(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _git(repo, "pack-refs", "--all")
    assert gitops.read_head_ref(repo / ".git") is None
    assert await gitops.head_commit_fast(repo / ".git") == _git(repo, "rev-parse", "HEAD")


def test_read_head_ref_refuses_a_ref_outside_refs_heads(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    commit = _git(repo, "rev-parse", "HEAD")
    (tmp_path / "outside").write_text(commit)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/../../../outside\n")
    assert gitops.read_head_ref(repo / ".git") is None
    (repo / ".git" / "HEAD").write_text("ref: refs/tags/x\n")
    assert gitops.read_head_ref(repo / ".git") is None
    assert gitops.read_head_ref(tmp_path / "no-repo") is None


@pytest.mark.parametrize("detached", [False, True])
def test_move_head_ref_moves_head_as_update_ref_does(tmp_path: Path, detached: bool) -> None:
    repo = _repo(tmp_path)
    git_dir = repo / ".git"
    if detached:
        _git(repo, "checkout", "-q", "--detach")
    old = _git(repo, "rev-parse", "HEAD")
    (repo / "b.txt").write_text("b\n")
    _git(repo, "add", "-A")
    new = _git(repo, "commit-tree", _git(repo, "write-tree"), "-p", old, "-m", "two")
    assert not gitops.move_head_ref(git_dir, new, "f" * 40)  # HEAD is not there: nothing moves
    assert _git(repo, "rev-parse", "HEAD") == old
    assert gitops.move_head_ref(git_dir, new, old)
    assert _git(repo, "rev-parse", "HEAD") == new
    if not detached:  # the branch moved, HEAD still names it
        assert _git(repo, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert not list(git_dir.rglob("*.lock"))
    _git(repo, "fsck", "--no-progress")


async def test_move_head_ref_leaves_what_it_cannot_do_simply_to_git(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    git_dir = repo / ".git"
    old = _git(repo, "rev-parse", "HEAD")
    new = _git(repo, "commit-tree", _git(repo, "write-tree"), "-p", old, "-m", "two")
    lock = git_dir / "refs" / "heads" / "main.lock"
    lock.write_text("")  # a git process holds the ref
    assert not gitops.move_head_ref(git_dir, new, old)
    assert lock.read_text() == "" and _git(repo, "rev-parse", "HEAD") == old
    lock.unlink()
    _git(repo, "pack-refs", "--all")  # no loose ref to move
    assert not gitops.move_head_ref(git_dir, new, old)
    assert _git(repo, "rev-parse", "HEAD") == old
    await gitops.move_head(git_dir, new, old)  # git update-ref does it
    assert _git(repo, "rev-parse", "HEAD") == new
    with pytest.raises(gitops.GitError):  # HEAD is not at the old value given
        await gitops.move_head(git_dir, old, "f" * 40)


def test_a_snapshot_message_is_cleaned_as_git_commit_cleans_it() -> None:
    # The snapshot's commit is made by `commit-tree`, which keeps a message as given.
    for message in ["one line", "  title  \n\n\n\nbody  \n\n", "\n\nlate title\n", "a\n \n\t\nb", " \n\t"]:
        expected = subprocess.run(["git", "stripspace"], input=message, capture_output=True, text=True).stdout
        assert gitops.clean_message(message) == expected.removesuffix("\n")


async def test_clean_room_holds_exactly_the_tracked_files_of_the_snapshot(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    (repo / "tests").mkdir()
    (repo / "tests" / "t.txt").write_text("t\n")
    (repo / ".gitattributes").write_text("tests export-ignore\n")
    (repo / ".gitignore").write_text("ignored\n")
    commit = _commit(repo, "two")
    (repo / "ignored").write_text("not in the snapshot\n")
    (repo / "a.txt").write_text("changed after the snapshot\n")
    room = await cleanroom.create_clean_room(repo / ".git", commit, tmp_path / "rooms", "run-1", 1)
    files = sorted(p.relative_to(room).as_posix() for p in room.rglob("*") if p.is_file())
    assert files == [".gitattributes", ".gitignore", "a.txt", "tests/t.txt"]
    assert (room / "a.txt").read_text() == "a\n"
    assert _git(repo, "status", "--porcelain") == "M a.txt"  # the workspace's index untouched
    assert [p.name for p in (tmp_path / "rooms").iterdir()] == [room.name]  # no index left behind


async def test_clean_room_of_an_empty_snapshot_is_empty(tmp_path: Path) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "commit", "-q", "--allow-empty", "-m", "empty")
    room = await cleanroom.create_clean_room(repo / ".git", _git(repo, "rev-parse", "HEAD"), tmp_path / "rooms", "r", 1)
    assert list(room.iterdir()) == []


@pytest.fixture
async def manager(tmp_path: Path):  # type: ignore[no-untyped-def]
    manager = WorkspaceManager(tmp_path / "home")
    await manager.open()
    yield manager
    await manager.close()


async def test_prepared_copy_starts_on_its_branch_and_snapshots_without_changes(
    manager: WorkspaceManager, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("hi\n")
    prepared = await manager.prepare_for_run("run-1", common_pb2.WorkspaceSource(local_path=str(project)))
    path = prepared.workspace.path
    assert _git(path, "symbolic-ref", "HEAD") == "refs/heads/agentgate/run-1"
    assert _git(path, "branch", "--list") == "* agentgate/run-1"  # no stray default branch
    assert prepared.workspace.base_commit == _git(path, "rev-parse", "HEAD")
    assert not (path / ".git" / "hooks").exists()  # no template copied

    same = await manager.create_snapshot(prepared.workspace.id, "nothing")
    assert (same.commit, same.has_changes, same.changed_files) == (prepared.workspace.base_commit, False, [])

    (path / "new.txt").write_text("new\n")
    changed = await manager.create_snapshot(prepared.workspace.id, "one file")
    assert changed.has_changes and changed.changed_files == ["new.txt"]
    # The snapshot is in the trusted git directory; the agent's own `.git` stays as it was.
    assert changed.commit == _git(prepared.workspace.git_dir, "rev-parse", "HEAD") != same.commit
    assert _git(path, "rev-parse", "HEAD") == same.commit
    record = await manager.get(prepared.workspace.id)
    assert await manager.resolve_snapshot(record, changed.commit) == changed.commit
    with pytest.raises(Exception, match="not a commit"):
        await manager.resolve_snapshot(record, "0" * 40)


@pytest.mark.parametrize("detached", [False, True])
async def test_a_clean_repository_gives_the_agent_a_repository_of_its_own_at_the_initial_snapshot(
    manager: WorkspaceManager, tmp_path: Path, detached: bool
) -> None:
    # A source without changes takes the short way: the initial snapshot committed from the
    # source commit's tree, checked out while the agent's objects are copied.
    repo = _repo(tmp_path)
    user_head = _git(repo, "rev-parse", "HEAD")
    if detached:
        _git(repo, "checkout", "-q", "--detach")
    workspace_id = "ws-" + "0" * 16
    base, branch = await manager.materialize(workspace_id, common_pb2.WorkspaceSource(local_path=str(repo)))
    path, agent_git = manager.path_of(workspace_id), manager.path_of(workspace_id) / ".git"
    assert branch == ("" if detached else "main")
    assert _git(path, "rev-parse", "HEAD") == base == _git(manager.git_dir_of(workspace_id), "rev-parse", "HEAD")
    assert _git(path, "rev-parse", "HEAD~1") == user_head
    assert _git(path, "log", "-1", "--format=%s%n%an <%ae>") == "agentgate: initial snapshot\nAgentGate <agentgate@localhost>"
    assert _git(path, "rev-parse", "HEAD^{tree}") == _git(repo, "rev-parse", "HEAD^{tree}")
    if detached:
        assert (agent_git / "HEAD").read_text().strip() == base
    else:
        assert _git(path, "symbolic-ref", "--short", "HEAD") == "main"
    assert _git(path, "status", "--porcelain") == ""
    assert _git(path, "fsck", "--no-progress") == ""  # every object is there
    assert _git(path, "remote") == ""
    # Copies, never hard links: what the agent writes into its objects stays its own.
    for item in (agent_git / "objects").rglob("*"):
        if item.is_file():
            assert item.stat().st_nlink == 1, item


async def test_a_failing_snapshot_commit_is_an_error_not_no_change(manager: WorkspaceManager, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("hi\n")
    prepared = await manager.prepare_for_run("run-2", common_pb2.WorkspaceSource(local_path=str(project)))
    path = prepared.workspace.path
    (path / "x.txt").write_text("x\n")
    # `git add` works, but the commit cannot move the branch: a real failure, not "no change".
    (prepared.workspace.git_dir / "refs" / "heads" / "agentgate" / "run-2.lock").write_text("")
    with pytest.raises(gitops.GitError, match="update-ref"):
        await manager.create_snapshot(prepared.workspace.id, "x")


async def test_a_snapshot_message_with_a_nul_byte_is_refused_naming_the_field(
    manager: WorkspaceManager, tmp_path: Path
) -> None:
    from agentgate.common.errors import InvalidArgument

    project = tmp_path / "project"
    project.mkdir()
    prepared = await manager.prepare_for_run("run-3", common_pb2.WorkspaceSource(local_path=str(project)))
    with pytest.raises(InvalidArgument) as caught:
        await manager.create_snapshot(prepared.workspace.id, "a\x00b")
    assert [v.field for v in caught.value.violations] == ["message"]


async def test_one_git_status_names_commit_branch_and_every_changed_path(tmp_path: Path) -> None:
    from agentgate.workspace import sources

    repo = _repo(tmp_path)
    commit = _git(repo, "rev-parse", "HEAD")
    (repo / "a.txt").write_text("changed\n")
    (repo / "with space.txt").write_text("untracked\n")
    (repo / "dir").mkdir()
    (repo / "dir" / "deep.txt").write_text("untracked\n")
    (repo / "staged.txt").write_text("staged\n")
    _git(repo, "add", "staged.txt")
    (repo / ".gitignore").write_text("*.log\n")
    (repo / "x.log").write_text("ignored\n")
    found = await sources.read_git_source(repo, include_ignored=False)
    assert (found.commit, found.branch) == (commit, "main")
    assert sorted(found.changed) == [".gitignore", "a.txt", "dir/deep.txt", "staged.txt", "with space.txt"]
    with_ignored = await sources.read_git_source(repo, include_ignored=True)
    assert "x.log" in with_ignored.changed
    _git(repo, "checkout", "-q", "--detach")
    assert (await sources.read_git_source(repo, include_ignored=False)).branch == ""


async def test_answers_about_object_ids_are_asked_once_and_names_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _repo(tmp_path)
    first = _git(repo, "rev-parse", "HEAD")
    asked: list[str] = []
    real_git = gitops.git

    async def counting(*args: str, **kwargs: object) -> gitops.GitResult:
        asked.append(" ".join(args))
        return await real_git(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gitops, "git", counting)
    git_dir = repo / ".git"
    # Three callers at once (the gate, two patch exports): one git.
    answers = await asyncio.gather(*(gitops.resolve_commit(git_dir, first) for _ in range(3)))
    assert answers == [first] * 3
    trees = await asyncio.gather(*(gitops.tree_of(git_dir, first) for _ in range(2)))
    assert trees == [_git(repo, "rev-parse", "HEAD^{tree}")] * 2
    assert len(asked) == 2
    # A branch moves: asked every time.
    assert await gitops.resolve_commit(git_dir, "main") == first
    (repo / "a.txt").write_text("b\n")
    _git(repo, "commit", "-qam", "two")
    second = _git(repo, "rev-parse", "HEAD")
    assert await gitops.resolve_commit(git_dir, "main") == second
    # An id that names nothing yet is not remembered as nothing.
    missing = "0" * 40
    assert await gitops.resolve_commit(git_dir, missing) is None
    assert ("commit", str(git_dir), missing) not in gitops._KNOWN


async def test_a_commit_just_made_is_known_without_asking_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _repo(tmp_path)
    (repo / "b.txt").write_text("b\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "two")
    head, tree, parent = (_git(repo, "rev-parse", ref) for ref in ("HEAD", "HEAD^{tree}", "HEAD~1"))
    gitops.remember_commit(repo / ".git", head, tree, parent, [("A", "b.txt")])

    async def no_git(*args: str, **kwargs: object) -> gitops.GitResult:
        raise AssertionError(f"git {' '.join(args)} was asked")

    monkeypatch.setattr(gitops, "git", no_git)
    assert await gitops.resolve_commit(repo / ".git", head) == head
    assert await gitops.resolve_commit(repo / ".git", f"{head}^") == parent  # the cumulative patch's start
    assert await gitops.tree_of(repo / ".git", head) == tree
    assert await gitops.changed_files(repo / ".git", parent, head) == ["b.txt"]
    assert await gitops.changes(repo / ".git", parent, head) == [("A", "b.txt")]


async def test_changes_name_each_path_with_its_status_and_the_scan_leaves_deletions_out(tmp_path: Path) -> None:
    from agentgate.workspace.gate.security_scan import load_change

    repo = _repo(tmp_path)
    (repo / "gone.txt").write_text("g\n")
    (repo / "link").write_text("was a file\n")
    old = _commit(repo, "two")
    (repo / "a.txt").write_text("changed\n")
    (repo / "gone.txt").unlink()
    (repo / "link").unlink()
    (repo / "link").symlink_to("a.txt")
    (repo / "new file\twith tab.txt").write_text("n\n")
    new = _commit(repo, "three")
    found = await gitops.changes(repo / ".git", old, new)
    assert sorted(found) == [("A", "new file\twith tab.txt"), ("D", "gone.txt"), ("M", "a.txt"), ("T", "link")]
    change = await load_change(repo / ".git", old, new)
    assert sorted(change.changed) == ["a.txt", "link", "new file\twith tab.txt"]
    assert "+changed" in change.diff and "gone.txt" not in change.diff


async def test_a_pipe_of_two_gits_carries_the_pack_and_names_the_git_that_failed(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    head = _git(repo, "rev-parse", "HEAD")
    target = tmp_path / "target.git"
    _git(tmp_path, "init", "-q", "--bare", str(target))
    pack = ("pack-objects", "--revs", "--stdout", "-q")
    index = ("index-pack", "--stdin", "--check-self-contained-and-connected")
    result = await gitops.piped(pack, index, first_cwd=repo, second_git_dir=target, stdin=f"{head}\n".encode())
    assert result.stdout.startswith("pack\t")
    assert _git(target, "cat-file", "-t", head) == "commit"
    # The first fails (no such commit): the second sees no pack; both are named.
    with pytest.raises(gitops.GitError) as failed:
        await gitops.piped(pack, index, first_cwd=repo, second_git_dir=target, stdin=b"f" * 40 + b"\n")
    assert "index-pack" in str(failed.value) and "pack-objects" in str(failed.value)


def _processes_with(argument: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if argument.encode() in cmdline.read_bytes().split(b"\0"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


async def test_a_cancelled_pipe_kills_both_gits(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    # An alias runs a command of its own: a git that does not end by itself.
    slow = ("-c", "alias.slow=!exec sleep 41.5", "slow")
    task = asyncio.ensure_future(
        gitops.piped(slow, slow, first_cwd=repo, second_git_dir=repo / ".git", stdin=b"")
    )
    for _ in range(100):
        if len(_processes_with("41.5")) == 2:
            break
        await asyncio.sleep(0.02)
    assert len(_processes_with("41.5")) == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _processes_with("41.5") == []


async def test_workspace_rows_parse_their_json_once_and_never_share_a_message(
    manager: WorkspaceManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentgate.workspace import workspaces

    parsed = []
    real = workspaces.from_json
    monkeypatch.setattr(workspaces, "from_json", lambda text, message: parsed.append(text) or real(text, message))
    workspaces._parsed.cache_clear()
    source = common_pb2.WorkspaceSource(local_path=str(_repo(tmp_path)))
    prepared = await manager.prepare_for_run("run-rows", source)
    first = await manager.get(prepared.workspace.id)
    second = await manager.get(prepared.workspace.id)
    assert first.source == second.source == source
    first.source.local_path = "/changed"  # a caller's change stays its own
    assert (await manager.get(prepared.workspace.id)).source == source
    assert parsed.count(workspaces.to_json(source)) == 1


async def test_the_first_patch_and_the_cumulative_one_are_one_diff(
    manager: WorkspaceManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentgate.workspace import snapshots

    repo = _repo(tmp_path)
    prepared = await manager.prepare_for_run("run-patch", common_pb2.WorkspaceSource(local_path=str(repo)))
    (prepared.workspace.path / "a.txt").write_text("changed\n")
    snapshot = await manager.create_snapshot(prepared.workspace.id, "one")
    diffs: list[tuple[str, ...]] = []
    real = gitops.git

    async def counting(*args: str, **kwargs: object) -> gitops.GitResult:
        if args[0] == "diff":
            diffs.append(args)
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gitops, "git", counting)
    step, total = await asyncio.gather(
        snapshots.export_patch(manager, prepared.workspace.id, prepared.workspace.base_commit, snapshot.commit),
        snapshots.export_patch(manager, prepared.workspace.id, "", snapshot.commit),
    )
    # The initial snapshot has the source commit's tree: one diff, and the paths known
    # from the snapshot.
    assert len(diffs) == 1
    assert step.patch == total.patch and b"+changed" in step.patch
    assert step.changed_files == total.changed_files == ["a.txt"]
    assert (step.from_commit, total.from_commit) == (prepared.workspace.base_commit, _git(repo, "rev-parse", "HEAD"))
    # Not kept: the next export asks git again.
    await snapshots.export_patch(manager, prepared.workspace.id, "", snapshot.commit)
    assert len(diffs) == 2
