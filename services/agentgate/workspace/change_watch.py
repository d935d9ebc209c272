"""What was written in a workspace since its last snapshot, known without walking it.

A snapshot's `git add -A` stats every tracked file and reads every folder: its cost grows
with the repository, not with what the agent changed (docs/workspaces.md, "Snapshots").
The workspace service watches each leased workspace's folders with inotify (one instance
for the service, one watch per folder) and records the paths events name; the snapshot
then hands git the folders those paths are in, and git looks only there.

Every byte of the workspace is the agent's, so what is recorded may only ever be more than
what changed, never less; whatever cannot be followed exactly makes the next snapshot a
full `add -A` ("full"):

- a folder's watch is added before the folder is listed, and the new folder itself is
  recorded: what was made in it before the watch is inside the recorded folder;
- a folder moved (its watches name the old place: they are made again), the event queue
  overflowing, a `.gitignore` written (it may un-ignore files nobody touched), more than
  `MAX_RECORDED_PATHS` paths, more folders than `MAX_WATCHED_FOLDERS`, a file with a second
  hard link (a write through one name is reported under that name only): full, and for the
  last two the workspace stays full;
- a write through a shared memory map reports nothing, but closing the file does
  (`IN_CLOSE_WRITE`, at the latest when the sandbox ends the process);
- after a restart of the service nothing is known: full.

The snapshot is taken when no execution runs; the queue is read to its end first, so every
write that returned before is counted. A watch never follows a symlink at the folder it
names; a new folder listed while the agent swaps one of its parents for a symlink may get
watches where that leads, which only ever add paths (they name no real folder here, so the
snapshot looks at everything); the folders handed to git are checked part by part, from the
top, to be real folders.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from inotify_simple import INotify, flags

log = logging.getLogger(__name__)

#: Folders watched per workspace at most (inotify watches are a per-user kernel resource);
#: a workspace with more gets full snapshots.
MAX_WATCHED_FOLDERS = 10_000
#: Recorded folders handed to git at most; more: a full `add -A`.
MAX_PATHSPECS = 1_000
#: Paths recorded between two snapshots at most (an agent may write millions of files):
#: past it, the next snapshot is a full `add -A` and nothing more is kept.
MAX_RECORDED_PATHS = 100_000

_CHANGES = (
    flags.CREATE | flags.DELETE | flags.MODIFY | flags.ATTRIB | flags.CLOSE_WRITE
    | flags.MOVED_FROM | flags.MOVED_TO | flags.MOVE_SELF | flags.DELETE_SELF
)
_WATCH = _CHANGES | flags.ONLYDIR | flags.DONT_FOLLOW | flags.EXCL_UNLINK


@dataclass
class _Tracked:
    """One workspace's watches and what they saw since the last snapshot."""

    root: Path
    #: Watch descriptor -> folder, relative to `root` ('' for the root).
    folders: dict[int, str] = field(default_factory=dict)
    #: Paths (relative) named by events since the last snapshot.
    changed: set[str] = field(default_factory=set)
    #: The next snapshot must look at everything.
    full: bool = False
    #: A folder moved: the watches are made again before the next snapshot.
    rewatch: bool = False
    #: Past following: every snapshot looks at everything.
    untrackable: bool = False


