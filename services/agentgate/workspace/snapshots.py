"""Snapshots of a workspace beyond creating them (docs/workspaces.md): restore, list, diff.

A snapshot is a commit of the workspace's trusted git directory (outside the workspace; see
docs/security.md, "Git"). The snapshots of a workspace are its initial snapshot
(`base_commit`) and every commit made on top of it by CreateSnapshot and RestoreSnapshot.
Commits the agent makes in its own `.git` are not read: a snapshot records the files.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import cast

from agentgate.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, ResourceExhausted
from agentgate.common.patches import MAX_PATCH_BYTES, patch_too_large
from agentgate.common.timeutil import to_timestamp, utcnow
from agentgate.v1 import workspace_pb2
from agentgate.workspace import git as gitops
from agentgate.workspace.workspaces import WorkspaceManager, WorkspaceRecord

#: A diff above this is cut (on a character boundary) and flagged `truncated`; the whole
#: of it is always in the workspace's repository.
MAX_DIFF_BYTES = 4 * 1024 * 1024
RESTORE_MESSAGE = "agentgate: restore snapshot {short}"
RESUMED_SNAPSHOT_MESSAGE = "agentgate: iteration {iteration} (resumed from its stored patch)"
#: `git diff` options of an exported patch: binary files whole, full object ids (so `git
#: apply --3way` can find the blobs), renames detected, and nothing a config could change.
PATCH_OPTIONS = (
    "--binary", "--full-index", "-M", "--no-color", "--no-ext-diff", "--no-textconv",
    "--src-prefix=a/", "--dst-prefix=b/",
)
_FIELD_SEP = "\x1f"
_RECORD_SEP = "\x1e"


def _check_commit_id(value: str, field: str) -> None:
    """A snapshot id must name a commit, not pass options to git."""
    if value.startswith("-") or any(c.isspace() or c == "\x00" for c in value) or len(value) > 256:
        raise InvalidArgument([FieldViolation(field, f"{value[:80]!r} is not a snapshot (commit) id")])


async def _resolve(manager: WorkspaceManager, record: WorkspaceRecord, snapshot_id: str, field: str) -> str:
    _check_commit_id(snapshot_id, field)
    commit = await gitops.resolve_commit(record.git_dir, snapshot_id)
    if commit is None:
        raise FailedPrecondition(f"{field}: {snapshot_id!r} is not a snapshot of workspace {record.id}")
    return commit


async def restore_snapshot(manager: WorkspaceManager, workspace_id: str, snapshot_id: str) -> str:
    """Makes the workspace's files equal those of a snapshot and returns the commit that
    records it (a new commit on top, so history is kept; HEAD when the files already match).

    An empty `snapshot_id` means the workspace's last snapshot: everything changed since
    is discarded (what a retried agent attempt starts from). Uncommitted changes are lost;
    files ignored by git are left alone (they are in no snapshot). Needs the lease.
    """
    async with manager.lock(workspace_id):
        record = await manager.get_leased(workspace_id)
        path, git_dir = record.path, record.git_dir
        target = await _resolve(manager, record, snapshot_id or record.last_snapshot, "snapshot_id")
        # Staging everything first makes files created since the snapshot tracked, so that
        # read-tree removes them along with the rest of the differences.
        await gitops.work(git_dir, path, "add", "-A")
        await gitops.work(git_dir, path, "read-tree", "-u", "--reset", target)
        differs = (await gitops.work(git_dir, path, "diff", "--cached", "--quiet", "HEAD", check=False)).returncode
        if differs:
            message = RESTORE_MESSAGE.format(short=target[:12])
            await gitops.work(git_dir, path, "commit", "-q", "--no-verify", "-m", message)
        head = await gitops.head_commit(git_dir)
        await manager.db.execute(
            "UPDATE workspaces SET last_snapshot = ?, updated_at = ? WHERE id = ?",
            (head, utcnow().isoformat(), workspace_id),
        )
        await manager.db.commit()
        return head


async def list_snapshots(manager: WorkspaceManager, workspace_id: str) -> list[workspace_pb2.Snapshot]:
    """The snapshots of a workspace, newest first (the initial snapshot last)."""
    record = await manager.get(workspace_id)
    if not record.path.is_dir():
        raise FailedPrecondition(f"the folder of workspace {record.id} is gone: {record.path}")
    fmt = _FIELD_SEP.join(("%H", "%cI", "%s")) + _RECORD_SEP
    git_dir = record.git_dir
    out = (
        await gitops.git(
            "log", "--topo-order", f"--format={fmt}", f"{record.base_commit}..HEAD", "--", cwd=git_dir, git_dir=git_dir
        )
    ).stdout
    snapshots = [_snapshot(entry) for entry in out.split(_RECORD_SEP) if entry.strip()]
    base = (
        await gitops.git("log", "-1", f"--format={fmt}", record.base_commit, "--", cwd=git_dir, git_dir=git_dir)
    ).stdout.split(_RECORD_SEP)[0]
    if base.strip():
        snapshots.append(_snapshot(base))
    return snapshots


def _snapshot(entry: str) -> workspace_pb2.Snapshot:
    commit, committed, subject = entry.strip("\n").split(_FIELD_SEP, 2)
    snapshot = workspace_pb2.Snapshot(id=commit, message=subject)
    snapshot.created_at.CopyFrom(to_timestamp(datetime.fromisoformat(committed)))
    return snapshot


async def get_diff(
    manager: WorkspaceManager, workspace_id: str, from_snapshot_id: str = "", to_snapshot_id: str = ""
) -> workspace_pb2.GetDiffResponse:
    """The unified diff between two snapshots: from the initial snapshot and to the last
    one when not given. Cut at `MAX_DIFF_BYTES` (`truncated`)."""
    record = await manager.get(workspace_id)
    if not record.path.is_dir():
        raise FailedPrecondition(f"the folder of workspace {record.id} is gone: {record.path}")
    old = await _resolve(manager, record, from_snapshot_id or record.base_commit, "from_snapshot_id")
    new = await _resolve(manager, record, to_snapshot_id or record.last_snapshot, "to_snapshot_id")
    git_dir = record.git_dir
    diff = (
        await gitops.git(
            "diff", "--no-color", "--no-ext-diff", "--no-textconv", old, new, "--", cwd=git_dir, git_dir=git_dir
        )
    ).stdout
    changed = await gitops.changed_files(git_dir, old, new)
    text, truncated = _cut(diff, MAX_DIFF_BYTES)
    return workspace_pb2.GetDiffResponse(diff=text, changed_files=changed, truncated=truncated)


def _cut(text: str, limit: int) -> tuple[str, bool]:
    """`text` cut to at most `limit` UTF-8 bytes, on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", errors="ignore"), True


