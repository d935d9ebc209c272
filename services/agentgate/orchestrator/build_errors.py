"""Structured errors (SPEC §3): one place builds every `BuildError`.

From an agent result, a verification report, or a system exception; the run's plain
`error` string is the message plus the files to read.
"""

from __future__ import annotations

import re
import traceback

from agentgate.common.timeutil import now_timestamp
from agentgate.v1 import common_pb2

T = common_pb2.BuildErrorType
TAIL_LINES = 50

DESCRIPTIONS: dict[int, str] = {
    T.BUILD_ERROR_TYPE_AGENT_CRASH: "The agent process crashed or exited with an error",
    T.BUILD_ERROR_TYPE_AGENT_TIMEOUT: "The agent did not finish within its timeout",
    T.BUILD_ERROR_TYPE_AGENT_TASK_FAILURE: "The agent reported that it could not do the task",
    T.BUILD_ERROR_TYPE_TYPECHECK_FAILED: "Type checking failed",
    T.BUILD_ERROR_TYPE_LINT_FAILED: "Linting failed",
    T.BUILD_ERROR_TYPE_TEST_FAILED: "Tests failed",
    T.BUILD_ERROR_TYPE_BLACKBOX_FAILED: "A black-box check of the product failed",
    T.BUILD_ERROR_TYPE_CI_FAILED: "CI checks on the pull request failed",
    T.BUILD_ERROR_TYPE_CONTRACT_FAILED: "A contract check (required files, schemas) failed",
    T.BUILD_ERROR_TYPE_SECURITY_FAILED: "The security scan found a problem",
    T.BUILD_ERROR_TYPE_WORKSPACE_ERROR: "The workspace could not be prepared or used",
    T.BUILD_ERROR_TYPE_SNAPSHOT_ERROR: "The workspace could not be snapshotted",
    T.BUILD_ERROR_TYPE_GITHUB_ERROR: "A GitHub operation failed",
    T.BUILD_ERROR_TYPE_QUEUE_TIMEOUT: "The work order waited too long in the queue",
    T.BUILD_ERROR_TYPE_SYSTEM_ERROR: "AgentGate itself failed",
    T.BUILD_ERROR_TYPE_UNKNOWN: "Unknown error",
}

