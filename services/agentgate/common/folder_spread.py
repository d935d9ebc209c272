"""Roots whose sub-folders are unrelated trees, made and deleted at a high rate (one
workspace, git directory, clean room, agent home per run): each new tree is placed apart
from the trees deleted just before it (docs/workspaces.md, "Where the files go").

On ext4 a root gets the "top directory" attribute (`chattr +T`): the allocator then places
each new sub-folder, and so the files written in it, in a block group of its own choosing
(starting from a hash of the folder's name: the per-run names are random), as it does for
the folders under `/`, instead of next to its parent. Without it every
run's files go into the one group of the root, among the inodes of the runs deleted just
before. ext4 without a journal (virtual machines' disks often are) skips each inode freed
in the last 30 seconds when it looks for a free one, reading that inode's table block:
there, with runs ending and starting back to back, a workspace's checkout of 100 files took
31-80 ms instead of 6-7 (docs/workspaces.md, "Where the files go"). Other file systems do
not know the attribute; nothing changes there.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from pathlib import Path

log = logging.getLogger(__name__)

#: `FS_IOC_GETFLAGS` / `FS_IOC_SETFLAGS` (linux/fs.h, 64-bit: _IOR/_IOW('f', 1/2, long)).
_GETFLAGS = 0x80086601
_SETFLAGS = 0x40086602
#: `FS_TOPDIR_FL`: "top of directory hierarchies" (ext2/3/4's Orlov allocator).
TOPDIR_FLAG = 0x00020000
#: Answers of a file system that has no such flags, or not this one.
_UNSUPPORTED = {errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EACCES}


def _flags(fd: int) -> int:
    buffer = bytearray(8)
    fcntl.ioctl(fd, _GETFLAGS, buffer)
    return int(struct.unpack_from("=i", buffer)[0])


def spread_root(path: Path) -> bool:
    """Makes `path` (and its parents) if missing and marks it as a root of unrelated trees
    (blocking). Returns whether the mark is set; False on a file system without it.

    A symlink there is followed: $AGENTGATE_HOME is the operator's, who may have put a root
    on another disk that way; no agent writes there."""
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = _flags(fd)
        if not flags & TOPDIR_FLAG:
            fcntl.ioctl(fd, _SETFLAGS, struct.pack("=i", flags | TOPDIR_FLAG) + bytes(4))
            flags = _flags(fd)
        return bool(flags & TOPDIR_FLAG)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
        log.debug("%s: no top-directory attribute here (%s)", path, exc)
        return False
    finally:
        os.close(fd)
