"""Managed workspaces: directories under `$AGENTGATE_HOME/workspaces/{id}`, indexed in
`$AGENTGATE_HOME/workspace.db`.

A workspace is made for one run from its source (a consistent copy of a local directory,
or a clone of a git URL), on branch `agentgate/{run_id}`, with an initial snapshot, and
leased. The user's own directory is only ever read. Paths are built from ids this module
generates, so no request can name a path outside the workspaces folder.

Each workspace has two repositories (see docs/security.md, "Git"):

- the trusted one, `$AGENTGATE_HOME/gitdirs/{id}.git`, outside the workspace: its config,
  snapshot commits and refs are written by this service only, and every git command of
  ours names it with `--git-dir` and the workspace with `--work-tree`;
- the agent's own, `{workspace}/.git`: a copy of the trusted one as of the initial
  snapshot, which the agent may use (and misconfigure) freely. No command of ours reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
from google.protobuf.message import Message

from agentgate.common.branches import branch_for, branch_pattern_problem
from agentgate.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from agentgate.common.folder_spread import spread_root
from agentgate.common.github import clone_url, git_auth_env, split_repo, strip_credentials
from agentgate.common.messages import from_json, to_json
from agentgate.common.storage import open_database
from agentgate.common.timeutil import utcnow
from agentgate.v1 import common_pb2, workspace_pb2
from agentgate.workspace import git as gitops
from agentgate.workspace import sources
from agentgate.workspace.change_watch import ChangeWatch
from agentgate.workspace.gate.base_plan import committed_plan_file, detect_at_commit
from agentgate.workspace.gate.plan import GatePlanError, gate_plan_summary, parse_gate_plan
from agentgate.workspace.processes import LOW_PRIORITY

log = logging.getLogger(__name__)

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
WORKSPACE_ID_PATTERN = re.compile(r"^ws-[0-9a-f]{16}$")
RULES_FILES = ("AGENTS.md", ".agentgate/AGENTS.md")
#: Rules go into every prompt; a huge file is cut rather than flooding the agent.
MAX_RULES_BYTES = 64 * 1024
INITIAL_SNAPSHOT_MESSAGE = "agentgate: initial snapshot"
DEFAULT_SNAPSHOT_MESSAGE = "agentgate: snapshot"
NO_GATE_PLAN = "No gate plan found: the gate has nothing to check."
DEFAULT_LEASE_SECONDS = 3600
#: What agent executions leave: per workspace (files, prompts), then per run (CLI homes).
AGENT_FILE_FOLDERS = ("agent-files", "prompts", "agent-homes")
#: The folders under $AGENTGATE_HOME that hold one tree per workspace or run.
PER_RUN_ROOTS = ("workspaces", "gitdirs", "cleanrooms", *AGENT_FILE_FOLDERS)

MIGRATIONS = [
    """
    CREATE TABLE workspaces (
        id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        branch TEXT NOT NULL,
        source_json TEXT NOT NULL,
        base_commit TEXT NOT NULL,
        last_snapshot TEXT NOT NULL,
        leased INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX workspaces_run_id ON workspaces (run_id);
    """,
    # Leases that expire (see leases.py). Workspaces leased before get the default lease
    # from the moment of migration.
    f"""
    ALTER TABLE workspaces ADD COLUMN lease_expires REAL NOT NULL DEFAULT 0;
    ALTER TABLE workspaces ADD COLUMN lease_holder TEXT NOT NULL DEFAULT '';
    UPDATE workspaces SET lease_expires = CAST(strftime('%s', 'now') AS REAL) + {DEFAULT_LEASE_SECONDS},
                          lease_holder = run_id
     WHERE leased = 1;
    """,
    # The run's sandbox settings (docs/sandbox.md), fixed at PrepareForRun and kept here,
    # where the agent cannot write; '' = the service's default.
    "ALTER TABLE workspaces ADD COLUMN sandbox_json TEXT NOT NULL DEFAULT '';",
]


_M = TypeVar("_M", bound=Message)


@functools.lru_cache(maxsize=256)
def _parsed(kind: type[Message], text: str) -> bytes:
    # Every request reads its workspace's row again, and parsing JSON into a message is
    # the slowest step of that read (~0.1 ms each): the rows' few distinct texts are parsed
    # once; each read gets a message of its own from the bytes.
    return from_json(text, kind()).SerializeToString() if text else b""


def _from_row_json(kind: type[_M], text: str) -> _M:
    """The message a `*_json` column holds ('' = an empty one)."""
    return kind.FromString(_parsed(kind, text))  # type: ignore[arg-type]  # a class is hashable; types-protobuf hides it


def run_id_violations(run_id: str, field: str = "run_id") -> list[FieldViolation]:
    """Problems with a run id: it names a branch and folders, so it is kept simple."""
    if not run_id:
        return [FieldViolation(field, "a run id is required")]
    if not RUN_ID_PATTERN.match(run_id):
        return [
            FieldViolation(
                field,
                f"{run_id[:140]!r} is not a valid run id: 1-128 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit",
            )
        ]
    # Git refuses these in branch names (agentgate/{run_id}).
    if ".." in run_id or run_id.endswith(".") or run_id.endswith(".lock"):
        return [FieldViolation(field, f"{run_id!r} is not a valid run id: no '..', no trailing '.' or '.lock'")]
    return []


def source_violations(source: common_pb2.WorkspaceSource) -> list[FieldViolation]:
    """Problems with a workspace source (fields named `source.*`)."""
    violations: list[FieldViolation] = []
    kind = source.WhichOneof("kind")
    # No process argument or path can hold a NUL byte.
    for name in ("local_path", "git_url", "github_repo", "ref"):
        if "\x00" in getattr(source, name):
            violations.append(FieldViolation(f"source.{name}", "must not contain a NUL byte"))
    if violations:
        return violations
    if kind is None:
        violations.append(
            FieldViolation("source", "a workspace source is required: local_path, git_url or github_repo")
        )
    elif kind == "local_path":
        if not Path(source.local_path).is_absolute():
            violations.append(
                FieldViolation("source.local_path", f"{source.local_path!r} must be an absolute path")
            )
        if source.ref:
            violations.append(FieldViolation("source.ref", "ref applies to git_url and github_repo sources only"))
    elif source.include_ignored:
        violations.append(FieldViolation("source.include_ignored", "applies to local_path sources only"))
    if kind == "git_url":
        if not source.git_url.strip() or source.git_url.startswith("-"):
            violations.append(FieldViolation("source.git_url", f"{source.git_url!r} is not a git URL"))
        if source.ref.startswith("-") or any(c.isspace() for c in source.ref):
            violations.append(FieldViolation("source.ref", f"{source.ref!r} is not a branch, tag or commit"))
    elif kind == "github_repo":
        try:
            split_repo(source.github_repo)
        except ValueError:
            violations.append(FieldViolation("source.github_repo", f"{source.github_repo!r} is not owner/name"))
        if source.ref.startswith("-") or any(c.isspace() for c in source.ref):
            violations.append(FieldViolation("source.ref", f"{source.ref!r} is not a branch, tag or commit"))
    return violations


def branch_name(run_id: str, pattern: str = "") -> str:
    """The branch a run works on (default agentgate/{run_id})."""
    return branch_for(run_id, pattern)


@dataclass(frozen=True)
class WorkspaceRecord:
    """A workspace as the index knows it."""

    id: str
    run_id: str
    path: Path
    #: The trusted git directory (outside `path`): snapshots, refs and config we rely on.
    git_dir: Path
    branch: str
    source: common_pb2.WorkspaceSource
    base_commit: str
    last_snapshot: str
    #: Whether a lease holds now (taken and not expired).
    leased: bool
    #: Unix seconds when the lease ends (0 = never leased).
    lease_expires: float = 0.0
    lease_holder: str = ""
    created_at: str = ""
    #: The run's sandbox settings (unset mode: the service's default).
    sandbox: common_pb2.SandboxSettings = field(default_factory=common_pb2.SandboxSettings)

    def to_proto(self) -> workspace_pb2.Workspace:
        """The wire form."""
        workspace = workspace_pb2.Workspace(
            id=self.id,
            run_id=self.run_id,
            path=str(self.path),
            branch=self.branch,
            source=self.source,
            base_commit=self.base_commit,
            leased=self.leased,
        )
        if self.leased:
            workspace.lease_holder = self.lease_holder
            workspace.lease_expires_at.FromDatetime(datetime.fromtimestamp(self.lease_expires, UTC))
        if self.created_at:
            workspace.created_at.FromDatetime(datetime.fromisoformat(self.created_at))
        return workspace


@dataclass(frozen=True)
class PreparedWorkspace:
    """What PrepareForRun returns: the workspace, its rules and what the gate checks."""

    workspace: WorkspaceRecord
    rules: str
    gate_plan_summary: str


@dataclass(frozen=True)
class Snapshot:
    """A snapshot (commit) of a workspace."""

    commit: str
    changed_files: list[str]
    has_changes: bool


def _open_directory(name: str, dir_fd: int | None) -> int | None:
    """An fd of directory `name` that is not a symlink, made readable, writable and
    searchable by us first when an agent took those rights away; None when it is not a
    (real) directory."""
    try:
        # O_PATH|O_NOFOLLOW names the entry itself, never what a symlink points to.
        handle = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        mode = os.fstat(handle).st_mode
        if not stat.S_ISDIR(mode):
            return None
        if mode & stat.S_IRWXU != stat.S_IRWXU:
            # chmod through the fd's /proc link acts on that very inode (no path lookup to race).
            os.chmod(f"/proc/self/fd/{handle}", stat.S_IMODE(mode) | stat.S_IRWXU)
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(handle)


def _restore_rights(name: str, dir_fd: int | None) -> None:
    """Gives us back rwx on every directory of the tree at `name` (never through a symlink)."""
    fd = _open_directory(name, dir_fd)
    if fd is None:
        return
    try:
        with os.scandir(fd) as entries:
            children = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
        for child in children:
            _restore_rights(child, fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Deletes a tree an agent or a check may have made hostile (blocking; call off-loop).

    Symlinks are removed, never followed (one pointing out of the workspace leaves its
    target alone); directories whose rights were taken away (`chmod 000`, read-only) get
    them back first, through file descriptors, so nothing outside the tree is touched.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        path.unlink(missing_ok=True)
        return
    _restore_rights(str(path), None)

    def ignore_missing(_function: Callable[..., object], _failed: str, exc_info: object) -> None:
        # A file gone already is what we want; anything else is logged, not fatal: the
        # index keeps the workspace and `agentgate gc` tries again.
        error = exc_info[1] if isinstance(exc_info, tuple) else exc_info
        if not isinstance(error, FileNotFoundError):
            log.warning("could not delete part of %s: %s", path, error)

    # rmtree removes entries through directory fds and does not follow symlinks.
    shutil.rmtree(path, onerror=ignore_missing)


#: Trees being deleted behind the requests that discarded them (see `discard_tree`).
_deleting: set[asyncio.Task[None]] = set()
#: How long trees moved into the trash wait for the others of the same request (a run's
#: end discards its workspace, clean room and agent home one after the other): one `rm`
#: then deletes them all, after the request was answered.
TRASH_BATCH_SECONDS = 0.05
#: The trees the next `rm` of each event loop takes (added to while it waits).
_batches: dict[asyncio.AbstractEventLoop, list[Path]] = {}


async def discard_tree(path: Path, trash: Path) -> None:
    """Makes `path` disappear at once and deletes it behind the caller (`discard_trees`)."""
    await discard_trees([path], trash)


async def discard_trees(paths: Sequence[Path], trash: Path) -> list[Path]:
    """Makes `paths` disappear at once and deletes them behind the caller: each is renamed
    into `trash` (same file system: one rename whatever its size) and removed by one
    background task. Returns those still there (on another file system, deleted in place,
    and that failed). Deleting 100,000 files takes longer than making them; a request that
    only needs them gone does not wait for it (docs/workspaces.md, "Clean rooms"). Whatever
    a crash leaves in `trash` is deleted when the service starts again (`empty_trash`)."""

    def move() -> tuple[list[Path], list[Path]]:
        moved = []
        for path in paths:
            if not path.exists() and not path.is_symlink():
                continue
            trash.mkdir(parents=True, exist_ok=True)
            target = trash / f"{path.name}-{secrets.token_hex(4)}"
            try:
                os.rename(path, target)
            except OSError:
                remove_tree(path)  # another file system: no rename, delete in place
                continue
            moved.append(target)
        return moved, [path for path in paths if os.path.lexists(path)]

    targets, left = await asyncio.to_thread(move)
    if targets:
        loop = asyncio.get_running_loop()
        batch = _batches.get(loop)
        if batch is not None:
            batch.extend(targets)  # the waiting batch takes them
        else:
            batch = _batches[loop] = list(targets)
            task = loop.create_task(_remove_batch(loop, batch))
            _deleting.add(task)
            task.add_done_callback(_deleting.discard)
    return left


async def _remove_batch(loop: asyncio.AbstractEventLoop, batch: list[Path]) -> None:
    """Deletes `batch` once the trees discarded meanwhile joined it."""
    try:
        await asyncio.sleep(TRASH_BATCH_SECONDS)
    finally:
        if _batches.get(loop) is batch:
            del _batches[loop]
    await _remove_behind(batch)


async def _remove_behind(targets: list[Path]) -> None:
    """Deletes trees moved into the trash: by `rm -r` in a process of its own, at a low
    priority (a Python walk in a thread holds the interpreter's lock for most of its time,
    and the requests being served wait for it), then by `remove_tree` whatever that left
    (a folder whose rights an agent took away, when the service is not root)."""
    with contextlib.suppress(OSError):
        process = await asyncio.create_subprocess_exec(
            *LOW_PRIORITY, "rm", "-r", "-f", "--one-file-system", "--", *map(str, targets),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        await process.wait()

    def finish() -> None:
        for target in targets:
            remove_tree(target)  # nothing to do for a tree that is gone

    await asyncio.to_thread(finish)


def empty_trash(trash: Path) -> None:
    """Deletes what `discard_tree` moved into `trash` and did not finish deleting (blocking)."""
    if trash.is_dir():
        for entry in trash.iterdir():
            remove_tree(entry)


def _check_local_source(source: Path, workspaces_root: Path) -> None:
    """A local source must be an existing directory that does not hold our workspaces."""
    if not source.is_dir():
        problem = "is not a directory" if source.exists() else "does not exist"
        raise FailedPrecondition(f"source.local_path: {source} {problem}")
    if workspaces_root.resolve().is_relative_to(source.resolve()):
        raise FailedPrecondition(
            f"source.local_path: {source} contains the AgentGate workspaces folder; it cannot be copied into itself"
        )


def _agent_repository_config(trusted_config: str) -> str:
    """The config of the agent's own `.git`: a plain non-bare repository, with no remote (a
    remote naming our trusted git directory would invite pushing into it), in the object
    format of the trusted one."""
    lines = ["[core]", "\trepositoryformatversion = 0", "\tfilemode = true", "\tbare = false"]
    if "objectformat = sha256" in trusted_config.lower():
        lines[1] = "\trepositoryformatversion = 1"
        lines += ["[extensions]", "\tobjectformat = sha256"]
    return "\n".join(lines) + "\n"


def _make_agent_repository(git_dir: Path, agent_git: Path, branch: str, commit: str) -> None:
    """Makes `agent_git` the agent's repository (blocking): a copy of our objects (never hard
    links: what the agent writes there must not reach ours), HEAD on `branch` at `commit`
    (detached at it when `branch` is ''), no remote. Its index comes later
    (`_give_agent_index`), once the checkout wrote ours.

    Nothing writes our objects meanwhile (a checkout only reads them), so a file copy is a
    consistent copy, with no git process to start. The layout is git's own
    (gitrepository-layout: `objects`, `refs`, `HEAD`, `config`).
    """
    shutil.copytree(git_dir / "objects", agent_git / "objects", symlinks=True)
    (agent_git / "refs" / "heads").mkdir(parents=True)
    (agent_git / "refs" / "tags").mkdir()
    if branch:
        ref = agent_git / "refs" / "heads" / branch
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit + "\n", encoding="ascii")
        (agent_git / "HEAD").write_text(f"ref: refs/heads/{branch}\n", encoding="ascii")
    else:
        (agent_git / "HEAD").write_text(commit + "\n", encoding="ascii")
    trusted_config = (git_dir / "config").read_text(encoding="utf-8", errors="replace")
    (agent_git / "config").write_text(_agent_repository_config(trusted_config), encoding="utf-8")


def _give_agent_index(git_dir: Path, agent_git: Path) -> None:
    """Gives the agent's repository our index (blocking): its stat data fits the
    workspace's files, so the agent's `git status` is clean and fast."""
    shutil.copyfile(git_dir / "index", agent_git / "index")


def _read_rules(root: Path) -> str:
    """The workspace's own rules (AGENTS.md), if it has them inside the workspace."""
    base = root.resolve()
    for name in RULES_FILES:
        candidate = root / name
        # A symlink out of the workspace (say to a key file) must not reach the prompt.
        if candidate.is_file() and candidate.resolve().is_relative_to(base):
            with candidate.open("rb") as handle:
                data = handle.read(MAX_RULES_BYTES + 1)
            text = data[:MAX_RULES_BYTES].decode("utf-8", errors="ignore")
            if len(data) > MAX_RULES_BYTES:
                text += f"\n[TRUNCATED - exceeded {MAX_RULES_BYTES} bytes]"
            return text
    return ""