_KIND_TYPES = {
    "typecheck": T.BUILD_ERROR_TYPE_TYPECHECK_FAILED,
    "lint": T.BUILD_ERROR_TYPE_LINT_FAILED,
    "test": T.BUILD_ERROR_TYPE_TEST_FAILED,
    "blackbox": T.BUILD_ERROR_TYPE_BLACKBOX_FAILED,
    "ci": T.BUILD_ERROR_TYPE_CI_FAILED,
    "contract": T.BUILD_ERROR_TYPE_CONTRACT_FAILED,
    "security": T.BUILD_ERROR_TYPE_SECURITY_FAILED,
}
_NAME_HINTS = (
    (re.compile(r"mypy|pyright|tsc|typecheck"), T.BUILD_ERROR_TYPE_TYPECHECK_FAILED),
    (re.compile(r"ruff|flake8|eslint|pylint|lint"), T.BUILD_ERROR_TYPE_LINT_FAILED),
    (re.compile(r"pytest|unittest|jest|vitest|go test|cargo test|test"), T.BUILD_ERROR_TYPE_TEST_FAILED),
)
_MESSAGES = {
    T.BUILD_ERROR_TYPE_TYPECHECK_FAILED: "Type check failed",
    T.BUILD_ERROR_TYPE_LINT_FAILED: "Lint failed",
    T.BUILD_ERROR_TYPE_TEST_FAILED: "Test execution failed",
    T.BUILD_ERROR_TYPE_BLACKBOX_FAILED: "Black-box check failed",
    T.BUILD_ERROR_TYPE_CI_FAILED: "CI failed",
    T.BUILD_ERROR_TYPE_CONTRACT_FAILED: "Contract check failed",
    T.BUILD_ERROR_TYPE_SECURITY_FAILED: "Security scan failed",
}
_COUNTS = (
    (re.compile(r"(\d+) failed"), "{} failed"),
    (re.compile(r"Found (\d+) errors? in (\d+) files?"), "{} errors in {} files"),
    (re.compile(r"Found (\d+) errors?"), "{} errors"),
)
_TSC_ERROR = re.compile(r"error TS\d{4}")


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of `text`."""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def classify_check(check: common_pb2.CheckResult) -> int:
    """The BuildErrorType of a failed check: its kind, else what its name or command says."""
    if check.kind in _KIND_TYPES:
        return _KIND_TYPES[check.kind]
    text = f"{check.name} {check.command}".lower()
    for pattern, error_type in _NAME_HINTS:
        if pattern.search(text):
            return error_type
    return T.BUILD_ERROR_TYPE_UNKNOWN


def failure_count(output: str) -> str:
    """A count the tool printed ("3 failed", "2 errors in 1 files"), or ''."""
    for pattern, template in _COUNTS:
        match = pattern.search(output)
        if match:
            return template.format(*match.groups())
    tsc = _TSC_ERROR.findall(output)
    if tsc:
        return f"{len(tsc)} errors"
    return ""


def from_agent_result(result: common_pb2.AgentResult, agent_file: str = "") -> common_pb2.BuildError:
    """The error of a failed agent execution."""
    error = common_pb2.BuildError(
        exit_code=result.exit_code,
        stdout_tail=tail(result.stdout),
        stderr_tail=tail(result.stderr),
        agent_result_file=agent_file,
        failed_at=now_timestamp(),
    )
    if result.timed_out or result.exit_code == 137:
        error.type = T.BUILD_ERROR_TYPE_AGENT_TIMEOUT
        error.message = f"Agent timed out after {result.duration_seconds:.0f}s"
    elif result.exit_code != 0 and not result.HasField("structured_output"):
        error.type = T.BUILD_ERROR_TYPE_AGENT_CRASH
        error.message = f"Agent crashed with exit code {result.exit_code}"
    else:
        first = next((line for line in result.stderr.splitlines() if line.strip()), "")
        error.type = T.BUILD_ERROR_TYPE_AGENT_TASK_FAILURE
        error.message = "Agent reported task failure" + (f": {first.strip()}" if first else "")
    error.context["driver"] = result.driver
    return error


def from_verification_report(
    report: common_pb2.VerificationReport, verification_file: str = "", agent_file: str = ""
) -> common_pb2.BuildError:
    """The error of a failed verification: the first failed check decides the type."""
    failed = [(level, check) for level in report.levels for check in level.checks if not check.passed]
    error = common_pb2.BuildError(
        verification_file=verification_file, agent_result_file=agent_file, failed_at=now_timestamp()
    )
    if not failed:
        error.type = T.BUILD_ERROR_TYPE_UNKNOWN
        error.message = f"Verification failed: {report.summary}"
        return error
    level, check = failed[0]
    error.type = classify_check(check)  # type: ignore[assignment]
    count = failure_count(check.output)
    message = _MESSAGES.get(error.type, "Verification failed")
    error.message = f"{message} ({count})" if count else message
    error.exit_code = check.exit_code
    error.stdout_tail = tail(check.output)
    error.context.update({"level": level.level, "check": check.name, "command": check.command})
    return error


def from_exception(exc: BaseException, error_type: int = T.BUILD_ERROR_TYPE_SYSTEM_ERROR) -> common_pb2.BuildError:
    """The error of an exception inside AgentGate, with the traceback tail."""
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return common_pb2.BuildError(
        type=error_type,  # type: ignore[arg-type]
        message=f"{DESCRIPTIONS[error_type]}: {exc}",
        stderr_tail=tail(trace),
        context={"exception": type(exc).__name__},
        failed_at=now_timestamp(),
    )


def error_string(error: common_pb2.BuildError) -> str:
    """The run's plain `error`: the message plus the files to read."""
    files = [f for f in (error.agent_result_file, error.verification_file) if f]
    if not files:
        return error.message
    return f"{error.message}. Details: {', '.join(files)}"
