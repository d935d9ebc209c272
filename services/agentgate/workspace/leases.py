"""Leases on workspaces (docs/workspaces.md): who may change a workspace, and until when.

A lease has a holder (a run id, or a client's name) and an expiry. PrepareForRun leases the
new workspace to its run; `AcquireLease` takes a free or expired lease, or renews the
caller's own; `ReleaseLease` ends it. A lease that is not renewed expires: the workspace then
counts as free (`leased` false), commands that change it (RunAgent, CreateSnapshot,
RestoreSnapshot) are refused, and anyone may lease or delete it. A worker that died holding
a workspace therefore blocks nobody for longer than its lease.

Times are Unix seconds from `WorkspaceManager.clock`, which tests replace.
"""

from __future__ import annotations

from datetime import UTC, datetime

from agentgate.common.errors import FailedPrecondition, FieldViolation, InvalidArgument
from agentgate.common.timeutil import utcnow
from agentgate.v1 import workspace_pb2
from agentgate.workspace.workspaces import DEFAULT_LEASE_SECONDS, WorkspaceManager, WorkspaceRecord

#: A week: longer than any run may take; a longer lease would be a forgotten one.
MAX_LEASE_SECONDS = 7 * 24 * 3600
MAX_HOLDER_CHARS = 200


def lease_seconds_or_default(seconds: int, field: str = "lease_seconds") -> int:
    """The lease length a request asks for (0 = the default, 3600); InvalidArgument when
    negative or longer than a week."""
    if seconds < 0 or seconds > MAX_LEASE_SECONDS:
        raise InvalidArgument(
            [FieldViolation(field, f"must be between 0 (default {DEFAULT_LEASE_SECONDS}) and {MAX_LEASE_SECONDS}, "
                                   f"got {seconds}")]
        )
    return seconds or DEFAULT_LEASE_SECONDS


def describe(record: WorkspaceRecord) -> str:
    """`leased by X until T`, for error messages."""
    until = datetime.fromtimestamp(record.lease_expires, UTC).isoformat(timespec="seconds")
    return f"leased by {record.lease_holder or 'an unnamed holder'} until {until}"


async def acquire_lease(
    manager: WorkspaceManager, workspace_id: str, seconds: int, holder: str
) -> workspace_pb2.Workspace:
    """Takes the lease of a workspace for `holder`, or renews it when `holder` has it.

    FailedPrecondition while another holder's lease has not expired; InvalidArgument for a
    missing holder or a bad length; NotFound for an unknown workspace.
    """
    violations = []
    holder = holder.strip()
    if not holder:
        violations.append(FieldViolation("holder", "who takes the lease is required (a run id or a client name)"))
    elif len(holder) > MAX_HOLDER_CHARS:
        violations.append(FieldViolation("holder", f"at most {MAX_HOLDER_CHARS} characters"))
    try:
        seconds = lease_seconds_or_default(seconds)
    except InvalidArgument as exc:
        violations += exc.violations
    if violations:
        raise InvalidArgument(violations)
    async with manager.lock(workspace_id):
        record = await manager.get(workspace_id)
        if record.leased and record.lease_holder != holder:
            raise FailedPrecondition(f"workspace {workspace_id} is {describe(record)}")
        await manager.db.execute(
            "UPDATE workspaces SET leased = 1, lease_holder = ?, lease_expires = ?, updated_at = ? WHERE id = ?",
            (holder, manager.clock() + seconds, utcnow().isoformat(), workspace_id),
        )
        await manager.db.commit()
        return (await manager.get(workspace_id)).to_proto()
