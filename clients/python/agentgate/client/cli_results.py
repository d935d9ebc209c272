"""`agentgate diff` and `agentgate apply`: a run's change, read from persistence (the stored
patches outlive the workspace and the worker), shown or brought into the user's own
directory (docs/results.md). The work is in `results`; it, grpc and the stubs load inside
the commands, so other commands do not pay for them at start-up.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from agentgate.client.cli_shared import EXIT_USAGE, JsonFlag, console, err_console, fail, open_client

app = typer.Typer()

RunArg = Annotated[str, typer.Argument(metavar="RUN", help="Run id (run-…) or work order id (wo-…).")]


@app.command("diff")
def diff(
    ident: RunArg,
    iteration: Annotated[
        int | None, typer.Option("--iteration", "-i", help="Only iteration N's change (default: the whole run's).")
    ] = None,
    show_stat: Annotated[bool, typer.Option("--stat", help="Files changed and lines added/removed only.")] = False,
) -> None:
    """The run's change against its source (or iteration N's against the one before), as
    a patch `git apply` takes; colored on a terminal."""
    from agentgate.client import results
    from agentgate.client.cli_runs import _call, _run

    if iteration is not None and iteration < 1:
        raise fail("iterations count from 1", EXIT_USAGE)
    with open_client() as client:
        run = _run(client, ident)
        what = f"patch-{iteration}.diff" if iteration else "patch.diff"
        patch = _call(f"{what} of {run.id}", lambda: client.patch(run.id, iteration or 0))
    if show_stat:
        sys.stdout.write(results.stat(patch.patch) if patch.patch else "")
        return
    data = results.colorize(patch.patch) if sys.stdout.isatty() else patch.patch
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


@app.command("apply")
def apply(
    ident: RunArg,
    to: Annotated[
        Path | None,
        typer.Option("--to", help="The directory to bring the change into (default: the --path the run came from)."),
    ] = None,
    checkout: Annotated[
        bool,
        typer.Option("--checkout", help="Also check the new branch out (git refuses if your changes would be lost)."),
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Brings the run's change into your repository as branch agentgate/<run>, made from
    the commit the run started from, without touching your working tree or index (unless
    --checkout); into a directory that is not a git repository, as a patch applied only when
    all of it applies. Refuses, naming the files, when your tree has moved in a conflicting way."""
    from agentgate.client import results
    from agentgate.client.cli_runs import _call, _run

    with open_client() as client:
        run = _run(client, ident)
        patch = _call(f"patch.diff of {run.id}", lambda: client.patch(run.id))
    from agentgate.v1 import common_pb2

    if run.result != common_pb2.RUN_RESULT_SUCCEEDED:
        # Partial work can be worth having, but nobody should take it for a passed gate.
        state = common_pb2.RunResult.Name(run.result).removeprefix("RUN_RESULT_").lower()
        err_console().print(
            f"[yellow]warning:[/yellow] run {run.id} did not succeed ({state}): its last snapshot is applied"
        )
    target = to
    if target is None:
        if not run.source.local_path:
            raise fail(f"run {run.id} did not come from a local --path; say where with --to DIR", EXIT_USAGE)
        target = Path(run.source.local_path)
    try:
        applied = results.apply_change(run, patch, target, checkout=checkout)
    except results.ApplyRefused as exc:
        raise fail(f"refused: {exc}") from None
    if json_output:
        print(
            json.dumps(
                {
                    "run_id": run.id,
                    "target": str(applied.target),
                    "branch": applied.branch,
                    "commit": applied.commit,
                    "tree": applied.tree,
                    "already_applied": applied.already,
                    "checked_out": applied.checked_out,
                }
            )
        )
        return
    if not applied.branch:
        console().print(f"applied the change of {run.id} to the files of {applied.target}", soft_wrap=True)
        return
    state = "already holds" if applied.already else "now holds"
    console().print(
        f"branch {applied.branch} in {applied.target} {state} the change of {run.id} ({applied.commit[:12]})",
        highlight=False,
        soft_wrap=True,
    )
    if not applied.checked_out:
        hint = f"  see it: git -C {applied.target} diff HEAD...{applied.branch}"
        console().print(hint, highlight=False, soft_wrap=True)
