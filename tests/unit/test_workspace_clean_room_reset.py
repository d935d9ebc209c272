"""The kept clean room of a run (docs/workspaces.md, "Clean rooms"): reset to the next
snapshot, it is exactly what a fresh checkout of that snapshot is, whatever the checks
left behind; what the reset cannot undo makes it start over."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from agentgate.workspace import git as gitops
from agentgate.workspace.gate import cleanroom

WORKSPACE = "ws-0123456789abcdef"


def _git(repo: Path, *args: str) -> str:
    base = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    return subprocess.run([*base, *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _commit(repo: Path, message: str) -> str:
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with two commits: A, then B (one file changed, one deleted, one added)."""
    repo = tmp_path / "repo"
    for name, text in {
        "a.txt": "a\n", "keep.txt": "keep\n", "same.txt": "12345\n", "d0/f.txt": "f\n",
        "sub/deep/x.txt": "x\n", "d1/y.txt": "y\n", ".gitignore": "build/\n*.o\n", "bin/run.sh": "#!/bin/sh\n",
    }.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    (repo / "bin/run.sh").chmod(0o755)
    (repo / "link").symlink_to("a.txt")
    _git(repo, "init", "-q")
    _commit(repo, "A")
    (repo / "a.txt").write_text("a changed\n")
    (repo / "d0/f.txt").unlink()
    (repo / "new.txt").write_text("new\n")
    _commit(repo, "B")
    return repo