async def export_patch(
    manager: WorkspaceManager, workspace_id: str, from_snapshot_id: str = "", to_snapshot_id: str = ""
) -> workspace_pb2.ExportPatchResponse:
    """The change between two snapshots as a patch `git apply` takes back whole (docs/results.md).

    From the commit the source was at when not given (the initial snapshot's parent: what a
    user's repository has), or the initial snapshot for a source without commits; to the
    last snapshot. ResourceExhausted above MAX_PATCH_BYTES: the patch is the agent's work,
    of any size. The bytes are read as git wrote them (a text file in any encoding survives).
    """
    record = await manager.get(workspace_id)
    if not record.path.is_dir():
        raise FailedPrecondition(f"the folder of workspace {record.id} is gone: {record.path}")
    git_dir = record.git_dir
    if from_snapshot_id:
        old = await _resolve(manager, record, from_snapshot_id, "from_snapshot_id")
        from_commit = old
    else:
        parent = await gitops.resolve_commit(git_dir, f"{record.base_commit}^")
        old = parent or record.base_commit
        from_commit = parent or ""
    new = await _resolve(manager, record, to_snapshot_id or record.last_snapshot, "to_snapshot_id")
    # The first iteration's patch and the run's cumulative one, asked at the same time, are
    # one diff when the initial snapshot has the source commit's tree: made once.
    old = gitops.same_tree(git_dir, old)
    tree, made = await asyncio.gather(
        gitops.tree_of(git_dir, new),
        gitops.shared_while_asked(("patch", str(git_dir), old, new), lambda: _patch(git_dir, old, new)),
    )
    patch, changed = cast(tuple[bytes, list[str]], made)
    return workspace_pb2.ExportPatchResponse(
        patch=patch, from_commit=from_commit, to_commit=new, to_tree=tree, changed_files=changed
    )


async def _patch(git_dir: Path, old: str, new: str) -> tuple[bytes, list[str]]:
    """The patch `old..new` and its paths; ResourceExhausted above MAX_PATCH_BYTES."""
    with tempfile.TemporaryDirectory(prefix="agentgate-patch-") as tmp:
        out = Path(tmp) / "change.diff"
        # The paths are asked beside the patch (each git process costs milliseconds); both
        # behind the gate, which the run waits for while its patches are exported.
        _, changed = await asyncio.gather(
            gitops.git(
                "diff", *PATCH_OPTIONS, f"--output={out}", old, new, "--", cwd=git_dir, git_dir=git_dir, behind=True
            ),
            gitops.changed_files(git_dir, old, new, behind=True),
        )
        size = out.stat().st_size
        if size > MAX_PATCH_BYTES:
            raise ResourceExhausted(patch_too_large(f"the change {old[:12]}..{new[:12]}", size))
        return await asyncio.to_thread(out.read_bytes), changed


async def apply_patches(manager: WorkspaceManager, workspace_id: str, patches: Sequence[bytes]) -> list[str]:
    """Applies a resumed run's stored iteration patches in order, each committed as a
    snapshot; returns the snapshots. FailedPrecondition naming the iteration when one does
    not apply (the source changed since the lost attempt read it). `git apply` refuses
    paths outside the workspace and inside `.git`, so a hostile patch writes nowhere else."""
    snapshots: list[str] = []
    async with manager.lock(workspace_id):
        record = await manager.get_leased(workspace_id)
        path, git_dir = record.path, record.git_dir
        with tempfile.TemporaryDirectory(prefix="agentgate-resume-") as tmp:
            for iteration, patch in enumerate(patches, start=1):
                if len(patch) > MAX_PATCH_BYTES:
                    raise InvalidArgument(
                        [FieldViolation("patches", patch_too_large(f"patch {iteration}", len(patch)))]
                    )
                file = Path(tmp) / f"patch-{iteration}.diff"
                await asyncio.to_thread(file.write_bytes, patch)
                if patch.strip():
                    applied = await gitops.work(git_dir, path, "apply", "--index", "--binary", str(file), check=False)
                    if applied.returncode != 0:
                        raise FailedPrecondition(
                            f"patches: the stored patch of iteration {iteration} does not apply to the source "
                            f"as it is now: {applied.stderr.strip()[:2000]}"
                        )
                message = RESUMED_SNAPSHOT_MESSAGE.format(iteration=iteration)
                await gitops.work(git_dir, path, "commit", "-q", "--no-verify", "--allow-empty", "-m", message)
                snapshots.append(await gitops.head_commit(git_dir))
        if snapshots:
            await manager.db.execute(
                "UPDATE workspaces SET last_snapshot = ?, updated_at = ? WHERE id = ?",
                (snapshots[-1], utcnow().isoformat(), workspace_id),
            )
            await manager.db.commit()
    return snapshots
