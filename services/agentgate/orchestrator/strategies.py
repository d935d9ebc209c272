"""Loop strategies (SPEC §10): after each iteration, decide whether the run goes on.

A strategy is one callback, `on_iteration_complete(event) -> LoopDecision`, plus an
optional `on_loop_end(result)`. Strategies are plain Python: no network, no files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from agentgate.orchestrator.feedback import agent_failure_feedback, verification_feedback
from agentgate.v1 import common_pb2


@dataclass(frozen=True)
class IterationSummary:
    """What a strategy remembers of an earlier iteration."""

    iteration: int
    agent_success: bool
    passed: bool
    duration_seconds: float
    tokens: int


@dataclass
class IterationCompleteEvent:
    """Everything a strategy may look at after an iteration."""

    iteration: int
    max_iterations: int
    elapsed_seconds: float
    agent_result: common_pb2.AgentResult
    agent_success: bool
    verification_report: common_pb2.VerificationReport | None
    passed: bool
    run_id: str
    work_order_id: str
    previous: list[IterationSummary] = field(default_factory=list)


class LoopStrategy(Protocol):
    """The callback every strategy implements."""

    name: str

    def on_iteration_complete(self, event: IterationCompleteEvent) -> common_pb2.LoopDecision:
        """Decides whether to run another iteration, with a reason and feedback."""

    def on_loop_end(self, result: int) -> None:
        """Told the final LoopResult once the loop has ended."""


def feedback_for(event: IterationCompleteEvent) -> str:
    """The feedback the next iteration's prompt carries after this one."""
    if not event.agent_success:
        return agent_failure_feedback(event.iteration, event.agent_result)
    if event.verification_report is not None and not event.passed:
        return verification_feedback(event.iteration, event.verification_report)
    return ""


class FixedStrategy:
    """`fixed(max_iterations)`: stop when verification passed; otherwise go on until N."""

    name = "fixed"

    def __init__(self, max_iterations: int = 3):
        if max_iterations < 1:
            raise ValueError("max_iterations must be at least 1")
        self.max_iterations = max_iterations
        self.loop_result: int | None = None

    def on_iteration_complete(self, event: IterationCompleteEvent) -> common_pb2.LoopDecision:
        """Continue while verification fails and iterations remain."""
        if event.passed:
            return common_pb2.LoopDecision(should_continue=False, reason="Verification passed")
        if event.iteration >= self.max_iterations:
            return common_pb2.LoopDecision(
                should_continue=False,
                reason=f"Reached max iterations ({self.max_iterations}) without passing verification",
            )
        what = "Agent failed" if not event.agent_success else "Verification failed"
        return common_pb2.LoopDecision(
            should_continue=True,
            reason=f"{what}; iteration {event.iteration} of {self.max_iterations}, trying again",
            feedback=feedback_for(event),
        )

    def on_loop_end(self, result: int) -> None:
        """Remembers the final result (for metrics and tests)."""
        self.loop_result = result


def strategy_for(harness: common_pb2.HarnessSettings) -> LoopStrategy:
    """The strategy a resolved harness asks for."""
    mode = harness.loop_strategy.mode
    if mode in (common_pb2.LOOP_STRATEGY_MODE_FIXED, common_pb2.LOOP_STRATEGY_MODE_UNSPECIFIED):
        return FixedStrategy(harness.loop_strategy.max_iterations or 3)
    raise ValueError(f"loop strategy {common_pb2.LoopStrategyMode.Name(mode)} is not supported yet")
