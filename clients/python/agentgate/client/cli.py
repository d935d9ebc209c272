"""The `agentgate` command line."""

from __future__ import annotations

import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.table import Table

from agentgate.client.cli_delivery import (
    AgentTimeoutOpt,
    DraftPrOpt,
    GitHubModeOpt,
    GitHubOpt,
    GitModeOpt,
    MaxAttemptsOpt,
    RetryPresetOpt,
    delivery_flags,
    delivery_json,
)
from agentgate.client.demo import DEMO_PROMPT, make_demo_project
from agentgate.client.render import (
    event_line,
    run_result_name,
    run_state_name,
    status_name,
    work_order_summary,
)
from agentgate.client.spec_builder import UsageError, build_spec
from agentgate.client.supervisor import Supervisor, check_health, queue_limits
from agentgate.client.sync_client import AgentGateClient, SubmitError
from agentgate.common.config import ConfigError, agentgate_home, service_address
from agentgate.common.messages import to_dict
from agentgate.harness.statuses import TERMINAL_STATUSES
from agentgate.v1 import common_pb2

app = typer.Typer(help="AgentGate: run AI coding agents safely.", no_args_is_help=True, add_completion=False)
console = Console()
err_console = Console(stderr=True)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _unreachable(exc: grpc.RpcError) -> typer.Exit:
    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:  # type: ignore[attr-defined]
        return _fail(f"UNAUTHENTICATED: {exc.details()} — set AGENTGATE_TOKEN to the suite's token", EXIT_UNREACHABLE)  # type: ignore[attr-defined]
    return _fail(
        f"{exc.code().name}: {exc.details()} — is the suite running? (agentgate up --detach)",  # type: ignore[attr-defined]
        EXIT_UNREACHABLE,
    )


def _client() -> AgentGateClient:
    try:
        return AgentGateClient()
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None


# -- the suite -------------------------------------------------------------------


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
) -> None:
    """Start the services as processes (--workers orchestrators) and wait until all serve.

    Queue, workspace, persistence and one orchestrator per worker. Services already
    running are left alone and only missing ones start, so `up --detach` is idempotent
    and brings back one that died, with the settings of the last `up`."""
    supervisor = Supervisor()
    supervisor.configure(
        workers=workers,
        max_concurrent_runs=max_concurrent_runs,
        max_concurrent=max_concurrent,
        max_queue_size=max_queue_size,
    )
    started = _start_missing(supervisor, timeout)
    if "queue" not in started and (max_concurrent or max_queue_size):
        _warn_running_queue_limits(max_concurrent, max_queue_size)
    if detach:
        return
    console.print("Services running; Ctrl-C stops them.")
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
                err_console.print(f"[yellow]{name} exited; restarting it[/yellow]")
                supervisor.start(name)
                started.append(name)
    for name in supervisor.stop_order(supervisor.known_instances()):
        supervisor.stop(name)


def _start_missing(supervisor: Supervisor, timeout: float) -> list[str]:
    """Starts the instances that are not serving (and stops workers above `--workers`);
    returns the names started. Exits on failure."""
    try:
        names = supervisor.instance_names()
        for name in names:
            supervisor.address(name)
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    for name in supervisor.stop_order(supervisor.surplus_workers()):
        supervisor.stop(name)
        console.print(f"{name:<16} stopped (above --workers)")
    started: list[str] = []
    for name in names:
        if check_health(supervisor.address(name), timeout=1.0) == "SERVING":
            continue
        if supervisor.read_pid(name) is not None:
            supervisor.stop(name)  # alive but not serving: a stale process
        supervisor.start(name)
        started.append(name)
    health = supervisor.wait_serving(names, timeout=timeout)
    for name in supervisor.display_order(names):
        mark = "[green]SERVING[/green]" if health[name] == "SERVING" else f"[red]{health[name]}[/red]"
        console.print(f"{name:<16} {supervisor.address(name) or '-':<22} {mark}")
    bad = [name for name, value in health.items() if value != "SERVING"]
    if bad:
        for name in supervisor.stop_order(started):
            supervisor.stop(name)
        raise _fail(f"not serving: {', '.join(bad)}; see {supervisor.log_dir}/<service>.log")
    return started


