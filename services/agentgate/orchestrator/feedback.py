"""Feedback for the next iteration (docs/verify-yaml.md): markdown an agent can act on, at most 4 KB.

A failed verification says, in this order: "Verification failed — iteration N"; the failed
level (and the levels it kept from running); for each failed check its level, name, kind,
command, exit code, expected vs actual, and the tail of its output; the files to look at;
and the rule not to edit the gate plan or fixtures. When everything does not fit, the
output tails shrink first, then the last checks are only named — the header, the files
and the rule are always there.
"""

from __future__ import annotations

import re

from agentgate.v1 import common_pb2

MAX_FEEDBACK_BYTES = 4096
OUTPUT_TAIL_LINES = 20
#: Tails tried, longest first, until the feedback fits.
TAIL_STEPS = (OUTPUT_TAIL_LINES, 10, 5, 2, 0)
#: A longer output line is cut (one minified line must not eat the budget).
MAX_LINE_CHARS = 240
MAX_FILES = 10
_FILE_REF = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.[A-Za-z]{1,5}):(\d+)")
_TIMED_OUT = re.compile(r"\[timed out after ([0-9.]+s)\]")
#: Checks that name their file: `required_file:README.md`, `schema:config.json`.
_FILE_CHECKS = ("required_file:", "schema:")
GATE_RULE = (
    "Do not edit the gate plan (verify.yaml) or test fixtures to make checks pass; "
    "fix the code instead."
)
#: The skip reason the gate gives levels after a failed one.
EARLIER_FAILED = "an earlier level failed"
CUT_MARKER = "\n\n[feedback cut to 4 KB]\n"


def _tail(text: str, lines: int) -> str:
    if lines <= 0:
        return ""
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join(line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS] + " [...]" for line in kept)


def _files_to_look_at(checks: list[common_pb2.CheckResult]) -> list[str]:
    """Source locations (path:line) named in the failed checks' output, and the files the
    built-in checks are about, in order, unique."""
    seen: dict[str, None] = {}
    for check in checks:
        for prefix in _FILE_CHECKS:
            if check.name.startswith(prefix):
                seen.setdefault(check.name[len(prefix) :], None)
        for path, line in _FILE_REF.findall(check.output):
            seen.setdefault(f"{path}:{line}", None)
    return list(seen)[:MAX_FILES]


def expected_vs_actual(check: common_pb2.CheckResult) -> list[str]:
    """The `expected vs actual` lines of a failed check ('' for built-in checks, whose
    output says it)."""
    timed_out = _TIMED_OUT.search(check.output)
    if check.kind == "blackbox":
        failed = [line[5:] for line in check.output.splitlines() if line.startswith("FAIL ")]
        lines = [f"  - {line[:MAX_LINE_CHARS]}" for line in failed]
        if timed_out:
            lines.insert(0, f"  - it timed out after {timed_out.group(1)}")
        return ["- expected vs actual:", *lines] if lines else []
    if not check.command:
        return []
    if timed_out:
        return [f"- expected vs actual: exit code {check.expected_exit} within the timeout; it timed out after "
                f"{timed_out.group(1)}"]
    if check.exit_code == -1:
        return [f"- expected vs actual: exit code {check.expected_exit}; it did not run"]
    return [f"- expected vs actual: exit code {check.expected_exit}; got {check.exit_code}"]


def _section(level: common_pb2.LevelResult, check: common_pb2.CheckResult, tail_lines: int) -> str:
    parts = [f"### {level.level} check `{check.name}` failed"]
    if check.kind:
        parts.append(f"- kind: {check.kind}")
    if check.kind != "ci":  # a pull request's CI check ran elsewhere: its output says it all
        parts.append(f"- command: `{check.command}`" if check.command else "- command: (built-in check)")
        parts.append(f"- exit code: {check.exit_code} (expected {check.expected_exit})")
        parts += expected_vs_actual(check)
    tail = _tail(check.output, tail_lines)
    if tail:
        parts += [f"- output (last {len(tail.splitlines())} lines):", "```", tail, "```"]
    return "\n".join(parts)


def _fits(text: str) -> bool:
    return len(text.encode()) <= MAX_FEEDBACK_BYTES


def _clip(text: str, limit: int = MAX_FEEDBACK_BYTES) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - len(CUT_MARKER.encode())].decode(errors="ignore") + CUT_MARKER


def verification_feedback(iteration: int, report: common_pb2.VerificationReport) -> str:
    """Markdown feedback for a failed verification report."""
    failed_levels = [level for level in report.levels if level.ran and not level.passed]
    failed_checks = [(level, check) for level in failed_levels for check in level.checks if not check.passed]
    head = [f"## Verification failed — iteration {iteration}", ""]
    if failed_levels:
        first = failed_levels[0]
        head.append(f"Failed level: {first.level} ({first.name}). {report.summary}")
        stopped = [f"{level.level} ({level.name})" for level in report.levels if level.skip_reason == EARLIER_FAILED]
        if stopped:
            head.append(f"Not run because of it: {', '.join(stopped)}.")
    else:
        head.append(report.summary)
    files = _files_to_look_at([check for _, check in failed_checks])
    tail_part = (["", "Files to look at: " + ", ".join(files)] if files else []) + ["", GATE_RULE]
    fixed_head, fixed_tail = "\n".join(head), "\n".join(tail_part)

    for lines in TAIL_STEPS:
        sections = [_section(level, check, lines) for level, check in failed_checks]
        text = "\n\n".join([fixed_head, *sections]) + "\n" + fixed_tail
        if _fits(text):
            return text
    # Even without output the checks do not fit: name the last ones only.
    sections = [_section(level, check, 0) for level, check in failed_checks]
    for shown in range(len(sections) - 1, -1, -1):
        rest = [check.name for _, check in failed_checks[shown:]]
        more = f"... and {len(rest)} more failed check(s): " + ", ".join(f"`{name}`" for name in rest)
        text = "\n\n".join([fixed_head, *sections[:shown], _clip(more, 1024)]) + "\n" + fixed_tail
        if _fits(text):
            return text
    return _clip(fixed_head, MAX_FEEDBACK_BYTES - len(fixed_tail.encode()) - 1) + "\n" + fixed_tail


def agent_failure_feedback(iteration: int, result: common_pb2.AgentResult) -> str:
    """Markdown feedback when the agent itself failed (crash, timeout, non-zero exit)."""
    what = "timed out" if result.timed_out else f"exited with code {result.exit_code}"
    head = [f"## Agent failed — iteration {iteration}", "", f"The previous attempt {what}."]
    rule = "\n".join(["", "Finish the task and exit with code 0.", GATE_RULE])
    for lines in TAIL_STEPS:
        body = list(head)
        tail = _tail(result.stderr, lines)
        if tail:
            body += ["Its stderr (tail):", "```", tail, "```"]
        text = "\n".join(body) + "\n" + rule
        if _fits(text):
            return text
    return "\n".join(head) + "\n" + rule
