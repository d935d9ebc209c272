"""The output of `agentgate runs …` and `agentgate logs`, shaped without a network: plain
functions from the run's messages to rows, lines, tables and JSON, testable offline."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rich.table import Table

from agentgate.client.render import run_result_name, run_state_name, sandbox_name, workspace_text
from agentgate.common.config import agentgate_home
from agentgate.common.messages import to_dict
from agentgate.common.timeutil import iso
from agentgate.v1 import common_pb2


def build_error_type_name(error_type: common_pb2.BuildErrorType.ValueType) -> str:
    """BUILD_ERROR_TYPE_TEST_FAILED -> test_failed ('' when unset)."""
    if not error_type:
        return ""
    return common_pb2.BuildErrorType.Name(error_type).removeprefix("BUILD_ERROR_TYPE_").lower()


def iteration_error_name(error_type: common_pb2.IterationErrorType.ValueType) -> str:
    """ITERATION_ERROR_TYPE_AGENT_CRASH -> agent_crash ('' when unset)."""
    if not error_type:
        return ""
    return common_pb2.IterationErrorType.Name(error_type).removeprefix("ITERATION_ERROR_TYPE_").lower()


def tail_lines(text: str, lines: int) -> str:
    """The last `lines` lines of `text` (all of it when `lines` is 0)."""
    if lines <= 0:
        return text
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def seconds(value: float) -> str:
    """A duration for people: `12.0s`."""
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
        ("sandbox", sandbox_name(run.harness.sandbox)),
        ("started", iso(run.started_at) if run.HasField("started_at") else ""),
        ("finished", iso(run.finished_at) if run.HasField("finished_at") else ""),
        ("duration", seconds(duration) if duration is not None else ""),
        ("stop reason", run.stop_reason),
        ("tokens", _tokens(run.tokens) if run.tokens.total else ""),
        ("cost", f"${run.cost_usd:.4f}" if run.cost_usd else ""),
        ("workspace", workspace_text(run) + (f" (branch {run.branch_name})" if run.branch_name else "")),
        ("final commit", run.final_commit),
        ("pull request", run.pr_url),
        ("trace", run.trace_id),
        ("not saved", _not_saved(run.persistence_warnings)),
        ("run files", run_dir(run.id)),
    ]
    rows[4:4] = [("attempts" if i == 0 else "", line) for i, line in enumerate(attempt_lines(run))]
    return [(key, value) for key, value in rows if value]


def attempt_lines(run: common_pb2.Run) -> list[str]:
    """One line per lease of the run's work order (docs/results.md), when there was more
    than one: a lost worker's run goes on in a later attempt."""
    if len(run.attempts) < 2:
        return []
    lines = []
    for attempt in run.attempts:
        line = f"{attempt.attempt}: worker {attempt.worker_id or '?'}"
        if attempt.HasField("started_at"):
            line += f", started {iso(attempt.started_at)[:19]}"
        if attempt.resumed_after_iteration:
            line += f", resumed after iteration {attempt.resumed_after_iteration}"
        lines.append(line)
    return lines


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
            seconds(data.duration_seconds),
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
        ("duration", seconds(result.duration_seconds)),
        ("tokens", _tokens(result.tokens)),
        ("cost", f"${result.cost_usd:.4f}" if result.cost_usd else ""),
        ("stdout", stream("stdout", result.stdout_bytes, result.stdout_truncated)),
        ("stderr", stream("stderr", result.stderr_bytes, result.stderr_truncated)),
        ("captured", iso(result.captured_at) if result.HasField("captured_at") else ""),
    ]
    return [(key, value) for key, value in rows if value]


def shorten(value: str, width: int = 60) -> str:
    """`value` on one line, cut to `width` characters with an ellipsis."""
    flat = " ".join(value.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def tool_calls_table(result: common_pb2.AgentResult) -> Table:
    """The agent's tool calls: tool, duration, input and output (shortened)."""
    table = Table("#", "tool", "duration", "input", "output")
    for index, call in enumerate(result.tool_calls, 1):
        table.add_row(
            str(index),
            call.tool,
            seconds(call.duration_seconds),
            shorten(json.dumps(to_dict(call.input), ensure_ascii=False)) if call.HasField("input") else "",
            shorten(call.output),
        )
    return table


def checks_table(report: common_pb2.VerificationReport) -> Table:
    """Every level and check of a report."""
    table = Table("level", "check", "kind", "result", "exit", "duration", "command")
    for level in report.levels:
        if not level.checks:
            state = ("passed" if level.passed else "FAILED") if level.ran else f"skipped: {level.skip_reason}"
            table.add_row(f"{level.level} {level.name}", "", "", state, "", seconds(level.duration_seconds), "")
        for check in level.checks:
            table.add_row(
                f"{level.level} {level.name}",
                check.name,
                check.kind,
                "passed" if check.passed else "FAILED",
                str(check.exit_code),
                seconds(check.duration_seconds),
                shorten(check.command, 50),
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
