"""Workspaces as an inventory (docs/workspaces.md): create one without a run, list, delete, and clean up
everything a run left behind.

Everything deleted lives under `$AGENTGATE_HOME` at paths built from ids this service made
(`workspaces/{id}`, `gitdirs/{id}.git`, `agent-files/{id}`, `prompts/{id}`, `cleanrooms/{run_id}-{iteration}-{hex}`),
so no request can reach a path outside it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path

from agentgate.common.disk_usage import tree_usage
from agentgate.common.errors import FailedPrecondition, FieldViolation, InvalidArgument
from agentgate.common.messages import to_json
from agentgate.common.timeutil import utcnow
from agentgate.v1 import common_pb2, workspace_pb2
from agentgate.workspace.gate import cleanroom
from agentgate.workspace.leases import describe
from agentgate.workspace.workspaces import (
    AGENT_FILE_FOLDERS,
    RUN_ID_PATTERN,
    WORKSPACE_ID_PATTERN,
    WorkspaceManager,
    WorkspaceRecord,
    discard_tree,
    discard_trees,
    remove_tree,
    run_id_violations,
    source_violations,
)

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_TOKEN_PREFIX = "ws:"
#: A clean room's (or its index file's) name: `{run_id}-{iteration}-{8 hex}` (gate/cleanroom.py).
#: The run id may hold '-': the fixed end decides where it stops, so run "abc" never
#: claims run "abc-1"'s rooms.
_CLEAN_ROOM_NAME = re.compile(r"^\.?(?P<run>.+)-\d+-[0-9a-f]{8}(\.index)?$")


async def create_workspace(manager: WorkspaceManager, source: common_pb2.WorkspaceSource) -> WorkspaceRecord:
    """Makes a workspace from `source` that belongs to no run: not leased, no agentgate
    branch (it stays on the source's checked-out branch, or on `ref`'s commit, detached),
    with an initial snapshot. Nothing is left behind when a step fails."""
    violations = source_violations(source)
    if violations:
        raise InvalidArgument(violations)
    workspace_id = f"ws-{secrets.token_hex(8)}"
    path = manager.path_of(workspace_id)
    try:
        base_commit, branch = await manager.materialize(workspace_id, source)
        now = utcnow().isoformat()
        await manager.db.execute(
            "INSERT INTO workspaces (id, run_id, branch, source_json, base_commit, last_snapshot, leased,"
            " created_at, updated_at) VALUES (?, '', ?, ?, ?, ?, 0, ?, ?)",
            (workspace_id, branch, to_json(source), base_commit, base_commit, now, now),
        )
        await manager.db.commit()
    except BaseException:
        await manager.remove_files(workspace_id)
        raise
    log.info("created workspace %s at %s", workspace_id, path)
    return await manager.get(workspace_id)


def encode_page_token(rowid: int) -> str:
    """An opaque token for the page that continues below `rowid`."""
    return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}{rowid}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> int:
    """The rowid a page token stands for; InvalidArgument (`page_token`) when it is not ours."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        number = text.removeprefix(_TOKEN_PREFIX)
        if not text.startswith(_TOKEN_PREFIX) or not number.isdigit() or int(number) < 1:
            raise ValueError(text)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument([FieldViolation("page_token", "invalid page token")]) from None


async def list_workspaces(
    manager: WorkspaceManager, page_size: int = 0, page_token: str = ""
) -> tuple[list[WorkspaceRecord], str]:
    """Workspaces newest first, `page_size` at a time (default 50, at most 1000); returns
    the page and the token of the next one ('' on the last page)."""
    if page_size < 0:
        raise InvalidArgument([FieldViolation("page_size", f"must not be negative, got {page_size}")])
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    below = decode_page_token(page_token) if page_token else None
    sql = "SELECT rowid AS row_number, * FROM workspaces"
    params: list[int] = []
    if below is not None:
        sql += " WHERE rowid < ?"
        params.append(below)
    sql += " ORDER BY rowid DESC LIMIT ?"
    params.append(size + 1)
    async with manager.db.execute(sql, params) as cursor:
        rows = list(await cursor.fetchall())
    more = len(rows) > size
    rows = rows[:size]
    records = [manager.record_from_row(row) for row in rows]
    return records, encode_page_token(rows[-1]["row_number"]) if more else ""


def _files_of(manager: WorkspaceManager, workspace_id: str) -> list[Path]:
    """Every folder that belongs to a workspace."""
    home = manager.home
    return [
        manager.path_of(workspace_id),
        manager.git_dir_of(workspace_id),
        *(home / name / workspace_id for name in AGENT_FILE_FOLDERS[:2]),
    ]


