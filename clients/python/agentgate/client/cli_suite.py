"""`agentgate up|down|health|ps`: starting, stopping and checking the service processes.

The supervisor (and with it grpc) loads inside the commands, so other commands do not pay
for it at start-up.
"""

from __future__ import annotations

import json
import signal
import time
from typing import TYPE_CHECKING, Annotated

import typer

from agentgate.client.cli_shared import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    JsonFlag,
    console,
    err_console,
    fail,
    open_client,
)

if TYPE_CHECKING:
    from agentgate.client.supervisor import Supervisor

app = typer.Typer()


@app.command()
def up(
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Leave the services running and return.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every service to serve.")] = 30.0,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Orchestrator processes (default: as last time, else 1).")
    ] = None,
    max_concurrent_runs: Annotated[
        int | None, typer.Option("--max-concurrent-runs", min=1, help="Runs at once per worker (default 2).")
    ] = None,
    max_concurrent: Annotated[
        int | None, typer.Option("--max-concurrent", min=1, help="Runs at once across all workers (default 2).")
    ] = None,
    max_queue_size: Annotated[
        int | None, typer.Option("--max-queue-size", min=1, help="Waiting work orders at most (default 1000).")
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="postgresql://... to keep the queue's and persistence's state in PostgreSQL"
            " (default: SQLite files in the home folder; docs/deployment.md).",
        ),
    ] = None,
) -> None:
    """Start the services as processes (--workers orchestrators) and wait until all serve.

    Queue, workspace, persistence, one orchestrator per worker and the dashboard gateway
    (docs/dashboard.md). Services already
    running are left alone and only missing ones start, so `up --detach` is idempotent
    and brings back one that died, with the settings of the last `up`."""
    from agentgate.client.supervisor import Supervisor

    supervisor = Supervisor()
    supervisor.configure(
        workers=workers,
        max_concurrent_runs=max_concurrent_runs,
        max_concurrent=max_concurrent,
        max_queue_size=max_queue_size,
        database_url=database_url,
    )
    started = start_missing(supervisor, timeout)
    if "queue" not in started and (max_concurrent or max_queue_size):
        _warn_running_queue_limits(max_concurrent, max_queue_size)
    if detach:
        return
    console().print("Services running; Ctrl-C stops them.")
    stop = {"now": False}

    def _on_signal(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    # Supervise: a service that dies is started again.
    while not stop["now"]:
        time.sleep(0.5)
        for name in supervisor.instance_names():
            if not stop["now"] and supervisor.read_pid(name) is None:
                err_console().print(f"[yellow]{name} exited; restarting it[/yellow]")
                supervisor.start(name)
                started.append(name)
    for name in supervisor.stop_order(supervisor.known_instances()):
        supervisor.stop(name)


def start_missing(supervisor: Supervisor, timeout: float) -> list[str]:
    """Starts the instances that are not serving (and stops workers above `--workers`);
    returns the names started. Exits on failure."""
    from agentgate.common.config import ConfigError

    try:
        names = supervisor.instance_names()
        for name in names:
            supervisor.address(name)
    except ConfigError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    for name in supervisor.stop_order(supervisor.surplus_workers()):
        supervisor.stop(name)
        console().print(f"{name:<16} stopped (above --workers)")
    started: list[str] = []
    for name in names:
        if supervisor.health(name, timeout=1.0) == "SERVING":
            continue
        if supervisor.read_pid(name) is not None:
            supervisor.stop(name)  # alive but not serving: a stale process
        supervisor.start(name)
        started.append(name)
    health = supervisor.wait_serving(names, timeout=timeout)
    for name in supervisor.display_order(names):
        mark = "[green]SERVING[/green]" if health[name] == "SERVING" else f"[red]{health[name]}[/red]"
        console().print(f"{name:<16} {supervisor.address(name) or '-':<22} {mark}")
    bad = [name for name, value in health.items() if value != "SERVING"]
    if bad:
        for name in supervisor.stop_order(started):
            supervisor.stop(name)
        raise fail(f"not serving: {', '.join(bad)}; see {supervisor.log_dir}/<service>.log")
    return started


def _warn_running_queue_limits(max_concurrent: int | None, max_queue_size: int | None) -> None:
    """The queue was already running: say so when its limits differ from those asked for."""
    from agentgate.client.supervisor import queue_limits
    from agentgate.common.config import service_address

    limits = queue_limits(service_address("queue"))
    if limits is None:
        return
    asked = (max_concurrent or limits[0], max_queue_size or limits[1])
    if asked != limits:
        err_console().print(
            f"[yellow]the queue already runs with max_concurrent {limits[0]}, max_queue_size {limits[1]}; "
            "it keeps them until it restarts (agentgate down, then up)[/yellow]"
        )


@app.command()
def down() -> None:
    """Stop the services started by `agentgate up --detach`."""
    from agentgate.client.supervisor import Supervisor

    supervisor = Supervisor()
    for name in supervisor.stop_order(supervisor.known_instances()):
        stopped = supervisor.stop(name)
        console().print(f"{name:<16} {'stopped' if stopped else 'not running'}")
    supervisor.forget_config()


@app.command()
def health(json_output: JsonFlag = False) -> None:
    """Check every service's health (each orchestrator worker too); exit 1 unless all are SERVING."""
    from agentgate.client.supervisor import Supervisor

    rows = Supervisor().status()
    if json_output:
        print(json.dumps({row.name: {"address": row.address, "status": row.health} for row in rows}))
    else:
        for row in rows:
            console().print(f"{row.name:<16} {row.address:<22} {row.health}")
    if any(row.health != "SERVING" for row in rows):
        raise typer.Exit(EXIT_FAILED)


@app.command()
def ps(json_output: JsonFlag = False) -> None:
    """List each service (each orchestrator worker apart) with its pid, address and health,
    then the disk used under $AGENTGATE_HOME (workspaces, git directories, run files)."""
    from agentgate.client.supervisor import Supervisor

    rows = Supervisor().status()
    if json_output:
        print(json.dumps([row.__dict__ for row in rows]))
        return
    from rich.table import Table

    from agentgate.client.housekeeping import disk_line, disk_usage

    table = Table("service", "pid", "address", "health")
    for row in rows:
        table.add_row(row.name, str(row.pid or "-"), row.address, row.health)
    console().print(table)
    with open_client() as client:
        console().print(disk_line(disk_usage(client.workspace, client.persistence)))


@app.command()
def dashboard(
    open_browser: Annotated[bool, typer.Option("--open", help="Open the URL in the default browser too.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Print a URL that logs a browser in to the dashboard once (docs/dashboard.md).

    The URL carries a one-time code (good for two minutes), not the token: the gateway
    swaps it for a session cookie and redirects to a clean address."""
    import urllib.error

    from agentgate.client.supervisor import gateway_call
    from agentgate.common import security
    from agentgate.common.config import gateway_address

    address = gateway_address()
    token = security.client_token()
    if not token:
        raise fail(f"no token: run `agentgate up` (it makes $AGENTGATE_HOME/auth/token) or set {security.TOKEN_ENV}")
    try:
        code = gateway_call(address, "/auth/code", 5, method="POST", token=token)["code"]
    except urllib.error.HTTPError as exc:
        raise fail(f"the gateway at {address} refused the token ({exc.code}): is it this suite's?") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise fail(f"no dashboard gateway at {address}: start it with `agentgate up`", EXIT_UNREACHABLE) from None
    url = f"http://{address}/login?code={code}"
    if json_output:
        print(json.dumps({"url": url}))
    else:
        console().print(url)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
