"""Running a command inside a sandbox: `Sandbox(spec).prepare(...)` turns one execution into
a bubblewrap invocation plus what must happen around it (cgroup, rlimits, proxy, disk
watcher, cleanup). `processes.run_process(..., sandbox=...)` drives it; `Sandbox.run` is the
shortcut.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentgate.workspace.sandbox import defaults
from agentgate.workspace.sandbox.limits import LIMIT_DISK, Cgroup, CgroupFactory, change_mark, launcher_argv, watch_disk
from agentgate.workspace.sandbox.proxy import AllowlistProxy, RefusalCallback
from agentgate.workspace.sandbox.spec import SandboxSpec, SandboxUnavailable, bwrap_args

if TYPE_CHECKING:
    from agentgate.workspace.processes import ProcessResult

log = logging.getLogger(__name__)

#: The in-sandbox relay of an agent's execution, run by the sandbox's `sh` before the command:
#: socat listens on 127.0.0.1:PORT inside the network namespace and relays each connection to
#: the proxy's unix socket (how docs/sandbox.md reaches the proxy without a network). The loop
#: waits until the listener is there, so the command never races a relay that is not ready:
#: the namespace is new and socat is its only process, so its first TCP socket in use
#: (/proc/net/sockstat, this namespace's own counters) is the listener, hashed by listen().
#: /proc/net/tcp would say which socket, but reading it walks the kernel's tables of every
#: namespace (~5 ms here, docs/benchmarks.md "Sandbox"). Builtins only (no process per turn).
#: `exec` keeps the command's pid, stdio and exit status; socat holds none of its stdio and
#: ends with the PID namespace. Arguments: PORT, SOCKET, "--", then the command.
_RELAY = r"""
socat TCP-LISTEN:"$1",bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:"$2" </dev/null >/dev/null 2>&1 &
until
    while read -r proto _ inuse _; do [ "$proto" = TCP: ] && break; done < /proc/net/sockstat
    [ "${inuse:-0}" != 0 ]
do
    kill -0 $! 2>/dev/null || { echo "sandbox: the proxy relay (socat) did not start" >&2; exit 125; }