async def _delete(manager: WorkspaceManager, record: WorkspaceRecord) -> bool:
    """Deletes a workspace's files, then its index row; False (row kept) when files remain."""
    # Files first: if removing them fails half-way (say a process of the agent still
    # writing), the index still knows the workspace and a second delete (gc) finishes the job.
    folders = _files_of(manager, record.id)
    manager.changes.stop(record.id)
    # Gone at once, deleted behind the request: a run's end does not wait for it.
    left = await discard_trees(folders, manager.trash)
    if record.run_id:
        await cleanroom.remove_run_room(manager.home / "cleanrooms", record.run_id, record.id, record.git_dir)
    if left:
        log.warning("workspace %s is not gone yet (%s); kept in the index for gc", record.id, left[0])
        return False
    await manager.db.execute("DELETE FROM workspaces WHERE id = ?", (record.id,))
    await manager.db.commit()
    log.info("deleted workspace %s (run %s)", record.id, record.run_id or "-")
    return True


async def delete_workspace(manager: WorkspaceManager, workspace_id: str, force: bool = False) -> None:
    """Deletes a workspace, its folder and its agent files. FailedPrecondition while its
    lease holds, unless `force` (an agent still running there then fails)."""
    async with manager.lock(workspace_id):
        record = await manager.get(workspace_id)
        if record.leased and not force:
            raise FailedPrecondition(
                f"workspace {workspace_id} is {describe(record)}; release it first or delete with force"
            )
        if not await _delete(manager, record):
            raise FailedPrecondition(f"workspace {workspace_id} could not be deleted completely; try again")


async def _workspaces_of_run(manager: WorkspaceManager, run_id: str) -> list[WorkspaceRecord]:
    async with manager.db.execute("SELECT * FROM workspaces WHERE run_id = ? ORDER BY rowid", (run_id,)) as cursor:
        return [manager.record_from_row(row) for row in await cursor.fetchall()]


async def remove_run_files(manager: WorkspaceManager, run_id: str, records: list[WorkspaceRecord]) -> list[str]:
    """The one place that deletes what a run left on disk (docs/workspaces.md,
    "Retention"): the workspaces `records` (folder, trusted git directory, agent files,
    prompts, index row), then, unless another workspace of the run is still leased (a
    second attempt going on), the run's clean rooms and agent home. Returns the ids of the
    workspaces deleted. Called at the end of a run (ReleaseLease with delete), by
    CleanupRun and by `agentgate gc`."""
    deleted = []
    for record in records:
        async with manager.lock(record.id):
            if await _delete(manager, record):
                deleted.append(record.id)
    if not any(other.leased for other in await _workspaces_of_run(manager, run_id)):
        await _remove_clean_rooms(manager.home / "cleanrooms", run_id)
        await discard_tree(manager.home / AGENT_FILE_FOLDERS[2] / run_id, manager.trash)
    return deleted


async def release_and_delete(manager: WorkspaceManager, workspace_id: str) -> WorkspaceRecord:
    """Ends a run's hold on its workspace and deletes it with everything the run left,
    together with the run's other workspaces that no lease holds (an earlier attempt's).
    Returns the record as it was."""
    record = await manager.release(workspace_id)
    others = [other for other in await _workspaces_of_run(manager, record.run_id) if other.id != workspace_id]
    await remove_run_files(manager, record.run_id, [record] + [other for other in others if not other.leased])
    return record


async def cleanup_run(manager: WorkspaceManager, run_id: str, force: bool = False) -> list[str]:
    """Deletes the workspaces, clean rooms and agent files of a run; returns the ids of the
    workspaces deleted (none for an unknown run). FailedPrecondition, deleting nothing,
    while one of them is still leased (the run is going on), unless `force`."""
    violations = run_id_violations(run_id)
    if violations:
        raise InvalidArgument(violations)
    records = await _workspaces_of_run(manager, run_id)
    for record in records:
        if record.leased and not force:
            raise FailedPrecondition(f"workspace {record.id} of run {run_id} is {describe(record)}; release it first")
    if force:
        # A lease left by a worker that died: taken back so the run's files all go.
        for record in records:
            if record.leased:
                await manager.release(record.id)
        records = await _workspaces_of_run(manager, run_id)
    return await remove_run_files(manager, run_id, records)


def _clean_room_run(name: str) -> str | None:
    """The run a clean room (or its index file) belongs to, by its name; None when not one."""
    found = _CLEAN_ROOM_NAME.match(name)
    return found.group("run") if found else None


async def _remove_clean_rooms(root: Path, run_id: str) -> None:
    """Clean rooms (and their temporary index files) a run's verifications left behind."""

    def names() -> list[Path]:
        if not root.is_dir():
            return []
        return [entry for entry in root.iterdir() if _clean_room_run(entry.name) == run_id]

    for entry in await asyncio.to_thread(names):
        await asyncio.to_thread(remove_tree, entry)


