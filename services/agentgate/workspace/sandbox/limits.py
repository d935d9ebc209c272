"""Resource limits of one sandboxed execution: a cgroup per execution when one can be made
(pids and memory), rlimits set in the child before bubblewrap starts, and a watcher of the
writable folder's size. What each guarantees is in docs/sandbox.md.

Why a cgroup and not only rlimits: the services usually run as root, and the kernel never
applies RLIMIT_NPROC to uid 0, so only the pids controller contains a fork bomb there.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agentgate.common.disk_usage import tree_usage
from agentgate.common.pids import pid_alive
from agentgate.workspace.sandbox import defaults

log = logging.getLogger(__name__)

LIMIT_PIDS = "processes"
LIMIT_MEMORY = "memory"
LIMIT_DISK = "disk"


@dataclass(frozen=True)
class Limits:
    """Limits of one execution (None = unlimited). Defaults in defaults.py."""

    memory_mb: int | None = defaults.DEFAULT_MEMORY_MB
    max_processes: int | None = defaults.DEFAULT_MAX_PROCESSES
    max_disk_mb: int | None = defaults.DEFAULT_MAX_DISK_MB


def _writable(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


def _own_cgroup(controller: str) -> str:
    """The services' own cgroup path for a v1 `controller`, or the v2 one for ""."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            if (controller == "" and names == "") or controller in names.split(","):
                return path.strip() or "/"
    return "/"


@dataclass
class Cgroup:
    """One execution's cgroup (v2: one folder; v1: one folder per controller)."""

    version: int
    pids_dir: Path | None
    memory_dir: Path | None
    dirs: list[Path] = field(default_factory=list)

    @property
    def procs_files(self) -> list[str]:
        """The files the child writes "0" to, joining the cgroup before it execs.

        v1: `tasks`, which moves only the writing thread. The launcher (a shell) has one
        thread, so that moves the process; and moving one's own thread is the one case where
        the kernel skips its global lock on every thread group, whose taking waits for an
        RCU grace period (~11 ms here after an idle moment: `cgroup.procs` made that the
        largest part of a sandboxed execution, docs/benchmarks.md "Sandbox"). v2 has no such
        file outside threaded cgroups: `cgroup.procs`."""
        name = "tasks" if self.version == 1 else "cgroup.procs"
        return [str(d / name) for d in self.dirs]

    def pids(self) -> set[int]:
        """Every process in the cgroup now."""
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        return found

    def signal_all(self, sig: int) -> None:
        """Signals every process in the cgroup (v2 has cgroup.kill for SIGKILL)."""
        if sig == signal.SIGKILL and self.version == 2 and self.dirs:
            with contextlib.suppress(OSError):
                (self.dirs[0] / "cgroup.kill").write_text("1")
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def hit(self) -> list[str]:
        """Limits the execution ran into (the kernel's own counters)."""
        hits: list[str] = []
        with contextlib.suppress(OSError, ValueError):
            if self.pids_dir is not None:
                events = (self.pids_dir / "pids.events").read_text().split()
                if len(events) >= 2 and int(events[1]) > 0:
                    hits.append(LIMIT_PIDS)
        with contextlib.suppress(OSError, ValueError):
            if self.memory_dir is not None:
                if self.version == 2:
                    text = (self.memory_dir / "memory.events").read_text()
                    counts = dict(line.split() for line in text.splitlines() if line.strip())
                    if int(counts.get("oom_kill", 0)) > 0 or int(counts.get("max", 0)) > 0:
                        hits.append(LIMIT_MEMORY)
                else:
                    # oom_control counts the OOM kills; failcnt stays 0 on recent kernels.
                    words = (self.memory_dir / "memory.oom_control").read_text().split()
                    counts = dict(zip(words[::2], words[1::2], strict=False))
                    if int(counts.get("oom_kill", 0)) > 0:
                        hits.append(LIMIT_MEMORY)
        return hits

    def remove(self) -> None:
        """Kills what is left and removes the folders (retrying while the kernel reaps)."""
        for attempt in range(50):
            self.signal_all(signal.SIGKILL)
            left = []
            for d in self.dirs:
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as error:
                    if error.errno != errno.EBUSY:
                        log.warning("cannot remove cgroup %s: %s", d, error)
                        continue
                    left.append(d)
            if not left:
                return
            self.dirs = left
            time.sleep(0.002 * (attempt + 1))
        log.warning("cgroups left behind: %s", ", ".join(map(str, self.dirs)))


