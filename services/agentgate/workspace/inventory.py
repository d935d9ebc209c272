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
from pathlib import Path

from agentgate.common.errors import FailedPrecondition, FieldViolation, InvalidArgument
from agentgate.common.messages import to_json
from agentgate.common.timeutil import utcnow
from agentgate.v1 import common_pb2, workspace_pb2
from agentgate.workspace.gate import cleanroom
from agentgate.workspace.leases import describe
from agentgate.workspace.workspaces import (
    WorkspaceManager,
    WorkspaceRecord,
    remove_tree,
    run_id_violations,
    source_violations,
)

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_TOKEN_PREFIX = "ws:"


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
        home / "agent-files" / workspace_id,
        home / "prompts" / workspace_id,
    ]


async def _delete(manager: WorkspaceManager, record: WorkspaceRecord) -> None:
    # Files first: if removing them fails half-way, the index still knows the workspace
    # and a second delete finishes the job.
    for folder in _files_of(manager, record.id):
        await asyncio.to_thread(remove_tree, folder)
    if record.run_id:
        await cleanroom.remove_run_room(manager.home / "cleanrooms", record.run_id, record.id, record.git_dir)
    await manager.db.execute("DELETE FROM workspaces WHERE id = ?", (record.id,))
    await manager.db.commit()
    log.info("deleted workspace %s (run %s)", record.id, record.run_id or "-")


async def delete_workspace(manager: WorkspaceManager, workspace_id: str, force: bool = False) -> None:
    """Deletes a workspace, its folder and its agent files. FailedPrecondition while its
    lease holds, unless `force` (an agent still running there then fails)."""
    async with manager.lock(workspace_id):
        record = await manager.get(workspace_id)
        if record.leased and not force:
            raise FailedPrecondition(
                f"workspace {workspace_id} is {describe(record)}; release it first or delete with force"
            )
        await _delete(manager, record)


async def cleanup_run(manager: WorkspaceManager, run_id: str) -> list[str]:
    """Deletes the workspaces, clean rooms and agent files of a run; returns the ids of the
    workspaces deleted (none for an unknown run). FailedPrecondition, deleting nothing,
    while one of them is still leased (the run is going on)."""
    violations = run_id_violations(run_id)
    if violations:
        raise InvalidArgument(violations)
    async with manager.db.execute("SELECT * FROM workspaces WHERE run_id = ? ORDER BY rowid", (run_id,)) as cursor:
        records = [manager.record_from_row(row) for row in await cursor.fetchall()]
    for record in records:
        if record.leased:
            raise FailedPrecondition(f"workspace {record.id} of run {run_id} is {describe(record)}; release it first")
    for record in records:
        async with manager.lock(record.id):
            await _delete(manager, record)
    await _remove_clean_rooms(manager.home / "cleanrooms", run_id)
    return [record.id for record in records]


async def _remove_clean_rooms(root: Path, run_id: str) -> None:
    """Clean rooms (and their temporary index files) a run's verifications left behind."""
    # Exactly `{run_id}-{iteration}-{8 hex}`: a prefix match would also catch run "abc-1"
    # when cleaning run "abc".
    pattern = re.compile(rf"^\.?{re.escape(run_id)}-\d+-[0-9a-f]{{8}}(\.index)?$")

    def names() -> list[Path]:
        if not root.is_dir():
            return []
        return [entry for entry in root.iterdir() if pattern.match(entry.name)]

    for entry in await asyncio.to_thread(names):
        if entry.is_dir() and not entry.is_symlink():
            await asyncio.to_thread(remove_tree, entry)
        else:
            await asyncio.to_thread(entry.unlink, missing_ok=True)


def to_list_response(records: list[WorkspaceRecord], next_token: str) -> workspace_pb2.ListWorkspacesResponse:
    """The wire form of a page of workspaces."""
    return workspace_pb2.ListWorkspacesResponse(
        workspaces=[record.to_proto() for record in records], next_page_token=next_token
    )