async def sweep_orphans(manager: WorkspaceManager) -> list[str]:
    """At start-up: deletes what a workspace service that died left with no owner — workspace
    folders and git directories the index does not know (a preparation cut short) and every
    clean room (no verification runs before this process serves). Returns the paths deleted."""
    async with manager.db.execute("SELECT id FROM workspaces") as cursor:
        known = {row["id"] for row in await cursor.fetchall()}

    def orphans() -> list[Path]:
        found: list[Path] = []
        for root, suffix in ((manager.workspaces_root, ""), (manager.git_dirs_root, ".git")):
            if root.is_dir():
                found += [
                    path for path in root.iterdir()
                    if path.name.endswith(suffix) and WORKSPACE_ID_PATTERN.match(path.name.removesuffix(suffix))
                    and path.name.removesuffix(suffix) not in known
                ]
        clean_rooms = manager.home / "cleanrooms"
        if clean_rooms.is_dir():
            found += list(clean_rooms.iterdir())
        return found

    swept = await asyncio.to_thread(orphans)
    for path in swept:
        await asyncio.to_thread(remove_tree, path)
    if swept:
        log.info("removed %d leftover(s) of an earlier workspace service: %s", len(swept),
                 ", ".join(path.name for path in swept[:10]))
    return [str(path) for path in swept]




def _scan_leftovers(manager: WorkspaceManager, records: list[WorkspaceRecord]) -> list[workspace_pb2.RunLeftovers]:
    """Per run id: its workspaces (from the index), clean rooms and agent home on disk,
    their bytes and newest change (blocking)."""
    home = manager.home
    runs: dict[str, workspace_pb2.RunLeftovers] = {}
    folders: dict[str, list[Path]] = {}

    def entry(run_id: str) -> workspace_pb2.RunLeftovers:
        if run_id not in runs:
            runs[run_id] = workspace_pb2.RunLeftovers(run_id=run_id)
            folders[run_id] = []
        return runs[run_id]

    for record in records:
        if not record.run_id:
            continue  # made with CreateWorkspace, by a user: not a run's leftover
        found = entry(record.run_id)
        found.workspace_ids.append(record.id)
        found.leased = found.leased or record.leased
        folders[record.run_id] += _files_of(manager, record.id)
    owners = (
        (home / "cleanrooms", _clean_room_run),
        (home / AGENT_FILE_FOLDERS[2], lambda name: name if RUN_ID_PATTERN.match(name) else None),
    )
    for root, owner in owners:
        if root.is_dir():
            for path in root.iterdir():
                if (run_id := owner(path.name)) is not None:
                    entry(run_id)
                    folders[run_id].append(path)
    for run_id, found in runs.items():
        seen: set[tuple[int, int]] = set()
        newest = 0.0
        for folder in folders[run_id]:
            usage = tree_usage(folder, seen)
            found.bytes += usage.bytes
            newest = max(newest, usage.newest_mtime)
        if newest:
            found.last_modified.FromDatetime(datetime.fromtimestamp(newest, UTC))
    return sorted(runs.values(), key=lambda item: item.run_id)


async def list_run_leftovers(manager: WorkspaceManager) -> list[workspace_pb2.RunLeftovers]:
    """What each run left on disk (docs/workspaces.md, "gc"), measured off the event loop."""
    async with manager.db.execute("SELECT * FROM workspaces ORDER BY rowid") as cursor:
        records = [manager.record_from_row(row) for row in await cursor.fetchall()]
    return await asyncio.to_thread(_scan_leftovers, manager, records)


def _usage(home: Path) -> common_pb2.DiskUsage:
    seen: set[tuple[int, int]] = set()
    return common_pb2.DiskUsage(
        workspaces_bytes=tree_usage(home / "workspaces", seen).bytes,
        gitdirs_bytes=tree_usage(home / "gitdirs", seen).bytes,
        cleanrooms_bytes=tree_usage(home / "cleanrooms", seen).bytes,
        agent_files_bytes=sum(tree_usage(home / name, seen).bytes for name in AGENT_FILE_FOLDERS),
    )


async def disk_usage(manager: WorkspaceManager) -> common_pb2.DiskUsage:
    """Bytes under the workspace service's folders of $AGENTGATE_HOME, walked off the event loop."""
    return await asyncio.to_thread(_usage, manager.home)


def to_list_response(records: list[WorkspaceRecord], next_token: str) -> workspace_pb2.ListWorkspacesResponse:
    """The wire form of a page of workspaces."""
    return workspace_pb2.ListWorkspacesResponse(
        workspaces=[record.to_proto() for record in records], next_page_token=next_token
    )
