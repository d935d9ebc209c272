"""Loop strategies (docs/strategies.md): fixed, hybrid, ralph, loop detection, completion signals,
and the budgets that can stop a loop. Every decision's reason is asserted."""

from __future__ import annotations

import inspect

import pytest

from agentgate.harness import loop_parameters
from agentgate.orchestrator import budgets
from agentgate.orchestrator.decisions import LoopDecision, LoopOutcome
from agentgate.orchestrator.strategies import (
    FixedStrategy,
    HybridStrategy,
    IterationCompleteEvent,
    RalphStrategy,
    similarity,
    strategy_for,
)
from agentgate.v1 import common_pb2

M = common_pb2.LoopStrategyMode


def report(failed: int, total: int, output: str = "assert 1 == 2", levels: dict | None = None) -> common_pb2.VerificationReport:
    """A gate report: one L1 level with `total` checks, the first `failed` of them failing
    (or the levels given as {level: (failed, total)})."""
    levels = levels or {"L1": (failed, total)}
    built = common_pb2.VerificationReport(passed=all(f == 0 for f, _ in levels.values()), summary="gate")
    for name, (bad, count) in levels.items():
        level = built.levels.add(level=name, name=name.lower(), ran=True, passed=bad == 0)
        for i in range(count):
            level.checks.add(name=f"check{i}", kind="test", passed=i >= bad, exit_code=1 if i < bad else 0,
                             output=output if i < bad else "ok")
    return built


def event(iteration: int, gate: common_pb2.VerificationReport | None = None, *, agent_ok: bool = True,
          has_changes: bool = True, stdout: str = "") -> IterationCompleteEvent:
    gate = gate if gate is not None or not agent_ok else report(1, 1)
    return IterationCompleteEvent(
        iteration=iteration,
        max_iterations=10,
        elapsed_seconds=float(iteration),
        agent_result=common_pb2.AgentResult(success=agent_ok, exit_code=0 if agent_ok else 2, stdout=stdout,
                                            stderr="" if agent_ok else "boom"),
        agent_success=agent_ok,
        verification_report=gate if agent_ok else None,
        passed=bool(agent_ok and gate is not None and gate.passed),
        run_id="run-1",
        work_order_id="wo-1",
        has_changes=has_changes,
    )


def passing() -> common_pb2.VerificationReport:
    return report(0, 2)


class TestFixed:
    def test_continues_after_1_and_2_and_stops_after_3(self):
        strategy = FixedStrategy(3)
        first = strategy.on_iteration_complete(event(1))
        second = strategy.on_iteration_complete(event(2))
        third = strategy.on_iteration_complete(event(3))
        assert first.should_continue and second.should_continue and not third.should_continue
        assert first.reason == "Verification failed; iteration 1 of 3, trying again"
        assert second.reason == "Verification failed; iteration 2 of 3, trying again"
        assert third.reason == "Reached max iterations (3) without passing verification"
        assert [d.outcome for d in (first, second, third)] == ["continue", "continue", "max_iterations"]
        assert third.loop_result == common_pb2.LOOP_RESULT_MAX_ITERATIONS
        assert first.feedback.startswith("## Verification failed — iteration 1")
        assert third.strategy == "fixed"

    def test_the_wire_form_carries_rule_outcome_strategy_and_figures(self):
        decision = FixedStrategy(3).on_iteration_complete(event(1))
        wire = decision.to_proto()
        assert (wire.should_continue, wire.reason, wire.feedback) == (True, decision.reason, decision.feedback)
        assert dict(wire.metadata) == {
            "rule": "iterations_left", "loop_result": "continue", "strategy": "fixed", "max_iterations": "3",
            "no_change_streak": "0",
        }

    def test_stops_at_once_on_a_pass(self):
        decision = FixedStrategy(3).on_iteration_complete(event(1, passing()))
        assert not decision.should_continue
        assert decision.reason == "Verification passed"
        assert decision.rule == "passed"
        assert decision.loop_result == common_pb2.LOOP_RESULT_SUCCESS

    def test_agent_failure_is_named_and_fed_back(self):
        decision = FixedStrategy(3).on_iteration_complete(event(1, agent_ok=False))
        assert decision.reason == "Agent failed; iteration 1 of 3, trying again"
        assert "Agent failed — iteration 1" in decision.feedback and "boom" in decision.feedback

    def test_on_loop_end_records_the_result(self):
        strategy = FixedStrategy(1)
        strategy.on_loop_end(common_pb2.LOOP_RESULT_TIMEOUT)
        assert strategy.loop_result == common_pb2.LOOP_RESULT_TIMEOUT


