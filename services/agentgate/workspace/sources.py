"""Reading the user's directory into a workspace as one consistent state, never writing it.

A user's repository is alive while it is read (a background `git gc`, an editor saving, a
fetch in another terminal), so nothing here copies git's object store as plain files:

- a git repository's history and commit are read through git (`git fetch` from the source
  into the workspace's trusted git directory: objects travel as a pack that git builds
  from whatever state its store is in), then the user's uncommitted changes and untracked
  files that are not ignored are listed by git and copied as files;
- a plain directory is copied file by file.

A file that changes while it is copied is copied again; one that disappears is left out
(the directory no longer has it) and logged by name; one that keeps changing fails the
preparation naming it. Never a half-copied file. See docs/workspaces.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from agentgate.common.errors import FailedPrecondition
from agentgate.workspace import git as gitops

log = logging.getLogger(__name__)

#: Attempts at copying one file that keeps changing before the preparation fails.
MAX_COPY_ATTEMPTS = 5
#: Reads of the source must not take git's optional locks (an index refresh written back
#: into the user's `.git`): the user's directory is only ever read.
SOURCE_ENV = {"GIT_OPTIONAL_LOCKS": "0"}
#: `host:path` (scp-like ssh), as git tells it from a local path: a colon before any slash.
_SCP_LIKE = re.compile(r"^[^/]+:")


class SourceChanged(FailedPrecondition):
    """A file of the source kept changing while it was copied."""


@dataclass(frozen=True)
class GitSource:
    """What a git repository source holds as of one moment."""

    #: The commit checked out in the source ('' for a repository without commits).
    commit: str
    #: The branch checked out there ('' when detached or unborn).
    branch: str
    #: Paths (relative, '/'-separated) that differ from `commit` in the source's work tree:
    #: changed, deleted, untracked; copied (or removed) on top of the commit's files.
    changed: list[str]
    #: Where the user's `origin` pushes ('' when it has none): where delivery pushes.
    origin_url: str


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def copy_entry(source: Path, destination: Path) -> bool:
    """Copies one file or symlink so that the copy equals the source at one moment
    (blocking). Returns False when `source` is gone (or is not a file or link any more).

    The source's status is compared before and after the copy; a difference means it was
    written meanwhile, and the copy starts again.
    """
    for _ in range(MAX_COPY_ATTEMPTS):
        try:
            before = os.lstat(source)
        except FileNotFoundError:
            return False
        destination.parent.mkdir(parents=True, exist_ok=True)
        if destination.is_symlink() or destination.is_file():
            destination.unlink()
        try:
            if stat.S_ISLNK(before.st_mode):
                os.symlink(os.readlink(source), destination)
            elif stat.S_ISREG(before.st_mode):
                shutil.copyfile(source, destination, follow_symlinks=False)
                os.chmod(destination, stat.S_IMODE(before.st_mode))
            else:
                return False  # a directory now, a socket, a pipe: nothing to copy as a file
            after = os.lstat(source)
        except FileNotFoundError:
            continue  # deleted mid-copy: the next look says whether it is gone for good
        if _signature(before) == _signature(after):
            return True
    raise SourceChanged(f"{source} kept changing while it was copied ({MAX_COPY_ATTEMPTS} attempts); try again")


def copy_plain_tree(source: Path, destination: Path) -> None:
    """Copies a directory that is not a git repository into `destination` (blocking).

    Sockets, pipes and devices are skipped (reading a pipe blocks); a `.git` at the top is
    never copied (a repository without commits, or a broken one).
    """
    for root, dirs, files in os.walk(source):
        relative = Path(root).relative_to(source)
        if relative == Path("."):
            dirs[:] = [name for name in dirs if name != ".git"]
            files = [name for name in files if name != ".git"]
        target = destination / relative
        target.mkdir(parents=True, exist_ok=True)
        # Links to directories come back in `dirs`; they are copied as links, not followed.
        for name in [name for name in dirs if os.path.islink(os.path.join(root, name))]:
            dirs.remove(name)
            files.append(name)
        for name in files:
            if not copy_entry(Path(root) / name, target / name):
                log.info("%s is gone, or not a file or link; left out", Path(root) / name)


def copy_changes(source: Path, destination: Path, names: list[str]) -> None:
    """Makes each of `names` in `destination` what it is in `source` now: copied when it
    exists there, removed when it does not (blocking)."""
    for name in names:
        target = destination / name
        if not copy_entry(source / name, target) and (target.is_symlink() or target.is_file()):
            target.unlink()


def is_git_source(source: Path) -> bool:
    """Whether `source` is the top of a git work tree (`.git` is a folder, or the file of a
    linked worktree or submodule)."""
    return (source / ".git").exists()


async def _in_source(source: Path, *args: str, check: bool = True, user_config: bool = False) -> gitops.GitResult:
    return await gitops.git(*args, cwd=source, env=SOURCE_ENV, check=check, user_config=user_config)


async def read_git_source(source: Path, include_ignored: bool) -> GitSource:
    """What the git repository `source` holds beyond its checked-out commit, read without
    writing it: the commit, the branch, the changed and untracked (with `include_ignored`,
    also ignored) files, and where its `origin` pushes.

    One `git status` gives commit, branch and changes alike (staged and unstaged, against
    the commit; it refreshes the index's stat data in memory only, as no optional lock is
    taken), while the push URL is asked for at the same time.
    """
    ignored = ["--ignored=traditional"] if include_ignored else []
    status, origin = await asyncio.gather(
        _in_source(
            source, "status", "--porcelain=v2", "--branch", "--no-ahead-behind", "-z", "--untracked-files=all",
            "--no-renames",
            "--ignore-submodules=all", *ignored,
        ),
        # Where the user pushes (their pushurl and insteadOf rules applied): resolved now,
        # from the user's repository, and never again from anything the agent can write.
        _in_source(source, "remote", "get-url", "--push", "origin", check=False, user_config=True),
    )
    commit, branch, changed = _parse_status(status.stdout)
    return GitSource(
        commit=commit,
        branch=branch,
        changed=changed,
        origin_url=_absolute_url(origin.stdout.strip(), source) if origin.returncode == 0 else "",
    )


#: Fields of `git status --porcelain=v2` records before the path, by record type:
#: changed (1) and unmerged (u) entries; untracked (?) and ignored (!) have none.
_STATUS_FIELDS = {"1": 8, "u": 10, "?": 1, "!": 1}


def _parse_status(text: str) -> tuple[str, str, list[str]]:
    """Commit, branch ('' when unborn / detached) and changed paths (each once, in order)
    of `git status --porcelain=v2 --branch -z --no-renames` output."""
    commit, branch = "", ""
    changed: dict[str, None] = {}
    for record in text.split("\0"):
        if record.startswith("# branch.oid "):
            value = record.removeprefix("# branch.oid ")
            commit = "" if value == "(initial)" else value
        elif record.startswith("# branch.head "):
            value = record.removeprefix("# branch.head ")
            branch = "" if value == "(detached)" else value
        elif (fields := _STATUS_FIELDS.get(record[:1])) is not None:
            path = record.split(" ", fields)[-1]
            # A nested repository is listed as "dir/": its files are its own repository's business.
            if path and not path.endswith("/"):
                changed[path] = None
    return commit, branch, list(changed)


async def copy_commit(source: Path, git_dir: Path, commit: str) -> None:
    """Copies `commit` of the repository `source` with its history into `git_dir`.

    Read through git, never as object files: `pack-objects` in the source packs what the
    commit reaches from whatever state its store is in (a concurrent repack is git's own
    business) and writes nothing there; `index-pack` stores the pack in our git directory
    and checks that it holds everything the commit reaches. The commit is named by id, so
    a branch moving meanwhile does not change what we start from. Replace refs are not
    followed (as `git fetch` follows none). A pack that is not whole (a shallow source,
    whose oldest commits name parents it does not have) is fetched instead, with the
    source's shallow boundary (`--update-shallow`: without it git drops the boundary and
    our history would end in a commit it cannot read). The pipe is two processes where a
    fetch is five (docs/benchmarks.md, "Repository scale").
    """
    try:
        await gitops.piped(
            ("pack-objects", "--revs", "--stdout", "-q", "--delta-base-offset"),
            ("index-pack", "--stdin", "--check-self-contained-and-connected"),
            first_cwd=source, second_git_dir=git_dir, stdin=f"{commit}\n".encode(),
            env={**SOURCE_ENV, "GIT_NO_REPLACE_OBJECTS": "1"},
        )
    except gitops.GitError as exc:
        log.info("packing %s of %s did not give a whole pack (%s); fetching it", commit, source, exc)
        await gitops.git(
            "fetch", "-q", "--update-shallow", "--no-tags", "--no-write-fetch-head", "--", str(source),
            f"+{commit}:refs/agentgate/source", cwd=git_dir, git_dir=git_dir, env=SOURCE_ENV,
        )


def _absolute_url(url: str, source: Path) -> str:
    """`url`, with a relative path (git reads it from the source's top) made absolute."""
    is_path = url and "://" not in url and not _SCP_LIKE.match(url)
    return str((source / url).resolve()) if is_path and not os.path.isabs(url) else url