class CgroupFactory:
    """Makes per-execution cgroups under `root` (cgroup v2, or v1 pids/memory controllers).

    `available` is False when no cgroup can be made here (read-only /sys/fs/cgroup, no
    delegation): the caller then relies on rlimits and says so.
    """

    def __init__(self, root: Path | str = defaults.CGROUP_ROOT):
        self.root = Path(root)
        self.version = 0
        self._v2_parent: Path | None = None
        self._v1: dict[str, Path] = {}
        self._detect()

    @property
    def available(self) -> bool:
        """Whether per-execution cgroups can be made."""
        return self.version != 0

    def _detect(self) -> None:
        controllers = self.root / "cgroup.controllers"
        if controllers.is_file():
            wanted = {"pids", "memory"} & set(controllers.read_text().split())
            # The services' own cgroup may hold processes, and a cgroup with processes
            # cannot enable controllers for children (the "no internal processes" rule):
            # try a folder next to it, then the root.
            own = self.root / _own_cgroup("").lstrip("/")
            for parent in dict.fromkeys([own.parent, self.root]):
                if self._enable_v2(parent, wanted):
                    base = parent / defaults.CGROUP_PREFIX
                    with contextlib.suppress(OSError):
                        base.mkdir(exist_ok=True)
                        if self._enable_v2(base, wanted):
                            self._v2_parent = base
                            self.version = 2
                            self.sweep()
                            return
            return
        for name in ("pids", "memory"):
            # Below the services' own cgroup, so limits set on the services (a container's
            # memory limit) still cover the sandboxes.
            directory = self.root / name / _own_cgroup(name).lstrip("/")
            if _writable(directory):
                base = directory / defaults.CGROUP_PREFIX
                with contextlib.suppress(OSError):
                    base.mkdir(exist_ok=True)
                    self._v1[name] = base
        if self._v1:
            self.version = 1
        self.sweep()

    def sweep(self) -> None:
        """Removes cgroups left by services that died (named after their pid), killing any
        process still in them: a crashed service cannot clean up after itself."""
        bases = [self._v2_parent] if self._v2_parent is not None else list(self._v1.values())
        for base in bases:
            assert base is not None
            with contextlib.suppress(OSError):
                for entry in base.iterdir():
                    owner = entry.name.partition("-")[0]
                    if entry.is_dir() and owner.isdigit() and not pid_alive(int(owner)):
                        Cgroup(self.version, None, None, [entry]).remove()

    @staticmethod
    def _enable_v2(parent: Path, wanted: set[str]) -> bool:
        try:
            enabled = set((parent / "cgroup.subtree_control").read_text().split())
            missing = wanted - enabled
            if missing:
                (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in missing))
            return True
        except OSError:
            return False

    def create(self, limits: Limits) -> Cgroup | None:
        """A fresh cgroup carrying `limits`, or None when cgroups are not available."""
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        try:
            if self.version == 2 and self._v2_parent is not None:
                d = self._v2_parent / name
                d.mkdir()
                group = Cgroup(2, d, d, [d])
                if limits.max_processes is not None:
                    _write(d / "pids.max", str(limits.max_processes))
                if limits.memory_mb is not None:
                    _write(d / "memory.max", str(limits.memory_mb * 1024 * 1024))
                    _write(d / "memory.swap.max", "0")
                return group
            if self.version == 1:
                group = Cgroup(1, None, None)
                if "pids" in self._v1:
                    d = self._v1["pids"] / name
                    d.mkdir()
                    group.dirs.append(d)
                    group.pids_dir = d
                    if limits.max_processes is not None:
                        _write(d / "pids.max", str(limits.max_processes))
                if "memory" in self._v1:
                    d = self._v1["memory"] / name
                    d.mkdir()
                    group.dirs.append(d)
                    group.memory_dir = d
                    if limits.memory_mb is not None:
                        _write(d / "memory.limit_in_bytes", str(limits.memory_mb * 1024 * 1024))
                        _write(d / "memory.memsw.limit_in_bytes", str(limits.memory_mb * 1024 * 1024))
                return group
        except OSError as error:
            log.warning("cannot make a cgroup for a sandbox: %s", error)
        return None