def _state(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under `root`: kind, permission bits, content or link target."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            info = os.lstat(path)
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                out[str(path.relative_to(root))] = ("link", 0, os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                out[str(path.relative_to(root))] = ("dir", mode, "")
            elif stat.S_ISREG(info.st_mode):
                path.chmod(mode | stat.S_IRUSR)
                out[str(path.relative_to(root))] = ("file", mode, path.read_text())
            else:
                out[str(path.relative_to(root))] = ("other", mode, "")
    return out


def _mess_up(room: Path) -> None:
    """What checks may leave behind in a room."""
    (room / "untracked.txt").write_text("left behind\n")
    (room / "build").mkdir()
    (room / "build/out.o").write_text("ignored\n")
    (room / "x.o").write_text("ignored\n")
    (room / ".git").mkdir()
    (room / ".git/config").write_text("[core]\n\tfsmonitor = touch /tmp/pwned\n")
    (room / "sub/.git").write_text("gitdir: /elsewhere\n")
    (room / "same.txt").write_text("54321\n")  # same size, same second
    (room / "keep.txt").chmod(0o444)  # read-only: git only compares the executable bit
    (room / "bin/run.sh").chmod(0o644)
    (room / "sub/deep/x.txt").chmod(0o4755)
    os.mkfifo(room / "pipe")
    (room / "ro").mkdir()
    (room / "ro/inside.txt").write_text("in a read-only folder\n")
    (room / "ro").chmod(0o555)
    (room / "hidden").mkdir()
    (room / "hidden/secret.txt").write_text("in an unreadable folder\n")
    (room / "hidden").chmod(0)
    (room / "sub/deep").chmod(0o555)  # a tracked folder made read-only
    (room / "d1/y.txt").unlink()
    (room / "d1").rmdir()
    (room / "d1").symlink_to("/tmp")  # a folder replaced by a symlink out of the room
    (room / "link").unlink()
    (room / "link").symlink_to("/etc/passwd")


async def test_a_reset_room_equals_a_fresh_checkout_of_the_next_snapshot(repo: Path, tmp_path: Path) -> None:
    git_dir, rooms = repo / ".git", tmp_path / "rooms"
    a, b = _git(repo, "rev-parse", "HEAD~1"), _git(repo, "rev-parse", "HEAD")
    async with cleanroom.clean_room(git_dir, a, rooms, "run-1", 1, workspace_id=WORKSPACE) as room:
        first = room
        _mess_up(room)
    async with cleanroom.clean_room(git_dir, b, rooms, "run-1", 2, workspace_id=WORKSPACE) as room:
        assert room == first, "the run's room is kept, not made again"
        reset = _state(room)
    fresh = await cleanroom.create_clean_room(git_dir, b, tmp_path / "fresh", "run-1", 2)
    assert reset == _state(fresh)
    assert "d0/f.txt" not in reset and reset["a.txt"] == ("file", reset["new.txt"][1], "a changed\n")
    assert not (Path("/tmp") / "y.txt").exists(), "the reset wrote through the symlink"


async def test_git_alone_would_leave_what_the_checks_left_behind(repo: Path, tmp_path: Path) -> None:
    """Without the normalizing pass, `git clean` + `read-tree` leave a `.git`, read-only
    files and folders behind: the protection is needed."""
    git_dir, room, index = repo / ".git", tmp_path / "room", tmp_path / "index"
    b = _git(repo, "rev-parse", "HEAD")
    await cleanroom._checkout(git_dir, b, room, index)
    (room / ".git").mkdir()
    (room / "keep.txt").chmod(0o444)
    (room / "sub/deep").chmod(0o555)
    env = {"GIT_INDEX_FILE": str(index)}
    for args in (["clean", "-ffdxq"], ["read-tree", "-u", "--reset", b]):
        await gitops.git(*args, cwd=room, git_dir=git_dir, work_tree=room, env=env)
    fresh = await cleanroom.create_clean_room(git_dir, b, tmp_path / "fresh", "run-1", 1)
    assert _state(room) != _state(fresh)


async def test_a_room_replaced_by_a_symlink_is_made_again_without_following_it(repo: Path, tmp_path: Path) -> None:
    git_dir, rooms = repo / ".git", tmp_path / "rooms"
    b = _git(repo, "rev-parse", "HEAD")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("mine\n")
    async with cleanroom.clean_room(git_dir, b, rooms, "run-1", 1, workspace_id=WORKSPACE) as room:
        pass
    cleanroom.remove_tree(room)
    room.symlink_to(victim)
    async with cleanroom.clean_room(git_dir, b, rooms, "run-1", 2, workspace_id=WORKSPACE) as again:
        assert not again.is_symlink() and (again / "new.txt").is_file()
    assert [p.name for p in victim.iterdir()] == ["precious.txt"]


async def test_a_room_in_use_gives_a_one_off_room_and_release_deletes_the_kept_one(
    repo: Path, tmp_path: Path
) -> None:
    git_dir, rooms = repo / ".git", tmp_path / "rooms"
    b = _git(repo, "rev-parse", "HEAD")
    async with cleanroom.clean_room(git_dir, b, rooms, "run-1", 1, workspace_id=WORKSPACE) as kept:
        async with cleanroom.clean_room(git_dir, b, rooms, "run-1", 1, workspace_id=WORKSPACE) as other:
            assert other != kept and (other / "new.txt").is_file()
        assert not other.exists()
    assert kept.is_dir() and (git_dir / cleanroom.ROOM_INDEX).is_file()
    await cleanroom.remove_run_room(rooms, "run-1", WORKSPACE, git_dir)
    assert not kept.exists() and not (git_dir / cleanroom.ROOM_INDEX).exists()


async def _reset_behind_done(room: Path) -> None:
    cleanroom.start_reset_behind(room.parent, "run-1", WORKSPACE)  # the run's next agent execution
    task = cleanroom._behind.get(room)
    assert task is not None, "no reset was started behind the verification"
    await task


async def test_a_room_reset_behind_its_verification_equals_a_fresh_checkout(repo: Path, tmp_path: Path) -> None:
    git_dir, rooms = repo / ".git", tmp_path / "rooms"
    a, b = _git(repo, "rev-parse", "HEAD~1"), _git(repo, "rev-parse", "HEAD")
    async with cleanroom.clean_room(git_dir, a, rooms, "run-1", 1, workspace_id=WORKSPACE, behind=True) as room:
        first = room
        _mess_up(room)
    await _reset_behind_done(first)
    assert cleanroom._clean_at[first] == a
    assert _state(first) == _state(await cleanroom.create_clean_room(git_dir, a, tmp_path / "fresh-a", "run-1", 1))
    async with cleanroom.clean_room(git_dir, b, rooms, "run-1", 2, workspace_id=WORKSPACE, behind=True) as room:
        assert room == first and first not in cleanroom._clean_at
        moved = _state(room)
    fresh = await cleanroom.create_clean_room(git_dir, b, tmp_path / "fresh-b", "run-1", 2)
    assert moved == _state(fresh)
    assert not (Path("/tmp") / "y.txt").exists(), "the reset wrote through the symlink"
    await cleanroom.remove_run_room(rooms, "run-1", WORKSPACE, git_dir)


async def test_a_room_replaced_after_its_reset_behind_is_made_again(repo: Path, tmp_path: Path) -> None:
    git_dir, rooms = repo / ".git", tmp_path / "rooms"
    a, b = _git(repo, "rev-parse", "HEAD~1"), _git(repo, "rev-parse", "HEAD")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("mine\n")
    async with cleanroom.clean_room(git_dir, a, rooms, "run-1", 1, workspace_id=WORKSPACE, behind=True) as room:
        pass
    await _reset_behind_done(room)
    cleanroom.remove_tree(room)
    room.symlink_to(victim)
    async with cleanroom.clean_room(git_dir, b, rooms, "run-1", 2, workspace_id=WORKSPACE, behind=True) as again:
        assert not again.is_symlink() and (again / "new.txt").is_file()
    assert [p.name for p in victim.iterdir()] == ["precious.txt"]
    await cleanroom.remove_run_room(rooms, "run-1", WORKSPACE, git_dir)


async def test_release_stops_a_reset_behind_and_leaves_nothing(repo: Path, tmp_path: Path) -> None:
    git_dir, rooms = repo / ".git", tmp_path / "rooms"
    b = _git(repo, "rev-parse", "HEAD")
    async with cleanroom.clean_room(git_dir, b, rooms, "run-1", 1, workspace_id=WORKSPACE, behind=True) as room:
        _mess_up(room)
    cleanroom.start_reset_behind(rooms, "run-1", WORKSPACE)
    assert room in cleanroom._behind
    await cleanroom.remove_run_room(rooms, "run-1", WORKSPACE, git_dir)
    assert not room.exists() and room not in cleanroom._behind and room not in cleanroom._clean_at
    assert not list(git_dir.glob(f"{cleanroom.ROOM_INDEX}*"))


async def test_stopping_the_resets_behind_ends_them_before_the_loop_does(repo: Path, tmp_path: Path) -> None:
    # The workspace service calls this when it stops: a reset left to the end of the event
    # loop could hang it (see stop_resets_behind).
    git_dir, rooms = repo / ".git", tmp_path / "rooms"
    b = _git(repo, "rev-parse", "HEAD")
    async with cleanroom.clean_room(git_dir, b, rooms, "run-1", 1, workspace_id=WORKSPACE, behind=True) as room:
        _mess_up(room)
    cleanroom.start_reset_behind(rooms, "run-1", WORKSPACE)
    task = cleanroom._behind[room]
    await cleanroom.stop_resets_behind()
    assert task.done() and room not in cleanroom._behind
    await cleanroom.remove_run_room(rooms, "run-1", WORKSPACE, git_dir)


async def test_a_room_made_ahead_is_moved_by_the_first_verification(repo: Path, tmp_path: Path) -> None:
    # PrepareForRun starts the room at the first snapshot while the agent's first iteration runs.
    git_dir, rooms = repo / ".git", tmp_path / "rooms"
    a, b = _git(repo, "rev-parse", "HEAD~1"), _git(repo, "rev-parse", "HEAD")
    cleanroom.make_ahead(git_dir, a, rooms, "run-1", WORKSPACE)
    room = cleanroom.run_room(rooms, "run-1", WORKSPACE)
    await _reset_behind_done(room)
    assert cleanroom._clean_at[room] == a
    assert _state(room) == _state(await cleanroom.create_clean_room(git_dir, a, tmp_path / "fresh-a", "run-1", 0))
    async with cleanroom.clean_room(git_dir, b, rooms, "run-1", 1, workspace_id=WORKSPACE, behind=True) as used:
        assert used == room
        moved = _state(used)
    assert moved == _state(await cleanroom.create_clean_room(git_dir, b, tmp_path / "fresh-b", "run-1", 1))
    await cleanroom.remove_run_room(rooms, "run-1", WORKSPACE, git_dir)
    assert not room.exists() and not list(git_dir.glob(f"{cleanroom.ROOM_INDEX}*"))


async def test_release_stops_a_room_being_made_ahead(repo: Path, tmp_path: Path) -> None:
    git_dir, rooms = repo / ".git", tmp_path / "rooms"
    cleanroom.make_ahead(git_dir, _git(repo, "rev-parse", "HEAD"), rooms, "run-1", WORKSPACE)
    room = cleanroom.run_room(rooms, "run-1", WORKSPACE)
    await cleanroom.remove_run_room(rooms, "run-1", WORKSPACE, git_dir)
    assert not room.exists() and room not in cleanroom._behind and room not in cleanroom._clean_at
    assert not list(git_dir.glob(f"{cleanroom.ROOM_INDEX}*"))


async def test_a_room_moved_across_files_that_became_folders_equals_a_fresh_checkout(
    repo: Path, tmp_path: Path
) -> None:
    git_dir, rooms = repo / ".git", tmp_path / "rooms"
    b = _git(repo, "rev-parse", "HEAD")
    (repo / "a.txt").unlink()
    (repo / "a.txt").mkdir()
    (repo / "a.txt" / "inner.txt").write_text("a folder now\n")
    cleanroom.remove_tree(repo / "sub")
    (repo / "sub").write_text("a file now\n")
    c = _commit(repo, "C")
    async with cleanroom.clean_room(git_dir, b, rooms, "run-1", 1, workspace_id=WORKSPACE, behind=True) as room:
        pass
    await _reset_behind_done(room)
    for target, name in ((c, "fresh-c"), (b, "fresh-b")):  # and back
        async with cleanroom.clean_room(git_dir, target, rooms, "run-1", 2, workspace_id=WORKSPACE,
                                        behind=True) as used:
            assert used == room
            moved = _state(used)
        await _reset_behind_done(room)
        assert moved == _state(await cleanroom.create_clean_room(git_dir, target, tmp_path / name, "run-1", 2))
    await cleanroom.remove_run_room(rooms, "run-1", WORKSPACE, git_dir)


async def test_no_reset_behind_a_verification_the_run_ends_after(repo: Path, tmp_path: Path) -> None:
    # The reset waits for the run's next agent execution; the run ends instead: nothing runs,
    # and a verification that comes without one resets the room itself.
    git_dir, rooms = repo / ".git", tmp_path / "rooms"
    a, b = _git(repo, "rev-parse", "HEAD~1"), _git(repo, "rev-parse", "HEAD")
    async with cleanroom.clean_room(git_dir, a, rooms, "run-1", 1, workspace_id=WORKSPACE, behind=True) as room:
        _mess_up(room)
    assert room not in cleanroom._behind and room not in cleanroom._clean_at
    async with cleanroom.clean_room(git_dir, b, rooms, "run-1", 2, workspace_id=WORKSPACE, behind=True) as again:
        assert again == room
        moved = _state(again)
    assert moved == _state(await cleanroom.create_clean_room(git_dir, b, tmp_path / "fresh-b", "run-1", 2))
    await cleanroom.remove_run_room(rooms, "run-1", WORKSPACE, git_dir)
    assert not room.exists() and room not in cleanroom._waiting and room not in cleanroom._behind