def _warn_running_queue_limits(max_concurrent: int | None, max_queue_size: int | None) -> None:
    """The queue was already running: say so when its limits differ from those asked for."""
    limits = queue_limits(service_address("queue"))
    if limits is None:
        return
    asked = (max_concurrent or limits[0], max_queue_size or limits[1])
    if asked != limits:
        err_console.print(
            f"[yellow]the queue already runs with max_concurrent {limits[0]}, max_queue_size {limits[1]}; "
            "it keeps them until it restarts (agentgate down, then up)[/yellow]"
        )


@app.command()
def down() -> None:
    """Stop the services started by `agentgate up --detach`."""
    supervisor = Supervisor()
    for name in supervisor.stop_order(supervisor.known_instances()):
        stopped = supervisor.stop(name)
        console.print(f"{name:<16} {'stopped' if stopped else 'not running'}")
    supervisor.forget_config()


@app.command()
def health(json_output: JsonFlag = False) -> None:
    """Check every service's health (each orchestrator worker too); exit 1 unless all are SERVING."""
    rows = Supervisor().status()
    if json_output:
        print(json.dumps({row.name: {"address": row.address, "status": row.health} for row in rows}))
    else:
        for row in rows:
            console.print(f"{row.name:<16} {row.address:<22} {row.health}")
    if any(row.health != "SERVING" for row in rows):
        raise typer.Exit(EXIT_FAILED)


@app.command()
def ps(json_output: JsonFlag = False) -> None:
    """List each service (each orchestrator worker apart) with its pid, address and health."""
    rows = Supervisor().status()
    if json_output:
        print(json.dumps([row.__dict__ for row in rows]))
        return
    table = Table("service", "pid", "address", "health")
    for row in rows:
        table.add_row(row.name, str(row.pid or "-"), row.address, row.health)
    console.print(table)


# -- work orders -----------------------------------------------------------------

PathOpt = Annotated[Path | None, typer.Option("--path", help="Local directory to work on (copied, never written).")]
GitUrlOpt = Annotated[str | None, typer.Option("--git-url", help="Git URL to clone instead of --path.")]
RefOpt = Annotated[str | None, typer.Option("--ref", help="Branch, tag or commit of --git-url or --github.")]
IncludeIgnoredOpt = Annotated[
    bool, typer.Option("--include-ignored", help="With --path: also copy the files git ignores (node_modules, ...).")
]
PromptOpt = Annotated[str | None, typer.Option("--prompt", help="The task.")]
PromptFileOpt = Annotated[Path | None, typer.Option("--prompt-file", help="Read the task from a file.")]
AgentOpt = Annotated[str, typer.Option("--agent", help="Agent driver: command, scripted, ...")]
AgentOptionOpt = Annotated[
    list[str] | None, typer.Option("--agent-option", help="Driver option KEY=VALUE (repeatable).")
]
MaxIterOpt = Annotated[int | None, typer.Option("--max-iterations", help="Iterations at most.")]
ProfileOpt = Annotated[str | None, typer.Option("--profile", help="Harness profile: default, fast, reliable, ...")]
LoopStrategyOpt = Annotated[str | None, typer.Option("--loop-strategy", help="Loop strategy: fixed, hybrid or ralph.")]
PriorityOpt = Annotated[int, typer.Option("--priority", help="Higher runs first.")]
MaxWaitOpt = Annotated[int, typer.Option("--max-wait", help="Seconds it may wait in the queue (0 = no limit).")]


