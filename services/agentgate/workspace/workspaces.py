"""Managed workspaces: directories under `$AGENTGATE_HOME/workspaces/{id}`, indexed in
`$AGENTGATE_HOME/workspace.db`.

A workspace is made for one run from its source (a copy of a local directory, or a clone
of a git URL), on branch `agentgate/{run_id}`, with an initial snapshot, and leased. The
user's own directory is only ever read. Paths are built from ids this module generates, so
no request can name a path outside the workspaces folder.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from agentgate.common.branches import branch_for, branch_pattern_problem
from agentgate.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from agentgate.common.github import clone_url, git_auth_env, split_repo
from agentgate.common.messages import from_json, to_json
from agentgate.common.storage import open_database
from agentgate.common.timeutil import utcnow
from agentgate.v1 import common_pb2, workspace_pb2
from agentgate.workspace import git as gitops
from agentgate.workspace.gate_plan import GatePlanError, find_gate_plan_file, gate_plan_summary, parse_gate_plan

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
]


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
    elif kind == "git_url":
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


def remove_tree(path: Path) -> None:
    """Deletes a directory tree, including read-only parts (blocking; call off-loop)."""

    def make_writable_and_retry(function, failed_path, _exc_info):  # type: ignore[no-untyped-def]
        try:
            parent = os.path.dirname(failed_path)
            os.chmod(parent, os.stat(parent).st_mode | stat.S_IWUSR | stat.S_IXUSR)
            if not os.path.islink(failed_path) and os.path.isdir(failed_path):
                os.chmod(failed_path, os.stat(failed_path).st_mode | stat.S_IWUSR | stat.S_IXUSR | stat.S_IRUSR)
            function(failed_path)
        except OSError:
            pass

    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=make_writable_and_retry)


def _skip_special_files(directory: str, names: list[str]) -> set[str]:
    """copytree ignore hook: sockets, pipes and devices are skipped (reading a pipe blocks)."""
    skipped = set()
    for name in names:
        try:
            mode = os.lstat(os.path.join(directory, name)).st_mode
        except OSError:
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            skipped.add(name)
    return skipped


def _copy_source(source: Path, destination: Path) -> None:
    """Copies the user's directory (blocking; call off-loop). Only reads `source`."""
    try:
        shutil.copytree(source, destination, symlinks=True, ignore=_skip_special_files)
    except shutil.Error as exc:
        problems = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
        first = problems[0][2] if problems else str(exc)
        raise FailedPrecondition(f"cannot copy {source}: {len(problems) or 1} file(s) failed, e.g. {first}") from None


def _copy_local_tree(source: Path, destination: Path) -> bool:
    """Copies the user's directory into `destination` (blocking; call off-loop).

    Returns True when the copy still needs `git init` (it is not a repository of its own).
    """
    if not source.is_dir():
        problem = "is not a directory" if source.exists() else "does not exist"
        raise FailedPrecondition(f"source.local_path: {source} {problem}")
    if destination.resolve().is_relative_to(source.resolve()):
        raise FailedPrecondition(
            f"source.local_path: {source} contains the AgentGate workspaces folder; it cannot be copied into itself"
        )
    _copy_source(source, destination)
    dot_git = destination / ".git"
    if dot_git.is_file() or dot_git.is_symlink():
        # A linked worktree or submodule: its git data lives in the user's repository,
        # which must never be written. Start a fresh history instead.
        dot_git.unlink()
    # A lock left by a crashed git in the user's tree is stale in our copy by definition.
    if dot_git.is_dir():
        (dot_git / "index.lock").unlink(missing_ok=True)
        return False
    return True


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


def summarize_gate_plan(root: Path, inline_yaml: str) -> str:
    """The gate plan summary for the prompt: from the inline plan, else the workspace's."""
    if inline_yaml.strip():
        text, source = inline_yaml, "inline"
    else:
        found = find_gate_plan_file(root)
        if found is None:
            # The gate detects a plan from the project's CI or tooling; tell the agent which.
            from agentgate.workspace.plan_detection import detect_gate_plan

            detected = detect_gate_plan(root)
            return NO_GATE_PLAN if detected is None else gate_plan_summary(detected.plan, detected.describe())
        source = found.relative_to(root).as_posix()
        text = found.read_text(encoding="utf-8", errors="replace")
    try:
        return gate_plan_summary(parse_gate_plan(text, source), source)
    except GatePlanError as exc:
        return f"The gate plan is invalid, so verification will fail until it is fixed: {exc}"