class ChangeWatch:
    """The inotify watches of the workspace service's leased workspaces."""

    def __init__(self) -> None:
        self._inotify: INotify | None = None
        self._tracked: dict[str, _Tracked] = {}
        #: Watch descriptor -> workspace id.
        self._owners: dict[int, str] = {}

    def open(self) -> None:
        """Starts reading events on the running event loop (no inotify: nothing is tracked)."""
        try:
            self._inotify = INotify(nonblocking=True)
        except OSError as exc:
            log.warning("no inotify (%s): every snapshot looks at the whole workspace", exc)
            return
        asyncio.get_running_loop().add_reader(self._inotify.fileno(), self._drain)

    def close(self) -> None:
        """Stops every watch."""
        if self._inotify is not None:
            asyncio.get_running_loop().remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None
        self._tracked.clear()
        self._owners.clear()

    async def start(self, workspace_id: str, root: Path) -> None:
        """Watches every folder of `root` but the agent's `.git` (called before any agent
        runs there). Its folders are listed in a thread; the watches are added here."""
        if self._inotify is None:
            return
        self.stop(workspace_id)
        folders = await asyncio.to_thread(_folders, root, MAX_WATCHED_FOLDERS + 1)
        tracked = _Tracked(root)
        self._tracked[workspace_id] = tracked
        for relative in folders:
            if not self._watch(workspace_id, tracked, relative):
                break

    def stop(self, workspace_id: str) -> None:
        """Removes a workspace's watches (before its files are deleted, or at release)."""
        tracked = self._tracked.pop(workspace_id, None)
        if tracked is None or self._inotify is None:
            return
        for wd in tracked.folders:
            self._owners.pop(wd, None)
            with contextlib.suppress(OSError):  # the folder is gone: the kernel dropped it
                self._inotify.rm_watch(wd)

    async def take(self, workspace_id: str) -> list[str] | None:
        """The folders (relative, '/'-terminated) a snapshot of `workspace_id` must look
        at, and a fresh record from now on; None: the whole workspace."""
        self._drain()
        tracked = self._tracked.get(workspace_id)
        if tracked is None:
            return None
        if tracked.rewatch:
            await self.start(workspace_id, tracked.root)
            return None
        changed, full = tracked.changed, tracked.full or tracked.untrackable
        tracked.changed, tracked.full = set(), False
        if full:
            return None
        specs = _pathspecs(tracked.root, changed)
        return None if specs is None or len(specs) > MAX_PATHSPECS else specs

    # --- events ---

    def _watch(self, workspace_id: str, tracked: _Tracked, relative: str) -> bool:
        """Adds one folder's watch; False (and the workspace untrackable) past the limits."""
        assert self._inotify is not None
        if len(tracked.folders) >= MAX_WATCHED_FOLDERS:
            self._give_up(workspace_id, tracked, f"more than {MAX_WATCHED_FOLDERS} folders")
            return False
        try:
            wd = self._inotify.add_watch(tracked.root / relative if relative else tracked.root, _WATCH)
        except FileNotFoundError:
            return True  # gone already: its parent's event named it
        except NotADirectoryError:
            return True  # a symlink or file by now: named by its parent's event too
        except OSError as exc:  # ENOSPC: the user's watches are spent
            self._give_up(workspace_id, tracked, str(exc))
            return False
        tracked.folders[wd] = relative
        self._owners[wd] = workspace_id
        return True

    def _give_up(self, workspace_id: str, tracked: _Tracked, why: str) -> None:
        log.info("workspace %s: snapshots look at the whole workspace (%s)", workspace_id, why)
        self.stop(workspace_id)
        tracked.untrackable = True
        tracked.folders.clear()
        self._tracked[workspace_id] = tracked

    def _drain(self) -> None:
        if self._inotify is None:
            return
        for event in self._inotify.read(timeout=0):
            if event.mask & flags.Q_OVERFLOW:
                for tracked in self._tracked.values():
                    tracked.full = True
                continue
            workspace_id = self._owners.get(event.wd, "")
            owner = self._tracked.get(workspace_id)
            if owner is None or event.wd not in owner.folders:
                continue
            if event.mask & flags.IGNORED:
                # The folder was deleted (its parent named it) or the watch removed.
                del owner.folders[event.wd]
                self._owners.pop(event.wd, None)
                continue
            self._record(workspace_id, owner, owner.folders[event.wd], event.mask, event.name)

    def _record(self, workspace_id: str, tracked: _Tracked, folder: str, mask: int, name: str) -> None:
        if mask & flags.MOVE_SELF or mask & flags.MOVED_FROM and mask & flags.ISDIR:
            # The watches in the moved folder name its old place now.
            tracked.full = tracked.rewatch = True
            return
        if not name:
            return  # an event of the watched folder itself (DELETE_SELF: its parent named it)
        if not folder and name == ".git":
            return  # the agent's own repository: never part of a snapshot
        path = f"{folder}/{name}" if folder else name
        if not tracked.full:
            tracked.changed.add(path)
            if len(tracked.changed) > MAX_RECORDED_PATHS:
                tracked.full = True
                tracked.changed.clear()
        if name == ".gitignore":
            tracked.full = True
        elif mask & (flags.CREATE | flags.MOVED_TO):
            if mask & flags.ISDIR:
                self._watch_tree(workspace_id, tracked, path)
            elif _has_other_links(tracked.root / path):
                self._give_up(workspace_id, tracked, f"{path} has a second hard link")

    def _watch_tree(self, workspace_id: str, tracked: _Tracked, top: str) -> None:
        """Watches a new folder and every folder in it, each watched before it is listed: a
        folder made in it later is an event, and what was made in one meanwhile is inside
        `top`, which is recorded."""
        pending = [top]
        while pending:
            relative = pending.pop()
            if not self._watch(workspace_id, tracked, relative):
                return
            pending += _subfolders(tracked.root / relative, relative)


def _has_other_links(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_nlink > 1


def _folders(top: Path, limit: int) -> list[str]:
    """The folders of the workspace `top` ('' for itself, then relative paths), symlinks not
    followed, the agent's `.git` left out; at most `limit`."""
    found = [""]
    pending = [""]
    while pending and len(found) < limit:
        relative = pending.pop()
        children = _subfolders(top / relative if relative else top, relative)
        found += children
        pending += children
    return found[:limit]


def _subfolders(folder: Path, relative: str) -> list[str]:
    """The folders directly in `folder` (relative: `relative/name`), symlinks not followed,
    the agent's `.git` at the workspace's top left out; none when it cannot be listed (gone
    or replaced: its parent's events name it)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    found = []
    for entry in entries:
        if not relative and entry.name == ".git":
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                found.append(f"{relative}/{entry.name}" if relative else entry.name)
    return found


def _pathspecs(root: Path, changed: set[str]) -> list[str] | None:
    """The folders git must look at for `changed`: each path's nearest folder that is a
    real folder (every part of it, from the top, a folder and not a symlink) and not the
    top; None when one is the top (the whole workspace). Each is '/'-terminated, none
    inside another. A folder that exists never fails a pathspec, even empty or ignored."""
    folders: set[str] = set()
    for path in changed:
        folder = _real_folder(root, path)
        if not folder:
            return None
        folders.add(folder)
    kept: list[str] = []
    for folder in sorted(folders):  # a parent sorts before its children
        if not kept or not folder.startswith(kept[-1] + "/"):
            kept.append(folder)
    return [f"{folder}/" for folder in kept]


def _real_folder(root: Path, path: str) -> str:
    """The longest leading part of `path` (itself included) that is a real folder under
    `root`; '' for the top."""
    parts = path.split("/")
    real = 0
    current = root
    for part in parts:
        current = current / part
        try:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                break
        except OSError:
            break
        real += 1
    return "/".join(parts[:real])
