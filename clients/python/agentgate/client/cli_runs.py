"""`agentgate runs show|iterations|agent|verification|list` and `agentgate logs`: what a run
did, read through the persistence service (its index, the run files as fallback), so a
failure can be understood without re-running anything (SPEC §3).

Registered on the main `app` when `agentgate.client.cli` imports this module. The
functions that shape the output (`*_json`, `*_lines`) are plain and testable offline.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeVar

import grpc
import typer
from rich.console import Console
from rich.table import Table

from agentgate.client.cli import (
    EXIT_USAGE,
    JsonFlag,
    _client,
    _fail,
    _unreachable,
    app,
    console,
)
from agentgate.client.render import run_result_name, run_state_name
from agentgate.client.sync_client import AgentGateClient
from agentgate.common.config import agentgate_home
from agentgate.common.messages import to_dict
from agentgate.common.timeutil import iso
from agentgate.v1 import common_pb2, persistence_pb2

runs_app = typer.Typer(
    help="What a run did: summary, iterations, agent output, verification reports.", no_args_is_help=True
)
app.add_typer(runs_app, name="runs")

R = TypeVar("R")

RunArg = Annotated[str, typer.Argument(metavar="RUN", help="Run id (run-…) or work order id (wo-…).")]
IterationArg = Annotated[int | None, typer.Argument(metavar="[N]", help="Iteration (default: the last one).")]
IterationOpt = Annotated[int | None, typer.Option("--iteration", "-i", help="Iteration (same as N).")]
TailOpt = Annotated[int, typer.Option("--tail", help="Only the last N lines of each output (0 = all).", min=0)]

DEFAULT_CHECK_TAIL = 20


# -- shaping the output (no network) ------------------------------------------------------


def build_error_type_name(error_type: int) -> str:
    """BUILD_ERROR_TYPE_TEST_FAILED -> test_failed ('' when unset)."""
    if not error_type:
        return ""
    return common_pb2.BuildErrorType.Name(error_type).removeprefix("BUILD_ERROR_TYPE_").lower()  # type: ignore[arg-type]


def iteration_error_name(error_type: int) -> str:
    """ITERATION_ERROR_TYPE_AGENT_CRASH -> agent_crash ('' when unset)."""
    if not error_type:
        return ""
    return common_pb2.IterationErrorType.Name(error_type).removeprefix("ITERATION_ERROR_TYPE_").lower()  # type: ignore[arg-type]


def tail_lines(text: str, lines: int) -> str:
    """The last `lines` lines of `text` (all of it when `lines` is 0)."""
    if lines <= 0:
        return text
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def _seconds(value: float) -> str:
    return f"{value:.1f}s"


def _not_saved(warnings: int) -> str:
    return f"{warnings} file(s), see the persistence:warning events" if warnings else ""


def _tokens(tokens: common_pb2.TokenUsage) -> str:
    return f"{tokens.input} in, {tokens.output} out, {tokens.total} total"


def _duration(run: common_pb2.Run) -> float | None:
    if not run.HasField("started_at") or not run.HasField("finished_at"):
        return None
    start = run.started_at.seconds + run.started_at.nanos / 1e9
    end = run.finished_at.seconds + run.finished_at.nanos / 1e9
    return max(0.0, end - start)


def run_dir(run_id: str) -> str:
    """Where the run's files are (on the machine of the persistence service)."""
    return str(agentgate_home() / "runs" / run_id)


def show_json(run: common_pb2.Run, iterations: list[common_pb2.IterationData]) -> dict[str, Any]:
    """`runs show --json`: the whole run, its iterations, and where its files are."""
    return {
        "run": to_dict(run),
        "iterations": [to_dict(iteration) for iteration in iterations],
        "run_dir": run_dir(run.id),
    }


