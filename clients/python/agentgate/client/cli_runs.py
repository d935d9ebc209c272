"""`agentgate runs show|iterations|agent|verification|list` and `agentgate logs`: what a run
did, read through the persistence service (its index, the run files as fallback), so a
failure can be understood without re-running anything (docs/troubleshooting.md).

The output is shaped by `run_views`; it, grpc and the stubs load inside the commands, so
other commands do not pay for them at start-up.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from agentgate.client.cli_shared import EXIT_USAGE, JsonFlag, console, fail, open_client, unreachable

if TYPE_CHECKING:
    import grpc
    from rich.table import Table

    from agentgate.client.sync_client import AgentGateClient
    from agentgate.v1 import common_pb2

app = typer.Typer(help="What a run did: summary, iterations, agent output, verification reports.", no_args_is_help=True)
#: `agentgate logs`, a top-level command of this group's reads.
logs_app = typer.Typer()

R = TypeVar("R")

RunArg = Annotated[str, typer.Argument(metavar="RUN", help="Run id (run-…) or work order id (wo-…).")]
IterationArg = Annotated[int | None, typer.Argument(metavar="[N]", help="Iteration (default: the last one).")]
IterationOpt = Annotated[int | None, typer.Option("--iteration", "-i", help="Iteration (same as N).")]
TailOpt = Annotated[int, typer.Option("--tail", help="Only the last N lines of each output (0 = all).", min=0)]

DEFAULT_CHECK_TAIL = 20


# -- talking to the services --------------------------------------------------------------


def _rpc_failure(exc: grpc.RpcError, what: str) -> typer.Exit:
    """The exit for a failed call: bad input is a usage error (2), a service that cannot be
    reached exits 3, anything else (NOT_FOUND, …) says what the service said (1)."""
    import grpc

    code = exc.code()
    details = exc.details() or code.name
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return fail(details, EXIT_USAGE)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return unreachable(exc)
    if code == grpc.StatusCode.NOT_FOUND:
        return fail(details or f"{what} not found")
    return fail(f"{code.name}: {details}")


def _call(what: str, fetch: Callable[[], R]) -> R:
    """Runs one client call; a failure ends the command (see `_rpc_failure`)."""
    import grpc

    try:
        return fetch()
    except grpc.RpcError as exc:
        raise _rpc_failure(exc, what) from None


def _run(client: AgentGateClient, ident: str) -> common_pb2.Run:
    """The run named by a run id, or the run of a work order id."""
    run_id = ident
    if not ident.startswith("run-"):
        run_id = _call(f"work order {ident}", lambda: client.work_order(ident)).run_id
    run = _call(f"run {run_id}", lambda: client.run(run_id))
    if run is None:
        raise fail(f"no run {run_id} (not started yet?)")
    return run


def _optional(what: str, fetch: Callable[[], R]) -> R | None:
    """A client call whose NOT_FOUND means "this iteration has none" (None)."""
    import grpc

    try:
        return fetch()
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise _rpc_failure(exc, what) from None


def _per_iteration(
    run: common_pb2.Run, get: Callable[[int], R], list_all: Callable[[], list[R]], last_only: bool
) -> list[R]:
    """The records of a run's iterations, fetched one by one (a list of every agent result
    can be too big for one message), newest only with `last_only`. A run without an
    iteration count (an old folder read from its files) is listed instead."""
    if not run.iteration_count:
        every = _call(f"run {run.id}", list_all)
        return every[-1:] if last_only else every
    numbers = range(run.iteration_count, 0, -1) if last_only else range(1, run.iteration_count + 1)
    found: list[R] = []
    for number in numbers:
        record = _optional(f"run {run.id}", functools.partial(get, number))
        if record is not None:
            found.append(record)
            if last_only:
                break
    return found


def _pick_iteration(argument: int | None, option: int | None) -> int | None:
    if argument is not None and option is not None and argument != option:
        raise fail(f"iteration given twice ({argument} and -i {option})", EXIT_USAGE)
    chosen = argument if argument is not None else option
    if chosen is not None and chosen < 1:
        raise fail("iterations count from 1", EXIT_USAGE)
    return chosen


def _print_rows(rows: list[tuple[str, str]]) -> None:
    width = max((len(key) for key, _ in rows), default=0)
    for key, value in rows:
        console().print(f"[bold]{key:<{width}}[/bold]  ", end="", soft_wrap=True)
        console().print(value, markup=False, highlight=False, soft_wrap=True)


def _line(text: str) -> None:
    """One line of plain text: no markup, no wrapping."""
    console().print(text, markup=False, highlight=False, soft_wrap=True)


def _print_table(table: Table) -> None:
    """A table at the terminal's width; piped or captured, wide enough that file names and
    messages are not cut (rich would assume 80 columns)."""
    if console().is_terminal:
        console().print(table)
    else:
        from rich.console import Console

        Console(width=max(console().width, 200)).print(table)


def _raw(text: str) -> None:
    """Prints agent or check output exactly (no markup, no wrapping)."""
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    sys.stdout.flush()


# -- commands ------------------------------------------------------------------------------


@app.command("show")
def show(ident: RunArg, json_output: JsonFlag = False) -> None:
    """A run: summary, a table of its iterations, and the error with the files to read."""
    from agentgate.client import run_views

    with open_client() as client:
        run = _run(client, ident)
        iterations = _call(f"run {run.id}", lambda: client.iterations(run.id))
    if json_output:
        print(json.dumps(run_views.show_json(run, iterations)))
        return
    _print_rows(run_views.summary_rows(run))
    if iterations:
        _print_table(run_views.iterations_table(iterations))
    for line in run_views.error_lines(run):
        _line(line)


@app.command("iterations")
def iterations(ident: RunArg, json_output: JsonFlag = False) -> None:
    """The iterations of a run (iteration-N.json): agent, verification, timing, error, files."""
    from agentgate.client import run_views
    from agentgate.common.messages import to_dict

    with open_client() as client:
        run = _run(client, ident)
        found = _call(f"run {run.id}", lambda: client.iterations(run.id))
    if json_output:
        print(json.dumps([to_dict(data) for data in found]))
        return
    if not found:
        console().print(f"run {run.id} has no iterations yet")
        return
    _print_table(run_views.iterations_table(found))
    for data in found:
        if data.HasField("decision") and data.decision.reason:
            verdict = "continue" if data.decision.should_continue else "stop"
            _line(f"{data.iteration}: {verdict}: {data.decision.reason}")


@app.command("agent")
def agent(
    ident: RunArg,
    iteration: IterationArg = None,
    iteration_opt: IterationOpt = None,
    tail: TailOpt = 0,
    json_output: JsonFlag = False,
) -> None:
    """The agent result of an iteration (agent-N.json): exit code, tool calls, stdout, stderr."""
    from agentgate.client import run_views
    from agentgate.common.messages import to_dict

    wanted = _pick_iteration(iteration, iteration_opt)
    with open_client() as client:
        run = _run(client, ident)
        if wanted is None:
            results = _per_iteration(
                run, lambda n: client.agent_result(run.id, n), lambda: client.agent_results(run.id), last_only=True
            )
            if not results:
                raise fail(f"run {run.id} has no agent result yet")
            result = results[-1]
        else:
            number = wanted
            result = _call(f"agent-{number}.json", lambda: client.agent_result(run.id, number))
    if json_output:
        print(json.dumps(to_dict(result)))
        return
    console().print(f"[bold]agent-{result.iteration}.json[/bold] of {run.id}")
    _print_rows(run_views.agent_header_rows(result))
    if result.tool_calls:
        _print_table(run_views.tool_calls_table(result))
    for name in ("stdout", "stderr"):
        text = getattr(result, name)
        console().print(f"[bold]--- {name}{f' (last {tail} lines)' if tail else ''} ---[/bold]")
        if text:
            _raw(run_views.tail_lines(text, tail))


@app.command("verification")
def verification(
    ident: RunArg,
    iteration: IterationArg = None,
    iteration_opt: IterationOpt = None,
    tail: Annotated[int, typer.Option("--tail", help="Lines of each failed check's output (0 = all).", min=0)] = (
        DEFAULT_CHECK_TAIL
    ),
    json_output: JsonFlag = False,
) -> None:
    """The verification report of an iteration (verification-N.json): levels and checks,
    and the output of the failed ones."""
    from agentgate.client import run_views
    from agentgate.common.messages import to_dict

    wanted = _pick_iteration(iteration, iteration_opt)
    with open_client() as client:
        run = _run(client, ident)
        if wanted is None:
            reports = _per_iteration(
                run,
                lambda n: client.verification_report(run.id, n),
                lambda: client.verification_reports(run.id),
                last_only=True,
            )
            if not reports:
                raise fail(f"run {run.id} has no verification report (was the agent's work ever verified?)")
            report = reports[-1]
        else:
            number = wanted
            report = _call(f"verification-{number}.json", lambda: client.verification_report(run.id, number))
    if json_output:
        print(json.dumps(to_dict(report)))
        return
    verdict = "[green]PASSED[/green]" if report.passed else "[red]FAILED[/red]"
    console().print(f"[bold]verification-{report.iteration}.json[/bold] of {run.id}: {verdict}")
    rows = [
        ("summary", report.summary),
        ("snapshot", report.snapshot_commit),
        ("gate plan", report.gate_plan_source),
        ("levels run", ", ".join(report.levels_run)),
        ("skipped", ", ".join(report.skipped_levels)),
        ("duration", run_views.seconds(report.duration_seconds)),
    ]
    _print_rows([(key, value) for key, value in rows if value])
    _print_table(run_views.checks_table(report))
    for line in run_views.failed_check_outputs(report, tail):
        _line(line)


@app.command("list")
def list_runs(
    work_order: Annotated[str, typer.Option("--work-order", help="Only the runs of this work order.")] = "",
    state: Annotated[
        list[str] | None, typer.Option("--state", help="Only runs in this state: failed, succeeded, … (repeatable).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many.", min=1)] = 50,
    json_output: JsonFlag = False,
) -> None:
    """Runs, newest first, from the persistence index."""
    from rich.table import Table

    from agentgate.client import run_views
    from agentgate.client.render import run_result_name, run_state_name
    from agentgate.common.messages import to_dict
    from agentgate.common.timeutil import iso
    from agentgate.v1 import common_pb2, persistence_pb2

    states: list[common_pb2.RunState.ValueType] = []
    for name in state or []:
        key = f"RUN_STATE_{name.upper()}"
        if key not in common_pb2.RunState.keys() or key == "RUN_STATE_UNSPECIFIED":
            raise fail(f"--state: unknown run state {name!r}", EXIT_USAGE)
        states.append(common_pb2.RunState.Value(key))
    found: list[common_pb2.Run] = []
    token = ""
    with open_client() as client:
        while len(found) < limit:
            request = persistence_pb2.ListRunsRequest(
                work_order_id=work_order, states=states, page_size=min(limit - len(found), 1000), page_token=token
            )
            response = _call("runs", functools.partial(client.persistence.ListRuns, request, timeout=30))
            found.extend(response.runs)
            token = response.next_page_token
            if not token:
                break
    if json_output:
        print(json.dumps([to_dict(run) for run in found]))
        return
    table = Table("run", "work order", "state", "result", "iterations", "created", "error")
    for run in found:
        table.add_row(
            run.id,
            run.work_order_id,
            run_state_name(run.state),
            run_result_name(run.result),
            str(run.iteration_count),
            iso(run.created_at)[:19],
            run_views.shorten(run.error, 60),
        )
    _print_table(table)


@logs_app.command()
def logs(
    ident: RunArg,
    iteration_opt: IterationOpt = None,
    stderr: Annotated[bool, typer.Option("--stderr", help="The agent's stderr instead of its stdout.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """The agent's stdout (or --stderr) of one iteration, or of every iteration in turn."""
    from agentgate.client import run_views

    wanted = _pick_iteration(None, iteration_opt)
    with open_client() as client:
        run = _run(client, ident)
        if wanted is None:
            results = _per_iteration(
                run, lambda n: client.agent_result(run.id, n), lambda: client.agent_results(run.id), last_only=False
            )
        else:
            number = wanted
            results = [_call(f"agent-{number}.json", lambda: client.agent_result(run.id, number))]
    if json_output:
        print(json.dumps(run_views.logs_json(results, stderr)))
        return
    name = "stderr" if stderr else "stdout"
    for result in results:
        if len(results) > 1 or wanted is None:
            console().print(f"[bold]=== iteration {result.iteration} {name} ===[/bold]")
        _raw(getattr(result, name))
