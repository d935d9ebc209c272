"""Plain orchestrator logic: state machine, fixed strategy, feedback, errors, prompt, harness."""

from __future__ import annotations

import pytest

from agentgate.harness.resolution import resolve_harness
from agentgate.orchestrator import build_errors
from agentgate.orchestrator.feedback import MAX_FEEDBACK_BYTES, agent_failure_feedback, verification_feedback
from agentgate.orchestrator.prompt import assemble_prompt
from agentgate.orchestrator.run_state import IllegalTransition, check_transition, transition
from agentgate.orchestrator.strategies import FixedStrategy, IterationCompleteEvent, strategy_for
from agentgate.v1 import common_pb2

S = common_pb2.RunState
T = common_pb2.BuildErrorType


def failing_report(output: str = "FAILED test_calc.py::test_add - assert -1 == 5\n1 failed, 1 passed") -> (
    common_pb2.VerificationReport
):
    return common_pb2.VerificationReport(
        passed=False,
        summary="L1 failed: 1 of 1 checks failed (unit)",
        levels=[
            common_pb2.LevelResult(level="L0", name="contracts", ran=True, passed=True),
            common_pb2.LevelResult(
                level="L1",
                name="tests",
                ran=True,
                passed=False,
                checks=[
                    common_pb2.CheckResult(
                        name="unit", kind="test", command="pytest -q", passed=False, exit_code=1, output=output
                    )
                ],
            ),
        ],
    )


def event(iteration: int, passed: bool, agent_ok: bool = True, report=None) -> IterationCompleteEvent:
    return IterationCompleteEvent(
        iteration=iteration,
        max_iterations=3,
        elapsed_seconds=1.0,
        agent_result=common_pb2.AgentResult(success=agent_ok, exit_code=0 if agent_ok else 2, stderr="boom\n"),
        agent_success=agent_ok,
        verification_report=report if report is not None else (None if not agent_ok else failing_report()),
        passed=passed,
        run_id="run-1",
        work_order_id="wo-1",
    )


class TestRunState:
    def test_happy_path_is_legal(self):
        run = common_pb2.Run()
        for state in (
            S.RUN_STATE_PREPARING, S.RUN_STATE_BUILDING, S.RUN_STATE_SNAPSHOTTING, S.RUN_STATE_VERIFYING,
            S.RUN_STATE_FEEDBACK, S.RUN_STATE_BUILDING, S.RUN_STATE_SNAPSHOTTING, S.RUN_STATE_VERIFYING,
            S.RUN_STATE_DELIVERING, S.RUN_STATE_SUCCEEDED,
        ):
            transition(run, state)
        assert run.state == S.RUN_STATE_SUCCEEDED

    def test_illegal_transition_fails_loudly(self):
        with pytest.raises(IllegalTransition, match="RUN_STATE_PREPARING -> RUN_STATE_VERIFYING"):
            check_transition(S.RUN_STATE_PREPARING, S.RUN_STATE_VERIFYING)

    def test_terminal_states_never_change(self):
        with pytest.raises(IllegalTransition):
            check_transition(S.RUN_STATE_FAILED, S.RUN_STATE_CANCELED)

    def test_failure_reachable_from_any_active_state(self):
        for state in (S.RUN_STATE_PREPARING, S.RUN_STATE_BUILDING, S.RUN_STATE_VERIFYING):
            check_transition(state, S.RUN_STATE_FAILED)
            check_transition(state, S.RUN_STATE_CANCELED)


class TestFixedStrategy:
    def test_stops_when_passed(self):
        decision = FixedStrategy(3).on_iteration_complete(event(1, passed=True, report=common_pb2.VerificationReport(passed=True)))
        assert not decision.should_continue
        assert decision.reason == "Verification passed"

    def test_continues_with_feedback_until_max(self):
        strategy = FixedStrategy(2)
        first = strategy.on_iteration_complete(event(1, passed=False))
        assert first.should_continue
        assert "iteration 1 of 2" in first.reason
        assert "Verification failed — iteration 1" in first.feedback
        second = strategy.on_iteration_complete(event(2, passed=False))
        assert not second.should_continue
        assert "max iterations (2)" in second.reason

    def test_agent_failure_feedback(self):
        decision = FixedStrategy(3).on_iteration_complete(event(1, passed=False, agent_ok=False))
        assert decision.should_continue
        assert "Agent failed — iteration 1" in decision.feedback
        assert "boom" in decision.feedback

    def test_max_iterations_must_be_positive(self):
        with pytest.raises(ValueError):
            FixedStrategy(0)

    def test_strategy_for_resolved_harness(self, home):
        strategy = strategy_for(resolve_harness(common_pb2.HarnessSettings()))
        assert isinstance(strategy, FixedStrategy) and strategy.max_iterations == 3