async def summarize_gate_plan(git_dir: Path, base_commit: str, inline_yaml: str) -> str:
    """The gate plan summary for the prompt: from the inline plan, else from the base
    commit, read as the gate reads it (its verify.yaml, else a plan detected from its
    files); the gate's first Verify then finds it remembered (`base_plan`)."""
    if inline_yaml.strip():
        text, source = inline_yaml, "inline"
    else:
        try:
            found = await committed_plan_file(git_dir, base_commit)
            detected = None if found is not None else await detect_at_commit(git_dir, base_commit)
        except gitops.GitError as exc:
            return f"The base commit's gate plan could not be read, so verification will fail: {exc}"
        if found is None:
            return NO_GATE_PLAN if detected is None else gate_plan_summary(detected.plan, detected.describe())
        source, text = found
    try:
        return gate_plan_summary(parse_gate_plan(text, source), source)
    except GatePlanError as exc:
        return f"The gate plan is invalid, so verification will fail until it is fixed: {exc}"


class WorkspaceManager:
    """Creates, finds, snapshots and releases workspaces under `home`."""

    def __init__(self, home: Path):
        self.home = home
        self.workspaces_root = home / "workspaces"
        self.git_dirs_root = home / "gitdirs"
        self.database_path = home / "workspace.db"
        #: Where deleted trees wait for their background deletion (`discard_tree`).
        self.trash = home / "trash"
        self._db: aiosqlite.Connection | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        #: What was written in each leased workspace since its last snapshot.
        self.changes = ChangeWatch()
        #: Unix seconds now; leases expire by it (tests replace it).
        self.clock: Callable[[], float] = time.time

    # --- lifecycle ---

    async def open(self) -> None:
        """Opens the index (creating folders and schema)."""
        await asyncio.to_thread(self._make_roots)
        self.changes.open()
        self._db = await open_database(self.database_path, MIGRATIONS)
        # Trees a previous run of the service was still deleting: behind the service's start.
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(empty_trash, self.trash))
        _deleting.add(task)
        task.add_done_callback(_deleting.discard)

    def _make_roots(self) -> None:
        # Each run makes and deletes a tree under each of these: spread apart
        # (common/folder_spread.py).
        for name in PER_RUN_ROOTS:
            spread_root(self.home / name)

    async def close(self) -> None:
        """Closes the index and stops the watches."""
        self.changes.close()
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the workspace index is not open")
        return self._db

    def lock(self, workspace_id: str) -> asyncio.Lock:
        """A lock serializing git operations that change one workspace's index."""
        return self._locks.setdefault(workspace_id, asyncio.Lock())

    def path_of(self, workspace_id: str) -> Path:
        """The folder of a workspace id; refuses ids that are not ours (no path escape)."""
        if not WORKSPACE_ID_PATTERN.match(workspace_id):
            raise NotFound(f"workspace {workspace_id[:80]!r} not found")
        return self.workspaces_root / workspace_id

    def git_dir_of(self, workspace_id: str) -> Path:
        """The trusted git directory of a workspace id (outside every workspace)."""
        self.path_of(workspace_id)  # refuses ids that are not ours
        return self.git_dirs_root / f"{workspace_id}.git"

    # --- queries ---

    async def get(self, workspace_id: str) -> WorkspaceRecord:
        """A workspace by id; NotFound when unknown."""
        if not workspace_id:
            raise InvalidArgument([FieldViolation("workspace_id", "a workspace id is required")])
        self.path_of(workspace_id)  # refuses ids that are not ours
        async with self.db.execute("SELECT * FROM workspaces WHERE id = ?", (workspace_id,)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise NotFound(f"workspace {workspace_id!r} not found")
        return self.record_from_row(row)

    def record_from_row(self, row: aiosqlite.Row) -> WorkspaceRecord:
        """A row of the `workspaces` table as a record."""
        return WorkspaceRecord(
            id=row["id"],
            run_id=row["run_id"],
            path=self.workspaces_root / row["id"],
            git_dir=self.git_dirs_root / f"{row['id']}.git",
            branch=row["branch"],
            source=_from_row_json(common_pb2.WorkspaceSource, row["source_json"]),
            base_commit=row["base_commit"],
            last_snapshot=row["last_snapshot"],
            # A lease that was not renewed has expired: the workspace is free again.
            leased=bool(row["leased"]) and row["lease_expires"] > self.clock(),
            lease_expires=row["lease_expires"],
            lease_holder=row["lease_holder"],
            created_at=row["created_at"],
            sandbox=_from_row_json(common_pb2.SandboxSettings, row["sandbox_json"]),
        )

    async def get_leased(self, workspace_id: str) -> WorkspaceRecord:
        """A workspace that must still be leased (agents and snapshots need the lease)."""
        record = await self.get(workspace_id)
        if not record.leased:
            expired = record.lease_expires and record.lease_expires <= self.clock()
            why = "its lease expired" if expired else "it was released"
            raise FailedPrecondition(f"workspace {workspace_id} is not leased ({why}); prepare a new one for the run")
        if not record.path.is_dir():
            raise FailedPrecondition(f"the folder of workspace {workspace_id} is gone: {record.path}")
        return record

    # --- commands ---

    async def prepare_for_run(
        self,
        run_id: str,
        source: common_pb2.WorkspaceSource,
        gate_plan_yaml: str = "",
        branch_pattern: str = "",
        lease_seconds: int = 0,
        sandbox: common_pb2.SandboxSettings | None = None,
    ) -> PreparedWorkspace:
        """Makes a fresh workspace for `run_id` from `source`, leased to the run for
        `lease_seconds` (0 = the default, 3600).

        On any failure the partial workspace is deleted; a bad source (missing path,
        failed clone, unknown ref) is FailedPrecondition with git's message.
        """
        violations = run_id_violations(run_id) + source_violations(source)
        if problem := branch_pattern_problem(branch_pattern):
            violations.append(FieldViolation("branch_pattern", f"{branch_pattern!r} {problem}"))
        if violations:
            raise InvalidArgument(violations)

        workspace_id = f"ws-{secrets.token_hex(8)}"
        path = self.path_of(workspace_id)
        branch = branch_name(run_id, branch_pattern)
        try:
            base_commit, _ = await self.materialize(workspace_id, source, branch)
            # Side by side: none of them reads what another writes.
            read_rules = asyncio.ensure_future(asyncio.to_thread(_read_rules, path))
            summarize = asyncio.ensure_future(
                summarize_gate_plan(self.git_dir_of(workspace_id), base_commit, gate_plan_yaml)
            )
            steps: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(self.changes.start(workspace_id, path)),
                read_rules,
                summarize,
            ]
            try:
                await asyncio.gather(*steps)
                rules, summary = read_rules.result(), summarize.result()
            except BaseException:
                for step in steps:  # none goes on over the files removed below
                    step.cancel()
                await asyncio.gather(*steps, return_exceptions=True)
                raise
            now = utcnow().isoformat()
            await self.db.execute(
                "INSERT INTO workspaces (id, run_id, branch, source_json, base_commit, last_snapshot, leased,"
                " lease_expires, lease_holder, created_at, updated_at, sandbox_json)"
                " VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?)",
                (
                    workspace_id, run_id, branch, to_json(source), base_commit, base_commit,
                    self.clock() + (lease_seconds or DEFAULT_LEASE_SECONDS), run_id, now, now,
                    to_json(sandbox) if sandbox is not None and sandbox.ListFields() else "",
                ),
            )
            await self.db.commit()
        except BaseException:
            # Cancellation or any other failure: leave nothing half-made behind.
            await self.remove_files(workspace_id)
            raise
        record = await self.get(workspace_id)
        log.info("prepared workspace %s for run %s at %s", workspace_id, run_id, path)
        return PreparedWorkspace(workspace=record, rules=rules, gate_plan_summary=summary)

    async def remove_files(self, workspace_id: str) -> None:
        """Deletes the folder and the trusted git directory of a workspace."""
        self.changes.stop(workspace_id)
        for folder in (self.path_of(workspace_id), self.git_dir_of(workspace_id)):
            await asyncio.to_thread(remove_tree, folder)

    async def materialize(
        self, workspace_id: str, source: common_pb2.WorkspaceSource, branch: str = ""
    ) -> tuple[str, str]:
        """Fills the folder and the trusted git directory of `workspace_id` from a
        (validated) source, commits the initial snapshot and gives the agent its own copy
        of the repository. Returns the initial snapshot and the branch it is on.

        With `branch` the workspace is on that branch; without, on the source's checked-out
        branch (on `ref`'s commit, detached, when a ref is given). A git failure is
        FailedPrecondition with git's message; the caller removes what was made.
        """
        path = self.path_of(workspace_id)
        git_dir = self.git_dir_of(workspace_id)
        self.git_dirs_root.mkdir(parents=True, exist_ok=True)
        self.workspaces_root.mkdir(parents=True, exist_ok=True)
        try:
            return await self._materialize(path, git_dir, source, branch)
        except gitops.GitError as exc:
            raise FailedPrecondition(f"cannot prepare the workspace: {exc}") from None

    async def _materialize(
        self, path: Path, git_dir: Path, source: common_pb2.WorkspaceSource, branch: str
    ) -> tuple[str, str]:
        kind = source.WhichOneof("kind")
        await asyncio.to_thread(path.mkdir)
        start, source_branch, push_url, changes = "", "", "", None
        if kind == "local_path":
            local = Path(source.local_path)
            await asyncio.to_thread(_check_local_source, local, self.workspaces_root)
            # No template: git's sample hooks and info files are of no use here.
            init = gitops.git("init", "-q", "--bare", "--template=", "--", str(git_dir), cwd=self.home)
            if await asyncio.to_thread(sources.is_git_source, local):
                # The source is listed while our git directory is made; then its commit copied.
                _, found = await asyncio.gather(init, sources.read_git_source(local, source.include_ignored))
                if found.commit:
                    await sources.copy_commit(local, git_dir, found.commit)
                start, source_branch, push_url = found.commit, found.branch, found.origin_url
                changes = (local, found.changed)
            else:
                await init
                await asyncio.to_thread(sources.copy_plain_tree, local, path)
        else:
            push_url = source.git_url if kind == "git_url" else clone_url(source.github_repo)
            start, source_branch = await self._clone(push_url, source.ref, git_dir)
        # Without a branch of its own, a workspace is where the source is: on `ref`'s commit
        # (detached) when one is given, else on the source's branch, or detached as it is.
        detach = not branch and bool(start) and (bool(source.ref) or not source_branch)
        branch = branch or source_branch or "main"
        on_branch = "" if detach else branch
        agent_git = path / ".git"
        remote = [gitops.work(git_dir, path, "config", "remote.origin.url", push_url)] if push_url else []
        # The files are the commit's (no copy, no user changes)?
        from_commit = bool(start) and not (changes is not None and changes[1])
        switch = ["--detach"] if detach else ["-B", branch]
        if from_commit:
            # The initial snapshot is the commit's tree, committed from our objects while
            # that tree is checked out (at the commit, moved to the snapshot after: same
            # files, same index), and the agent's copy of the objects and the remote go side
            # by side (each git process costs milliseconds, docs/benchmarks.md "Repository scale").
            committed = asyncio.ensure_future(
                gitops.git(
                    "commit-tree", f"{start}^{{tree}}", "-p", start, "-m", INITIAL_SNAPSHOT_MESSAGE,
                    cwd=git_dir, git_dir=git_dir,
                )
            )

            async def agent_repository() -> None:
                base = (await committed).stdout.strip()  # in our objects before they are copied
                await asyncio.to_thread(_make_agent_repository, git_dir, agent_git, on_branch, base)

            # All of them end before a failure is raised: the caller then removes the folders,
            # which the copy (a thread, not cancellable) must not be writing into.
            for outcome in await asyncio.gather(
                committed,
                gitops.work(git_dir, path, "checkout", "-q", "-f", *switch, start),
                agent_repository(),
                *remote,
                return_exceptions=True,
            ):
                if isinstance(outcome, BaseException):
                    raise outcome
            base_commit = committed.result().stdout.strip()
            await gitops.move_head(git_dir, base_commit, start)
        else:
            if start:
                # The commit's files, written from our own objects into the workspace.
                await gitops.work(git_dir, path, "checkout", "-q", "-f", *switch, start)
            else:
                await gitops.work(git_dir, path, "symbolic-ref", "HEAD", f"refs/heads/{branch}")
            if changes is not None:
                await asyncio.to_thread(sources.copy_changes, changes[0], path, changes[1])
            await asyncio.gather(*remote)
            # Files that are not the commit's as checked out (a copy, the user's changes).
            await gitops.work(git_dir, path, "add", "-A")
            await gitops.work(
                git_dir, path, "commit", "-q", "--no-verify", "--allow-empty", "-m", INITIAL_SNAPSHOT_MESSAGE
            )
            base_commit = await gitops.head_commit_fast(git_dir)
            await asyncio.to_thread(_make_agent_repository, git_dir, agent_git, on_branch, base_commit)
        await asyncio.to_thread(_give_agent_index, git_dir, agent_git)
        # Its parent is what the cumulative patch starts from (snapshots.export_patch).
        gitops.remember_commit(git_dir, base_commit, parent=start)
        if from_commit:
            # Committed from the source commit's tree (above): the first iteration's change
            # and the run's cumulative one are then one diff.
            gitops.remember_same_tree(git_dir, base_commit, start)
        return base_commit, on_branch

    async def _clone(self, url: str, ref: str, git_dir: Path) -> tuple[str, str]:
        """Clones `url` into the trusted git directory; returns the commit to start from
        (`ref`'s, else the default branch's) and the default branch."""
        # --no-local: a local URL is read through git too, not copied or hard-linked as
        # object files (which races a repack there). A GitHub URL gets the token as a
        # header through the environment (never on disk); the user's global configuration
        # may hold what reaching their remote needs.
        await gitops.git(
            "clone", "-q", "--bare", "--no-local", "--template=", "--", url, str(git_dir), cwd=self.home,
            env=git_auth_env(url), user_config=True,
        )
        symbolic = await gitops.git("symbolic-ref", "-q", "--short", "HEAD", cwd=git_dir, git_dir=git_dir, check=False)
        branch = symbolic.stdout.strip() if symbolic.returncode == 0 else ""
        commit = await gitops.resolve_commit(git_dir, ref or "HEAD")
        if commit is None and ref:
            raise FailedPrecondition(f"source.ref: {ref!r} is not a branch, tag or commit of {strip_credentials(url)}")
        return commit or "", branch

    async def release(self, workspace_id: str) -> WorkspaceRecord:
        """Ends the lease; the files stay for inspection."""
        record = await self.get(workspace_id)
        self.changes.stop(workspace_id)
        await self.db.execute(
            "UPDATE workspaces SET leased = 0, updated_at = ? WHERE id = ?", (utcnow().isoformat(), workspace_id)
        )
        await self.db.commit()
        return replace(record, leased=False)

    async def create_snapshot(self, workspace_id: str, message: str = "") -> Snapshot:
        """Commits everything in the workspace (files ignored by git excepted).

        When nothing changed since the last snapshot, no commit is made and HEAD comes back
        with has_changes False.
        """
        if "\x00" in message:
            # It becomes an argument of `git commit`, which no process argument can carry.
            raise InvalidArgument([FieldViolation("message", "must not contain a NUL byte")])
        async with self.lock(workspace_id):
            # Read inside the lock: a concurrent snapshot may just have moved last_snapshot.
            record = await self.get_leased(workspace_id)
            path, git_dir = record.path, record.git_dir
            # The last snapshot's tree (nothing changed = that tree) is read while staging.
            last_tree = asyncio.ensure_future(gitops.tree_of(git_dir, record.last_snapshot))
            try:
                # Only the folders written since the last snapshot, when known
                # (workspace/change_watch.py).
                await gitops.add_all(git_dir, path, await self.changes.take(workspace_id))
                # `git commit` would refresh the index and stat every file again (~45 ms at
                # 20,000 files, docs/benchmarks.md "Repository scale"), so the commit is made
                # from the index's tree by plumbing, which reads no file.
                written = await gitops.work(git_dir, path, "write-tree")
                await last_tree
            finally:
                last_tree.cancel()
                await asyncio.gather(last_tree, return_exceptions=True)
            tree = written.stdout.strip()
            parent = await gitops.head_commit_fast(git_dir)
            if tree == last_tree.result() and parent == record.last_snapshot:
                return Snapshot(commit=parent, changed_files=[], has_changes=False)
            text = gitops.clean_message(message) or DEFAULT_SNAPSHOT_MESSAGE
            changed, committed = await asyncio.gather(
                gitops.changes(git_dir, record.last_snapshot, tree),
                gitops.work(git_dir, path, "commit-tree", tree, "-p", parent, "-m", text),
            )
            head = committed.stdout.strip()
            # With the old value: refused if HEAD moved meanwhile.
            await gitops.move_head(git_dir, head, parent)
            # `changed` is against the last snapshot: kept when that is the parent (after a
            # restore HEAD is a commit of its own).
            gitops.remember_commit(git_dir, head, tree, parent, changed if parent == record.last_snapshot else ())
            await self.db.execute(
                "UPDATE workspaces SET last_snapshot = ?, updated_at = ? WHERE id = ?",
                (head, utcnow().isoformat(), workspace_id),
            )
            await self.db.commit()
            return Snapshot(commit=head, changed_files=[path for _, path in changed], has_changes=True)

    async def resolve_snapshot(self, record: WorkspaceRecord, snapshot_id: str) -> str:
        """The commit a snapshot id names in the workspace ('' = HEAD); FailedPrecondition if none."""
        if not await asyncio.to_thread(record.path.is_dir):
            raise FailedPrecondition(f"the folder of workspace {record.id} is gone: {record.path}")
        if not snapshot_id:
            return await gitops.head_commit(record.git_dir)
        if snapshot_id == record.last_snapshot:
            # The commit this service recorded itself (what the orchestrator verifies after
            # each snapshot): known to exist, so no rev-parse process.
            return snapshot_id
        if snapshot_id.startswith("-") or any(c.isspace() or c == "\x00" for c in snapshot_id):
            raise InvalidArgument([FieldViolation("snapshot_id", f"{snapshot_id[:80]!r} is not a commit id")])
        commit = await gitops.resolve_commit(record.git_dir, snapshot_id)
        if commit is None:
            raise FailedPrecondition(f"snapshot {snapshot_id!r} is not a commit of workspace {record.id}")
        return commit