def _submit(client: AgentGateClient, **flags: object) -> common_pb2.WorkOrder:
    try:
        spec = build_spec(**flags)  # type: ignore[arg-type]
    except UsageError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    try:
        work_order, _ = client.submit(spec)
    except SubmitError as exc:
        for violation in exc.violations or []:
            err_console.print(f"[red]invalid[/red] {violation.field}: {violation.description}")
        raise _fail(f"work order refused ({exc.code.name}): {exc}", EXIT_USAGE) from None
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:  # type: ignore[attr-defined]
            # e.g. the agent's CLI is not installed where the services run.
            raise _fail(f"work order refused (FAILED_PRECONDITION): {exc.details()}", EXIT_USAGE) from None  # type: ignore[attr-defined]
        raise _unreachable(exc) from None
    return work_order


def _result_json(client: AgentGateClient, work_order: common_pb2.WorkOrder) -> dict[str, object]:
    out: dict[str, object] = work_order_summary(work_order)
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
            trace_id=run.trace_id or work_order.trace_id,
            loop_result=common_pb2.LoopResult.Name(run.loop_result).removeprefix("LOOP_RESULT_")
            if run.loop_result
            else "",
            stop_reason=run.stop_reason,
            tokens=run.tokens.total,
            cost_usd=run.cost_usd,
        )
        out.update(delivery_json(run))
    out["run_dir"] = str(agentgate_home() / "runs" / work_order.run_id)
    return out


@app.command()
def submit(
    path: PathOpt = None,
    git_url: GitUrlOpt = None,
    ref: RefOpt = None,
    include_ignored: IncludeIgnoredOpt = False,
    prompt: PromptOpt = None,
    prompt_file: PromptFileOpt = None,
    agent: AgentOpt = "",
    agent_option: AgentOptionOpt = None,
    max_iterations: MaxIterOpt = None,
    priority: PriorityOpt = 0,
    max_wait: MaxWaitOpt = 0,
    github: GitHubOpt = None,
    git_mode: GitModeOpt = None,
    github_mode: GitHubModeOpt = None,
    draft_pr: DraftPrOpt = False,
    retry_preset: RetryPresetOpt = None,
    max_attempts: MaxAttemptsOpt = None,
    agent_timeout: AgentTimeoutOpt = None,
    profile: ProfileOpt = None,
    loop_strategy: LoopStrategyOpt = None,
    json_output: JsonFlag = False,
) -> None:
    """Submit a work order and return at once."""
    with _client() as client:
        work_order = _submit(
            client, prompt=prompt, prompt_file=prompt_file, path=path, git_url=git_url, ref=ref, agent=agent,
            include_ignored=include_ignored,
            agent_options=agent_option or [], max_iterations=max_iterations, priority=priority, max_wait=max_wait,
            **delivery_flags(github, git_mode, github_mode, draft_pr, retry_preset, max_attempts, agent_timeout),
            profile=profile, loop_strategy=loop_strategy,
        )
        if json_output:
            print(json.dumps(work_order_summary(work_order)))
        else:
            console.print(f"submitted [bold]{work_order.id}[/bold] (run {work_order.run_id})")


def _follow(client: AgentGateClient, work_order_id: str, json_lines: bool, quiet: bool, after_seq: int = 0) -> None:
    """Prints the events of a work order until its run ends."""
    try:
        if quiet:
            for _ in client.events(work_order_id=work_order_id, after_seq=after_seq):
                pass
            return
        with console.status("waiting for events…") as status:
            for event in client.events(work_order_id=work_order_id, after_seq=after_seq):
                if json_lines:
                    print(json.dumps(to_dict(event)), flush=True)
                    continue
                console.print(event_line(event))
                if event.iteration:
                    status.update(f"iteration {event.iteration} · {event.type}")
    except grpc.RpcError as exc:
        raise _unreachable(exc) from None


def _final_work_order(client: AgentGateClient, work_order_id: str, wait: float = 30.0) -> common_pb2.WorkOrder:
    """The work order once the queue has recorded its end (the worker completes it just
    after the run's last event)."""
    deadline = time.monotonic() + wait
    while True:
        work_order = client.work_order(work_order_id)
        if work_order.status in TERMINAL_STATUSES or time.monotonic() > deadline:
            return work_order
        time.sleep(0.1)


