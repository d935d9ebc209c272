"""The output of `agentgate runs …` and `agentgate logs` (`run_views`), shaped without a network."""

from __future__ import annotations

import io

from rich.console import Console

from agentgate.client import run_views
from agentgate.v1 import common_pb2


def render(table) -> str:
    out = io.StringIO()
    Console(file=out, width=250).print(table)
    return out.getvalue()


def failed_run() -> common_pb2.Run:
    run = common_pb2.Run(
        id="run-1",
        work_order_id="wo-1",
        state=common_pb2.RUN_STATE_FAILED,
        result=common_pb2.RUN_RESULT_FAILED_VERIFICATION,
        iteration_count=2,
        max_iterations=3,
        error="Test execution failed (3 failed). Details: agent-2.json, verification-2.json",
        persistence_warnings=2,
    )
    run.build_error.CopyFrom(
        common_pb2.BuildError(
            type=common_pb2.BUILD_ERROR_TYPE_TEST_FAILED,
            message="Test execution failed (3 failed)",
            exit_code=1,
            stdout_tail="\n".join(f"out {n}" for n in range(30)),
            agent_result_file="agent-2.json",
            verification_file="verification-2.json",
            context={"check": "unit"},
        )
    )
    run.tokens.CopyFrom(common_pb2.TokenUsage(input=10, output=5, total=15))
    run.started_at.FromSeconds(100)
    run.finished_at.FromSeconds(112)
    return run


def test_summary_rows_leave_empty_values_out() -> None:
    rows = dict(run_views.summary_rows(failed_run()))
    assert rows["state"] == "FAILED (FAILED_VERIFICATION)"
    assert rows["iterations"] == "2 of 3"
    assert rows["duration"] == "12.0s"
    assert rows["tokens"] == "10 in, 5 out, 15 total"
    assert rows["not saved"].startswith("2 file(s)")
    assert rows["run files"].endswith("runs/run-1")
    assert "cost" not in rows and "pull request" not in rows


def test_error_lines_name_the_files_and_the_commands_to_read_them() -> None:
    lines = run_views.error_lines(failed_run(), tail=3)
    assert lines[0] == "error: Test execution failed (3 failed). Details: agent-2.json, verification-2.json"
    assert "  type: test_failed" in lines and "  check: unit" in lines
    assert lines[lines.index("  stdout (last 3 lines):") + 1 :][:3] == ["    out 27", "    out 28", "    out 29"]
    assert lines[-2:] == ["  read: agentgate runs agent run-1 -i 2", "  read: agentgate runs verification run-1 -i 2"]
    assert run_views.error_lines(common_pb2.Run(id="run-2")) == []


def test_iterations_table() -> None:
    crashed = common_pb2.IterationData(
        iteration=1,
        agent_result_file="agent-1.json",
        error_type=common_pb2.ITERATION_ERROR_TYPE_AGENT_CRASH,
        error_message="Agent crashed with exit code 3",
        error_details={"exit_code": "3"},
        duration_seconds=1.25,
    )
    verified = common_pb2.IterationData(
        iteration=2,
        agent_success=True,
        agent_result_file="agent-2.json",
        verification_file="verification-2.json",
        verification_passed=True,
        levels_run=["L0", "L1"],
        has_changes=True,
        error_type=common_pb2.ITERATION_ERROR_TYPE_NONE,
    )
    text = render(run_views.iterations_table([crashed, verified]))
    assert "failed (exit 3)" in text and "agent_crash: Agent crashed with exit code 3" in text
    assert "passed" in text and "L0,L1" in text and "agent-2.json, verification-2.json" in text
    assert "none" not in text


def test_agent_rows_tool_calls_and_checks() -> None:
    result = common_pb2.AgentResult(
        iteration=2, attempt=2, driver="scripted", exit_code=1, stdout_bytes=3_145_728, stdout_truncated=True,
        timed_out=True, duration_seconds=3.0,
    )
    call = result.tool_calls.add(tool="Bash", output="x" * 200, duration_seconds=0.5)
    call.input.update({"command": "ls"})
    rows = dict(run_views.agent_header_rows(result))
    assert rows["iteration"] == "2 (attempt 2)" and rows["timed out"] == "yes"
    assert rows["stdout"].startswith("3145728 bytes (cut")
    assert "cost" not in rows and "model" not in rows
    tools = render(run_views.tool_calls_table(result))
    assert '{"command": "ls"}' in tools and "…" in tools
    report = common_pb2.VerificationReport(iteration=1)
    level = report.levels.add(level="L1", name="tests", ran=True)
    level.checks.add(name="unit", kind="test", command="pytest", exit_code=1, expected_exit=0, output="a\nb\nc")
    level.checks.add(name="lint", kind="lint", passed=True, output="fine")
    report.levels.add(level="L2", name="blackbox", skip_reason="an earlier level failed")
    checks = render(run_views.checks_table(report))
    assert "FAILED" in checks and "skipped: an earlier level failed" in checks
    assert run_views.failed_check_outputs(report, 2) == ["--- L1 unit: exit 1 (expected 0), last 2 lines ---", "b", "c"]
    assert run_views.failed_check_outputs(report, 0)[1:] == ["a", "b", "c"]


def test_logs_and_show_json() -> None:
    results = [common_pb2.AgentResult(iteration=1, stderr="e1", stderr_bytes=2), common_pb2.AgentResult(iteration=2)]
    assert run_views.logs_json(results, stderr=True) == [
        {"iteration": 1, "stream": "stderr", "text": "e1", "bytes": 2, "truncated": False},
        {"iteration": 2, "stream": "stderr", "text": "", "bytes": 0, "truncated": False},
    ]
    shown = run_views.show_json(failed_run(), [common_pb2.IterationData(iteration=1)])
    assert shown["run"]["error"].startswith("Test execution failed")
    assert shown["iterations"][0]["iteration"] == 1
    assert run_views.tail_lines("a\nb\nc\n", 2) == "b\nc" and run_views.tail_lines("a\nb", 0) == "a\nb"
