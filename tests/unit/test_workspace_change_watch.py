"""What a snapshot stages from the folders inotify saw written equals what `git add -A` of
the whole workspace stages (workspace/change_watch.py): never less, whatever the agent does
to its files between two snapshots."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inotify_simple import Event

from agentgate.workspace import change_watch
from agentgate.workspace import git as gitops
from agentgate.workspace.change_watch import ChangeWatch

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main", "-c", "core.fsmonitor=false"]


def _git(repo: Path, *args: str, index: Path | None = None) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    if index is not None:
        env["GIT_INDEX_FILE"] = str(index)
    return subprocess.run([*GIT, *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


def _make_repo(root: Path) -> Path:
    repo = root / "ws"
    for folder in ("a", "a/b", "c", "ignored", "empty"):
        (repo / folder).mkdir(parents=True)
    for name in ("top.txt", "a/one.txt", "a/b/two.txt", "c/three.txt", "ignored/x.log"):
        (repo / name).write_text(f"{name}\n")
    (repo / ".gitignore").write_text("ignored/\n*.o\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "base")
    return repo


async def _stages_as_full_add(repo: Path, watch: ChangeWatch, folders: list[str] | None) -> None:
    """One snapshot: the watch named `folders` (None: the whole workspace), and what was
    staged from them equals a full `add -A`."""
    ours, full, named = await _staged_trees(repo, watch, "ws")
    assert named == folders
    assert ours == full


async def _staged_trees(repo: Path, watch: ChangeWatch, workspace_id: str) -> tuple[str, str, list[str] | None]:
    """The tree staged from the watched folders, and the one a full `add -A` stages (into a
    copy of the index), and the folders the watch named."""
    full_index = repo.parent / "full-index"
    shutil.copyfile(repo / ".git" / "index", full_index)
    folders = await watch.take(workspace_id)
    await gitops.add_all(repo / ".git", repo, folders)
    _git(repo, "add", "-A", index=full_index)
    return _git(repo, "write-tree"), _git(repo, "write-tree", index=full_index), folders


@pytest.fixture
async def watched(tmp_path: Path) -> AsyncIterator[tuple[Path, ChangeWatch]]:
    repo = _make_repo(tmp_path)
    watch = ChangeWatch()
    watch.open()
    await watch.start("ws", repo)
    try:
        yield repo, watch
    finally:
        watch.close()


# Operations an agent may do, each on the repository's folder.
def _write(path: str, text: str) -> Callable[[Path], None]:
    def apply(repo: Path) -> None:
        target = repo / path
        if target.parent.is_dir() and not target.parent.is_symlink() and not target.is_dir():
            target.write_text(text)
    return apply


def _mkdir_with_file(path: str) -> Callable[[Path], None]:
    def apply(repo: Path) -> None:
        with_parents = repo / path
        if not os.path.lexists(with_parents):
            (with_parents / "deep").mkdir(parents=True)
            (with_parents / "deep" / "new.txt").write_text("new\n")
    return apply


def _remove(path: str) -> Callable[[Path], None]:
    def apply(repo: Path) -> None:
        target = repo / path
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
    return apply


def _chmod_x(path: str) -> Callable[[Path], None]:
    def apply(repo: Path) -> None:
        target = repo / path
        if target.is_file() and not target.is_symlink():
            target.chmod(0o755)
    return apply


def _symlink_over(path: str) -> Callable[[Path], None]:
    def apply(repo: Path) -> None:
        _remove(path)(repo)
        if (repo / path).parent.is_dir():
            (repo / path).symlink_to("/etc")
    return apply


def _rename(source: str, target: str) -> Callable[[Path], None]:
    def apply(repo: Path) -> None:
        inside = f"{target}/".startswith(f"{source}/")  # a folder into itself: refused by the kernel
        if (not inside and os.path.lexists(repo / source) and not os.path.lexists(repo / target)
                and (repo / target).parent.is_dir()):
            os.rename(repo / source, repo / target)
    return apply


PATHS = st.sampled_from(["top.txt", "a/one.txt", "a/b/two.txt", "c/three.txt", "a/new.txt", "empty/e.txt",
                         "ignored/y.log", "a/b", "c", "empty", "a", "n.o", "c/k.o", ".gitignore"])
OPERATIONS = st.one_of(
    st.builds(_write, PATHS, st.sampled_from(["x\n", "y\n", "ignored/\n"])),
    st.builds(_mkdir_with_file, st.sampled_from(["new", "a/new", "empty/new", "ignored/new"])),
    st.builds(_remove, PATHS),
    st.builds(_chmod_x, PATHS),
    st.builds(_symlink_over, PATHS),
    st.builds(_rename, PATHS, PATHS),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rounds=st.lists(st.lists(OPERATIONS, max_size=5), min_size=1, max_size=3))
def test_staging_the_watched_folders_stages_what_a_full_add_stages(tmp_path_factory: pytest.TempPathFactory,
                                                                   rounds: list[list[Callable[[Path], None]]]) -> None:
    async def scenario() -> None:
        repo = _make_repo(tmp_path_factory.mktemp("repo"))
        watch = ChangeWatch()
        watch.open()
        await watch.start("ws", repo)
        try:
            for operations in rounds:  # one round = one agent execution, then a snapshot
                for operation in operations:
                    operation(repo)
                ours, full, _ = await _staged_trees(repo, watch, "ws")
                assert ours == full
        finally:
            watch.close()

    asyncio.run(scenario())


async def test_a_change_in_one_folder_names_only_that_folder(watched: tuple[Path, ChangeWatch]) -> None:
    repo, watch = watched
    (repo / "a" / "b" / "two.txt").write_text("changed\n")
    (repo / "c" / "new.txt").write_text("new\n")
    await _stages_as_full_add(repo, watch, ["a/b/", "c/"])
    # Nothing written since: nothing to look at.
    assert await watch.take("ws") == []


async def test_a_file_at_the_top_means_the_whole_workspace(watched: tuple[Path, ChangeWatch]) -> None:
    repo, watch = watched
    (repo / "top.txt").write_text("changed\n")
    assert await watch.take("ws") is None


async def test_the_agents_own_repository_is_not_watched(watched: tuple[Path, ChangeWatch]) -> None:
    repo, watch = watched
    (repo / ".git" / "agent-wrote-this").write_text("x\n")
    (repo / ".git" / "refs" / "heads" / "other").write_text("0" * 40 + "\n")
    assert await watch.take("ws") == []


async def test_a_write_through_a_shared_memory_map_is_seen(watched: tuple[Path, ChangeWatch]) -> None:
    repo, watch = watched
    # Writes through a map report no IN_MODIFY; closing the file reports IN_CLOSE_WRITE.
    code = (
        "import mmap, sys\n"
        "with open(sys.argv[1], 'r+b') as f:\n"
        "    m = mmap.mmap(f.fileno(), 0)\n"
        "    m[0:1] = b'X'\n"
        "    m.flush()\n"
    )
    await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code, str(repo / "a" / "one.txt")], check=True)
    await _stages_as_full_add(repo, watch, ["a/"])
    assert _git(repo, "show", ":a/one.txt").startswith("X")


async def test_a_hard_link_makes_every_snapshot_look_at_everything(watched: tuple[Path, ChangeWatch]) -> None:
    repo, watch = watched
    os.link(repo / "a" / "one.txt", repo / "c" / "linked.txt")
    await _stages_as_full_add(repo, watch, None)
    # A write through one name changes the other, which no event names: never followed again.
    (repo / "a" / "one.txt").write_text("through the other name\n")
    await _stages_as_full_add(repo, watch, None)


async def test_a_moved_folder_is_watched_again_at_its_new_place(watched: tuple[Path, ChangeWatch]) -> None:
    repo, watch = watched
    os.rename(repo / "a", repo / "moved")
    await _stages_as_full_add(repo, watch, None)
    (repo / "moved" / "b" / "two.txt").write_text("after the move\n")
    await _stages_as_full_add(repo, watch, ["moved/b/"])


async def test_an_overflowing_queue_means_the_whole_workspace(watched: tuple[Path, ChangeWatch],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    repo, watch = watched
    (repo / "c" / "three.txt").write_text("changed\n")
    assert watch._inotify is not None
    real_read = watch._inotify.read

    def overflowing(timeout: int = 0) -> list[object]:
        # What the kernel queues when it dropped events: one with wd -1.
        return [*real_read(timeout=timeout), Event(wd=-1, mask=int(change_watch.flags.Q_OVERFLOW), cookie=0, name="")]

    monkeypatch.setattr(watch._inotify, "read", overflowing)
    assert await watch.take("ws") is None


async def test_more_folders_than_the_limit_means_the_whole_workspace(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(change_watch, "MAX_WATCHED_FOLDERS", 3)
    repo = _make_repo(tmp_path)
    watch = ChangeWatch()
    watch.open()
    try:
        await watch.start("ws", repo)
        (repo / "c" / "three.txt").write_text("changed\n")
        assert await watch.take("ws") is None
        assert await watch.take("ws") is None  # and stays so
    finally:
        watch.close()


async def test_an_unknown_or_stopped_workspace_means_the_whole_workspace(watched: tuple[Path, ChangeWatch]) -> None:
    repo, watch = watched
    assert await watch.take("other") is None
    watch.stop("ws")
    (repo / "c" / "three.txt").write_text("changed\n")
    assert await watch.take("ws") is None


async def test_a_folder_made_while_its_new_parent_is_listed_is_watched(
    watched: tuple[Path, ChangeWatch], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent runs while a new folder is being watched: a folder it makes in there right
    # after the listing must still be watched, or its later writes go unseen.
    repo, watch = watched
    real_subfolders = change_watch._subfolders

    def listed_then_raced(folder: Path, relative: str) -> list[str]:
        found = real_subfolders(folder, relative)
        if relative == "new":
            (folder / "late").mkdir()  # after the listing
        return found

    monkeypatch.setattr(change_watch, "_subfolders", listed_then_raced)
    (repo / "new").mkdir()
    await _stages_as_full_add(repo, watch, ["new/"])
    monkeypatch.setattr(change_watch, "_subfolders", real_subfolders)
    (repo / "new" / "late" / "file.txt").write_text("written in a later round\n")
    await _stages_as_full_add(repo, watch, ["new/late/"])


async def test_more_paths_than_kept_means_the_whole_workspace(watched: tuple[Path, ChangeWatch],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    repo, watch = watched
    monkeypatch.setattr(change_watch, "MAX_RECORDED_PATHS", 3)
    for number in range(5):
        (repo / "c" / f"many-{number}.txt").write_text("x\n")
    watch._drain()
    tracked = watch._tracked["ws"]
    assert tracked.full and len(tracked.changed) <= 3  # nothing kept past the bound
    await _stages_as_full_add(repo, watch, None)
    (repo / "c" / "three.txt").write_text("the next round is followed again\n")
    assert await watch.take("ws") == ["c/"]
