"""The loop's decision after an iteration, as a typed value (docs/strategies.md).

Strategies and budgets produce and transform `LoopDecision`s; the run loop reads
`should_continue`, `reason`, `feedback` and `loop_result` off them. The wire form
(`agentgate.v1.LoopDecision`, whose `metadata` map programs read: `rule`, `loop_result`,
`strategy` and the figures the rule looked at) is made only where a decision is persisted
or emitted, by `to_proto()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from agentgate.v1 import common_pb2


class LoopOutcome(StrEnum):
    """What a decision says of the loop: go on, or why it ends. The values are the
    `loop_result` metadata spellings that clients read."""

    CONTINUE = "continue"
    SUCCESS = "success"
    MAX_ITERATIONS = "max_iterations"
    STRATEGY_STOP = "strategy_stop"


_LOOP_RESULTS = {
    LoopOutcome.SUCCESS: common_pb2.LOOP_RESULT_SUCCESS,
    LoopOutcome.MAX_ITERATIONS: common_pb2.LOOP_RESULT_MAX_ITERATIONS,
    LoopOutcome.STRATEGY_STOP: common_pb2.LOOP_RESULT_STRATEGY_STOP,
    # A `continue` that ended the loop (at the run loop's own iteration cap) ran out of iterations.
    LoopOutcome.CONTINUE: common_pb2.LOOP_RESULT_MAX_ITERATIONS,
}


@dataclass(frozen=True)
class LoopDecision:
    """Whether the loop goes on after an iteration, which rule decided, why (for people)
    and the feedback the next prompt carries."""

    outcome: LoopOutcome
    reason: str
    #: The rule that decided: passed, max_iterations, progress, no_changes, token_budget, ...
    rule: str
    feedback: str = ""
    #: The strategy that decided ('' until the strategy names itself).
    strategy: str = ""
    #: The figures the rule looked at, as text (`failed_checks`, `no_change_streak`, ...).
    figures: Mapping[str, str] = field(default_factory=dict)

    @property
    def should_continue(self) -> bool:
        """Whether another iteration runs."""
        return self.outcome is LoopOutcome.CONTINUE

    @property
    def loop_result(self) -> common_pb2.LoopResult.ValueType:
        """The run's LoopResult when the loop ends on this decision."""
        return _LOOP_RESULTS[self.outcome]

    def to_proto(self) -> common_pb2.LoopDecision:
        """The wire form, with rule, loop_result, strategy and figures in `metadata`."""
        metadata = {"rule": self.rule, "loop_result": self.outcome.value, **self.figures}
        if self.strategy:
            metadata["strategy"] = self.strategy
        return common_pb2.LoopDecision(
            should_continue=self.should_continue, reason=self.reason, feedback=self.feedback, metadata=metadata
        )
