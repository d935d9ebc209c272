"""Clean rooms: directories holding exactly the tracked files of one snapshot.

Verification runs there, never in the agent's workspace, so files ignored by git (build
output, caches, virtual environments) and any agent-side state cannot make a check pass.

A leased workspace has one clean room, kept between its verifications and reset to each
new snapshot: writing every tracked file again for every iteration costs what the
repository holds, a reset costs what changed (docs/workspaces.md, "Clean rooms"). The reset
leaves the room exactly as a fresh checkout would be: whatever the checks left behind is
removed (untracked, ignored, `.git` folders, special files), every changed or re-moded file
is written again, every folder gets the mode a checkout gives it. Anything the reset cannot
undo makes it start over from an empty room. A room in use (a second Verify of the same
workspace at the same time) or a workspace without a lease gets a one-off room, deleted
after.

With `behind` (only when nothing but this service can write the room between two
verifications: the sandbox hides $AGENTGATE_HOME from agents and checks and ends every
process of theirs), the reset runs behind the verification that used the room, back to the
snapshot it verified, while the run goes on (from its next agent execution on: a run that
ends there resets nothing); the next verification then only moves the clean room from that
snapshot to its own (`_advance`: the paths the two differ in).
Likewise the room is first made while the agent's first iteration runs (`make_ahead`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from agentgate.workspace import git as gitops
from agentgate.workspace.workspaces import discard_tree, remove_tree

log = logging.getLogger(__name__)

#: The index of a workspace's kept clean room: in its trusted git directory, where no agent
#: or check can write, so the stat data the reset trusts is ours.
ROOM_INDEX = "cleanroom.index"
#: Paths a room is moved by naming them to git at most (they are arguments); more: by trees.
MAX_RESTORED_PATHS = 1_000


def _read_umask() -> int:
    # Read once at import (one thread then): os.umask can only be read by setting it.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
#: The modes git gives what it checks out (folders, files, executables): 0777/0666/0777
#: less the umask. A file with any other mode is removed by the reset and written again.
_DIR_MODE = 0o777 & ~_UMASK
_FILE_MODES = (0o666 & ~_UMASK, 0o777 & ~_UMASK)
_locks: dict[Path, asyncio.Lock] = {}
#: Kept rooms known to hold exactly a commit's files since a reset behind a verification,
#: and the resets still to run behind one (docs/workspaces.md, "Clean rooms").
_clean_at: dict[Path, str] = {}
_behind: dict[Path, asyncio.Task[None]] = {}
#: Resets behind a verification not started yet: they start with the run's next agent
#: execution (`start_reset_behind`), so a run that ends after its verification does none.
_waiting: dict[Path, tuple[Path, str, Path, asyncio.Lock]] = {}


def run_room(root: Path, run_id: str, workspace_id: str) -> Path:
    """The kept clean room of a run's workspace: `root/{run_id}-0-{8 hex of the workspace
    id}`, named like the one-off rooms (`{run_id}-{iteration}-{hex}`, iteration 0) so that
    CleanupRun finds both."""
    return root / f"{run_id}-0-{workspace_id.removeprefix('ws-')[:8]}"


async def create_clean_room(git_dir: Path, commit: str, root: Path, run_id: str, iteration: int) -> Path:
    """Makes a one-off `root/{run_id}-{iteration}-{random}` with the files of `commit` of
    the workspace's trusted git directory `git_dir` and returns it.

    The files are written from the commit's tree through a temporary index outside the
    workspace, by one `git --work-tree=ROOM read-tree -u --reset` (reading the tree into
    the empty index and checking out every entry into the room: one process instead of
    `read-tree` + `checkout-index`): the workspace's own index and files are not touched,
    no `.git` is placed in the clean room, and unlike `git archive` no file is dropped by
    an `export-ignore` attribute (test folders often carry one). The snapshot's
    `.gitattributes` may name a filter, but no filter is configured where this git looks
    (docs/security.md, "Git"), so none runs.
    """
    name = f"{run_id}-{iteration}-{secrets.token_hex(4)}"
    room = root / name
    index = root / f".{name}.index"
    try:
        await _checkout(git_dir, commit, room, index)
    finally:
        await asyncio.to_thread(index.unlink, missing_ok=True)
    return room


async def _checkout(git_dir: Path, commit: str, room: Path, index: Path) -> None:
    """Fills a new, empty `room` with the files of `commit`, recording them in `index`."""
    await asyncio.to_thread(room.mkdir, parents=True)
    try:
        await _read_tree(git_dir, commit, room, index)
    except BaseException:
        await asyncio.to_thread(remove_tree, room)
        raise


async def _read_tree(git_dir: Path, commit: str, room: Path, index: Path) -> None:
    # Against the index's entries: files whose stat data still matches are left as they
    # are, every other tracked file is written again, files the commit lacks are removed.
    env = {"GIT_INDEX_FILE": str(index)}
    await gitops.git("read-tree", "-u", "--reset", commit, cwd=room, git_dir=git_dir, work_tree=room, env=env)


def _normalize_argv(room: Path) -> list[str]:
    """One `find` over the room, before `git clean` (which never enters a folder named
    `.git` nor one it may not write): `.git` entries removed, folders given a checkout's
    mode (before find reads them, so an unreadable one is read), and every entry that is
    neither a folder, a symlink nor a file of a checkout's mode removed (pipes, sockets,
    a file made read-only or set-uid: git compares the executable bit only)."""
    dir_mode, file_modes = f"{_DIR_MODE:o}", [f"{mode:o}" for mode in _FILE_MODES]
    return [
        "find", str(room),
        "(", "-name", ".git", "-prune", "-exec", "rm", "-rf", "--", "{}", "+", ")",
        "-o", "(", "-type", "d", "!", "-perm", dir_mode, "-exec", "chmod", dir_mode, "--", "{}", ";", ")",
        "-o", "(", "!", "-type", "d", "!", "-type", "l",
        "!", "(", "-type", "f", "(", "-perm", file_modes[0], "-o", "-perm", file_modes[1], ")", ")",
        "-exec", "rm", "-f", "--", "{}", "+", ")",
    ]


def _reusable(room: Path, index: Path) -> bool:
    """Whether a kept room can be reset: a folder (a symlink where it was is never
    followed) with its index."""
    try:
        return stat.S_ISDIR(os.lstat(room).st_mode) and index.is_file()
    except FileNotFoundError:
        return False


async def _reset(git_dir: Path, commit: str, room: Path, index: Path) -> None:
    """Makes a used room hold exactly the files of `commit` (see the module docstring).
    Raises (OSError, GitError) when something resists: the caller starts over."""
    if not await asyncio.to_thread(_reusable, room, index):
        raise FileNotFoundError(room)
    process = await asyncio.create_subprocess_exec(
        *_normalize_argv(room), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await process.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()  # gone before the caller deletes or reuses the room
        raise
    if process.returncode != 0:
        raise OSError(f"find in {room} failed: {err.decode(errors='replace').strip()}")
    env = {"GIT_INDEX_FILE": str(index)}
    # Untracked and ignored files alike (-x), whole folders (-d), nested repositories (-ff).
    await gitops.git("clean", "-ffdxq", cwd=room, git_dir=git_dir, work_tree=room, env=env)
    await _read_tree(git_dir, commit, room, index)


async def _advance(git_dir: Path, old: str, new: str, room: Path, index: Path) -> None:
    """Moves a room known to hold exactly the files of `old` (reset behind the last
    verification, nothing written since) to those of `new`, touching only the paths the two
    commits differ in: `restore` of those paths from `new` (index entries and files written
    or removed; ~18 ms at 20,000 files against ~30 for a two-tree `read-tree -m -u`, which
    walks both trees whole: docs/benchmarks.md, "Repository scale"), else that `read-tree`.
    Raises (OSError, GitError) when it cannot: the caller resets."""
    if not await asyncio.to_thread(_reusable, room, index):
        raise FileNotFoundError(room)
    if old == new:
        return
    env = {"GIT_INDEX_FILE": str(index)}
    paths = await gitops.changed_files(git_dir, old, new)
    if len(paths) <= MAX_RESTORED_PATHS:
        restored = await gitops.git(
            "restore", f"--source={new}", "--staged", "--worktree", "--", *paths, cwd=room, git_dir=git_dir,
            work_tree=room, env={**env, "GIT_LITERAL_PATHSPECS": "1"}, check=False,
        )
        if restored.returncode == 0:
            return
        # Say a file that became a folder in an order restore cannot take.
        log.info("clean room %s: restoring %d paths failed (%s)", room, len(paths), restored.stderr.strip())
    await gitops.git("read-tree", "-m", "-u", old, new, cwd=room, git_dir=git_dir, work_tree=room, env=env)


async def _in_background(
    room: Path, commit: str, lock: asyncio.Lock, step: Callable[[], Awaitable[None]], what: str
) -> None:
    """Runs `step()` (which leaves the kept `room` holding exactly the files of `commit`) under
    the room's lock, behind the requests; the room is then known clean at `commit`."""
    async with lock:
        try:
            await step()
        except (OSError, gitops.GitError) as exc:
            # The next verification resets (or makes the room again) itself.
            log.info("clean room %s could not be %s: %s", room, what, exc)
            return
        finally:
            if _behind.get(room) is asyncio.current_task():
                del _behind[room]
        _clean_at[room] = commit


def make_ahead(git_dir: Path, commit: str, root: Path, run_id: str, workspace_id: str) -> None:
    """Starts making a run's kept clean room with the files of `commit` (its first snapshot)
    in the background, while the agent's first iteration runs: the first verification then
    only moves it to its snapshot. Only when the room is out of everyone's reach, as
    `behind` (see the module docstring); a verification that comes first does the work."""
    room = run_room(root, run_id, workspace_id)
    lock = _locks.setdefault(room, asyncio.Lock())
    made = functools.partial(_checkout, git_dir, commit, room, git_dir / ROOM_INDEX)
    _behind[room] = asyncio.create_task(_in_background(room, commit, lock, made, "made ahead"))


async def _stop_behind(room: Path) -> None:
    """Stops a reset behind a verification of `room` (its git or find killed, awaited)."""
    task = _behind.pop(room, None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def stop_resets_behind() -> None:
    """Stops every reset still running behind a verification, before the event loop ends.

    Left to the loop's own end, such a reset can hang it: the loop then cancels every task at
    once, and a task cancelled while asyncio (Python 3.11) is still connecting a new process's
    pipes waits for that process forever, as the connecting task was cancelled too. Cancelled
    alone, a reset ends (its git or find killed and reaped)."""
    loop = asyncio.get_running_loop()
    for room, task in list(_behind.items()):
        if task.get_loop() is loop:
            await _stop_behind(room)


@contextlib.asynccontextmanager
async def clean_room(
    git_dir: Path,
    commit: str,
    root: Path,
    run_id: str,
    iteration: int,
    workspace_id: str = "",
    behind: bool = False,
) -> AsyncIterator[Path]:
    """A clean room holding the files of `commit` for the duration of the block.

    With `workspace_id` (a leased workspace), the workspace's kept room, reset to `commit`
    and kept after the block for the next verification; without it, or while the kept room
    is in use, a one-off room deleted after the block. `behind`: the kept room is reset
    after the block, in the background (see the module docstring).
    """
    room = run_room(root, run_id, workspace_id) if workspace_id else None
    lock = _locks.setdefault(room, asyncio.Lock()) if room is not None else asyncio.Lock()
    # A room locked by a reset behind the last verification is not in use: wait for it.
    if room is None or (lock.locked() and room not in _behind):
        one_off = await create_clean_room(git_dir, commit, root, run_id, iteration)
        try:
            yield one_off
        finally:
            await remove_clean_room(one_off)
        return
    async with lock:
        index = git_dir / ROOM_INDEX
        _waiting.pop(room, None)  # not started: this verification resets the room itself
        started = _behind.pop(room, None)
        if started is not None:
            started.cancel()  # a reset behind that did not get the lock yet: this one does the work
        # Whatever happens below, the room is no longer known clean until reset again.
        clean_at = _clean_at.pop(room, None)
        try:
            if clean_at is not None:
                await _advance(git_dir, clean_at, commit, room, index)
            else:
                await _reset(git_dir, commit, room, index)
        except (OSError, gitops.GitError) as exc:
            if not isinstance(exc, FileNotFoundError):
                log.info("clean room %s could not be reset, made again: %s", room, exc)
            await remove_clean_room(room)
            await asyncio.to_thread(index.unlink, missing_ok=True)
            await _checkout(git_dir, commit, room, index)
        try:
            yield room
        finally:
            if behind:
                _waiting[room] = (git_dir, commit, index, lock)


def start_reset_behind(root: Path, run_id: str, workspace_id: str) -> None:
    """Starts the reset behind the last verification of a run's workspace, if one waits: the
    run goes on (its next agent execution), and the reset runs meanwhile."""
    room = run_room(root, run_id, workspace_id)
    waiting = _waiting.pop(room, None)
    if waiting is not None and room not in _behind:
        git_dir, commit, index, lock = waiting
        reset = functools.partial(_reset, git_dir, commit, room, index)
        _behind[room] = asyncio.create_task(_in_background(room, commit, lock, reset, "reset behind its verification"))


async def remove_run_room(root: Path, run_id: str, workspace_id: str, git_dir: Path) -> None:
    """Deletes the kept clean room of a run's workspace and its index (none: nothing)."""
    room = run_room(root, run_id, workspace_id)
    _waiting.pop(room, None)
    await _stop_behind(room)
    lock = _locks.pop(room, None)
    async with lock or contextlib.nullcontext():
        _clean_at.pop(room, None)
        await remove_clean_room(room)
        # A lock file is left by a git killed while writing the index (a stopped reset).
        for name in (ROOM_INDEX, f"{ROOM_INDEX}.lock"):
            await asyncio.to_thread((git_dir / name).unlink, missing_ok=True)


async def remove_clean_room(room: Path) -> None:
    """Deletes a clean room (also the read-only parts a check may have made): gone at once,
    its files deleted in the background (`discard_tree`; rooms live in
    `$AGENTGATE_HOME/cleanrooms`, the trash beside it)."""
    await discard_tree(room, room.parent.parent / "trash")