def _write(path: Path, value: str) -> None:
    # Some knobs are absent (no swap accounting): a missing file is not an error.
    try:
        path.write_text(value)
    except FileNotFoundError:
        pass
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.EACCES, errno.EPERM) or "memsw" not in path.name:
            raise


#: The launcher of bubblewrap: joins the cgroup, sets the rlimits, then execs. A shell
#: rather than a preexec_fn: preexec_fn forces a plain fork() of the multi-threaded service
#: (gRPC warns, and a lock held by another thread at fork time can hang the child), while a
#: plain exec keeps subprocess's vfork path. Arguments: cgroup.procs files, "--", then
#: "core fsize_blocks nproc vmem_kib" ("-" = leave as is), then the command.
_LAUNCHER = r"""
while [ "$1" != -- ]; do echo 0 > "$1" || { echo "sandbox: cannot join cgroup $1" >&2; exit 125; }; shift; done
shift
ulimit -c "$1" || exit 125
[ "$2" = - ] || ulimit -f "$2" || exit 125
[ "$3" = - ] || ulimit -u "$3" 2>/dev/null || ulimit -p "$3" || exit 125
[ "$4" = - ] || ulimit -v "$4" || exit 125
shift 4
exec "$@"
"""


def launcher_argv(cgroup: Cgroup | None, limits: Limits) -> list[str]:
    """The argv prefix that starts bubblewrap inside the cgroup with the rlimits set.

    Joining the cgroup before exec means every process the execution starts is counted from
    the very first. Rlimits: RLIMIT_FSIZE (no single file larger than max_disk_mb),
    RLIMIT_NPROC (effective only for a non-root services' user: the kernel exempts root),
    RLIMIT_AS when there is no memory cgroup, and no core dumps.
    """
    procs = cgroup.procs_files if cgroup is not None else []
    fsize = "-" if limits.max_disk_mb is None else str(limits.max_disk_mb * 2048)  # 512-byte blocks
    nproc = "-" if limits.max_processes is None or os.geteuid() == 0 else str(limits.max_processes)
    vmem = "-"
    if limits.memory_mb is not None and (cgroup is None or cgroup.memory_dir is None):
        vmem = str(limits.memory_mb * 1024)
    return ["/bin/sh", "-c", _LAUNCHER, "sandbox-launcher", *procs, "--", "0", fsize, nproc, vmem]


def change_mark(path: Path) -> int:
    """The moment an execution in `path` starts, on the clock of `path`'s file system (ns):
    `path`'s times are set to now and its new ctime read back, so the mark has the file
    system's own granularity (1 s on some) and coarse clock, which every later change is
    stamped with (a mark from `time.time()` could be later than the ctime of a change made
    after it). Falls back to the wall clock less 2 s when `path`'s times cannot be set."""
    try:
        os.utime(path)
        return os.stat(path).st_ctime_ns
    except OSError:
        return time.time_ns() - 2_000_000_000


async def watch_disk(path: Path, since_ns: int, allowed: int, on_exceeded: Callable[[], None]) -> None:
    """Measures what was written into `path` since `since_ns` (a `change_mark`) until
    cancelled, and calls `on_exceeded` once it is more than `allowed` bytes.

    What was written = the allocated blocks of every entry created or changed since the
    mark (ctime, which no process can set back): a changed file counts whole, a deleted one
    frees nothing, so this is never less than the folder's growth, and no measurement of
    the folder is needed before the execution starts. The first measurement comes one
    interval after the start (an execution shorter than that costs no walk; what it can
    write meanwhile is what any interval lets through); each runs in a thread (never the
    loop), a folder that takes long to measure is measured less often, and a cancel stops
    the walk under way."""
    stop = threading.Event()
    interval = defaults.DISK_POLL_SECONDS
    try:
        while True:
            await asyncio.sleep(interval)
            began = time.monotonic()
            usage = await asyncio.to_thread(tree_usage, path, changed_since_ns=since_ns, stop=stop)
            if usage.bytes > allowed:
                on_exceeded()
                return
            interval = max(defaults.DISK_POLL_SECONDS, 10 * (time.monotonic() - began))
    finally:
        stop.set()
