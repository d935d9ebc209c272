"""A small async git helper: asyncio subprocesses, a fixed identity, no prompts, no hooks.

Errors carry git's own stderr, so a failed clone or checkout says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

GIT_NAME = "AgentGate"
GIT_EMAIL = "agentgate@localhost"

#: Options on every git call. Identity is fixed so commits never depend on the host's
#: configuration; hooks and fsmonitor are off because a copied repository's hooks are
#: code we did not choose to run; signing is off because it would need the user's keys;
#: the `ext::` transport would run arbitrary commands from a URL.
GIT_CONFIG = (
    f"user.name={GIT_NAME}",
    f"user.email={GIT_EMAIL}",
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "core.quotePath=false",
    "init.defaultBranch=main",
    "advice.detachedHead=false",
    "protocol.ext.allow=never",
)

#: GIT_* variables kept from the service's environment (transport settings). Others, such
#: as GIT_DIR, GIT_INDEX_FILE or GIT_AUTHOR_NAME, would silently redirect or re-sign our
#: operations, so they are dropped.
_KEPT_GIT_VARS = frozenset(
    {"GIT_SSH", "GIT_SSH_COMMAND", "GIT_ASKPASS", "GIT_PROXY_COMMAND", "GIT_SSL_CAINFO", "GIT_SSL_NO_VERIFY"}
)

DEFAULT_TIMEOUT_SECONDS = 600.0


class GitError(RuntimeError):
    """A git command failed; the message holds the command and git's stderr."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str, stdout: str = ""):
        self.git_args = list(args)
        self.returncode = returncode
        self.stderr = stderr
        self.stdout = stdout
        detail = stderr.strip() or stdout.strip() or f"exit code {returncode}"
        super().__init__(f"git {' '.join(args)} failed: {detail}")


@dataclass(frozen=True)
class GitResult:
    """Output of a git command that ran."""

    returncode: int
    stdout: str
    stderr: str


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a git call: the service's, without GIT_* overrides, no prompts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k in _KEPT_GIT_VARS}
    env["GIT_TERMINAL_PROMPT"] = "0"
    # A prompt for an ssh passphrase or host key would hang the service.
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    env["LC_ALL"] = "C"
    if extra:
        env.update(extra)
    return env


async def git(
    *args: str,
    cwd: Path | str,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
) -> GitResult:
    """Runs `git <args>` in `cwd` and returns its output.

    Raises GitError when git exits non-zero (unless `check` is False) or runs longer than
    `timeout`. Cancelling the awaiting task kills git.
    """
    argv = ["git"]
    for item in GIT_CONFIG:
        argv += ["-c", item]
    argv += list(args)
    if any("\x00" in arg for arg in argv):
        # A request value that reached git unchecked: a failed command, not a crash.
        raise GitError(args, -1, "an argument contains a NUL byte")
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=str(cwd),
        env=git_env(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        _kill(process)
        await process.wait()
        raise GitError(args, -1, f"timed out after {timeout:g}s") from None
    except BaseException:
        _kill(process)
        raise
    assert process.returncode is not None
    result = GitResult(
        process.returncode,
        stdout.decode("utf-8", errors="replace"),
        stderr.decode("utf-8", errors="replace"),
    )
    if check and result.returncode != 0:
        raise GitError(args, result.returncode, result.stderr, result.stdout)
    return result


def _kill(process: asyncio.subprocess.Process) -> None:
    # git may have started helpers (ssh, remote-https) in its group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def head_commit(cwd: Path) -> str:
    """The commit id of HEAD."""
    return (await git("rev-parse", "--verify", "HEAD^{commit}", cwd=cwd)).stdout.strip()


async def resolve_commit(cwd: Path, ref: str) -> str | None:
    """The commit id `ref` names in the repository at `cwd`, or None when it names none."""
    if not ref or ref.startswith("-"):
        return None
    result = await git(
        "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}", cwd=cwd, check=False
    )
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


async def changed_files(cwd: Path, old: str, new: str) -> list[str]:
    """Paths that differ between two commits (renames as delete + add)."""
    out = (await git("diff", "--name-only", "--no-renames", "-z", old, new, cwd=cwd)).stdout
    return [name for name in out.split("\0") if name]