class TestHybrid:
    def test_bonus_iterations_only_while_failed_checks_fall(self):
        strategy = HybridStrategy(base_iterations=2, max_bonus_iterations=2)
        decisions = [strategy.on_iteration_complete(event(i, report(f, 4))) for i, f in enumerate((4, 3, 2, 1), 1)]
        assert [d.should_continue for d in decisions] == [True, True, True, False]
        assert decisions[0].reason == "Verification failed; base iteration 1 of 2, trying again"
        assert decisions[1].reason == (
            "Progress: failed checks fell from 4/4 (100%) to 3/4 (75%) (threshold 10%); bonus iteration 1 of 2"
        )
        assert decisions[2].reason == (
            "Progress: failed checks fell from 3/4 (75%) to 2/4 (50%) (threshold 10%); bonus iteration 2 of 2"
        )
        assert decisions[3].reason == "Reached max iterations (2 base + 2 bonus) without passing verification"
        assert [d.rule for d in decisions] == ["base_iteration", "progress", "progress", "max_iterations"]
        assert decisions[1].figures["failed_checks"] == "3/4 (75%)"

    def test_stops_on_no_progress_after_the_base(self):
        strategy = HybridStrategy(base_iterations=2, max_bonus_iterations=2)
        first = strategy.on_iteration_complete(event(1, report(3, 4)))
        second = strategy.on_iteration_complete(event(2, report(3, 4)))
        assert first.should_continue  # base iterations always run, progress or not
        assert not second.should_continue
        assert second.reason == (
            "No progress: failed checks went from 3/4 (75%) to 3/4 (75%), a fall below the threshold of 10%, "
            "and no level newly passed; stopping after 2 iteration(s) (2 base + 0 bonus)"
        )
        assert second.loop_result == common_pb2.LOOP_RESULT_STRATEGY_STOP

    def test_progress_then_stall_stops_in_the_bonus(self):
        strategy = HybridStrategy(base_iterations=2, max_bonus_iterations=2)
        decisions = [strategy.on_iteration_complete(event(i, report(f, 4))) for i, f in enumerate((4, 2, 2), 1)]
        assert [d.should_continue for d in decisions] == [True, True, False]
        assert decisions[2].reason.endswith("stopping after 3 iteration(s) (2 base + 1 bonus)")

    def test_threshold_is_used(self):
        # A fall of 1/10 is progress at threshold 0.1, not at 0.2.
        low = HybridStrategy(base_iterations=1, max_bonus_iterations=2, progress_threshold=0.1)
        high = HybridStrategy(base_iterations=1, max_bonus_iterations=2, progress_threshold=0.2)
        for strategy in (low, high):
            strategy.on_iteration_complete(event(1, report(5, 10)))
        assert low.on_iteration_complete(event(2, report(4, 10))).should_continue
        stalled = high.on_iteration_complete(event(2, report(4, 10)))
        assert not stalled.should_continue and "threshold of 20%" in stalled.reason

    def test_a_level_that_passes_after_failing_is_progress(self):
        strategy = HybridStrategy(base_iterations=1, max_bonus_iterations=2, progress_threshold=0.5)
        strategy.on_iteration_complete(event(1, report(0, 0, levels={"L0": (1, 2)})))
        decision = strategy.on_iteration_complete(event(2, report(0, 0, levels={"L0": (0, 2), "L1": (1, 2)})))
        assert decision.should_continue
        assert decision.reason.startswith("Progress: level(s) L0 passed after failing before (threshold 50%)")

    def test_single_base_iteration_has_nothing_to_compare(self):
        decision = HybridStrategy(base_iterations=1, max_bonus_iterations=2).on_iteration_complete(event(1))
        assert not decision.should_continue
        assert decision.reason.startswith("No progress measurable after 1 iteration(s)")

    def test_a_failed_agent_is_no_progress(self):
        strategy = HybridStrategy(base_iterations=2, max_bonus_iterations=2)
        strategy.on_iteration_complete(event(1, report(2, 4)))
        decision = strategy.on_iteration_complete(event(2, agent_ok=False))
        assert not decision.should_continue
        assert "from 2/4 (50%) to nothing verified" in decision.reason

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [({"base_iterations": 0}, "base_iterations"), ({"max_bonus_iterations": -1}, "max_bonus_iterations"),
         ({"progress_threshold": 0}, "progress_threshold"), ({"progress_threshold": 1.5}, "progress_threshold")],
    )
    def test_bad_parameters(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            HybridStrategy(**kwargs)


class TestRalph:
    def test_stops_on_three_converged_iterations(self):
        strategy = RalphStrategy(min_iterations=2, max_iterations=10, window_size=3)
        decisions = [strategy.on_iteration_complete(event(i, report(1, 2, "FAILED test_add: 3 != 5"))) for i in (1, 2, 3)]
        assert [d.should_continue for d in decisions] == [True, True, False]
        assert decisions[0].reason == "Verification failed; iteration 1 of at least 2, trying again"
        assert decisions[1].reason == (
            "Verification failed; 2 of the 3 iterations needed to judge convergence; iteration 2 of at most 10"
        )
        assert decisions[2].reason == (
            "Converged: the last 3 iterations failed the same checks (L1/check0) with outputs at least 95% "
            "similar (lowest 100%)"
        )
        assert decisions[2].rule == "converged"
        assert decisions[2].loop_result == common_pb2.LOOP_RESULT_STRATEGY_STOP

    def test_changing_outputs_do_not_converge_and_run_to_max(self):
        strategy = RalphStrategy(min_iterations=2, max_iterations=5, window_size=3)
        outputs = ["AssertionError: expected 5 got 1", "TypeError: unsupported operand", "NameError: name 'x'",
                   "ZeroDivisionError: division by zero", "KeyError: 'total'"]
        decisions = [strategy.on_iteration_complete(event(i, report(1, 1, out))) for i, out in enumerate(outputs, 1)]
        assert [d.should_continue for d in decisions] == [True, True, True, True, False]
        assert decisions[2].rule == "not_converged"
        assert "not converged over the last 3 iterations (outputs only" in decisions[2].reason
        assert decisions[4].reason == "Reached max iterations (5) without passing verification or converging"

    def test_different_failing_checks_do_not_converge(self):
        strategy = RalphStrategy(min_iterations=1, max_iterations=10, window_size=2)
        strategy.on_iteration_complete(event(1, report(1, 2)))
        decision = strategy.on_iteration_complete(event(2, report(2, 2)))
        assert decision.should_continue and "(the failing checks changed)" in decision.reason

    def test_min_iterations_and_threshold_are_used(self):
        strategy = RalphStrategy(min_iterations=4, max_iterations=10, window_size=3)
        same = [strategy.on_iteration_complete(event(i, report(1, 1, "same"))) for i in (1, 2, 3, 4)]
        assert [d.should_continue for d in same] == [True, True, True, False]
        assert same[2].rule == "min_iterations"
        # 'abcdefghij' vs 'abcdefghiX' are 90% alike: converged at 0.9, not at 0.95.
        lenient = RalphStrategy(min_iterations=1, max_iterations=10, window_size=2, convergence_threshold=0.9)
        strict = RalphStrategy(min_iterations=1, max_iterations=10, window_size=2, convergence_threshold=0.95)
        for strategy in (lenient, strict):
            strategy.on_iteration_complete(event(1, report(1, 1, "abcdefghij")))
        assert not lenient.on_iteration_complete(event(2, report(1, 1, "abcdefghiX"))).should_continue
        assert strict.on_iteration_complete(event(2, report(1, 1, "abcdefghiX"))).should_continue

    def test_durations_in_outputs_are_not_differences(self):
        strategy = RalphStrategy(min_iterations=1, max_iterations=10, window_size=2)
        strategy.on_iteration_complete(event(1, report(1, 1, "1 failed in 0.12s")))
        assert not strategy.on_iteration_complete(event(2, report(1, 1, "1 failed in 3.40s"))).should_continue

    def test_repeated_identical_agent_failures_converge(self):
        strategy = RalphStrategy(min_iterations=1, max_iterations=10, window_size=2)
        strategy.on_iteration_complete(event(1, agent_ok=False))
        decision = strategy.on_iteration_complete(event(2, agent_ok=False))
        assert not decision.should_continue and "(agent)" in decision.reason

    def test_bad_parameters(self):
        with pytest.raises(ValueError, match="min_iterations"):
            RalphStrategy(min_iterations=5, max_iterations=3, window_size=2)
        with pytest.raises(ValueError, match="window_size"):
            RalphStrategy(window_size=1)
        with pytest.raises(ValueError, match="convergence_threshold"):
            RalphStrategy(convergence_threshold=0)


def test_similarity():
    assert similarity("abc", "abc") == 1.0
    assert similarity("abcdefghij", "abcdefghiX") == pytest.approx(0.9)
    assert similarity("", "xyz") == 0.0


class TestLoopDetection:
    @pytest.mark.parametrize("strategy", [FixedStrategy(5), HybridStrategy(3, 2), RalphStrategy(2, 10, 3)])
    def test_every_strategy_stops_after_two_iterations_without_changes(self, strategy):
        first = strategy.on_iteration_complete(event(1, report(1, 2), has_changes=False))
        second = strategy.on_iteration_complete(event(2, report(1, 2), has_changes=False))
        assert first.should_continue and first.figures["no_change_streak"] == "1"
        assert not second.should_continue
        assert second.reason == (
            "Loop detected: the agent changed nothing in the workspace for 2 iteration(s) in a row "
            "(iterations 1-2; no_change_limit 2)"
        )
        assert second.rule == "no_changes"
        assert second.loop_result == common_pb2.LOOP_RESULT_STRATEGY_STOP

    def test_a_change_resets_the_streak(self):
        strategy = FixedStrategy(5)
        changes = [False, True, False, True]
        assert all(strategy.on_iteration_complete(event(i, has_changes=c)).should_continue
                   for i, c in enumerate(changes, 1))

    def test_limit_is_used_and_zero_turns_it_off(self):
        one = FixedStrategy(5, no_change_limit=1)
        decision = one.on_iteration_complete(event(1, has_changes=False))
        assert not decision.should_continue and "(iteration 1; no_change_limit 1)" in decision.reason
        off = FixedStrategy(5, no_change_limit=0)
        assert all(off.on_iteration_complete(event(i, has_changes=False)).should_continue for i in (1, 2, 3, 4))

    def test_only_stops_a_loop_that_would_go_on(self):
        # At the cap (or on the strategy's own stop) the strategy's reason stands.
        strategy = FixedStrategy(2)
        strategy.on_iteration_complete(event(1, has_changes=False))
        last = strategy.on_iteration_complete(event(2, has_changes=False))
        assert last.reason == "Reached max iterations (2) without passing verification"
        assert last.loop_result == common_pb2.LOOP_RESULT_MAX_ITERATIONS
        assert last.figures["no_change_streak"] == "2"

    def test_a_pass_wins(self):
        strategy = FixedStrategy(5, no_change_limit=1)
        decision = strategy.on_iteration_complete(event(1, passing(), has_changes=False))
        assert decision.reason == "Verification passed"


class TestCompletionSignals:
    def test_first_claim_with_a_failing_gate_is_rejected_the_second_stops(self):
        strategy = FixedStrategy(5, completion_signals=["TASK COMPLETE"])
        first = strategy.on_iteration_complete(event(1, stdout="all done. TASK COMPLETE\n"))
        assert first.should_continue
        assert first.reason == (
            "Verification failed; iteration 1 of 5, trying again; the agent signalled completion "
            "('TASK COMPLETE') but the gate did not pass, so the claim is rejected"
        )
        assert first.feedback.startswith("Note: you reported the task complete ('TASK COMPLETE')")
        assert "## Verification failed — iteration 1" in first.feedback
        assert first.figures["completion_signal"] == "TASK COMPLETE"
        second = strategy.on_iteration_complete(event(2, stdout="TASK COMPLETE"))
        assert not second.should_continue
        assert second.reason == (
            "The agent signalled completion ('TASK COMPLETE') in iterations 1 and 2, but the gate still fails "
            "(verification failed)"
        )
        assert second.rule == "completion_claimed"
        assert second.loop_result == common_pb2.LOOP_RESULT_STRATEGY_STOP

    def test_claims_must_be_consecutive(self):
        strategy = FixedStrategy(5, completion_signals=["DONE"])
        outputs = ["DONE", "working", "DONE"]
        assert all(strategy.on_iteration_complete(event(i, stdout=o)).should_continue for i, o in enumerate(outputs, 1))

    def test_a_claim_with_a_passing_gate_succeeds(self):
        decision = FixedStrategy(5, completion_signals=["DONE"]).on_iteration_complete(event(1, passing(), stdout="DONE"))
        assert decision.reason == "Verification passed (the agent signalled completion: 'DONE')"
        assert decision.loop_result == common_pb2.LOOP_RESULT_SUCCESS

    def test_no_signal_configured_means_no_claim(self):
        decision = FixedStrategy(5).on_iteration_complete(event(1, stdout="DONE"))
        assert "completion_signal" not in decision.figures

    def test_blank_signal_refused(self):
        with pytest.raises(ValueError, match="blank"):
            FixedStrategy(3, completion_signals=[" "])


class TestStrategyFor:
    def test_every_parameter_reaches_the_strategy(self):
        loop = common_pb2.LoopStrategySettings(
            mode=M.LOOP_STRATEGY_MODE_RALPH, min_iterations=3, max_iterations=7, window_size=4,
            convergence_threshold=0.8, no_change_limit=3, completion_signals=["OK"],
        )
        ralph = strategy_for(common_pb2.HarnessSettings(loop_strategy=loop))
        assert isinstance(ralph, RalphStrategy)
        assert (ralph.min_iterations, ralph.max_iterations, ralph.window_size, ralph.convergence_threshold) == (3, 7, 4, 0.8)
        assert ralph.no_change_limit == 3 and ralph.completion_signals == ("OK",)
        loop = common_pb2.LoopStrategySettings(
            mode=M.LOOP_STRATEGY_MODE_HYBRID, base_iterations=4, max_bonus_iterations=1, progress_threshold=0.3
        )
        hybrid = strategy_for(common_pb2.HarnessSettings(loop_strategy=loop))
        assert isinstance(hybrid, HybridStrategy)
        assert (hybrid.base_iterations, hybrid.max_bonus_iterations, hybrid.progress_threshold) == (4, 1, 0.3)
        assert hybrid.max_iterations == 5 and hybrid.no_change_limit == 2
        fixed = strategy_for(common_pb2.HarnessSettings())
        assert isinstance(fixed, FixedStrategy) and fixed.max_iterations == 3

    def test_unknown_mode(self):
        with pytest.raises(ValueError, match="unknown loop strategy mode 9"):
            strategy_for(common_pb2.HarnessSettings(loop_strategy=common_pb2.LoopStrategySettings(mode=9)))

    @pytest.mark.parametrize(
        ("cls", "mode"),
        [(FixedStrategy, M.LOOP_STRATEGY_MODE_FIXED), (HybridStrategy, M.LOOP_STRATEGY_MODE_HYBRID),
         (RalphStrategy, M.LOOP_STRATEGY_MODE_RALPH)],
    )
    def test_constructor_defaults_are_the_resolved_defaults(self, cls, mode):
        defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        assert defaults == loop_parameters.STRATEGY_DEFAULTS[mode]


class TestBudgets:
    def test_totals_and_token_budget(self):
        budget = budgets.RunBudget.from_limits(common_pb2.LimitsSettings(max_total_tokens=1000))
        budget.add(common_pb2.AgentResult(tokens=common_pb2.TokenUsage(input=300, output=200, total=500)))
        budget.add(common_pb2.AgentResult(tokens=common_pb2.TokenUsage(input=400, output=100)))  # total derived
        assert (budget.tokens.input, budget.tokens.output, budget.tokens.total) == (700, 300, 1000)
        assert budget.exceeded() == ("", "")  # at the budget is not over it
        budget.add(common_pb2.AgentResult(tokens=common_pb2.TokenUsage(total=1)))
        assert budget.exceeded() == (
            "token_budget", "Token budget exceeded: 1,001 tokens used, max_total_tokens is 1,000"
        )

    def test_cost_budget(self):
        budget = budgets.RunBudget.from_limits(common_pb2.LimitsSettings(max_cost_usd=0.5))
        budget.add(common_pb2.AgentResult(cost_usd=0.75))
        assert budget.exceeded() == ("cost_budget", "Cost budget exceeded: $0.7500 spent, max_cost_usd is $0.5000")

    def test_no_limits_never_exceeded(self):
        budget = budgets.RunBudget.from_limits(common_pb2.LimitsSettings())
        budget.add(common_pb2.AgentResult(tokens=common_pb2.TokenUsage(total=10**9), cost_usd=10**6))
        assert budget.exceeded() == ("", "")

    def test_enforce_stops_a_failing_run_but_never_a_passed_one(self):
        budget = budgets.RunBudget(max_total_tokens=10)
        budget.add(common_pb2.AgentResult(tokens=common_pb2.TokenUsage(total=11)))
        going_on = LoopDecision(LoopOutcome.CONTINUE, "iteration 1 of 3", "iterations_left", "feedback", "fixed")
        stopped = budgets.enforce(going_on, budget, passed=False)
        assert not stopped.should_continue
        assert stopped.reason == "Token budget exceeded: 11 tokens used, max_total_tokens is 10"
        assert stopped.rule == "token_budget" and stopped.figures["strategy_reason"] == "iteration 1 of 3"
        assert stopped.strategy == "fixed" and not stopped.feedback
        assert stopped.loop_result == common_pb2.LOOP_RESULT_STRATEGY_STOP
        passed = LoopDecision(LoopOutcome.SUCCESS, "Verification passed", "passed")
        assert budgets.enforce(passed, budget, passed=True) is passed
        at_the_cap = LoopDecision(LoopOutcome.MAX_ITERATIONS, "Reached max iterations (3)", "max_iterations")
        assert budgets.enforce(at_the_cap, budget, passed=False) is at_the_cap
