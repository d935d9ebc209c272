"""A small async git helper: asyncio subprocesses, a fixed identity, no prompts, no hooks.

Every call runs isolated from configuration nobody chose for it: no system or global git
configuration (filters, diff drivers, credential helpers of the host), no attributes file of
the user, hooks and fsmonitor off. The repository data the service trusts lives in a git
directory outside the agent's reach (see docs/security.md, "Git"); callers name it with
`git_dir` and the files with `work_tree`. Errors carry git's own stderr, so a failed clone
or checkout says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agentgate.workspace.processes import LOW_PRIORITY

log = logging.getLogger(__name__)

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
    # Attributes come only from the tree (and name no command: no filter or diff driver is
    # configured anywhere git looks); the user's global attributes file is not read.
    "core.attributesFile=/dev/null",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "core.quotePath=false",
    "init.defaultBranch=main",
    "advice.detachedHead=false",
    "protocol.ext.allow=never",
    # A commit would otherwise start `git maintenance run --auto` (one more process per
    # snapshot) to decide that these small, short-lived repositories need no gc.
    "maintenance.auto=false",
    "gc.auto=0",
)

#: GIT_* variables kept from the service's environment (transport settings). Others, such
#: as GIT_DIR, GIT_INDEX_FILE or GIT_AUTHOR_NAME, would silently redirect or re-sign our
#: operations, so they are dropped.
_KEPT_GIT_VARS = frozenset(
    {"GIT_SSH", "GIT_SSH_COMMAND", "GIT_ASKPASS", "GIT_PROXY_COMMAND", "GIT_SSL_CAINFO", "GIT_SSL_NO_VERIFY"}
)

#: Variables no git process of ours needs: the service's own credentials. A process gets a
#: token only when the operation needs it, through `extra` (see agentgate.common.github).
_SECRET_PREFIXES = ("AGENTGATE_",)
_SECRET_SUFFIXES = ("_TOKEN", "_API_KEY", "_SECRET", "_SECRET_KEY", "_ACCESS_KEY", "_PASSWORD")

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


def git_env(extra: Mapping[str, str] | None = None, user_config: bool = False) -> dict[str, str]:
    """The environment of a git call: the service's, without GIT_* overrides, without the
    service's secrets, no prompts, and (unless `user_config`) without the system and global
    git configuration.

    `user_config` is for network operations only (a clone of a URL, a push): the user's
    global configuration may hold what reaching their remote needs (a credential helper,
    `url.*.insteadOf`, a proxy), and those operations touch no work tree, so no filter of it
    runs.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith("GIT_") or k in _KEPT_GIT_VARS)
        and not k.startswith(_SECRET_PREFIXES)
        and not k.upper().endswith(_SECRET_SUFFIXES)
    }
    env["GIT_TERMINAL_PROMPT"] = "0"
    if not user_config:
        env["GIT_CONFIG_NOSYSTEM"] = "1"
        env["GIT_CONFIG_GLOBAL"] = os.devnull
        env["GIT_ATTR_NOSYSTEM"] = "1"
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
    git_dir: Path | None = None,
    work_tree: Path | None = None,
    user_config: bool = False,
    behind: bool = False,
) -> GitResult:
    """Runs `git <args>` in `cwd` and returns its output.

    `git_dir` and `work_tree` name the repository explicitly (`--git-dir`, `--work-tree`),
    so nothing found in `cwd` (say a `.git` the agent wrote) is used. `user_config`: see
    `git_env`. `behind`: work no step of a run waits for (a patch export), at a low
    priority, so that the steps that do wait get the processor first. Raises GitError when
    git exits non-zero (unless `check` is False) or runs longer than `timeout`. Cancelling
    the awaiting task kills git.
    """
    argv = _command(args, git_dir, work_tree)
    if behind:
        argv = [*LOW_PRIORITY, *argv]
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=str(cwd),
        env=git_env(env, user_config),
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
        # Reaped before the caller goes on: a git killed while writing an index or a ref
        # could otherwise still create or rename its lock file after the caller removed it.
        await process.wait()
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


def _command(args: Sequence[str], git_dir: Path | None = None, work_tree: Path | None = None) -> list[str]:
    """The argv of `git <args>` with our options; GitError when an argument holds a NUL."""
    argv = ["git"]
    for item in GIT_CONFIG:
        argv += ["-c", item]
    if git_dir is not None:
        argv.append(f"--git-dir={git_dir}")
    if work_tree is not None:
        argv.append(f"--work-tree={work_tree}")
    argv += list(args)
    if any("\x00" in arg for arg in argv):
        # A request value that reached git unchecked: a failed command, not a crash.
        raise GitError(args, -1, "an argument contains a NUL byte")
    return argv


