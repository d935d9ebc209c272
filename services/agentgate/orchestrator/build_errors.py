"""Structured errors (SPEC §3): one place builds every `BuildError`.

From an agent result, a verification report, a failed step (workspace, snapshot, GitHub,
queue), or a system exception; the run's plain `error` string is the message plus the files
to read, and an iteration's error type and details are derived from the same error.

Every error leaves here with its secrets redacted: it quotes agent and check output, and
travels to places persistence does not guard (the queue's record of the work order, logs).
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping

from agentgate.common.redaction import default_redactor
from agentgate.common.timeutil import now_timestamp
from agentgate.v1 import common_pb2

T = common_pb2.BuildErrorType
E = common_pb2.IterationErrorType
TAIL_LINES = 50

DESCRIPTIONS: dict[int, str] = {
    T.BUILD_ERROR_TYPE_UNSPECIFIED: "No error type was recorded",
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
    T.BUILD_ERROR_TYPE_AGENT_AUTH_ERROR: "The model API refused the agent's credentials",
    T.BUILD_ERROR_TYPE_AGENT_API_ERROR: "The model API failed for a passing reason (rate limit, overload, network)",
    T.BUILD_ERROR_TYPE_BUDGET_EXCEEDED: "The run's token or cost budget was exceeded",
}

#: A check's kind -> the type of its failure. Kinds are free text in verify.yaml, so the
#: usual spellings are accepted too.
_KIND_TYPES = {
    "typecheck": T.BUILD_ERROR_TYPE_TYPECHECK_FAILED,
    "types": T.BUILD_ERROR_TYPE_TYPECHECK_FAILED,
    "type": T.BUILD_ERROR_TYPE_TYPECHECK_FAILED,
    "lint": T.BUILD_ERROR_TYPE_LINT_FAILED,
    "format": T.BUILD_ERROR_TYPE_LINT_FAILED,
    "style": T.BUILD_ERROR_TYPE_LINT_FAILED,
    # L3 sanity checks look for leftovers (debug statements, conflict markers): hygiene.
    "sanity": T.BUILD_ERROR_TYPE_LINT_FAILED,
    "test": T.BUILD_ERROR_TYPE_TEST_FAILED,
    "tests": T.BUILD_ERROR_TYPE_TEST_FAILED,
    "unit": T.BUILD_ERROR_TYPE_TEST_FAILED,
    "integration": T.BUILD_ERROR_TYPE_TEST_FAILED,
    "e2e": T.BUILD_ERROR_TYPE_TEST_FAILED,
    "blackbox": T.BUILD_ERROR_TYPE_BLACKBOX_FAILED,
    "ci": T.BUILD_ERROR_TYPE_CI_FAILED,
    "contract": T.BUILD_ERROR_TYPE_CONTRACT_FAILED,
    "contracts": T.BUILD_ERROR_TYPE_CONTRACT_FAILED,
    "security": T.BUILD_ERROR_TYPE_SECURITY_FAILED,
}
_NAME_HINTS = (
    (re.compile(r"mypy|pyright|pytype|tsc|typecheck|type-check|type_check"), T.BUILD_ERROR_TYPE_TYPECHECK_FAILED),
    (re.compile(r"ruff|flake8|eslint|pylint|black|prettier|golangci|clippy|lint"), T.BUILD_ERROR_TYPE_LINT_FAILED),
    (re.compile(r"pytest|unittest|jest|vitest|mocha|go test|cargo test|test"), T.BUILD_ERROR_TYPE_TEST_FAILED),
    (re.compile(r"bandit|semgrep|gitleaks|trivy|audit|secret"), T.BUILD_ERROR_TYPE_SECURITY_FAILED),
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
_KIND_MESSAGES = {"sanity": "Sanity check failed", "setup": "Gate setup failed"}

#: The summary line of pytest ("2 failed, 1 passed, 1 error in 0.12s"), -q or not.
_PYTEST_SUMMARY = re.compile(r"^[= ]*((?:\d+ \w+(?:, )?)+) in [\d.]+s", re.M)
_UNITTEST_FAILED = re.compile(r"FAILED \(((?:\w+=\d+(?:, )?)+)\)")
_FAILED = re.compile(r"(\d+) failed")
_FOUND_IN_FILES = re.compile(r"Found (\d+) errors? in (\d+) files?")
_FOUND = re.compile(r"Found (\d+) errors?")
_ESLINT = re.compile(r"\d+ problems? \((\d+) errors?, \d+ warnings?\)")
_TSC_ERROR = re.compile(r"error TS\d{4}")
_GO_FAIL = re.compile(r"^\s*--- FAIL:", re.M)
_CHECK_TIMEOUT = re.compile(r"\[timed out after ([\d.]+)s\]")

#: BuildErrorType -> the IterationErrorType of the iteration it ended.
_ITERATION_TYPES = {
    T.BUILD_ERROR_TYPE_AGENT_CRASH: E.ITERATION_ERROR_TYPE_AGENT_CRASH,
    T.BUILD_ERROR_TYPE_AGENT_TIMEOUT: E.ITERATION_ERROR_TYPE_TIMEOUT,
    T.BUILD_ERROR_TYPE_AGENT_TASK_FAILURE: E.ITERATION_ERROR_TYPE_AGENT_FAILURE,
    T.BUILD_ERROR_TYPE_AGENT_AUTH_ERROR: E.ITERATION_ERROR_TYPE_AGENT_FAILURE,
    T.BUILD_ERROR_TYPE_AGENT_API_ERROR: E.ITERATION_ERROR_TYPE_AGENT_FAILURE,
    T.BUILD_ERROR_TYPE_BUDGET_EXCEEDED: E.ITERATION_ERROR_TYPE_AGENT_FAILURE,
    **{t: E.ITERATION_ERROR_TYPE_VERIFICATION_FAILED for t in _MESSAGES},
}


def type_name(error_type: int) -> str:
    """BUILD_ERROR_TYPE_TEST_FAILED -> test_failed (the SPEC's spelling)."""
    return common_pb2.BuildErrorType.Name(error_type).removeprefix("BUILD_ERROR_TYPE_").lower()  # type: ignore[arg-type]


def describe(error_type: int) -> str:
    """The one-line human description of a type."""
    return DESCRIPTIONS.get(error_type, DESCRIPTIONS[T.BUILD_ERROR_TYPE_UNKNOWN])


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of `text`."""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def _plural(count: str, word: str) -> str:
    return f"{count} {word}" if count == "1" else f"{count} {word}s"


def classify_check(check: common_pb2.CheckResult) -> int:
    """The BuildErrorType of a failed check: its kind, else what its name or command says."""
    kind = check.kind.strip().lower()
    if kind in _KIND_TYPES:
        return _KIND_TYPES[kind]
    text = f"{check.name} {check.command}".lower()
    for pattern, error_type in _NAME_HINTS:
        if pattern.search(text):
            return error_type
    return T.BUILD_ERROR_TYPE_UNKNOWN


def failure_count(output: str) -> str:
    """A count the tool printed, or ''. Knows pytest ("3 failed", "2 failed, 1 error"),
    unittest ("FAILED (failures=2)"), jest/vitest/cargo ("N failed"), mypy and tsc
    ("Found N errors in M files"), ruff ("Found N errors"), eslint ("N problems (N errors,
    …)"), tsc without a summary (`error TSnnnn` lines) and go test (`--- FAIL:` lines)."""
    summaries = _PYTEST_SUMMARY.findall(output)
    if summaries:
        parts = dict(reversed(part.split(" ", 1)) for part in summaries[-1].split(", "))
        found = [f"{parts['failed']} failed"] if "failed" in parts else []
        errors = parts.get("errors") or parts.get("error")
        if errors:
            found.append(_plural(errors, "error"))
        if found:
            return ", ".join(found)
    unittest = _UNITTEST_FAILED.search(output)
    if unittest:
        counts = dict(part.split("=") for part in unittest.group(1).split(", "))
        found = [f"{counts['failures']} failed"] if "failures" in counts else []
        if "errors" in counts:
            found.append(_plural(counts["errors"], "error"))
        if found:
            return ", ".join(found)
    match = _FAILED.search(output)
    if match:
        return f"{match.group(1)} failed"
    match = _FOUND_IN_FILES.search(output)
    if match:
        return f"{_plural(match.group(1), 'error')} in {_plural(match.group(2), 'file')}"
    match = _FOUND.search(output) or _ESLINT.search(output)
    if match:
        return _plural(match.group(1), "error")
    tsc = _TSC_ERROR.findall(output)
    if tsc:
        return _plural(str(len(tsc)), "error")
    go = _GO_FAIL.findall(output)
    if go:
        return f"{len(go)} failed"
    timed_out = _CHECK_TIMEOUT.search(output)
    if timed_out:
        return f"timed out after {timed_out.group(1)}s"
    return ""


def _redacted(error: common_pb2.BuildError) -> common_pb2.BuildError:
    default_redactor().redact_message(error)
    return error


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def from_agent_result(result: common_pb2.AgentResult, agent_file: str = "") -> common_pb2.BuildError:
    """The error of a failed agent execution: the driver's classification when it gave one
    (auth / API error / budget, with its message); else killed by its timeout (or SIGKILL, exit 137)
    -> agent_timeout; a non-zero exit without structured output -> agent_crash; otherwise
    the agent itself said it failed -> agent_task_failure with the first stderr line."""
    error = common_pb2.BuildError(
        exit_code=result.exit_code,
        stdout_tail=tail(result.stdout),
        stderr_tail=tail(result.stderr),
        agent_result_file=agent_file,
        failed_at=now_timestamp(),
    )
    if result.error_type:
        # The driver knew what went wrong (an API error, a budget): its word, the API's message.
        error.type = result.error_type
        error.message = result.error_message or describe(result.error_type)
    elif result.timed_out:
        error.type = T.BUILD_ERROR_TYPE_AGENT_TIMEOUT
        error.message = f"Agent timed out after {result.duration_seconds:.0f}s"
    elif result.exit_code == 137:
        error.type = T.BUILD_ERROR_TYPE_AGENT_TIMEOUT
        error.message = f"Agent was killed (exit code 137) after {result.duration_seconds:.0f}s"
    elif result.exit_code != 0 and not result.HasField("structured_output"):
        error.type = T.BUILD_ERROR_TYPE_AGENT_CRASH
        error.message = f"Agent crashed with exit code {result.exit_code}"
        first = _first_line(result.stderr)
        if first:
            error.context["first_stderr_line"] = first
    else:
        first = _first_line(result.stderr)
        error.type = T.BUILD_ERROR_TYPE_AGENT_TASK_FAILURE
        error.message = "Agent reported task failure" + (f": {first}" if first else "")
    if result.driver:
        error.context["driver"] = result.driver
    if result.stdout_truncated or result.stderr_truncated:
        error.context["output_truncated"] = "true"
    return _redacted(error)


def from_verification_report(
    report: common_pb2.VerificationReport, verification_file: str = "", agent_file: str = ""
) -> common_pb2.BuildError:
    """The error of a failed verification: the first failed check decides the type, and
    the count its tool printed goes into the message ("Test execution failed (3 failed)")."""
    failed = [(level, check) for level in report.levels for check in level.checks if not check.passed]
    error = common_pb2.BuildError(
        verification_file=verification_file, agent_result_file=agent_file, failed_at=now_timestamp()
    )
    if not failed:
        error.type = T.BUILD_ERROR_TYPE_UNKNOWN
        error.message = f"Verification failed: {report.summary}" if report.summary else "Verification failed"
        return _redacted(error)
    level, check = failed[0]
    error.type = classify_check(check)  # type: ignore[assignment]
    count = failure_count(check.output)
    message = _KIND_MESSAGES.get(check.kind.strip().lower()) or _MESSAGES.get(error.type, "Verification failed")
    error.message = f"{message} ({count})" if count else message
    error.exit_code = check.exit_code
    error.stdout_tail = tail(check.output)
    error.context.update({"level": level.level, "check": check.name, "command": check.command})
    if check.kind:
        error.context["kind"] = check.kind
    if count:
        error.context["count"] = count
    if len(failed) > 1:
        error.context["failed_checks"] = str(len(failed))
    return _redacted(error)


def from_step(
    error_type: int, message: str, context: Mapping[str, str] | None = None, exit_code: int = 0
) -> common_pb2.BuildError:
    """The error of a step of the run that is not the agent or the gate: the workspace
    (workspace_error), a snapshot (snapshot_error), GitHub (github_error), the queue
    (queue_timeout), a budget or the wall clock."""
    return _redacted(
        common_pb2.BuildError(
            type=error_type,  # type: ignore[arg-type]
            message=message,
            exit_code=exit_code,
            context=dict(context or {}),
            failed_at=now_timestamp(),
        )
    )


def from_exception(exc: BaseException, error_type: int = T.BUILD_ERROR_TYPE_SYSTEM_ERROR) -> common_pb2.BuildError:
    """The error of an exception inside AgentGate, with the traceback tail."""
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return _redacted(
        common_pb2.BuildError(
            type=error_type,  # type: ignore[arg-type]
            message=f"{describe(error_type)}: {exc}",
            stderr_tail=tail(trace),
            context={"exception": type(exc).__name__},
            failed_at=now_timestamp(),
        )
    )


def error_string(error: common_pb2.BuildError) -> str:
    """The run's plain `error`: the message plus the files to read."""
    files = [f for f in (error.agent_result_file, error.verification_file) if f]
    if not files:
        return error.message
    return f"{error.message}. Details: {', '.join(files)}"


def iteration_error_type(error: common_pb2.BuildError | None) -> int:
    """The IterationErrorType of an iteration that ended with `error` (None = it passed)."""
    if error is None:
        return E.ITERATION_ERROR_TYPE_NONE
    if error.type in _ITERATION_TYPES:
        return _ITERATION_TYPES[error.type]
    if error.verification_file:  # a gate failure of a kind nobody named
        return E.ITERATION_ERROR_TYPE_VERIFICATION_FAILED
    return E.ITERATION_ERROR_TYPE_SYSTEM_ERROR


def error_details(error: common_pb2.BuildError) -> dict[str, str]:
    """An iteration's `error_details`: the build error's type, exit code, files and context."""
    details = {"build_error_type": type_name(error.type), "description": describe(error.type)}
    if error.exit_code:
        details["exit_code"] = str(error.exit_code)
    if error.agent_result_file:
        details["agent_result_file"] = error.agent_result_file
    if error.verification_file:
        details["verification_file"] = error.verification_file
    details.update(error.context)
    return details