@app.command(name="exec")
def exec_(
    path: PathOpt = None,
    git_url: GitUrlOpt = None,
    ref: RefOpt = None,
    include_ignored: IncludeIgnoredOpt = False,
    prompt: PromptOpt = None,
    prompt_file: PromptFileOpt = None,
    agent: AgentOpt = "",
    agent_option: AgentOptionOpt = None,
    max_iterations: MaxIterOpt = None,
    priority: PriorityOpt = 0,
    max_wait: MaxWaitOpt = 0,
    github: GitHubOpt = None,
    git_mode: GitModeOpt = None,
    github_mode: GitHubModeOpt = None,
    draft_pr: DraftPrOpt = False,
    retry_preset: RetryPresetOpt = None,
    max_attempts: MaxAttemptsOpt = None,
    agent_timeout: AgentTimeoutOpt = None,
    profile: ProfileOpt = None,
    loop_strategy: LoopStrategyOpt = None,
    json_output: JsonFlag = False,
) -> None:
    """Submit a work order and follow it to the end; exit 0 only when it succeeded."""
    with _client() as client:
        work_order = _submit(
            client, prompt=prompt, prompt_file=prompt_file, path=path, git_url=git_url, ref=ref, agent=agent,
            include_ignored=include_ignored,
            agent_options=agent_option or [], max_iterations=max_iterations, priority=priority, max_wait=max_wait,
            **delivery_flags(github, git_mode, github_mode, draft_pr, retry_preset, max_attempts, agent_timeout),
            profile=profile, loop_strategy=loop_strategy,
        )
        if not json_output:
            console.print(f"submitted [bold]{work_order.id}[/bold] (run {work_order.run_id})")
        _follow(client, work_order.id, json_lines=False, quiet=json_output)
        final = _final_work_order(client, work_order.id)
        _print_outcome(client, final, json_output)
        if final.status != common_pb2.WORK_ORDER_STATUS_SUCCEEDED:
            raise typer.Exit(EXIT_FAILED)


def _print_outcome(client: AgentGateClient, work_order: common_pb2.WorkOrder, json_output: bool) -> None:
    result = _result_json(client, work_order)
    if json_output:
        print(json.dumps(result))
        return
    colour = "green" if work_order.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED else "red"
    console.print(f"[bold {colour}]{status_name(work_order.status)}[/bold {colour}] {work_order.id}")
    if result.get("error"):
        console.print(f"error: {result['error']}")
    console.print(f"run files: {result['run_dir']}")


def _resolve_work_order_id(client: AgentGateClient, ident: str) -> str:
    """A work order id, or the work order of a run id."""
    if ident.startswith("run-"):
        run = client.run(ident)
        if run is None:
            raise _fail(f"no run {ident}", EXIT_FAILED)
        return run.work_order_id
    return ident


@app.command()
def watch(
    ident: Annotated[str, typer.Argument(metavar="ID", help="Work order or run id.")],
    json_output: Annotated[bool, typer.Option("--json", help="One event a line, as JSON.")] = False,
    after_seq: Annotated[int, typer.Option("--after-seq", help="Only events after this seq.")] = 0,
) -> None:
    """Print a work order's events, replayed then live, until its run ends."""
    with _client() as client:
        try:
            work_order_id = _resolve_work_order_id(client, ident)
            client.work_order(work_order_id)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                raise _fail(f"no work order {ident}") from None
            raise _unreachable(exc) from None
        _follow(client, work_order_id, json_lines=json_output, quiet=False, after_seq=after_seq)


@app.command()
def status(
    ident: Annotated[str, typer.Argument(metavar="ID", help="Work order or run id.")],
    json_output: JsonFlag = False,
) -> None:
    """Show a work order and its run."""
    with _client() as client:
        try:
            work_order = client.work_order(_resolve_work_order_id(client, ident))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                raise _fail(f"no work order {ident}") from None
            raise _unreachable(exc) from None
        result = _result_json(client, work_order)
        if json_output:
            print(json.dumps(result))
            return
        for key, value in result.items():
            if value not in (None, "", 0):
                console.print(f"[bold]{key:<14}[/bold] {value}")


