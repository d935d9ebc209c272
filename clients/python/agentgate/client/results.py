"""A run's result in the user's hands (docs/results.md): its stored patches shown (`agentgate
diff`) and brought into the user's own directory (`agentgate apply`).

`apply` into a git repository makes a branch, `agentgate/<run>` by default, from the commit
the run started from, with the run's cumulative patch applied on a temporary index (`git
apply --cached` with GIT_INDEX_FILE pointing at a file of our own): the user's working tree,
index and current branch are never touched, unless `checkout` asks for it (and then git's
own checkout guards the user's changes). The branch's tree is checked against the run's
final snapshot tree. Into a directory that is not a git repository, the patch is checked
with `git apply --check` first and applied only when all of it applies.

The patch is the agent's work: hostile input. `git apply` refuses paths outside the target,
paths inside `.git` and writes through symbolic links, so a patch changes nothing else.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agentgate.v1 import common_pb2

#: The identity of the branch's commit when the user's git has none configured.
FALLBACK_IDENTITY = {
    "GIT_AUTHOR_NAME": "AgentGate",
    "GIT_AUTHOR_EMAIL": "agentgate@localhost",
    "GIT_COMMITTER_NAME": "AgentGate",
    "GIT_COMMITTER_EMAIL": "agentgate@localhost",
}

_COLORS = (
    (b"diff --git", b"\x1b[1m"),
    (b"index ", b"\x1b[1m"),
    (b"--- ", b"\x1b[1m"),
    (b"+++ ", b"\x1b[1m"),
    (b"@@", b"\x1b[36m"),
    (b"+", b"\x1b[32m"),
    (b"-", b"\x1b[31m"),
)


class ApplyRefused(Exception):
    """The change cannot be applied as asked; the message says why and names the files."""

    def __init__(self, message: str, files: list[str] | None = None):
        self.files = sorted(set(files or []))
        if self.files:
            message = f"{message}: {', '.join(self.files)}"
        super().__init__(message)


@dataclass(frozen=True)
class Applied:
    """What `apply_change` did."""

    target: Path
    #: The branch made (or found already holding the change); '' for a plain directory.
    branch: str = ""
    commit: str = ""
    tree: str = ""
    #: True when the branch already held exactly this change (nothing was written).
    already: bool = False
    checked_out: bool = False


def colorize(patch: bytes) -> bytes:
    """The patch with the ANSI colors of `git diff` on a terminal (headers bold, hunks cyan,
    added lines green, removed red)."""
    out = []
    for line in patch.splitlines(keepends=True):
        color = next((code for prefix, code in _COLORS if line.startswith(prefix)), b"")
        if color:
            body = line.rstrip(b"\n")
            line = color + body + b"\x1b[0m" + line[len(body) :]
        out.append(line)
    return b"".join(out)


def stat(patch: bytes) -> str:
    """`git apply --stat` of the patch: files changed, lines added and removed."""
    with tempfile.TemporaryDirectory(prefix="agentgate-stat-") as tmp:
        done = _git(Path(tmp), "apply", "--stat", input=patch, ceiling=Path(tmp))
    return done.stdout.decode("utf-8", errors="replace")


def default_branch(run: common_pb2.Run) -> str:
    """The branch `apply` makes: the run's own branch name, else agentgate/<run>."""
    return run.branch_name or f"agentgate/{run.id}"


def is_repository_top(target: Path) -> bool:
    """Whether `target` is the top of a git work tree."""
    done = _git(target, "rev-parse", "--show-toplevel", check=False, ceiling=target.parent)
    if done.returncode != 0:
        return False
    return Path(done.stdout.decode().strip()).resolve() == target.resolve()


def apply_change(run: common_pb2.Run, patch: common_pb2.RunPatch, target: Path, checkout: bool = False) -> Applied:
    """Brings the run's cumulative `patch` into `target` (see the module's docstring).
    Raises ApplyRefused, naming the files, when it cannot."""
    if not target.is_dir():
        raise ApplyRefused(f"{target} is not a directory")
    if is_repository_top(target):
        return _apply_to_repository(run, patch, target, checkout)
    if checkout:
        raise ApplyRefused(f"--checkout needs a git repository; {target} is not one")
    return _apply_to_files(patch, target)