async def piped(
    first: Sequence[str],
    second: Sequence[str],
    *,
    first_cwd: Path,
    second_git_dir: Path,
    stdin: bytes,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> GitResult:
    """`git FIRST | git SECOND`: FIRST runs in `first_cwd` (the repository found there) and
    reads `stdin`; SECOND runs on the git directory `second_git_dir`. Returns SECOND's
    result; GitError naming the command that failed when either exits non-zero or they
    run longer than `timeout`. Cancelling the awaiting task kills both."""
    read_end, write_end = os.pipe()
    processes: list[asyncio.subprocess.Process] = []
    try:
        for argv, cwd, source, sink in (
            (_command(first), first_cwd, asyncio.subprocess.PIPE, write_end),
            (_command(second, second_git_dir), second_git_dir, read_end, asyncio.subprocess.PIPE),
        ):
            processes.append(
                await asyncio.create_subprocess_exec(
                    *argv, cwd=str(cwd), env=git_env(env), stdin=source, stdout=sink,
                    stderr=asyncio.subprocess.PIPE, start_new_session=True,
                )
            )
    except BaseException:
        await _end(processes)
        raise
    finally:
        # Each end belongs to its process now: SECOND sees the end of the data when FIRST exits.
        os.close(read_end)
        os.close(write_end)
    producer, consumer = processes
    try:
        (_, first_err), (out, err) = await asyncio.wait_for(
            asyncio.gather(producer.communicate(stdin), consumer.communicate()), timeout
        )
    except BaseException as exc:
        await _end(processes)
        if isinstance(exc, TimeoutError):
            raise GitError(second, -1, f"timed out after {timeout:g}s") from None
        raise
    first_text, text = first_err.decode("utf-8", errors="replace"), err.decode("utf-8", errors="replace")
    if consumer.returncode:
        # FIRST may have failed only because SECOND stopped reading: both are told.
        also = f" (git {' '.join(first)}: {first_text.strip()})" if producer.returncode and first_text.strip() else ""
        raise GitError(second, consumer.returncode, text.strip() + also, out.decode("utf-8", errors="replace"))
    if producer.returncode:
        raise GitError(first, producer.returncode, first_text)
    return GitResult(0, out.decode("utf-8", errors="replace"), text)


async def work(
    git_dir: Path, work_tree: Path, *args: str, check: bool = True, env: Mapping[str, str] | None = None
) -> GitResult:
    """`git <args>` on a workspace: its trusted git directory and its files."""
    return await git(*args, cwd=work_tree, git_dir=git_dir, work_tree=work_tree, check=check, env=env)


async def _end(processes: Sequence[asyncio.subprocess.Process]) -> None:
    """Kills each of `processes` (their groups) and waits until they are gone."""
    for process in processes:
        _kill(process)
        await process.wait()


def _kill(process: asyncio.subprocess.Process) -> None:
    # git may have started helpers (ssh, remote-https) in its group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def head_commit(git_dir: Path) -> str:
    """The commit id of HEAD of the git directory `git_dir`."""
    return (await git("rev-parse", "--verify", "HEAD^{commit}", cwd=git_dir, git_dir=git_dir)).stdout.strip()


#: Answers about objects that can never change once given (an object id names the same
#: object for good, and our git directories never prune): the callers of one iteration (the
#: gate, the patch export, the snapshot) ask git once, also when they ask at the same time.
#: The oldest are forgotten first.
_KNOWN: dict[tuple[str, ...], object] = {}
_ASKING: dict[tuple[str, ...], asyncio.Future[object]] = {}
_KNOWN_MAX = 4096


def remember_commit(
    git_dir: Path, commit: str, tree: str = "", parent: str = "", changed: Sequence[tuple[str, str]] = ()
) -> None:
    """Records what the caller just made: `commit` is a commit of `git_dir` (with `tree`,
    when known, its first `parent`, and its `changes` against it); a snapshot's first
    readers, the clean room, the gate and the patch export, then ask no git."""
    _keep(("commit", str(git_dir), commit), commit)
    if parent:
        _keep(("commit", str(git_dir), f"{commit}^"), parent)
    if tree:
        _keep(("tree", str(git_dir), commit), tree)
    if parent and changed:
        _keep(("changed", str(git_dir), parent, commit), list(changed))


def remember_same_tree(git_dir: Path, commit: str, other: str) -> None:
    """Records that `other` has the tree of `commit` (the initial snapshot of a clean source
    is the source's commit's tree): a diff from `other` is the diff from `commit`, which
    the run asked for already (`same_tree`)."""
    _keep(("same-tree", str(git_dir), other), commit)


def same_tree(git_dir: Path, commit: str) -> str:
    """The commit recorded as having `commit`'s tree (`remember_same_tree`), else `commit`:
    what to diff from, so that equal diffs are asked once."""
    return str(_KNOWN.get(("same-tree", str(git_dir), commit), commit))


def _keep(key: tuple[str, ...], value: object) -> None:
    if len(_KNOWN) >= _KNOWN_MAX:
        del _KNOWN[next(iter(_KNOWN))]
    _KNOWN[key] = value


async def _once(key: tuple[str, ...], ask: Callable[[], Awaitable[object]], keep: bool = True) -> object:
    """`ask()`'s answer for `key`, asked at most once at a time and (with `keep`) kept when given."""
    if keep and key in _KNOWN:
        return _KNOWN[key]
    asking = _ASKING.get(key)
    if asking is None or asking.get_loop() is not asyncio.get_running_loop():
        asking = _ASKING[key] = asyncio.ensure_future(ask())
        asking.add_done_callback(lambda done: _ASKING.pop(key, None) if _ASKING.get(key) is done else None)
    # Shielded: one caller cancelled does not take the answer from the others.
    value = await asyncio.shield(asking)
    if keep and value:  # none ('' or []) is not kept: an object missing now may come later
        _keep(key, value)
    return value


async def shared_while_asked(key: tuple[str, ...], ask: Callable[[], Awaitable[object]]) -> object:
    """`ask()`'s answer for `key`, asked once for the callers that ask at the same time and
    not kept (a patch: big, and asked once per iteration)."""
    return await _once(key, ask, keep=False)


async def resolve_commit(git_dir: Path, ref: str) -> str | None:
    """The commit id `ref` names in the git directory `git_dir`, or None when it names none."""
    if not ref or ref.startswith("-"):
        return None

    async def ask() -> str:
        result = await git(
            "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}",
            cwd=git_dir, git_dir=git_dir, check=False,
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    if _object_id(ref.rstrip("^")):  # an id (or its parent's): a branch or tag name may move
        return str(await _once(("commit", str(git_dir), ref), ask)) or None
    return await ask() or None


async def tree_of(git_dir: Path, commit: str) -> str:
    """The tree id of `commit` (an object id) in `git_dir`."""

    async def ask() -> str:
        return (await git("rev-parse", f"{commit}^{{tree}}", cwd=git_dir, git_dir=git_dir)).stdout.strip()

    return str(await _once(("tree", str(git_dir), commit), ask)) if _object_id(commit) else await ask()


#: What `add` says, exit code 1, when a pathspec names an ignored folder; it staged the
#: rest and wrote the index first (LC_ALL=C: always these words).
_IGNORED_PATHSPEC = "are ignored by one of your .gitignore files"


async def add_all(git_dir: Path, work_tree: Path, folders: list[str] | None = None) -> None:
    """`git add -A`: every change staged, files ignored by git excepted; with `folders`
    ('/'-terminated, relative), only what is in them is looked at.

    Folders are literal pathspecs (one named `*` or `:(top)` is only that folder). A folder
    that exists never fails to match, but one that is ignored is refused (exit code 1) after
    the rest was staged: its tracked files included, as a full `add -A` would. Any other
    failure with `folders` stages everything instead.
    """
    if folders is not None:
        result = await work(git_dir, work_tree, "add", "-A", "--", *folders, check=False,
                            env={"GIT_LITERAL_PATHSPECS": "1"})
        if result.returncode == 0 or result.returncode == 1 and _IGNORED_PATHSPEC in result.stderr:
            return
        log.warning("staging %d folders failed (%s); staging everything", len(folders), result.stderr.strip())
    await work(git_dir, work_tree, "add", "-A")


async def changed_files(git_dir: Path, old: str, new: str, behind: bool = False) -> list[str]:
    """Paths that differ between two commits (or trees) of `git_dir` (renames as delete + add);
    `behind`: see `git`."""
    return [path for _, path in await changes(git_dir, old, new, behind)]


async def changes(git_dir: Path, old: str, new: str, behind: bool = False) -> list[tuple[str, str]]:
    """(status, path) of each path that differs between two commits (or trees) of `git_dir`:
    `A`dded, `M`odified, `D`eleted or `T` (type changed); renames as delete + add. One
    answer for the paths (`changed_files`) and for the change without its deletions (the
    security scan's)."""

    async def ask() -> list[tuple[str, str]]:
        out = (
            await git("diff", "--no-ext-diff", "--name-status", "--no-renames", "-z", old, new,
                      cwd=git_dir, git_dir=git_dir, behind=behind)
        ).stdout
        fields = out.split("\0")
        return [(status, path) for status, path in zip(fields[0::2], fields[1::2], strict=False) if path]

    if _object_id(old) and _object_id(new):
        return list(await _once(("changed", str(git_dir), old, new), ask))  # type: ignore[call-overload]
    return await ask()


_HEX = frozenset("0123456789abcdef")


def _object_id(text: str) -> str | None:
    """`text` when it is a full object id (SHA-1 or SHA-256), else None."""
    text = text.strip()
    return text if len(text) in (40, 64) and set(text) <= _HEX else None


def read_head_ref(git_dir: Path) -> str | None:
    """The commit id HEAD names, read from the git directory without running git; None when
    it cannot be read that simply (packed or reftable refs, an unborn branch).

    Only for repositories this service manages, right after it committed (the commit
    writes the branch's loose ref): it saves a `rev-parse` process per snapshot. The files
    are a few bytes in the page cache, so reading them on the event loop costs less than a
    hand-off to a thread. Callers fall back to `head_commit` on None.
    """
    try:
        target = _head_ref_file(git_dir)
        return _object_id(target.read_text(encoding="ascii", errors="replace")) if target is not None else None
    except (OSError, ValueError):
        return None


def _head_ref_file(git_dir: Path) -> Path | None:
    """The file HEAD's commit id is in: its branch's loose ref, or HEAD itself when
    detached; None when that is not simple (see `read_head_ref`)."""
    head = (git_dir / "HEAD").read_text(encoding="ascii", errors="replace").strip()
    if not head.startswith("ref: "):
        return git_dir / "HEAD" if _object_id(head) else None
    ref = head[5:].strip()
    if not ref.startswith("refs/heads/") or ".." in ref.split("/"):
        return None
    return git_dir / ref


async def move_head(git_dir: Path, new: str, old: str) -> None:
    """Moves HEAD of the git directory `git_dir` (a repository this service manages) from
    `old` to `new`; GitError when HEAD is not at `old`. By writing the ref file when that is
    simple (`move_head_ref`: a process less per snapshot), else by `git update-ref`."""
    if not move_head_ref(git_dir, new, old):
        await git("update-ref", "HEAD", new, old, cwd=git_dir, git_dir=git_dir)


def move_head_ref(git_dir: Path, new: str, old: str) -> bool:
    """Moves HEAD from `old` to `new` the way `git update-ref HEAD new old` does in a bare
    repository (which keeps no reflog): the ref's `.lock` made exclusively, written, renamed
    over the ref. False, changing nothing, when it cannot be done that simply (a packed ref,
    HEAD not at `old`, a lock held). A few bytes written to the page cache, like
    `read_head_ref`'s read."""
    try:
        target = _head_ref_file(git_dir)
        if target is None or _object_id(target.read_text(encoding="ascii", errors="replace")) != old:
            return False
        lock = target.with_name(target.name + ".lock")
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except (OSError, ValueError):
        return False
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(new + "\n")
        os.replace(lock, target)
    except OSError:
        with contextlib.suppress(OSError):
            lock.unlink()
        return False
    return True


async def head_commit_fast(git_dir: Path) -> str:
    """The commit id of HEAD: read from the ref file when possible, else `rev-parse`."""
    return read_head_ref(git_dir) or await head_commit(git_dir)


def clean_message(message: str) -> str:
    """A commit message as `git commit -m` records it (its default "whitespace" cleanup:
    trailing spaces and leading, trailing and repeated blank lines dropped); "" for a blank
    one. For the plumbing `commit-tree`, which records its message as given."""
    lines: list[str] = []
    for line in message.splitlines():
        line = line.rstrip()
        if line or (lines and lines[-1]):
            lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)