@app.command(name="list")
def list_(
    status_filter: Annotated[
        str | None, typer.Option("--status", help="Only this status: pending, running, succeeded, ...")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    json_output: JsonFlag = False,
) -> None:
    """List work orders, newest first."""
    statuses = []
    if status_filter:
        name = f"WORK_ORDER_STATUS_{status_filter.upper()}"
        if name not in common_pb2.WorkOrderStatus.keys():
            raise _fail(f"--status: unknown status {status_filter!r}", EXIT_USAGE)
        statuses.append(common_pb2.WorkOrderStatus.Value(name))
    with _client() as client:
        try:
            work_orders = client.work_orders(statuses, limit)
        except grpc.RpcError as exc:
            raise _unreachable(exc) from None
    rows = [work_order_summary(wo) for wo in work_orders]
    if json_output:
        print(json.dumps(rows))
        return
    table = Table("work order", "run", "status", "created", "task")
    for row in rows:
        table.add_row(row["work_order_id"], row["run_id"], row["status"], row["created_at"][:19], row["task"])
    console.print(table)


@app.command()
def cancel(
    ident: Annotated[str, typer.Argument(metavar="ID", help="Work order id.")],
    json_output: JsonFlag = False,
) -> None:
    """Cancel a work order: a waiting one at once, a running one through its worker."""
    with _client() as client:
        try:
            work_order = client.cancel(ident, reason="canceled from the CLI")
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):  # type: ignore[attr-defined]
                raise _fail(exc.details()) from None  # type: ignore[attr-defined]
            raise _unreachable(exc) from None
    if json_output:
        print(json.dumps(work_order_summary(work_order)))
    else:
        console.print(f"{work_order.id}: {status_name(work_order.status)}")


@app.command()
def demo(
    keep: Annotated[bool, typer.Option("--keep", help="Leave services started for the demo running.")] = False,
) -> None:
    """Run a scripted agent on a small buggy project: it fails verification in iteration 1 and
    fixes the bug in iteration 2."""
    supervisor = Supervisor()
    root = Path(tempfile.mkdtemp(prefix="agentgate-demo-"))
    project, script = make_demo_project(root)
    console.print(f"[bold]AgentGate demo[/bold]: project {project}")
    started = _start_missing(supervisor, timeout=30.0)
    try:
        with _client() as client:
            work_order = _submit(
                client, prompt=DEMO_PROMPT, prompt_file=None, path=project, git_url=None, ref=None,
                agent="scripted", agent_options=[f"script={script}"], max_iterations=3,
            )
            console.print(f"submitted [bold]{work_order.id}[/bold] (run {work_order.run_id})")
            _follow(client, work_order.id, json_lines=False, quiet=False)
            final = _final_work_order(client, work_order.id)
            _print_outcome(client, final, json_output=False)
            run = client.run(final.run_id)
            if run is not None:
                console.print(f"iterations: {run.iteration_count}; workspace: {run.workspace_path}")
            succeeded = final.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED
    finally:
        if not keep:
            for name in supervisor.stop_order(started):
                supervisor.stop(name)
    if not succeeded:
        raise typer.Exit(EXIT_FAILED)


# Sub-command modules register themselves on `app` when imported (after it exists).
from agentgate.client import (  # noqa: E402
    cli_agents,  # noqa: F401 - registers `agents`
    cli_profiles,  # noqa: F401 - registers `profiles list|show|validate`
    cli_queue,  # noqa: F401 - registers `queue stats|position`
    cli_runs,  # noqa: F401 - registers `runs show|iterations|agent|verification|list`, `logs`
)


def main() -> None:
    """Entry point of the `agentgate` command."""
    app()


if __name__ == "__main__":
    main()
