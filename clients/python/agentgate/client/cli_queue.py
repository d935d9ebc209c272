"""`agentgate queue stats` and `agentgate queue position ID [--watch]`.

grpc and the queue stubs load inside the commands, so other commands do not pay for them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from agentgate.client.cli_shared import JsonFlag, console, fail, open_client, resolve_work_order_id, unreachable

if TYPE_CHECKING:
    from agentgate.client.sync_client import AgentGateClient
    from agentgate.v1 import queue_pb2

app = typer.Typer(help="The queue: its counts and limits, and where a work order stands.", no_args_is_help=True)


def stats_json(stats: queue_pb2.GetQueueStatsResponse) -> dict[str, object]:
    """`queue stats --json`: counts, limits, whether it accepts work, average wait (null
    until a work order has been leased)."""
    return {
        "waiting": stats.waiting,
        "running": stats.running,
        "max_concurrent": stats.max_concurrent,
        "max_queue_size": stats.max_queue_size,
        "accepting": stats.accepting,
        "average_wait_seconds": (
            round(stats.average_wait_seconds, 3) if stats.HasField("average_wait_seconds") else None
        ),
    }


def position_json(where: queue_pb2.GetPositionResponse) -> dict[str, object]:
    """`queue position --json`: one position (estimate null when unknown)."""
    from agentgate.common.timeutil import iso

    return {
        "work_order_id": where.work_order_id,
        "position": where.position,
        "ahead": where.ahead,
        "state": where.state,
        "enqueued_at": iso(where.enqueued_at),
        "estimated_wait_seconds": (
            round(where.estimated_wait_seconds, 3) if where.HasField("estimated_wait_seconds") else None
        ),
    }


def position_line(where: queue_pb2.GetPositionResponse) -> str:
    """One line for a person: `wo-…: position 3 (2 ahead), about 40s` or the state."""
    if where.state != "waiting":
        return f"{where.work_order_id}: {where.state}"
    line = f"{where.work_order_id}: position {where.position} ({where.ahead} ahead)"
    if where.HasField("estimated_wait_seconds"):
        line += f", estimated wait {_duration(where.estimated_wait_seconds)}"
    return line


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@app.command()
def stats(json_output: JsonFlag = False) -> None:
    """Waiting and running counts, limits, whether submits are accepted, average wait, and
    the disk used under $AGENTGATE_HOME."""
    import grpc

    from agentgate.client.housekeeping import disk_line, disk_usage

    with open_client() as client:
        try:
            found = client.queue_stats()
        except grpc.RpcError as exc:
            raise unreachable(exc) from None
        usage = disk_usage(client.workspace, client.persistence)
    out = stats_json(found)
    out["disk_bytes"] = usage
    if json_output:
        print(json.dumps(out))
        return
    wait = out["average_wait_seconds"]
    console().print(
        f"waiting {found.waiting}/{found.max_queue_size}, running {found.running}/{found.max_concurrent}, "
        f"{'accepting' if found.accepting else 'FULL (refusing submits)'}, "
        f"average wait {_duration(wait) if isinstance(wait, float) else 'unknown'}"
    )
    console().print(disk_line(usage))


@app.command()
def position(
    ident: Annotated[str, typer.Argument(metavar="ID", help="Work order or run id.")],
    watch: Annotated[
        bool, typer.Option("--watch", help="Print every change until the work order starts or ends.")
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Where a work order stands: position 1 = next, 0 = running or ended."""
    import grpc

    def show(where: queue_pb2.GetPositionResponse) -> None:
        if json_output:
            print(json.dumps(position_json(where)), flush=True)
        else:
            console().print(position_line(where))

    with open_client() as client:
        try:
            work_order_id = resolve_work_order_id(client, ident)
            if not watch:
                show(client.position(work_order_id))
                return
            _watch(client, work_order_id, show)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise fail(exc.details() or exc.code().name) from None
            raise unreachable(exc) from None


def _watch(
    client: AgentGateClient, work_order_id: str, show: Callable[[queue_pb2.GetPositionResponse], None]
) -> None:
    """Streams positions; reconnects when the queue restarts (the first message after a
    reconnect repeats the current position, so an unchanged one is not printed again)."""
    import grpc

    from agentgate.client.shared import reconnect_delay, should_reconnect

    last: tuple[int, int, str] | None = None
    attempt = 0
    while True:
        try:
            for where in client.watch_position(work_order_id):
                attempt = 0
                key = (where.position, where.ahead, where.state)
                if key != last:
                    last = key
                    show(where)
            return
        except grpc.RpcError as exc:
            attempt += 1
            if not should_reconnect(exc, attempt):
                raise
            time.sleep(reconnect_delay(attempt))
