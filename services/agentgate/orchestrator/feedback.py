"""Feedback for the next iteration (SPEC §5): markdown an agent can act on, about 4 KB at most."""

from __future__ import annotations

import re

from agentgate.v1 import common_pb2

MAX_FEEDBACK_BYTES = 4096
OUTPUT_TAIL_LINES = 20
_FILE_REF = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.[A-Za-z]{1,5}):(\d+)")
GATE_RULE = (
    "Do not edit the gate plan (verify.yaml) or test fixtures to make checks pass; "
    "fix the code instead."
)


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _files_to_look_at(checks: list[common_pb2.CheckResult]) -> list[str]:
    """Source locations (path:line) named in the failed checks' output, in order, unique."""
    seen: dict[str, None] = {}
    for check in checks:
        for path, line in _FILE_REF.findall(check.output):
            seen.setdefault(f"{path}:{line}", None)
    return list(seen)[:10]


def _clip(text: str, limit: int = MAX_FEEDBACK_BYTES) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    marker = "\n\n[feedback cut to 4 KB]\n"
    return data[: limit - len(marker.encode())].decode(errors="ignore") + marker


def verification_feedback(iteration: int, report: common_pb2.VerificationReport) -> str:
    """Markdown feedback for a failed verification report."""
    failed_levels = [level for level in report.levels if level.ran and not level.passed]
    failed_checks = [(level, check) for level in failed_levels for check in level.checks if not check.passed]
    parts = [f"## Verification failed — iteration {iteration}", ""]
    if failed_levels:
        first = failed_levels[0]
        parts.append(f"Failed level: {first.level} ({first.name}). {report.summary}")
    else:
        parts.append(report.summary)
    for level, check in failed_checks:
        parts += [
            "",
            f"### {level.level} check `{check.name}` failed",
            f"- command: `{check.command}`" if check.command else "- command: (built-in check)",
            f"- exit code: {check.exit_code} (expected {check.expected_exit})",
        ]
        if check.output.strip():
            parts += ["- output (tail):", "```", _tail(check.output, OUTPUT_TAIL_LINES), "```"]
    files = _files_to_look_at([check for _, check in failed_checks])
    if files:
        parts += ["", "Files to look at: " + ", ".join(files)]
    parts += ["", GATE_RULE]
    return _clip("\n".join(parts))


def agent_failure_feedback(iteration: int, result: common_pb2.AgentResult) -> str:
    """Markdown feedback when the agent itself failed (crash, timeout, non-zero exit)."""
    what = "timed out" if result.timed_out else f"exited with code {result.exit_code}"
    parts = [f"## Agent failed — iteration {iteration}", "", f"The previous attempt {what}."]
    if result.stderr.strip():
        parts += ["Its stderr (tail):", "```", _tail(result.stderr, OUTPUT_TAIL_LINES), "```"]
    parts += ["", "Finish the task and exit with code 0.", GATE_RULE]
    return _clip("\n".join(parts))