class TestFeedback:
    def test_content(self):
        text = verification_feedback(2, failing_report())
        assert text.startswith("## Verification failed — iteration 2")
        assert "Failed level: L1 (tests)" in text
        assert "`unit`" in text and "`pytest -q`" in text
        assert "exit code: 1 (expected 0)" in text
        assert "1 failed, 1 passed" in text
        assert "Files to look at: " not in text or "test_calc.py" in text
        assert "Do not edit the gate plan" in text

    def test_files_to_look_at(self):
        report = failing_report("src/calc.py:4: AssertionError\ntests/test_calc.py:12: in test_add")
        text = verification_feedback(1, report)
        assert "Files to look at: src/calc.py:4, tests/test_calc.py:12" in text

    def test_capped_at_4kb(self):
        report = failing_report("x" * 100 + "\n" + ("line\n" * 5000))
        report.levels[1].checks.extend([report.levels[1].checks[0]] * 40)
        text = verification_feedback(1, report)
        assert len(text.encode()) <= MAX_FEEDBACK_BYTES

    def test_agent_timeout_feedback(self):
        text = agent_failure_feedback(3, common_pb2.AgentResult(timed_out=True))
        assert "timed out" in text


class TestBuildErrors:
    def test_from_report_counts_pytest_failures(self):
        error = build_errors.from_verification_report(failing_report("3 failed, 2 passed"), "verification-2.json", "agent-2.json")
        assert error.type == T.BUILD_ERROR_TYPE_TEST_FAILED
        assert error.message == "Test execution failed (3 failed)"
        assert build_errors.error_string(error) == (
            "Test execution failed (3 failed). Details: agent-2.json, verification-2.json"
        )

    @pytest.mark.parametrize(
        ("name", "output", "expected_type", "count"),
        [
            ("mypy", "Found 4 errors in 2 files (checked 9 source files)", T.BUILD_ERROR_TYPE_TYPECHECK_FAILED, "4 errors in 2 files"),
            ("ruff check", "Found 7 errors.", T.BUILD_ERROR_TYPE_LINT_FAILED, "7 errors"),
            ("tsc", "a.ts(1,1): error TS2322: x\nb.ts(2,2): error TS2304: y", T.BUILD_ERROR_TYPE_TYPECHECK_FAILED, "2 errors"),
        ],
    )
    def test_kindless_checks_classified_by_name(self, name, output, expected_type, count):
        check = common_pb2.CheckResult(name=name, command=name, output=output)
        assert build_errors.classify_check(check) == expected_type
        assert build_errors.failure_count(output) == count

    def test_from_agent_result(self):
        crash = build_errors.from_agent_result(common_pb2.AgentResult(exit_code=1, stderr="oops"), "agent-1.json")
        assert crash.type == T.BUILD_ERROR_TYPE_AGENT_CRASH
        assert crash.message == "Agent crashed with exit code 1"
        timeout = build_errors.from_agent_result(common_pb2.AgentResult(timed_out=True, duration_seconds=300))
        assert timeout.type == T.BUILD_ERROR_TYPE_AGENT_TIMEOUT
        assert "after 300s" in timeout.message
        assert build_errors.from_agent_result(common_pb2.AgentResult(exit_code=137)).type == T.BUILD_ERROR_TYPE_AGENT_TIMEOUT

    def test_from_exception_keeps_traceback_tail(self):
        try:
            raise RuntimeError("disk on fire")
        except RuntimeError as exc:
            error = build_errors.from_exception(exc)
        assert error.type == T.BUILD_ERROR_TYPE_SYSTEM_ERROR
        assert "disk on fire" in error.message
        assert "RuntimeError" in error.stderr_tail

    def test_every_type_has_a_description(self):
        for value in common_pb2.BuildErrorType.values():
            if value:
                assert build_errors.DESCRIPTIONS[value]


def test_prompt_order():
    prompt = assemble_prompt("Do X", rules="Be nice", gate_plan_summary="pytest", feedback="it failed", extra_instructions="hurry")
    positions = [prompt.index(part) for part in ("Do X", "Be nice", "pytest", "it failed", "hurry")]
    assert positions == sorted(positions)
    assert "Feedback" not in assemble_prompt("Do X")


def test_harness_defaults_and_overrides(home):
    resolved = resolve_harness(common_pb2.HarnessSettings())
    assert resolved.loop_strategy.max_iterations == 3
    assert resolved.limits.max_wall_clock_seconds == 3600
    assert resolved.limits.agent_timeout_seconds == 300
    assert resolved.profile == "default"
    custom = common_pb2.HarnessSettings()
    custom.loop_strategy.max_iterations = 5
    assert resolve_harness(custom).loop_strategy.max_iterations == 5
