"""Every default of the sandbox, defined once (see docs/sandbox.md).

Paths under the services' user's home are relative to that home; the home itself is a
parameter (`SandboxSpec.services_home`) so tests can point it at a fake one.
"""

from __future__ import annotations

#: Top-level system folders mounted read-only (those that exist), where toolchains live.
#: A symlink (e.g. /bin -> usr/bin on merged-/usr systems) is recreated as the same symlink.
SYSTEM_READ_ONLY_PATHS: tuple[str, ...] = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
    "/nix",
    "/snap",
    "/var/lib/snapd/snap",
)

#: Files and folders of /etc hidden inside the sandbox: password hashes, host keys and the
#: sudo rules. /etc/passwd and /etc/group are replaced by a two-line synthesized copy (root
#: and nobody), so no account of the host is listed.
HIDDEN_SYSTEM_PATHS: tuple[str, ...] = (
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/ssh",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssl/private",
    "/etc/agentgate",
)

#: Parts of the sandbox's /proc made read-only (sysctls, the magic SysRq key, IRQ and bus
#: settings): host-wide knobs that a uid 0 without capabilities could otherwise write.
PROC_READ_ONLY: tuple[str, ...] = ("sys", "sysrq-trigger", "irq", "bus")

#: Toolchain folders of the services' user's home, mounted read-only (those that exist), so
#: a check calling `~/.pyenv/shims/pytest` or `~/.cargo/bin/cargo` keeps working. Not all of
#: ~/.local: ~/.local/share holds keyrings and some tools' tokens; only its code folders.
HOME_TOOLCHAIN_PATHS: tuple[str, ...] = (
    ".pyenv",
    ".local/bin",
    ".local/lib",
    ".local/share/pipx",
    ".local/share/uv/python",
    ".nvm",
    ".volta",
    ".bun",
    ".deno",
    ".cargo",
    ".rustup",
    "go",
    ".sdkman",
    ".rbenv",
    ".gem",
    ".asdf",
    ".poetry",
    ".elan",
    ".ghcup",
    ".cabal/bin",
)

#: Credential stores of the home, hidden again even when a profile's extra read-only path
#: exposes the whole home (the rest of the home is never mounted in the first place).
HIDDEN_HOME_PATHS: tuple[str, ...] = (
    ".ssh",
    ".aws",
    ".azure",
    ".gnupg",
    ".docker",
    ".kube",
    ".config/gh",
    ".config/gcloud",
    ".config/hub",
    ".git-credentials",
    ".netrc",
    ".npmrc",
    ".pypirc",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".claude",
    ".claude.json",
    ".codex",
    ".config/anthropic",
    ".config/openai",
    ".agentgate",
)

#: Variables set inside every sandbox (HOME is the services' home path, a private tmpfs).
SANDBOX_TMPDIR = "/tmp"
SANDBOX_HOSTNAME = "agentgate-sandbox"

#: Network modes: no network at all (loopback only, the default for checks), egress only
#: through the allowlist proxy (the default for agents), or the host's network (explicit
#: opt-in by a plan with `policy.network: true`).
NETWORK_NONE = "none"
NETWORK_PROXY = "proxy"
NETWORK_HOST = "host"
NETWORK_MODES = (NETWORK_NONE, NETWORK_PROXY, NETWORK_HOST)

#: Sandbox modes: "on" (bubblewrap, refuse to run without it) or "off" (explicit opt-out).
MODE_ON = "on"
MODE_OFF = "off"
MODES = (MODE_ON, MODE_OFF)

#: The workspace service's default for requests whose settings name no mode
#: (AGENTGATE_SANDBOX=on|off, default below), and more read-only paths for every execution
#: of the service (os.pathsep-separated), beside the profile's `sandbox.read_only_paths`.
#: Work orders always carry a mode: the harness resolves it to on unless a profile or the
#: work order says `sandbox: off`.
SANDBOX_ENV_VAR = "AGENTGATE_SANDBOX"
READ_ONLY_ENV_VAR = "AGENTGATE_SANDBOX_READ_ONLY"
SERVICE_DEFAULT_MODE = MODE_ON

#: Model API hosts each agent driver reaches through the proxy (profiles add more).
DRIVER_API_HOSTS: dict[str, tuple[str, ...]] = {
    "claude-code": ("api.anthropic.com", "statsig.anthropic.com"),
    "codex": ("api.openai.com", "chatgpt.com", "auth.openai.com"),
    "api": ("api.anthropic.com", "api.openai.com"),
}

#: Default limits of one execution. None = no limit.
DEFAULT_MEMORY_MB: int | None = 4096
DEFAULT_MAX_PROCESSES: int | None = 512
DEFAULT_MAX_DISK_MB: int | None = 2048

#: Ports the proxy lets through by default (HTTPS and HTTP).
PROXY_ALLOWED_PORTS: tuple[int, ...] = (443, 80)

#: Port the in-sandbox forwarder listens on (127.0.0.1 of the sandbox's own network
#: namespace); HTTP(S)_PROXY point at it.
PROXY_PORT_IN_SANDBOX = 3128
#: Hosts reached directly inside a proxied sandbox (NO_PROXY): its own loopback. A driver's
#: loopback model endpoint is taken out of this list for its execution (docs/sandbox.md).
NO_PROXY_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
#: Where the proxy's unix socket appears inside the sandbox.
PROXY_SOCKET_IN_SANDBOX = "/run/agentgate-proxy.sock"

#: How often the size of the writable folder is measured, at least (seconds); a large
#: folder is measured less often (ten times the duration of one measurement).
DISK_POLL_SECONDS = 0.5

#: Where per-execution cgroups are made (cgroup v2 root, or the v1 controller mounts).
CGROUP_ROOT = "/sys/fs/cgroup"
CGROUP_PREFIX = "agentgate-sandbox"

#: The oldest bubblewrap with every option used here (--disable-userns, --size: 0.8.0,
#: Debian 12).
MIN_BWRAP_VERSION: tuple[int, ...] = (0, 8, 0)

#: bubblewrap's install hint, shown when it is missing.
INSTALL_HINT = (
    "install bubblewrap and socat (Debian/Ubuntu: `apt-get install bubblewrap socat`) or opt out with `sandbox: off`"
)
