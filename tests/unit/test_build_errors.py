"""Classification of failures into BuildErrorType (docs/troubleshooting.md): every type the classifier can
produce, the counts parsed from tool output, and what an iteration and a run record."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2

from agentgate.orchestrator import build_errors
from agentgate.v1 import common_pb2

T = common_pb2.BuildErrorType
E = common_pb2.IterationErrorType


def report_with(*checks: common_pb2.CheckResult, level: str = "L1") -> common_pb2.VerificationReport:
    report = common_pb2.VerificationReport(passed=False, summary=f"{level} failed")
    report.levels.add(level="L0", name="contracts", ran=True, passed=True).checks.add(
        name="required_file:calc.py", kind="contract", passed=True
    )
    report.levels.add(level=level, name="tests", ran=True, passed=False).checks.extend(checks)
    return report


# -- from an agent result -----------------------------------------------------------------


def test_timed_out_agent_is_agent_timeout_with_its_duration() -> None:
    error = build_errors.from_agent_result(
        common_pb2.AgentResult(timed_out=True, exit_code=143, duration_seconds=300.2, driver="command"), "agent-1.json"
    )
    assert error.type == T.BUILD_ERROR_TYPE_AGENT_TIMEOUT
    assert error.message == "Agent timed out after 300s"
    assert error.exit_code == 143
    assert error.agent_result_file == "agent-1.json"
    assert error.context["driver"] == "command"


def test_exit_137_is_agent_timeout_even_without_the_flag() -> None:
    error = build_errors.from_agent_result(common_pb2.AgentResult(exit_code=137, duration_seconds=12))
    assert error.type == T.BUILD_ERROR_TYPE_AGENT_TIMEOUT
    assert error.message == "Agent was killed (exit code 137) after 12s"


def test_nonzero_exit_without_structured_output_is_a_crash() -> None:
    stderr = "\n".join(f"line {n}" for n in range(1, 80))
    error = build_errors.from_agent_result(common_pb2.AgentResult(exit_code=2, stdout="ok\n", stderr=stderr))
    assert error.type == T.BUILD_ERROR_TYPE_AGENT_CRASH
    assert error.message == "Agent crashed with exit code 2"
    assert error.context["first_stderr_line"] == "line 1"
    # Tails are the last 50 lines.
    assert error.stderr_tail.splitlines() == [f"line {n}" for n in range(30, 80)]
    assert error.stdout_tail == "ok"


def test_agent_that_says_it_failed_is_a_task_failure_with_the_first_stderr_line() -> None:
    said = struct_pb2.Struct()
    said.update({"status": "gave up"})
    error = build_errors.from_agent_result(
        common_pb2.AgentResult(exit_code=1, structured_output=said, stderr="\n  cannot find the module\nmore")
    )
    assert error.type == T.BUILD_ERROR_TYPE_AGENT_TASK_FAILURE
    assert error.message == "Agent reported task failure: cannot find the module"
    # Exit 0 but not a success (a driver judged the result): a task failure too.
    quiet = build_errors.from_agent_result(common_pb2.AgentResult(exit_code=0, success=False))
    assert quiet.type == T.BUILD_ERROR_TYPE_AGENT_TASK_FAILURE
    assert quiet.message == "Agent reported task failure"


def test_cut_output_is_noted() -> None:
    error = build_errors.from_agent_result(common_pb2.AgentResult(exit_code=1, stdout_truncated=True))
    assert error.context["output_truncated"] == "true"


# -- from a verification report ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected", "message"),
    [
        ("typecheck", T.BUILD_ERROR_TYPE_TYPECHECK_FAILED, "Type check failed"),
        ("lint", T.BUILD_ERROR_TYPE_LINT_FAILED, "Lint failed"),
        ("test", T.BUILD_ERROR_TYPE_TEST_FAILED, "Test execution failed"),
        ("blackbox", T.BUILD_ERROR_TYPE_BLACKBOX_FAILED, "Black-box check failed"),
        ("ci", T.BUILD_ERROR_TYPE_CI_FAILED, "CI failed"),
        ("contract", T.BUILD_ERROR_TYPE_CONTRACT_FAILED, "Contract check failed"),
        ("security", T.BUILD_ERROR_TYPE_SECURITY_FAILED, "Security scan failed"),
        ("sanity", T.BUILD_ERROR_TYPE_LINT_FAILED, "Sanity check failed"),
        ("Tests", T.BUILD_ERROR_TYPE_TEST_FAILED, "Test execution failed"),
        ("setup", T.BUILD_ERROR_TYPE_UNKNOWN, "Gate setup failed"),
    ],
)
def test_each_check_kind_decides_the_type(kind: str, expected: int, message: str) -> None:
    check = common_pb2.CheckResult(name="a check", kind=kind, command="run-it", exit_code=1, output="boom")
    error = build_errors.from_verification_report(report_with(check), "verification-3.json", "agent-3.json")
    assert error.type == expected
    assert error.message == message
    assert error.exit_code == 1
    assert error.stdout_tail == "boom"
    assert error.context["level"] == "L1" and error.context["check"] == "a check"
    assert error.context["command"] == "run-it" and error.context["kind"] == kind
    assert build_errors.error_string(error) == f"{message}. Details: agent-3.json, verification-3.json"


@pytest.mark.parametrize(
    ("name", "command", "expected"),
    [
        ("types", "mypy src", T.BUILD_ERROR_TYPE_TYPECHECK_FAILED),
        ("check", "pyright", T.BUILD_ERROR_TYPE_TYPECHECK_FAILED),
        ("ts", "npx tsc --noEmit", T.BUILD_ERROR_TYPE_TYPECHECK_FAILED),
        ("style", "ruff check .", T.BUILD_ERROR_TYPE_LINT_FAILED),
        ("flake", "flake8", T.BUILD_ERROR_TYPE_LINT_FAILED),
        ("js", "npx eslint .", T.BUILD_ERROR_TYPE_LINT_FAILED),
        ("unit", "python -m pytest -q", T.BUILD_ERROR_TYPE_TEST_FAILED),
        ("py", "python -m unittest", T.BUILD_ERROR_TYPE_TEST_FAILED),
        ("web", "npx jest", T.BUILD_ERROR_TYPE_TEST_FAILED),
        ("web", "npx vitest run", T.BUILD_ERROR_TYPE_TEST_FAILED),
        ("go", "go test ./...", T.BUILD_ERROR_TYPE_TEST_FAILED),
        ("rust", "cargo test", T.BUILD_ERROR_TYPE_TEST_FAILED),
        ("scan", "bandit -r src", T.BUILD_ERROR_TYPE_SECURITY_FAILED),
        ("build", "make all", T.BUILD_ERROR_TYPE_UNKNOWN),
    ],
)
def test_checks_without_a_kind_are_classified_by_name_or_command(name: str, command: str, expected: int) -> None:
    assert build_errors.classify_check(common_pb2.CheckResult(name=name, command=command)) == expected


def test_the_first_failed_check_decides_and_others_are_counted() -> None:
    lint = common_pb2.CheckResult(name="ruff", kind="lint", output="Found 2 errors.")
    tests = common_pb2.CheckResult(name="pytest", kind="test", output="1 failed in 0.1s")
    error = build_errors.from_verification_report(report_with(lint, tests))
    assert error.type == T.BUILD_ERROR_TYPE_LINT_FAILED
    assert error.message == "Lint failed (2 errors)"
    assert error.context["failed_checks"] == "2"
    assert error.context["count"] == "2 errors"


def test_failed_report_without_a_failed_check_is_unknown() -> None:
    report = common_pb2.VerificationReport(passed=False, summary="No gate plan found: nothing was verified")
    error = build_errors.from_verification_report(report, "verification-1.json")
    assert error.type == T.BUILD_ERROR_TYPE_UNKNOWN
    assert error.message == "Verification failed: No gate plan found: nothing was verified"
    assert build_errors.error_string(error) == (
        "Verification failed: No gate plan found: nothing was verified. Details: verification-1.json"
    )


@pytest.mark.parametrize(
    ("output", "count"),
    [
        # pytest, -q and verbose, with errors
        ("..F.F.F\n3 failed, 4 passed in 0.12s", "3 failed"),
        ("===== 2 failed, 1 passed, 1 error in 1.03s =====", "2 failed, 1 error"),
        ("==== 1 passed, 2 errors in 0.30s ====", "2 errors"),
        ("FAILED t.py::x - assert 1\n1 failed, 1 warning in 0.01s", "1 failed"),
        # unittest
        ("Ran 5 tests in 0.001s\n\nFAILED (failures=2, errors=1)", "2 failed, 1 error"),
        ("Ran 1 test\n\nFAILED (errors=1)", "1 error"),
        # jest / vitest / cargo
        ("Tests:       2 failed, 5 passed, 7 total", "2 failed"),
        ("test result: FAILED. 3 passed; 1 failed; 0 ignored", "1 failed"),
        # mypy, tsc summaries, ruff, eslint
        ("a.py:1: error: x\nFound 4 errors in 2 files (checked 9 source files)", "4 errors in 2 files"),
        ("Found 1 error in 1 file (checked 1 source file)", "1 error in 1 file"),
        ("Found 3 errors in the same file, starting at: a.ts:1", "3 errors"),
        ("a.py:1:1: F401 unused\nFound 7 errors.\n[*] 7 fixable", "7 errors"),
        ("✖ 5 problems (3 errors, 2 warnings)", "3 errors"),
        # tsc without a summary, go test
        ("a.ts(1,1): error TS2322: x\nb.ts(2,2): error TS2304: y", "2 errors"),
        ("--- FAIL: TestAdd (0.00s)\n--- FAIL: TestSub (0.00s)\nFAIL", "2 failed"),
        # a check killed by its timeout
        ("started\n[timed out after 120s]", "timed out after 120s"),
        ("nothing countable here", ""),
    ],
)
def test_counts_parsed_from_tool_output(output: str, count: str) -> None:
    assert build_errors.failure_count(output) == count


def test_count_goes_into_the_message_and_the_run_error() -> None:
    check = common_pb2.CheckResult(name="unit", kind="test", exit_code=1, output="3 failed, 1 passed in 0.2s")
    error = build_errors.from_verification_report(report_with(check), "verification-2.json", "agent-2.json")
    assert build_errors.error_string(error) == (
        "Test execution failed (3 failed). Details: agent-2.json, verification-2.json"
    )


# -- other steps and exceptions -------------------------------------------------------------


@pytest.mark.parametrize(
    "error_type",
    [
        T.BUILD_ERROR_TYPE_WORKSPACE_ERROR,
        T.BUILD_ERROR_TYPE_SNAPSHOT_ERROR,
        T.BUILD_ERROR_TYPE_GITHUB_ERROR,
        T.BUILD_ERROR_TYPE_QUEUE_TIMEOUT,
    ],
)
def test_step_errors(error_type: int) -> None:
    error = build_errors.from_step(error_type, "it broke", {"code": "UNAVAILABLE"}, exit_code=128)
    assert error.type == error_type
    assert (error.message, error.exit_code, dict(error.context)) == ("it broke", 128, {"code": "UNAVAILABLE"})
    assert error.HasField("failed_at")
    assert build_errors.error_string(error) == "it broke"


def test_exception_is_system_error_with_traceback_tail() -> None:
    try:
        raise ValueError("bad state")
    except ValueError as exc:
        error = build_errors.from_exception(exc)
        workspace = build_errors.from_exception(exc, T.BUILD_ERROR_TYPE_WORKSPACE_ERROR)
    assert error.type == T.BUILD_ERROR_TYPE_SYSTEM_ERROR
    assert error.message == "AgentGate itself failed: bad state"
    assert "ValueError: bad state" in error.stderr_tail and "Traceback" in error.stderr_tail
    assert error.context["exception"] == "ValueError"
    assert workspace.type == T.BUILD_ERROR_TYPE_WORKSPACE_ERROR
    assert workspace.message.startswith("The workspace could not be prepared or used: ")


# -- names, descriptions, iterations --------------------------------------------------------


def test_every_type_has_a_name_and_a_one_line_description() -> None:
    for value in common_pb2.BuildErrorType.values():
        description = build_errors.describe(value)
        assert description and "\n" not in description
    assert build_errors.type_name(T.BUILD_ERROR_TYPE_AGENT_TASK_FAILURE) == "agent_task_failure"
    assert build_errors.type_name(T.BUILD_ERROR_TYPE_QUEUE_TIMEOUT) == "queue_timeout"


@pytest.mark.parametrize(
    ("error_type", "verification_file", "expected"),
    [
        (T.BUILD_ERROR_TYPE_AGENT_CRASH, "", E.ITERATION_ERROR_TYPE_AGENT_CRASH),
        (T.BUILD_ERROR_TYPE_AGENT_TIMEOUT, "", E.ITERATION_ERROR_TYPE_TIMEOUT),
        (T.BUILD_ERROR_TYPE_AGENT_TASK_FAILURE, "", E.ITERATION_ERROR_TYPE_AGENT_FAILURE),
        (T.BUILD_ERROR_TYPE_TEST_FAILED, "verification-1.json", E.ITERATION_ERROR_TYPE_VERIFICATION_FAILED),
        (T.BUILD_ERROR_TYPE_SECURITY_FAILED, "verification-1.json", E.ITERATION_ERROR_TYPE_VERIFICATION_FAILED),
        (T.BUILD_ERROR_TYPE_UNKNOWN, "verification-1.json", E.ITERATION_ERROR_TYPE_VERIFICATION_FAILED),
        (T.BUILD_ERROR_TYPE_SNAPSHOT_ERROR, "", E.ITERATION_ERROR_TYPE_SYSTEM_ERROR),
    ],
)
def test_iteration_error_type(error_type: int, verification_file: str, expected: int) -> None:
    error = common_pb2.BuildError(type=error_type, verification_file=verification_file)
    assert build_errors.iteration_error_type(error) == expected
    assert build_errors.iteration_error_type(None) == E.ITERATION_ERROR_TYPE_NONE


def test_error_details_of_an_iteration() -> None:
    check = common_pb2.CheckResult(name="unit", kind="test", command="pytest", exit_code=1, output="2 failed in 1s")
    error = build_errors.from_verification_report(report_with(check), "verification-1.json", "agent-1.json")
    details = build_errors.error_details(error)
    assert details == {
        "build_error_type": "test_failed",
        "description": "Tests failed",
        "exit_code": "1",
        "agent_result_file": "agent-1.json",
        "verification_file": "verification-1.json",
        "level": "L1",
        "check": "unit",
        "command": "pytest",
        "kind": "test",
        "count": "2 failed",
    }


def test_errors_leave_with_their_secrets_redacted() -> None:
    token = "ghp_" + "S" * 36
    agent = build_errors.from_agent_result(
        common_pb2.AgentResult(exit_code=0, success=False, stdout=f"out {token}", stderr=f"auth failed for {token}")
    )
    assert agent.message == "Agent reported task failure: auth failed for [REDACTED]"
    assert token not in str(agent)
    check = common_pb2.CheckResult(name="unit", kind="test", output=f"leaked {token}\n1 failed in 0.1s")
    assert token not in str(build_errors.from_verification_report(report_with(check)))
    assert token not in str(build_errors.from_step(T.BUILD_ERROR_TYPE_GITHUB_ERROR, f"push with {token} refused"))
    try:
        raise RuntimeError(f"bad {token}")
    except RuntimeError as exc:
        assert token not in str(build_errors.from_exception(exc))
