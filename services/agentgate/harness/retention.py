"""Retention (docs/workspaces.md, "Retention"): whether a run's workspace, with its git
directory, clean rooms and agent files, is deleted when the run ends.

`retention.workspace` in a profile or the work order (`--keep-workspace` sets `keep`):
`delete` (the default), `keep`, or `on_failure` (kept only when the run did not succeed).
"""

from __future__ import annotations

from agentgate.v1 import common_pb2

#: What a run gets unless a profile or the work order says otherwise.
DEFAULT_WORKSPACE_RETENTION = common_pb2.WORKSPACE_RETENTION_DELETE


def deletes_workspace(settings: common_pb2.RetentionSettings, succeeded: bool) -> bool:
    """Whether a run that ended (`succeeded` or not) under `settings` deletes its workspace."""
    policy = settings.workspace or DEFAULT_WORKSPACE_RETENTION
    if policy == common_pb2.WORKSPACE_RETENTION_KEEP:
        return False
    if policy == common_pb2.WORKSPACE_RETENTION_ON_FAILURE:
        return succeeded
    return True