def summary_rows(run: common_pb2.Run) -> list[tuple[str, str]]:
    """The key/value lines of `runs show`, empty values left out."""
    duration = _duration(run)
    rows = [
        ("run", run.id),
        ("work order", run.work_order_id),
        ("state", run_state_name(run.state) + (f" ({run_result_name(run.result)})" if run.result else "")),
        ("iterations", f"{run.iteration_count} of {run.max_iterations}" if run.max_iterations else ""),
        ("agent", run.agent.name),
        ("started", iso(run.started_at) if run.HasField("started_at") else ""),
        ("finished", iso(run.finished_at) if run.HasField("finished_at") else ""),
        ("duration", _seconds(duration) if duration is not None else ""),
        ("stop reason", run.stop_reason),
        ("tokens", _tokens(run.tokens) if run.tokens.total else ""),
        ("cost", f"${run.cost_usd:.4f}" if run.cost_usd else ""),
        ("workspace", run.workspace_path + (f" (branch {run.branch_name})" if run.branch_name else "")),
        ("final commit", run.final_commit),
        ("pull request", run.pr_url),
        ("trace", run.trace_id),
        ("not saved", _not_saved(run.persistence_warnings)),
        ("run files", run_dir(run.id)),
    ]
    return [(key, value) for key, value in rows if value]


def error_lines(run: common_pb2.Run, tail: int = 10) -> list[str]:
    """The error part of `runs show`: the error string, its type and context, the output
    tails and the commands that show the files it names."""
    if not run.error and not run.HasField("build_error"):
        return []
    error = run.build_error
    lines = [f"error: {run.error or error.message}"]
    if error.type:
        lines.append(f"  type: {build_error_type_name(error.type)}")
    if error.exit_code:
        lines.append(f"  exit code: {error.exit_code}")
    for key in sorted(error.context):
        lines.append(f"  {key}: {error.context[key]}")
    for name, text in (("stdout", error.stdout_tail), ("stderr", error.stderr_tail)):
        if text.strip():
            lines.append(f"  {name} (last {tail} lines):")
            lines.extend("    " + line for line in tail_lines(text, tail).splitlines())
    iteration = _iteration_of(error.agent_result_file or error.verification_file)
    if error.agent_result_file:
        lines.append(f"  read: agentgate runs agent {run.id} -i {iteration}")
    if error.verification_file:
        lines.append(f"  read: agentgate runs verification {run.id} -i {iteration}")
    return lines


def _iteration_of(file: str) -> str:
    """agent-2.json -> 2."""
    stem = file.rsplit(".", 1)[0]
    return stem.rsplit("-", 1)[-1] if "-" in stem else ""


def iterations_table(iterations: list[common_pb2.IterationData]) -> Table:
    """One row per iteration: agent, verification, timing, error, files."""
    table = Table("#", "agent", "verification", "levels", "changes", "duration", "error", "files")
    for data in iterations:
        agent = "ok" if data.agent_success else "failed"
        if not data.agent_success and data.error_details.get("exit_code"):
            agent += f" (exit {data.error_details['exit_code']})"
        verification = "-" if not data.verification_file else ("passed" if data.verification_passed else "FAILED")
        error = iteration_error_name(data.error_type)
        if error in ("", "none"):
            error = ""
        elif data.error_message:
            error = f"{error}: {data.error_message}"
        files = ", ".join(f for f in (data.agent_result_file, data.verification_file) if f)
        table.add_row(
            str(data.iteration),
            agent,
            verification,
            ",".join(data.levels_run),
            "yes" if data.has_changes else "no",
            _seconds(data.duration_seconds),
            error,
            files,
        )
    return table


def agent_header_rows(result: common_pb2.AgentResult) -> list[tuple[str, str]]:
    """The key/value lines of `runs agent`."""

    def stream(name: str, size: int, truncated: bool) -> str:
        return f"{size} bytes" + (" (cut: see the [TRUNCATED …] line)" if truncated else "")

    rows = [
        ("iteration", f"{result.iteration}" + (f" (attempt {result.attempt})" if result.attempt > 1 else "")),
        ("driver", result.driver),
        ("model", result.model),
        ("session", result.session_id),
        ("success", "yes" if result.success else "no"),
        ("exit code", str(result.exit_code)),
        ("timed out", "yes" if result.timed_out else ""),
        ("duration", _seconds(result.duration_seconds)),
        ("tokens", _tokens(result.tokens)),
        ("cost", f"${result.cost_usd:.4f}" if result.cost_usd else ""),
        ("stdout", stream("stdout", result.stdout_bytes, result.stdout_truncated)),
        ("stderr", stream("stderr", result.stderr_bytes, result.stderr_truncated)),
        ("captured", iso(result.captured_at) if result.HasField("captured_at") else ""),
    ]
    return [(key, value) for key, value in rows if value]


