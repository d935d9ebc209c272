"""Room kept aside under $AGENTGATE_HOME so that work can still be ended on a full disk.

When the disk fills, the writes that matter most are the last ones: a run's final state
(FAILED, with the disk message) and its terminal event in persistence, the work order's
completion in the queue. Without room for them the run would read BUILDING and the work
order RUNNING forever (docs/troubleshooting.md, "Disk full"). Persistence and the queue each
keep a file of `RESERVE_BYTES` written at start; the first final write that meets a full
disk deletes it and tries again. Once it was spent, persistence's other writes first try to
put it back, and fail as disk-full while there is no room for it, so that what was freed
stays for the runs still to end; when room came back (files deleted), the reserve is
rewritten and writes go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from pathlib import Path

from agentgate.common.errors import is_disk_full

log = logging.getLogger(__name__)

#: Enough for a few final run records, run.json files and terminal events.
RESERVE_BYTES = 512 * 1024


def reserve_path(home: Path, service: str) -> Path:
    """Where `service` keeps its reserve: `$AGENTGATE_HOME/{service}.reserve`."""
    return home / f"{service}.reserve"


class DiskReserve:
    """A file of `size` bytes at `path`, deleted to free room for the final writes."""

    def __init__(self, path: Path, size: int = RESERVE_BYTES):
        self.path = path
        self.size = size
        #: Whether the file is in place (known without a system call on every write).
        self.held = False
        #: Whether it was deleted for a final write and not yet put back.
        self.spent = False

    async def ensure(self) -> bool:
        """Puts the reserve in place (allocated, not sparse, so the blocks are really
        taken); False when the disk has no room for it (nothing is left behind)."""
        if self.held:
            return True
        try:
            # Only with room to spare: writing it until ENOSPC would take, for a moment,
            # the very room a final write may be retrying into.
            if not await asyncio.to_thread(self._has_room):
                return False
            await asyncio.to_thread(self._write)
        except OSError as exc:
            if not is_disk_full(exc):
                # Not a full disk (a read-only folder, say): no reserve, and no reason to
                # refuse writes for it.
                log.warning("no disk reserve at %s: %s", self.path, exc)
                return True
            return False
        self.held = True
        return True

    async def allow_write(self) -> bool:
        """Whether an ordinary (not final) write may go ahead: False only while the reserve
        is spent and the disk still has no room to put it back."""
        if not self.spent:
            return True
        if not await self.ensure():
            return False
        self.spent = False
        return True

    async def release(self) -> bool:
        """Deletes the reserve; True when that freed room (it was in place)."""
        if not self.held:
            return False
        self.held = False
        self.spent = True
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, self.path)
        log.warning("disk full: released the %d-byte reserve %s to end runs cleanly", self.size, self.path)
        return True

    def _has_room(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stat = os.statvfs(self.path.parent)
        return stat.f_bavail * stat.f_frsize >= 2 * self.size

    def _write(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                # Allocates the blocks without writing them (and without an fsync, which
                # would cost a service's start tens of milliseconds).
                os.posix_fallocate(fd, 0, self.size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                # A file system without fallocate: zeros, which take the blocks too.
                left = self.size
                while left > 0:
                    left -= os.write(fd, b"\0" * min(left, 65536))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise
        os.close(fd)