def _apply_to_repository(run: common_pb2.Run, patch: common_pb2.RunPatch, target: Path, checkout: bool) -> Applied:
    base = patch.from_commit
    if not base:
        raise ApplyRefused(
            f"run {run.id} started from a directory without commits; {target} is a git repository "
            "(apply to a copy of that directory instead, with --to)"
        )
    if _git(target, "cat-file", "-e", f"{base}^{{commit}}", check=False).returncode != 0:
        raise ApplyRefused(f"run {run.id} started from commit {base[:12]}, which {target} does not have")
    branch = default_branch(run)
    if _git(target, "check-ref-format", "--branch", branch, check=False).returncode != 0:
        raise ApplyRefused(f"{branch!r} is not a valid branch name")
    with tempfile.TemporaryDirectory(prefix="agentgate-apply-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(target, "read-tree", base, env=env)
        applied = _git(target, "apply", "--cached", "--binary", "-", input=patch.patch, env=env, check=False)
        if applied.returncode != 0:
            raise ApplyRefused(
                f"the change of run {run.id} does not apply to commit {base[:12]}", _failed_files(applied.stderr)
            )
        tree = _git(target, "write-tree", env=env).stdout.decode().strip()
    if patch.to_tree and tree != patch.to_tree:
        raise ApplyRefused(f"the patch of run {run.id} did not rebuild its final snapshot (tree {tree[:12]})")
    existing = _git(target, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
    if existing.returncode == 0:
        current = existing.stdout.decode().strip()
        if _git(target, "rev-parse", f"{current}^{{tree}}").stdout.decode().strip() == tree:
            return _maybe_checkout(Applied(target, branch, current, tree, already=True), checkout)
        differs = _git(target, "diff", "--name-only", "-z", current, tree).stdout.decode("utf-8", "replace")
        raise ApplyRefused(
            f"branch {branch} exists in {target} and differs from the change of run {run.id} "
            f"(delete it with `git branch -D {branch}` to apply again) in",
            [name for name in differs.split("\0") if name],
        )
    message = f"agentgate: run {run.id}\n\n{run.task_prompt[:2000]}\n".encode()
    identity = {} if _git(target, "var", "GIT_COMMITTER_IDENT", check=False).returncode == 0 else FALLBACK_IDENTITY
    commit = _git(target, "commit-tree", tree, "-p", base, input=message, env=identity).stdout.decode().strip()
    # The all-zero old value: made only when no branch of that name appeared meanwhile.
    _git(target, "update-ref", "-m", f"agentgate apply {run.id}", f"refs/heads/{branch}", commit, "0" * len(commit))
    return _maybe_checkout(Applied(target, branch, commit, tree), checkout)


def _maybe_checkout(applied: Applied, checkout: bool) -> Applied:
    if not checkout:
        return applied
    done = _git(applied.target, "checkout", "-q", applied.branch, check=False, user_hooks=True)
    if done.returncode != 0:
        raise ApplyRefused(
            f"branch {applied.branch} is ready, but checking it out was refused (your changes would be lost) for",
            _failed_files(done.stderr) or [done.stderr.decode("utf-8", "replace").strip()],
        )
    return Applied(applied.target, applied.branch, applied.commit, applied.tree, applied.already, checked_out=True)


def _apply_to_files(patch: common_pb2.RunPatch, target: Path) -> Applied:
    checked = _git(target, "apply", "--check", "--binary", "-", input=patch.patch, check=False, ceiling=target.parent)
    if checked.returncode != 0:
        raise ApplyRefused(
            f"the change does not apply to the files of {target} (they changed since the run)",
            _failed_files(checked.stderr),
        )
    _git(target, "apply", "--binary", "-", input=patch.patch, ceiling=target.parent)
    return Applied(target)


def _failed_files(stderr: bytes) -> list[str]:
    """The file names in git's complaints ("error: patch failed: a.py:3", "error: a.py:
    already exists in working directory", "error: a.py: patch does not apply", and
    checkout's tab-indented list)."""
    names = []
    for line in stderr.decode("utf-8", errors="replace").splitlines():
        if line.startswith("error: patch failed: "):
            names.append(line[len("error: patch failed: ") :].rsplit(":", 1)[0])
        elif line.startswith("error: ") and ": " in line[7:]:
            names.append(line[7:].split(": ", 1)[0])
        elif line.startswith("\t"):
            names.append(line.strip())
    return names


def _git(
    cwd: Path,
    *args: str,
    input: bytes | None = None,  # noqa: A002 - subprocess's own name
    env: dict[str, str] | None = None,
    check: bool = True,
    ceiling: Path | None = None,
    user_hooks: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    """git in the user's directory, as the user (their configuration applies), with git's
    messages in English (they are parsed for file names). `ceiling` stops git from taking
    a repository above `cwd` for the target's. Hooks run only for `user_hooks` (checkout)."""
    full_env = {**os.environ, "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0", **(env or {})}
    if ceiling is not None:
        full_env["GIT_CEILING_DIRECTORIES"] = str(ceiling.resolve())
    argv = ["git"] + ([] if user_hooks else ["-c", "core.hooksPath=/dev/null"]) + list(args)
    done = subprocess.run(argv, cwd=cwd, input=input, env=full_env, capture_output=True, check=False)
    if check and done.returncode != 0:
        raise ApplyRefused(f"git {args[0]} failed in {cwd}: {done.stderr.decode('utf-8', 'replace').strip()}")
    return done