def _short(value: str, width: int = 60) -> str:
    flat = " ".join(value.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def tool_calls_table(result: common_pb2.AgentResult) -> Table:
    """The agent's tool calls: tool, duration, input and output (shortened)."""
    table = Table("#", "tool", "duration", "input", "output")
    for index, call in enumerate(result.tool_calls, 1):
        table.add_row(
            str(index),
            call.tool,
            _seconds(call.duration_seconds),
            _short(json.dumps(to_dict(call.input), ensure_ascii=False)) if call.HasField("input") else "",
            _short(call.output),
        )
    return table


def checks_table(report: common_pb2.VerificationReport) -> Table:
    """Every level and check of a report."""
    table = Table("level", "check", "kind", "result", "exit", "duration", "command")
    for level in report.levels:
        if not level.checks:
            state = ("passed" if level.passed else "FAILED") if level.ran else f"skipped: {level.skip_reason}"
            table.add_row(f"{level.level} {level.name}", "", "", state, "", _seconds(level.duration_seconds), "")
        for check in level.checks:
            table.add_row(
                f"{level.level} {level.name}",
                check.name,
                check.kind,
                "passed" if check.passed else "FAILED",
                str(check.exit_code),
                _seconds(check.duration_seconds),
                _short(check.command, 50),
            )
    return table


def failed_check_outputs(report: common_pb2.VerificationReport, tail: int) -> list[str]:
    """The output tails of the failed checks, each under a header line."""
    lines: list[str] = []
    for level in report.levels:
        for check in level.checks:
            if check.passed:
                continue
            what = f"last {tail} lines" if tail else "output"
            lines.append(
                f"--- {level.level} {check.name}: exit {check.exit_code} (expected {check.expected_exit}), {what} ---"
            )
            lines.extend(tail_lines(check.output, tail).splitlines() or ["(no output)"])
    return lines


def logs_json(results: Iterable[common_pb2.AgentResult], stderr: bool) -> list[dict[str, Any]]:
    """`logs --json`: per iteration the stream's text, its byte count and whether it was cut."""
    name = "stderr" if stderr else "stdout"
    return [
        {
            "iteration": result.iteration,
            "stream": name,
            "text": getattr(result, name),
            "bytes": getattr(result, f"{name}_bytes"),
            "truncated": getattr(result, f"{name}_truncated"),
        }
        for result in results
    ]


# -- talking to the services --------------------------------------------------------------


def _rpc_failure(exc: grpc.RpcError, what: str) -> typer.Exit:
    """The exit for a failed call: bad input is a usage error (2), a service that cannot be
    reached exits 3, anything else (NOT_FOUND, …) says what the service said (1)."""
    code = exc.code()  # type: ignore[attr-defined]
    details = exc.details()  # type: ignore[attr-defined]
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return _fail(details, EXIT_USAGE)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return _unreachable(exc)
    if code == grpc.StatusCode.NOT_FOUND:
        return _fail(details or f"{what} not found")
    return _fail(f"{code.name}: {details}")


def _call(what: str, fetch: Callable[[], R]) -> R:
    """Runs one client call; a failure ends the command (see `_rpc_failure`)."""
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
        raise _fail(f"no run {run_id} (not started yet?)")
    return run


def _optional(what: str, fetch: Callable[[], R]) -> R | None:
    """A client call whose NOT_FOUND means "this iteration has none" (None)."""
    try:
        return fetch()
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
            return None
        raise _rpc_failure(exc, what) from None


def _per_iteration(
    run: common_pb2.Run, get: Callable[[int], R], list_all: Callable[[], list[R]], last_only: bool
) -> list[R]:
    """The records of a run's iterations, fetched one by one (a list of every agent result
    can be too big for one message), newest only with `last_only`. A run without an
    iteration count (an old folder read from its files) is listed instead."""
    if not run.iteration_count:
        found = _call(f"run {run.id}", list_all)
        return found[-1:] if last_only else found
    numbers = range(run.iteration_count, 0, -1) if last_only else range(1, run.iteration_count + 1)
    found: list[R] = []
    for number in numbers:
        record = _optional(f"run {run.id}", lambda number=number: get(number))  # type: ignore[misc]
        if record is not None:
            found.append(record)
            if last_only:
                break
    return found


def _pick_iteration(argument: int | None, option: int | None) -> int | None:
    if argument is not None and option is not None and argument != option:
        raise _fail(f"iteration given twice ({argument} and -i {option})", EXIT_USAGE)
    chosen = argument if argument is not None else option
    if chosen is not None and chosen < 1:
        raise _fail("iterations count from 1", EXIT_USAGE)
    return chosen


def _print_rows(rows: list[tuple[str, str]]) -> None:
    width = max((len(key) for key, _ in rows), default=0)
    for key, value in rows:
        console.print(f"[bold]{key:<{width}}[/bold]  ", end="", soft_wrap=True)
        console.print(value, markup=False, highlight=False, soft_wrap=True)


def _line(text: str) -> None:
    """One line of plain text: no markup, no wrapping."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _print_table(table: Table) -> None:
    """A table at the terminal's width; piped or captured, wide enough that file names and
    messages are not cut (rich would assume 80 columns)."""
    if console.is_terminal:
        console.print(table)
    else:
        Console(width=max(console.width, 200)).print(table)


def _raw(text: str) -> None:
    """Prints agent or check output exactly (no markup, no wrapping)."""
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    sys.stdout.flush()


# -- commands ------------------------------------------------------------------------------


@runs_app.command("show")
def show(ident: RunArg, json_output: JsonFlag = False) -> None:
    """A run: summary, a table of its iterations, and the error with the files to read."""
    with _client() as client:
        run = _run(client, ident)
        iterations = _call(f"run {run.id}", lambda: client.iterations(run.id))
    if json_output:
        print(json.dumps(show_json(run, iterations)))
        return
    _print_rows(summary_rows(run))
    if iterations:
        _print_table(iterations_table(iterations))
    for line in error_lines(run):
        _line(line)


@runs_app.command("iterations")
def iterations(ident: RunArg, json_output: JsonFlag = False) -> None:
    """The iterations of a run (iteration-N.json): agent, verification, timing, error, files."""
    with _client() as client:
        run = _run(client, ident)
        found = _call(f"run {run.id}", lambda: client.iterations(run.id))
    if json_output:
        print(json.dumps([to_dict(data) for data in found]))
        return
    if not found:
        console.print(f"run {run.id} has no iterations yet")
        return
    _print_table(iterations_table(found))
    for data in found:
        if data.HasField("decision") and data.decision.reason:
            verdict = "continue" if data.decision.should_continue else "stop"
            _line(f"{data.iteration}: {verdict}: {data.decision.reason}")


@runs_app.command("agent")
def agent(
    ident: RunArg,
    iteration: IterationArg = None,
    iteration_opt: IterationOpt = None,
    tail: TailOpt = 0,
    json_output: JsonFlag = False,
) -> None:
    """The agent result of an iteration (agent-N.json): exit code, tool calls, stdout, stderr."""
    wanted = _pick_iteration(iteration, iteration_opt)
    with _client() as client:
        run = _run(client, ident)
        if wanted is None:
            results = _per_iteration(
                run, lambda n: client.agent_result(run.id, n), lambda: client.agent_results(run.id), last_only=True
            )
            if not results:
                raise _fail(f"run {run.id} has no agent result yet")
            result = results[-1]
        else:
            number = wanted
            result = _call(f"agent-{number}.json", lambda: client.agent_result(run.id, number))
    if json_output:
        print(json.dumps(to_dict(result)))
        return
    console.print(f"[bold]agent-{result.iteration}.json[/bold] of {run.id}")
    _print_rows(agent_header_rows(result))
    if result.tool_calls:
        _print_table(tool_calls_table(result))
    for name in ("stdout", "stderr"):
        text = getattr(result, name)
        console.print(f"[bold]--- {name}{f' (last {tail} lines)' if tail else ''} ---[/bold]")
        if text:
            _raw(tail_lines(text, tail))


@runs_app.command("verification")
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
    wanted = _pick_iteration(iteration, iteration_opt)
    with _client() as client:
        run = _run(client, ident)
        if wanted is None:
            reports = _per_iteration(
                run,
                lambda n: client.verification_report(run.id, n),
                lambda: client.verification_reports(run.id),
                last_only=True,
            )
            if not reports:
                raise _fail(f"run {run.id} has no verification report (was the agent's work ever verified?)")
            report = reports[-1]
        else:
            number = wanted
            report = _call(f"verification-{number}.json", lambda: client.verification_report(run.id, number))
    if json_output:
        print(json.dumps(to_dict(report)))
        return
    verdict = "[green]PASSED[/green]" if report.passed else "[red]FAILED[/red]"
    console.print(f"[bold]verification-{report.iteration}.json[/bold] of {run.id}: {verdict}")
    rows = [
        ("summary", report.summary),
        ("snapshot", report.snapshot_commit),
        ("gate plan", report.gate_plan_source),
        ("levels run", ", ".join(report.levels_run)),
        ("skipped", ", ".join(report.skipped_levels)),
        ("duration", _seconds(report.duration_seconds)),
    ]
    _print_rows([(key, value) for key, value in rows if value])
    _print_table(checks_table(report))
    for line in failed_check_outputs(report, tail):
        _line(line)


@runs_app.command("list")
def list_runs(
    work_order: Annotated[str, typer.Option("--work-order", help="Only the runs of this work order.")] = "",
    state: Annotated[
        list[str] | None, typer.Option("--state", help="Only runs in this state: failed, succeeded, … (repeatable).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many.", min=1)] = 50,
    json_output: JsonFlag = False,
) -> None:
    """Runs, newest first, from the persistence index."""
    states: list[int] = []
    for name in state or []:
        key = f"RUN_STATE_{name.upper()}"
        if key not in common_pb2.RunState.keys() or key == "RUN_STATE_UNSPECIFIED":
            raise _fail(f"--state: unknown run state {name!r}", EXIT_USAGE)
        states.append(common_pb2.RunState.Value(key))
    found: list[common_pb2.Run] = []
    token = ""
    with _client() as client:
        while len(found) < limit:
            request = persistence_pb2.ListRunsRequest(
                work_order_id=work_order, states=states, page_size=min(limit - len(found), 1000), page_token=token
            )
            response = _call("runs", lambda request=request: client.persistence.ListRuns(request, timeout=30))
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
            _short(run.error, 60),
        )
    _print_table(table)


@app.command()
def logs(
    ident: RunArg,
    iteration_opt: IterationOpt = None,
    stderr: Annotated[bool, typer.Option("--stderr", help="The agent's stderr instead of its stdout.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """The agent's stdout (or --stderr) of one iteration, or of every iteration in turn."""
    wanted = _pick_iteration(None, iteration_opt)
    with _client() as client:
        run = _run(client, ident)
        if wanted is None:
            results = _per_iteration(
                run, lambda n: client.agent_result(run.id, n), lambda: client.agent_results(run.id), last_only=False
            )
        else:
            number = wanted
            results = [_call(f"agent-{number}.json", lambda: client.agent_result(run.id, number))]
    if json_output:
        print(json.dumps(logs_json(results, stderr)))
        return
    name = "stderr" if stderr else "stdout"
    for result in results:
        if len(results) > 1 or wanted is None:
            console.print(f"[bold]=== iteration {result.iteration} {name} ===[/bold]")
        _raw(getattr(result, name))
