"""Feedback for the next iteration (docs/verify-yaml.md): its exact content, and the 4 KB budget."""

from __future__ import annotations

from agentgate.orchestrator.feedback import (
    GATE_RULE,
    MAX_FEEDBACK_BYTES,
    agent_failure_feedback,
    verification_feedback,
)
from agentgate.v1 import common_pb2


def report(*checks: common_pb2.CheckResult, level: str = "L1", name: str = "tests") -> common_pb2.VerificationReport:
    order = ["L0", "L1", "L2", "L3"]
    names = {"L0": "contracts", "L1": "tests", "L2": "blackbox", "L3": "sanity"}
    levels = []
    for item in order:
        if item < level:
            levels.append(common_pb2.LevelResult(level=item, name=names[item], ran=True, passed=True))
        elif item == level:
            levels.append(common_pb2.LevelResult(level=item, name=name, ran=True, passed=False, checks=checks))
        else:
            levels.append(common_pb2.LevelResult(level=item, name=names[item], skip_reason="an earlier level failed"))
    failed = sum(not c.passed for c in checks)
    summary = f"{level} failed: {failed} of {len(checks)} checks failed ({', '.join(c.name for c in checks)})"
    return common_pb2.VerificationReport(passed=False, summary=summary, levels=levels)


def test_test_failure_exact_content() -> None:
    check = common_pb2.CheckResult(
        name="unit",
        kind="test",
        command="pytest -q",
        exit_code=1,
        expected_exit=0,
        output="F.\ncalc_test.py:5: AssertionError\nsrc/calc.py:2: in add\n1 failed, 1 passed in 0.02s\n",
    )
    assert verification_feedback(2, report(check)) == (
        "## Verification failed — iteration 2\n"
        "\n"
        "Failed level: L1 (tests). L1 failed: 1 of 1 checks failed (unit)\n"
        "Not run because of it: L2 (blackbox), L3 (sanity).\n"
        "\n"
        "### L1 check `unit` failed\n"
        "- kind: test\n"
        "- command: `pytest -q`\n"
        "- exit code: 1 (expected 0)\n"
        "- expected vs actual: exit code 0; got 1\n"
        "- output (last 4 lines):\n"
        "```\n"
        "F.\n"
        "calc_test.py:5: AssertionError\n"
        "src/calc.py:2: in add\n"
        "1 failed, 1 passed in 0.02s\n"
        "```\n"
        "\n"
        "Files to look at: calc_test.py:5, src/calc.py:2\n"
        "\n"
        "Do not edit the gate plan (verify.yaml) or test fixtures to make checks pass; fix the code instead."
    )


def test_timeout_blackbox_and_builtin_checks_exact_content() -> None:
    timeout = common_pb2.CheckResult(
        name="slow", kind="test", command="sleep 30", exit_code=143, output="started\n[timed out after 0.5s]"
    )
    assert "- expected vs actual: exit code 0 within the timeout; it timed out after 0.5s\n" in (
        verification_feedback(1, report(timeout))
    )
    blackbox = common_pb2.CheckResult(
        name="cli",
        kind="blackbox",
        command="python3 app.py",
        exit_code=0,
        output="PASS exit_code == 0\nFAIL stdout contains 'result: 5': not found\n--- stdout ---\nresult: -1",
    )
    text = verification_feedback(3, report(blackbox, level="L2", name="blackbox"))
    assert (
        "### L2 check `cli` failed\n"
        "- kind: blackbox\n"
        "- command: `python3 app.py`\n"
        "- exit code: 0 (expected 0)\n"
        "- expected vs actual:\n"
        "  - stdout contains 'result: 5': not found\n"
        "- output (last 4 lines):\n"
    ) in text
    assert "Not run because of it: L3 (sanity)." in text
    required = common_pb2.CheckResult(
        name="required_file:docs/API.md", kind="contract", exit_code=1, output="required file docs/API.md is missing"
    )
    security = common_pb2.CheckResult(
        name="security-scan",
        kind="security",
        command="scan of the change abc..def",
        exit_code=1,
        output="settings.py:3: aws-access-key: AKIA******** (20 chars)\n1 finding(s) in the change",
    )
    text = verification_feedback(1, report(required, security, level="L0", name="contracts"))
    assert (
        "### L0 check `required_file:docs/API.md` failed\n"
        "- kind: contract\n"
        "- command: (built-in check)\n"
        "- exit code: 1 (expected 0)\n"
        "- output (last 1 lines):\n"
        "```\n"
        "required file docs/API.md is missing\n"
        "```"
    ) in text
    assert "Not run because of it: L1 (tests), L2 (blackbox), L3 (sanity)." in text
    assert "Files to look at: docs/API.md, settings.py:3\n" in text


def test_budget_keeps_header_files_and_rule() -> None:
    noisy = common_pb2.CheckResult(
        name="unit", kind="test", command="pytest", exit_code=1, output="x" * 5000 + "\n" + "line\n" * 3000 + "a.py:1"
    )
    text = verification_feedback(1, report(noisy))
    assert len(text.encode()) <= MAX_FEEDBACK_BYTES
    assert "- output (last 20 lines):" in text  # the long line was cut, so 20 lines fit
    many = [
        common_pb2.CheckResult(name=f"check-{i}", kind="test", command=f"run {i} " + "y" * 150, exit_code=1,
                               output="z" * 300)
        for i in range(40)
    ]
    text = verification_feedback(4, report(*many))
    assert len(text.encode()) <= MAX_FEEDBACK_BYTES
    assert text.startswith("## Verification failed — iteration 4\n")
    assert text.endswith(GATE_RULE)
    assert "- output" not in text  # tails went first
    assert "more failed check(s): " in text and "`check-39`" in text


def test_agent_failure_exact_content() -> None:
    result = common_pb2.AgentResult(exit_code=1, stderr="Error: Reached max turns (2)\n")
    assert agent_failure_feedback(2, result) == (
        "## Agent failed — iteration 2\n"
        "\n"
        "The previous attempt exited with code 1.\n"
        "Its stderr (tail):\n"
        "```\n"
        "Error: Reached max turns (2)\n"
        "```\n"
        "\n"
        "Finish the task and exit with code 0.\n"
        "Do not edit the gate plan (verify.yaml) or test fixtures to make checks pass; fix the code instead."
    )
    timed_out = agent_failure_feedback(3, common_pb2.AgentResult(timed_out=True, stderr="x\n" * 9000))
    assert "The previous attempt timed out." in timed_out and len(timed_out.encode()) <= MAX_FEEDBACK_BYTES
    assert timed_out.endswith(GATE_RULE)