done
shift 3
exec "$@"
"""


def find_bwrap() -> str:
    """The path of bubblewrap, or SandboxUnavailable saying how to install it."""
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable(
            f"the sandbox needs bubblewrap (`bwrap`), which is not installed: {defaults.INSTALL_HINT}"
        )
    version = _bwrap_version(path)
    if version < defaults.MIN_BWRAP_VERSION:
        wanted = ".".join(map(str, defaults.MIN_BWRAP_VERSION))
        found = ".".join(map(str, version)) or "unknown"
        raise SandboxUnavailable(
            f"the sandbox needs bubblewrap {wanted} or later (for --disable-userns and --size), found {found} "
            f"at {path}: {defaults.INSTALL_HINT}"
        )
    return path


def find_socat() -> None:
    """Raises SandboxUnavailable, saying how to install it, when socat (the in-sandbox relay
    to the agents' proxy) is missing."""
    if shutil.which("socat") is None:
        raise SandboxUnavailable(
            f"an agent's sandbox needs socat (its relay to the network proxy), which is not installed: "
            f"{defaults.INSTALL_HINT}"
        )


@functools.cache
def _bwrap_version(path: str) -> tuple[int, ...]:
    # Once per process and path (a few ms): the version cannot change under a running service.
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    digits = out.split()[-1] if out.split() else ""
    try:
        return tuple(int(part) for part in digits.split("."))
    except ValueError:
        return ()


@functools.cache
def _identity_files() -> tuple[Path, Path]:
    """A minimal /etc/passwd and /etc/group (root and nobody), written once per process, so
    tools asking for the current user work but no account of the host is listed. Removed
    when the process exits normally (a service's SIGTERM included)."""
    folder = Path(tempfile.mkdtemp(prefix="agentgate-sandbox-etc-"))
    atexit.register(shutil.rmtree, folder, True)
    os.chmod(folder, 0o755)
    home = Path.home()
    passwd = folder / "passwd"
    passwd.write_text(f"root:x:0:0:root:{home}:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    group = folder / "group"
    group.write_text("root:x:0:\nnogroup:x:65534:\n")
    for path in (passwd, group):
        os.chmod(path, 0o644)
    return passwd, group


@functools.cache
def _cgroups(root: str) -> CgroupFactory:
    return CgroupFactory(root)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc's parent links), children first."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # Field 4 (ppid) comes after the command name, which may hold spaces: split after ")".
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


@dataclass
class Prepared:
    """One execution, ready to spawn: `argv` and `env` for the child, and the hooks
    `started`, `signal` and `finish` that `run_process` calls around it. `sandboxed` is
    False for the opt-out (the command runs as it is)."""

    argv: list[str]
    env: dict[str, str]
    sandboxed: bool = False
    cgroup: Cgroup | None = None
    proxy: AllowlistProxy | None = None
    private_dir: Path | None = None
    watched_dir: Path | None = None
    watched_since_ns: int = 0
    allowed_growth: int | None = None
    limits_hit: list[str] = field(default_factory=list)
    _pid: int | None = None
    _watcher: asyncio.Task[None] | None = None

    def started(self, pid: int) -> None:
        """The child (bubblewrap) runs as `pid`: start watching the writable folder."""
        self._pid = pid
        if self.watched_dir is not None and self.allowed_growth is not None:
            self._watcher = asyncio.create_task(
                watch_disk(self.watched_dir, self.watched_since_ns, self.allowed_growth, self._disk_exceeded)
            )

    def _disk_exceeded(self) -> None:
        self.limits_hit.append(LIMIT_DISK)
        if self._pid is not None:
            self.signal(self._pid, signal.SIGKILL)

    def signal(self, pid: int, sig: int) -> None:
        """Signals the execution. SIGKILL goes to bubblewrap's group: its PID namespace
        ends, and every process in it with it, whatever session or group it made for
        itself. Any other signal goes to the processes inside (bubblewrap itself would die
        at once and take the sandbox with it, leaving the command no grace); the /proc scan
        this takes is short and happens only on a timeout or a cancel."""
        if sig == signal.SIGKILL or not self.sandboxed:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            if self.cgroup is not None and sig == signal.SIGKILL:
                self.cgroup.signal_all(signal.SIGKILL)
            return
        for child in _descendants(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, sig)

    async def finish(self) -> list[str]:
        """After the execution: stops the watcher and the proxy, removes the cgroup (killing
        anything left in it) and the private folder; returns the limits that were hit."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self.proxy is not None:
            await self.proxy.close()
        if self.cgroup is not None:
            cgroup = self.cgroup

            def read_and_remove() -> list[str]:
                hits = cgroup.hit()
                cgroup.remove()
                return hits

            for hit in await asyncio.to_thread(read_and_remove):
                if hit not in self.limits_hit:
                    self.limits_hit.append(hit)
        if self.private_dir is not None:
            await asyncio.to_thread(shutil.rmtree, self.private_dir, True)
        return list(self.limits_hit)


class Sandbox:
    """Runs executions of one `SandboxSpec`.

    - `on_refused(refusal)`: called for each connection the proxy refused (network "proxy").
    - `cgroup_root`: where per-execution cgroups are made (tests may point it elsewhere).
    - `bwrap`: the path of bubblewrap (found on PATH by default).

    With `spec.mode == "on"` and no bubblewrap, making a Sandbox raises SandboxUnavailable.
    """

    def __init__(
        self,
        spec: SandboxSpec,
        *,
        on_refused: RefusalCallback | None = None,
        cgroup_root: Path | str = defaults.CGROUP_ROOT,
        bwrap: str | None = None,
    ):
        self.spec = spec
        self.on_refused = on_refused
        self.bwrap = None if spec.mode == defaults.MODE_OFF else (bwrap or find_bwrap())
        if self.enabled and spec.network == defaults.NETWORK_PROXY:
            find_socat()
        self._cgroup_root = str(cgroup_root)

    def widened(
        self,
        *,
        read_only: Sequence[Path] = (),
        endpoints: Sequence[tuple[str, int]] = (),
        login_files: Sequence[Path] = (),
    ) -> Sandbox:
        """The same sandbox with more read-only paths, allowed (host, port) endpoints and
        login files: what a driver adds for its own CLI (its install folder, its configured
        model endpoint, its login). Nothing else changes; an opt-out (`off`) stays off."""
        if not self.enabled or (not read_only and not endpoints and not login_files):
            return self
        spec = replace(
            self.spec,
            extra_read_only=tuple(dict.fromkeys((*self.spec.extra_read_only, *read_only))),
            allowed_endpoints=tuple(dict.fromkeys((*self.spec.allowed_endpoints, *endpoints))),
            login_files=tuple(dict.fromkeys((*self.spec.login_files, *login_files))),
        )
        return Sandbox(spec, on_refused=self.on_refused, cgroup_root=self._cgroup_root, bwrap=self.bwrap)

    @property
    def enabled(self) -> bool:
        """False for the explicit opt-out (`sandbox: off`), which callers must show."""
        return self.spec.mode == defaults.MODE_ON

    @property
    def limits_mechanism(self) -> str:
        """How pids and memory are limited here: "cgroup v1", "cgroup v2" or "rlimits"."""
        factory = _cgroups(self._cgroup_root)
        return f"cgroup v{factory.version}" if factory.available else "rlimits"

    async def prepare(self, argv: Sequence[str], *, cwd: Path | str, env: Mapping[str, str]) -> Prepared:
        """The bubblewrap command line and its helpers for one execution of `argv`."""
        if not self.enabled:
            return Prepared(list(argv), dict(env))
        spec = self.spec
        assert self.bwrap is not None
        child_env = dict(env)
        child_env["HOME"] = str(spec.services_home)
        child_env["TMPDIR"] = defaults.SANDBOX_TMPDIR
        prepared = Prepared([], child_env)
        proxied = spec.network == defaults.NETWORK_PROXY

        def setup() -> list[str]:
            # Every blocking step in one hop to a thread (each hop costs a loop wake-up).
            socket_path: Path | None = None
            if proxied:
                # A private 0700 folder for the socket: no other local user can use our proxy.
                prepared.private_dir = Path(tempfile.mkdtemp(prefix="agsb-"))
                socket_path = prepared.private_dir / "proxy.sock"
            passwd, group = _identity_files()
            options = bwrap_args(spec, cwd=Path(cwd), passwd_file=passwd, group_file=group, proxy_socket=socket_path)
            prepared.cgroup = _cgroups(self._cgroup_root).create(spec.limits)
            if spec.limits.max_disk_mb is not None:
                prepared.watched_dir = spec.writable_dir
                prepared.watched_since_ns = change_mark(spec.writable_dir)
                prepared.allowed_growth = spec.limits.max_disk_mb * 1024 * 1024
            return options

        try:
            options = await asyncio.to_thread(setup)
            command = list(argv)
            if proxied:
                assert prepared.private_dir is not None
                prepared.proxy = AllowlistProxy(
                    prepared.private_dir / "proxy.sock",
                    spec.allowed_hosts,
                    allowed_ports=spec.allowed_ports,
                    allowed_endpoints=spec.allowed_endpoints,
                    on_refused=self.on_refused,
                )
                await prepared.proxy.start()
                url = f"http://127.0.0.1:{defaults.PROXY_PORT_IN_SANDBOX}"
                for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
                    child_env[name] = url
                # Loopback stays direct (the sandbox's own), except a host named by an allowed
                # endpoint: a model server on the host's 127.0.0.1 is only reachable through
                # the proxy, so the CLI must not bypass it for that name.
                endpoint_hosts = {host.lower() for host, _ in spec.allowed_endpoints}
                direct = [h for h in defaults.NO_PROXY_HOSTS if h not in endpoint_hosts]
                child_env["NO_PROXY"] = child_env["no_proxy"] = ",".join(direct)
                relay_args = [str(defaults.PROXY_PORT_IN_SANDBOX), defaults.PROXY_SOCKET_IN_SANDBOX]
                command = ["/bin/sh", "-c", _RELAY, "sandbox-relay", *relay_args, "--", *command]
            prepared.argv = [*launcher_argv(prepared.cgroup, spec.limits), self.bwrap, *options, "--", *command]
            prepared.sandboxed = True
        except BaseException:
            await prepared.finish()
            raise
        return prepared

    async def run(self, argv: Sequence[str], *, cwd: Path | str | None = None, **kwargs: Any) -> ProcessResult:
        """`processes.run_process` of `argv` inside this sandbox (cwd: the writable folder)."""
        from agentgate.workspace.processes import run_process

        return await run_process(argv, cwd=cwd or self.spec.writable_dir, sandbox=self, **kwargs)

