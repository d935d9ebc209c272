"""`agentgate watch|status|list|cancel`: following and reading work orders; `follow` and
`result_json` are what `submit`, `exec` and `demo` (cli_submit) print with. grpc, rich and
the stubs load inside the commands (see docs/benchmarks.md, "CLI start-up").
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agentgate.client.cli_shared import (
    EXIT_USAGE,
    JsonFlag,
    console,
    fail,
    open_client,
    piped,
    resolve_work_order_id,
    unreachable,
)

if TYPE_CHECKING:
    from agentgate.client.sync_client import AgentGateClient
    from agentgate.v1 import common_pb2

app = typer.Typer()


def _delivery_json(run: common_pb2.Run) -> dict[str, Any]:
    """`pr_url` and the GitHub summary of a run."""
    from agentgate.common.messages import to_dict

    return {
        "pr_url": run.pr_url,
        "github_summary": to_dict(run.github_summary) if run.HasField("github_summary") else None,
    }


def result_json(client: AgentGateClient, work_order: common_pb2.WorkOrder) -> dict[str, object]:
    """What `status` shows of a work order and its run (and `--json` prints), with its run files."""
    from agentgate.client.render import (
        run_result_name,
        run_state_name,
        sandbox_name,
        work_order_summary,
        workspace_text,
    )
    from agentgate.common.config import agentgate_home
    from agentgate.common.messages import to_dict
    from agentgate.v1 import common_pb2

    out: dict[str, object] = dict(work_order_summary(work_order))
    run = client.run(work_order.run_id)
    if work_order.trace_id:  # known from submit on, before any run exists
        out["trace_id"] = work_order.trace_id
    if work_order.error:
        out["error"] = work_order.error
    if run is not None:
        out.update(
            run_state=run_state_name(run.state),
            result=run_result_name(run.result),
            iterations=run.iteration_count,
            error=run.error or work_order.error,
            build_error=to_dict(run.build_error) if run.HasField("build_error") else None,
            branch=run.branch_name,
            workspace=run.workspace_path,
            workspace_deleted=workspace_text(run) != run.workspace_path,
            trace_id=run.trace_id or work_order.trace_id,
            loop_result=common_pb2.LoopResult.Name(run.loop_result).removeprefix("LOOP_RESULT_")
            if run.loop_result
            else "",
            stop_reason=run.stop_reason,
            tokens=run.tokens.total,
            cost_usd=run.cost_usd,
        )
        out.update(_delivery_json(run))
        # Shown in every status, so an explicit `sandbox: off` never goes unnoticed.
        out["sandbox"] = sandbox_name(run.harness.sandbox)
    out["run_dir"] = str(agentgate_home() / "runs" / work_order.run_id)
    return out


def follow(client: AgentGateClient, work_order_id: str, json_lines: bool, quiet: bool, after_seq: int = 0) -> None:
    """Prints the events of a work order until its run ends."""
    import grpc

    from agentgate.client.render import event_line
    from agentgate.common.messages import to_dict

    try:
        if quiet:
            for _ in client.events(work_order_id=work_order_id, after_seq=after_seq):
                pass
            return
        with console().status("waiting for events…") as status:
            for event in client.events(work_order_id=work_order_id, after_seq=after_seq):
                if json_lines:
                    print(json.dumps(to_dict(event)), flush=True)
                    continue
                console().print(event_line(event))
                if event.iteration:
                    status.update(f"iteration {event.iteration} · {event.type}")
    except grpc.RpcError as exc:
        raise unreachable(exc) from None


@app.command()
def watch(
    ident: Annotated[str, typer.Argument(metavar="ID", help="Work order or run id.")],
    json_output: Annotated[bool, typer.Option("--json", help="One event a line, as JSON.")] = False,
    after_seq: Annotated[int, typer.Option("--after-seq", help="Only events after this seq.")] = 0,
) -> None:
    """Print a work order's events, replayed then live, until its run ends."""
    import grpc

    with open_client() as client:
        try:
            work_order_id = resolve_work_order_id(client, ident)
            client.work_order(work_order_id)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise fail(f"no work order {ident}") from None
            raise unreachable(exc) from None
        follow(client, work_order_id, json_lines=json_output, quiet=False, after_seq=after_seq)


@app.command()
def status(
    ident: Annotated[str, typer.Argument(metavar="ID", help="Work order or run id.")],
    json_output: JsonFlag = False,
) -> None:
    """Show a work order and its run."""
    import grpc

    with open_client() as client:
        try:
            work_order = client.work_order(resolve_work_order_id(client, ident))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise fail(f"no work order {ident}") from None
            raise unreachable(exc) from None
        result = result_json(client, work_order)
        if json_output:
            print(json.dumps(result))
            return
        for key, value in result.items():
            if value in (None, "", 0):
                continue
            if piped():  # as on a terminal, without bold and without wrapping long values
                print(f"{key:<14} {value}")
            else:
                console().print(f"[bold]{key:<14}[/bold] {value}")


@app.command(name="list")
def list_(
    status_filter: Annotated[
        str | None, typer.Option("--status", help="Only this status: pending, running, succeeded, ...")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    json_output: JsonFlag = False,
) -> None:
    """List work orders, newest first."""
    import grpc

    from agentgate.client.render import work_order_summary
    from agentgate.v1 import common_pb2

    statuses = []
    if status_filter:
        name = f"WORK_ORDER_STATUS_{status_filter.upper()}"
        if name not in common_pb2.WorkOrderStatus.keys():
            raise fail(f"--status: unknown status {status_filter!r}", EXIT_USAGE)
        statuses.append(common_pb2.WorkOrderStatus.Value(name))
    with open_client() as client:
        try:
            work_orders = client.work_orders(statuses, limit)
        except grpc.RpcError as exc:
            raise unreachable(exc) from None
    rows = [work_order_summary(wo) for wo in work_orders]
    if json_output:
        print(json.dumps(rows))
        return
    cells = [(row["work_order_id"], row["run_id"], row["status"], row["created_at"][:19], row["task"]) for row in rows]
    if piped():
        # One work order a line, tab-separated, no header: what `cut` and `awk` read.
        for line in cells:
            print("\t".join(cell.replace("\t", " ") for cell in line))
        return
    from rich.table import Table

    table = Table("work order", "run", "status", "created", "task")
    for line in cells:
        table.add_row(*line)
    console().print(table)


@app.command()
def cancel(
    ident: Annotated[str, typer.Argument(metavar="ID", help="Work order id.")],
    json_output: JsonFlag = False,
) -> None:
    """Cancel a work order: a waiting one at once, a running one through its worker."""
    import grpc

    from agentgate.client.render import status_name, work_order_summary

    with open_client() as client:
        try:
            work_order = client.cancel(ident, reason="canceled from the CLI")
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                raise fail(exc.details() or exc.code().name) from None
            raise unreachable(exc) from None
    if json_output:
        print(json.dumps(work_order_summary(work_order)))
    else:
        console().print(f"{work_order.id}: {status_name(work_order.status)}")