class WorkspaceManager:
    """Creates, finds, snapshots and releases workspaces under `home`."""

    def __init__(self, home: Path):
        self.home = home
        self.workspaces_root = home / "workspaces"
        self.database_path = home / "workspace.db"
        self._db: aiosqlite.Connection | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        #: Unix seconds now; leases expire by it (tests replace it).
        self.clock: Callable[[], float] = time.time

    # --- lifecycle ---

    async def open(self) -> None:
        """Opens the index (creating folders and schema)."""
        self.workspaces_root.mkdir(parents=True, exist_ok=True)
        self._db = await open_database(self.database_path, MIGRATIONS)

    async def close(self) -> None:
        """Closes the index."""
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
        source = common_pb2.WorkspaceSource()
        from_json(row["source_json"], source)
        return WorkspaceRecord(
            id=row["id"],
            run_id=row["run_id"],
            path=self.workspaces_root / row["id"],
            branch=row["branch"],
            source=source,
            base_commit=row["base_commit"],
            last_snapshot=row["last_snapshot"],
            # A lease that was not renewed has expired: the workspace is free again.
            leased=bool(row["leased"]) and row["lease_expires"] > self.clock(),
            lease_expires=row["lease_expires"],
            lease_holder=row["lease_holder"],
            created_at=row["created_at"],
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
        path = self.workspaces_root / workspace_id
        branch = branch_name(run_id, branch_pattern)
        self.workspaces_root.mkdir(parents=True, exist_ok=True)
        try:
            start_point, on_branch = await self._fetch(source, path, initial_branch=branch)
            if not on_branch:
                checkout = ["checkout", "-q", "-B", branch] + ([start_point] if start_point else [])
                await gitops.git(*checkout, cwd=path)
            await gitops.git("add", "-A", cwd=path)
            await gitops.git("commit", "-q", "--no-verify", "--allow-empty", "-m", INITIAL_SNAPSHOT_MESSAGE, cwd=path)
            base_commit = await gitops.head_commit_fast(path)
            rules = await asyncio.to_thread(_read_rules, path)
            summary = await asyncio.to_thread(summarize_gate_plan, path, gate_plan_yaml)
            now = utcnow().isoformat()
            await self.db.execute(
                "INSERT INTO workspaces (id, run_id, branch, source_json, base_commit, last_snapshot, leased,"
                " lease_expires, lease_holder, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)",
                (
                    workspace_id, run_id, branch, to_json(source), base_commit, base_commit,
                    self.clock() + (lease_seconds or DEFAULT_LEASE_SECONDS), run_id, now, now,
                ),
            )
            await self.db.commit()
        except gitops.GitError as exc:
            await asyncio.to_thread(remove_tree, path)
            raise FailedPrecondition(f"cannot prepare the workspace: {exc}") from None
        except BaseException:
            # Cancellation or any other failure: leave nothing half-made behind.
            await asyncio.to_thread(remove_tree, path)
            raise
        record = await self.get(workspace_id)
        log.info("prepared workspace %s for run %s at %s", workspace_id, run_id, path)
        return PreparedWorkspace(workspace=record, rules=rules, gate_plan_summary=summary)

    async def fetch_source(self, source: common_pb2.WorkspaceSource, path: Path) -> str:
        """Fills `path` from a (validated) source: a copy of a local directory or a clone.
        Returns the commit to start from ('' = what is checked out)."""
        start_point, _ = await self._fetch(source, path)
        return start_point

    async def _fetch(
        self, source: common_pb2.WorkspaceSource, path: Path, initial_branch: str = ""
    ) -> tuple[str, bool]:
        """`fetch_source`, and whether the repository is already on `initial_branch` (a
        copy that needed `git init` starts on it: no `checkout -B` process afterwards)."""
        kind = source.WhichOneof("kind")
        if kind == "local_path":
            initialized = await self._copy_local(Path(source.local_path), path, initial_branch)
            return "", initialized and bool(initial_branch)
        url = source.git_url if kind == "git_url" else clone_url(source.github_repo)
        return await self._clone(url, source.ref, path), False

    async def _copy_local(self, source: Path, destination: Path, initial_branch: str = "") -> bool:
        """Copies a local directory (with its .git, so history is kept) and makes it a repo.
        Returns True when it ran `git init` (on `initial_branch` when given)."""
        if await asyncio.to_thread(_copy_local_tree, source, destination):
            branch = ["--initial-branch", initial_branch] if initial_branch else []
            # No template: copying git's sample hooks and info files made up most of the
            # cost of init, and hooks never run here (core.hooksPath=/dev/null).
            await gitops.git("init", "-q", "--template=", *branch, cwd=destination)
            return True
        return False

    async def _clone(self, url: str, ref: str, destination: Path) -> str:
        """Clones `url`; returns the commit of `ref` ('' = the default branch)."""
        # --no-hardlinks: a local clone would otherwise share object files with the source.
        # A GitHub URL gets the token as a header through the environment (never on disk).
        await gitops.git(
            "clone", "-q", "--no-hardlinks", "--", url, str(destination), cwd=self.workspaces_root,
            env=git_auth_env(url),
        )
        if not ref:
            return ""
        for candidate in (ref, f"origin/{ref}"):
            commit = await gitops.resolve_commit(destination, candidate)
            if commit:
                return commit
        raise FailedPrecondition(f"source.ref: {ref!r} is not a branch, tag or commit of {url}")

    async def release(self, workspace_id: str) -> WorkspaceRecord:
        """Ends the lease; the files stay for inspection."""
        await self.get(workspace_id)
        await self.db.execute(
            "UPDATE workspaces SET leased = 0, updated_at = ? WHERE id = ?", (utcnow().isoformat(), workspace_id)
        )
        await self.db.commit()
        return await self.get(workspace_id)

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
            path = record.path
            await gitops.git("add", "-A", cwd=path)
            # Commit straight away instead of asking `diff --cached` first: with nothing
            # staged git refuses ("nothing to commit"), which is the no-change answer. One
            # process less per snapshot; HEAD is then read from the ref file (no rev-parse).
            args = ("commit", "-q", "--no-verify", "-m", message or DEFAULT_SNAPSHOT_MESSAGE)
            committed = await gitops.git(*args, cwd=path, check=False)
            if committed.returncode != 0 and not gitops.nothing_to_commit(committed):
                raise gitops.GitError(args, committed.returncode, committed.stderr, committed.stdout)
            head = await gitops.head_commit_fast(path)
            if head == record.last_snapshot:
                return Snapshot(commit=head, changed_files=[], has_changes=False)
            # Diff against the last snapshot, not HEAD~1: the agent may have committed itself.
            changed = await gitops.changed_files(path, record.last_snapshot, head)
            await self.db.execute(
                "UPDATE workspaces SET last_snapshot = ?, updated_at = ? WHERE id = ?",
                (head, utcnow().isoformat(), workspace_id),
            )
            await self.db.commit()
            return Snapshot(commit=head, changed_files=changed, has_changes=True)

    async def resolve_snapshot(self, record: WorkspaceRecord, snapshot_id: str) -> str:
        """The commit a snapshot id names in the workspace ('' = HEAD); FailedPrecondition if none."""
        if not await asyncio.to_thread(record.path.is_dir):
            raise FailedPrecondition(f"the folder of workspace {record.id} is gone: {record.path}")
        if not snapshot_id:
            return await gitops.head_commit(record.path)
        if snapshot_id == record.last_snapshot:
            # The commit this service recorded itself (what the orchestrator verifies after
            # each snapshot): known to exist, so no rev-parse process.
            return snapshot_id
        if snapshot_id.startswith("-") or any(c.isspace() or c == "\x00" for c in snapshot_id):
            raise InvalidArgument([FieldViolation("snapshot_id", f"{snapshot_id[:80]!r} is not a commit id")])
        commit = await gitops.resolve_commit(record.path, snapshot_id)
        if commit is None:
            raise FailedPrecondition(f"snapshot {snapshot_id!r} is not a commit of workspace {record.id}")
        return commit
