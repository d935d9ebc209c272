"""Disk used by a tree under $AGENTGATE_HOME (docs/workspaces.md, "Disk usage"), for
`agentgate ps`, `agentgate queue stats` and `agentgate gc`, and what a sandboxed execution
wrote into its writable folder (docs/sandbox.md, "Limits").

Blocking walks (call them with asyncio.to_thread): they never follow a symlink, count each
inode once (a hard link is not counted twice) and skip what cannot be read.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass
class TreeUsage:
    """What a walk found: bytes allocated on disk and the newest modification time."""

    bytes: int = 0
    newest_mtime: float = 0.0


def tree_usage(
    path: Path,
    seen: set[tuple[int, int]] | None = None,
    *,
    changed_since_ns: int | None = None,
    stop: threading.Event | None = None,
) -> TreeUsage:
    """Bytes allocated by the tree at `path` (a file or a directory; 0 when missing), like
    `du`, and its newest mtime. `seen` (device, inode) pairs are shared between calls so
    that trees walked together count a hard-linked file once.

    `changed_since_ns`: count only the entries whose change time (ctime, ns) is at or after
    it, every folder still being entered. `stop`: the walk ends early, partial, once set.
    """
    seen = set() if seen is None else seen
    usage = TreeUsage()
    stack = [str(path)]
    while stack:
        if stop is not None and stop.is_set():
            break
        current = stack.pop()
        try:
            info = os.lstat(current)
        except OSError:
            continue
        key = (info.st_dev, info.st_ino)
        if key in seen:
            continue
        seen.add(key)
        if changed_since_ns is None or info.st_ctime_ns >= changed_since_ns:
            usage.bytes += info.st_blocks * 512
        usage.newest_mtime = max(usage.newest_mtime, info.st_mtime)
        if stat.S_ISDIR(info.st_mode):
            try:
                with os.scandir(current) as entries:
                    stack.extend(entry.path for entry in entries)
            except OSError:
                continue
    return usage


def tree_bytes(path: Path) -> int:
    """Bytes allocated by the tree at `path` (see `tree_usage`)."""
    return tree_usage(path).bytes
