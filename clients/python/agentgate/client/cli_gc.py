"""`agentgate gc`: removes what crashed runs left on disk, and with `--runs` old run files
(docs/workspaces.md, "gc"). The logic is in `housekeeping`; grpc loads when it runs."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from agentgate.client.cli_shared import EXIT_USAGE, JsonFlag, console, fail, open_client, unreachable

app = typer.Typer()


@app.command()
def gc(
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="Only what has not changed for this long: 30m, 12h, 7d, 1h30m ..."),
    ] = None,
    runs: Annotated[
        bool,
        typer.Option("--runs", help="Also delete the records and files of finished runs (needs --older-than)."),
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be deleted, delete nothing.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Delete the workspaces, git directories, clean rooms and agent files of runs that ended
    or that persistence does not know; a run still going on is never touched."""
    import grpc

    from agentgate.client import housekeeping

    try:
        seconds = housekeeping.parse_duration(older_than) if older_than is not None else 0.0
    except ValueError as exc:
        raise fail(f"--older-than: {exc}", EXIT_USAGE) from None
    if runs and older_than is None:
        raise fail("--runs: give --older-than too (e.g. --older-than 30d): run history is deleted for good", EXIT_USAGE)
    now = time.time()
    with open_client() as client:
        try:
            plan = housekeeping.plan_gc(client.workspace, client.persistence, seconds, now)
            deleted = [] if dry_run else housekeeping.apply_gc(client.workspace, plan)
            old_runs = housekeeping.delete_old_runs(client.persistence, seconds, dry_run, now) if runs else None
        except grpc.RpcError as exc:
            raise unreachable(exc) from None
    total = sum(item.bytes for item, _ in plan.delete)
    out: dict[str, object] = {
        "dry_run": dry_run,
        "leftovers": [
            {"run_id": item.run_id, "workspace_ids": list(item.workspace_ids), "bytes": item.bytes, "reason": why}
            for item, why in plan.delete
        ],
        "kept": [{"run_id": item.run_id, "reason": why} for item, why in plan.keep],
        "deleted_workspace_ids": deleted,
        "bytes": total,
    }
    if old_runs is not None:
        out["runs"] = {"run_ids": list(old_runs.run_ids), "bytes": old_runs.bytes}
    if json_output:
        print(json.dumps(out))
        return
    verb = "would delete" if dry_run else "deleted"
    for item, why in plan.delete:
        console().print(f"{verb} {item.run_id}: {len(item.workspace_ids)} workspace(s), "
                        f"{housekeeping.human_bytes(item.bytes)} ({why})")
    for item, why in plan.keep:
        console().print(f"kept {item.run_id} ({why})")
    if old_runs is not None:
        console().print(f"{verb} the files of {len(old_runs.run_ids)} finished run(s), "
                        f"{housekeeping.human_bytes(old_runs.bytes)}")
    console().print(f"{verb} {housekeeping.human_bytes(total)} of leftovers")
