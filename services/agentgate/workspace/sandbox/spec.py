"""What one sandboxed execution may see and do, and the bubblewrap command line for it.

Pure data and path logic, no processes: `bwrap_args(spec, ...)` is tested and benchmarked on
its own. What each mount is for is in docs/sandbox.md.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from agentgate.workspace.sandbox import defaults
from agentgate.workspace.sandbox.limits import Limits


class SandboxUnavailable(RuntimeError):
    """The sandbox is on but cannot run here (bubblewrap missing or unusable)."""


@dataclass(frozen=True)
class SandboxSpec:
    """One kind of execution: what is writable, readable, reachable and how much it may use.

    - `writable_dir`: the workspace (agent) or the clean room (checks), bound read-write at
      the same path; the only place whose writes outlive the execution.
    - `mode`: "on" (bubblewrap) or "off" (the explicit opt-out: nothing is confined).
    - `network`: "none" (loopback only), "proxy" (egress through the allowlist proxy to
      `allowed_hosts` on `allowed_ports`; names or `*.domain` patterns; and to the exact
      (host, port) pairs of `allowed_endpoints`, a driver's configured model endpoint) or
      "host". A loopback endpoint host is taken out of NO_PROXY inside: it means the host's
      loopback, reached through the proxy, not the sandbox's own.
    - `extra_read_only`: more paths to show read-only (from the profile), e.g. /work/x/.venv.
    - `extra_writable`: the caller's own per-execution folders the command must write to
      (the scripted agent's report), bound read-write like `writable_dir`.
    - `run_dir`: the run's own folder under $AGENTGATE_HOME, shown read-only; everything else
      of `agentgate_home` is hidden.
    - `login_files`: files of a model CLI's login (codex's `auth.json`) shown read-only at
      their own path, over whatever hides their folder: the agent reads its own credential,
      as it reads an API key in its environment, and cannot change the user's login.
    - `services_home`: the home of the services' user: HOME inside is a private tmpfs at
      this path, with `home_toolchains` (relative to it) shown read-only.
    - `include_service_python`: show the prefix of the Python running the services (its venv
      and base install, and the source folders of an editable install of agentgate), so
      checks calling the project's `.venv/bin/pytest` work, the scripted agent can run and
      the proxy forwarder can start.
    """

    writable_dir: Path
    mode: str = defaults.MODE_ON
    network: str = defaults.NETWORK_NONE
    limits: Limits = field(default_factory=Limits)
    extra_read_only: tuple[Path, ...] = ()
    extra_writable: tuple[Path, ...] = ()
    run_dir: Path | None = None
    agentgate_home: Path | None = None
    services_home: Path = field(default_factory=Path.home)
    home_toolchains: tuple[str, ...] = defaults.HOME_TOOLCHAIN_PATHS
    include_service_python: bool = True
    allowed_hosts: tuple[str, ...] = ()
    allowed_ports: tuple[int, ...] = defaults.PROXY_ALLOWED_PORTS
    allowed_endpoints: tuple[tuple[str, int], ...] = ()
    login_files: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in defaults.MODES:
            raise ValueError(f"sandbox mode must be one of {', '.join(defaults.MODES)}, got {self.mode!r}")
        if self.network not in defaults.NETWORK_MODES:
            raise ValueError(f"network must be one of {', '.join(defaults.NETWORK_MODES)}, got {self.network!r}")


def service_python_paths() -> list[Path]:
    """The folders of the Python running the services: its venv and its base install."""
    paths = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    paths.append(os.path.dirname(os.path.realpath(sys.executable)))
    # An editable install imports agentgate from the source tree, not site-packages.
    for name, module in list(sys.modules.items()):
        if name.count(".") == 1 and name.startswith("agentgate.") and hasattr(module, "__path__"):
            paths += [p for p in module.__path__ if os.path.isabs(p)]
    return [Path(p) for p in dict.fromkeys(os.path.realpath(p) for p in paths)]


def _under(path: Path, roots: list[Path]) -> bool:
    # On the strings: `root in path.parents` made building the options cost ~2 ms per execution.
    text = str(path)
    return any(text == str(root) or text.startswith(str(root).rstrip("/") + "/") for root in roots)


def bwrap_args(
    spec: SandboxSpec,
    *,
    cwd: Path,
    passwd_file: Path,
    group_file: Path,
    proxy_socket: Path | None = None,
) -> list[str]:
    """bubblewrap's options (everything before `--` and the command) for `spec`.

    Mounts are applied in order, so later ones cover earlier ones: the system, then the
    private /tmp and HOME with the toolchains, then extra paths, then what must stay hidden
    whatever was exposed before (secrets, $AGENTGATE_HOME), then the run's folder and the
    writable folder last, so they are visible even inside a hidden tree.
    """
    args = [
        "--unshare-user", "--disable-userns",  # no nested namespaces: no way to remount
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--hostname", defaults.SANDBOX_HOSTNAME,
        "--die-with-parent", "--new-session", "--cap-drop", "ALL",
    ]
    if spec.network != defaults.NETWORK_HOST:
        args.append("--unshare-net")
    visible: list[Path] = []
    for raw in defaults.SYSTEM_READ_ONLY_PATHS:
        path = Path(raw)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), raw]
        elif path.is_dir():
            args += ["--ro-bind", raw, raw]
            visible.append(path)
    args += ["--proc", "/proc"]
    # bubblewrap means to cover these read-only but skips a folder that is not itself
    # writable (/proc/sys is 0555), while the files inside are writable by uid 0: the
    # sandbox's root is the host's root without capabilities, and sysctls such as
    # kernel.panic check only the uid. Covered here, read-only, whatever bubblewrap does.
    for name in defaults.PROC_READ_ONLY:
        if os.path.exists(f"/proc/{name}"):
            args += ["--ro-bind", f"/proc/{name}", f"/proc/{name}"]
    args += ["--dev", "/dev"]
    size = [] if spec.limits.max_disk_mb is None else ["--size", str(spec.limits.max_disk_mb * 1024 * 1024)]
    args += [*size, "--tmpfs", "/tmp", "--symlink", "/tmp", "/var/tmp"]
    home = spec.services_home
    # A home at / or inside a system folder (HOME=/ for some service managers) would cover
    # the system with an empty tmpfs: then HOME stays what the system shows, read-only.
    if home != Path("/") and not _under(home, visible):
        args += [*size, "--tmpfs", str(home)]
    for rel in spec.home_toolchains:
        path = home / rel
        if path.exists():
            args += ["--ro-bind", str(path), str(path)]
            visible.append(path)
    extra = [Path(p) for p in spec.extra_read_only]
    if spec.include_service_python:
        extra += service_python_paths()
    for path in extra:
        if path.exists() and not _under(path, visible):
            args += ["--ro-bind", str(path), str(path)]
            visible.append(path)
    hidden = [Path(p) for p in defaults.HIDDEN_SYSTEM_PATHS] + [home / rel for rel in defaults.HIDDEN_HOME_PATHS]
    for path in hidden:
        if not _under(path, visible) or not (path.exists() or path.is_symlink()):
            continue
        if path.is_dir() and not path.is_symlink():
            args += ["--tmpfs", str(path)]
        else:
            args += ["--ro-bind", "/dev/null", str(path)]
    args += ["--ro-bind", str(passwd_file), "/etc/passwd", "--ro-bind", str(group_file), "/etc/group"]
    if spec.agentgate_home is not None:
        args += ["--tmpfs", str(spec.agentgate_home)]
    for path in spec.login_files:
        if path.is_file():
            args += ["--ro-bind", str(path.resolve()), str(path)]
    if spec.run_dir is not None and spec.run_dir.exists():
        args += ["--ro-bind", str(spec.run_dir), str(spec.run_dir)]
    args += ["--bind", str(spec.writable_dir), str(spec.writable_dir)]
    for path in spec.extra_writable:
        if path.is_dir():
            args += ["--bind", str(path), str(path)]
    if proxy_socket is not None:
        args += ["--ro-bind", str(proxy_socket), defaults.PROXY_SOCKET_IN_SANDBOX]
    # The root is bubblewrap's own tmpfs holding the mount points: read-only, so nothing
    # can be written outside the places above, even for the life of the execution.
    args += ["--remount-ro", "/", "--chdir", str(cwd)]
    return args
