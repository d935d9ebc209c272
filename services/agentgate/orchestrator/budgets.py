"""Token and cost budgets of a run (docs/harness.md `limits`): totals over every agent
execution, and the stop they force once exceeded.

Two checks. Inside an execution, the workspace's driver gets what is left (`remaining`, sent
with RunAgent) and stops the agent the moment it crosses it (workspace/drivers/budget.py):
the agent fails with BUDGET_EXCEEDED. Between iterations, a budget is checked once the
iteration's usage is known. The iteration's verification still runs: a change that passes the gate is delivered even if
it crossed the budget, because the tokens are spent either way; what the budget prevents
is the next iteration.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from agentgate.orchestrator.decisions import LoopDecision, LoopOutcome
from agentgate.v1 import common_pb2

BUDGET_RULES = ("token_budget", "cost_budget")


@dataclass
class RunBudget:
    """Usage so far against the limits (0 = no limit)."""

    max_total_tokens: int = 0
    max_cost_usd: float = 0.0
    tokens: common_pb2.TokenUsage = field(default_factory=common_pb2.TokenUsage)
    cost_usd: float = 0.0

    @classmethod
    def from_limits(cls, limits: common_pb2.LimitsSettings) -> RunBudget:
        """The budget a harness's limits set."""
        return cls(max_total_tokens=max(limits.max_total_tokens, 0), max_cost_usd=max(limits.max_cost_usd, 0.0))

    def add(self, result: common_pb2.AgentResult) -> None:
        """Counts one agent execution (every attempt costs, so every attempt counts)."""
        used = result.tokens
        self.tokens.input += used.input
        self.tokens.output += used.output
        self.tokens.total += used.total or used.input + used.output
        self.cost_usd += result.cost_usd

    def remaining(self) -> common_pb2.AgentBudget:
        """What the next agent execution may spend (0 = no cap). A cap already reached leaves
        the smallest positive amount, not 0, which would mean no cap at all."""
        budget = common_pb2.AgentBudget()
        if self.max_total_tokens:
            budget.max_tokens = max(self.max_total_tokens - self.tokens.total, 1)
        if self.max_cost_usd:
            budget.max_cost_usd = max(self.max_cost_usd - self.cost_usd, 1e-6)
        return budget

    def exceeded(self) -> tuple[str, str]:
        """(rule, reason) of the first budget exceeded, or ('', '')."""
        if self.max_total_tokens and self.tokens.total > self.max_total_tokens:
            return (
                "token_budget",
                f"Token budget exceeded: {self.tokens.total:,} tokens used, max_total_tokens is "
                f"{self.max_total_tokens:,}",
            )
        if self.max_cost_usd and self.cost_usd > self.max_cost_usd:
            return (
                "cost_budget",
                f"Cost budget exceeded: ${self.cost_usd:.4f} spent, max_cost_usd is ${self.max_cost_usd:.4f}",
            )
        return "", ""


def enforce(decision: LoopDecision, budget: RunBudget, passed: bool) -> LoopDecision:
    """The decision, or a stop (strategy_stop, with the budget as rule and reason) when the
    loop would go on but a budget is exceeded. A stopping decision keeps its own reason."""
    rule, reason = budget.exceeded()
    if passed or not decision.should_continue or not rule:
        return decision
    figures = {
        **decision.figures,
        "strategy_reason": decision.reason,
        "tokens_used": str(budget.tokens.total),
        "cost_usd": f"{budget.cost_usd:.4f}",
    }
    # No feedback: no iteration follows to read it.
    return replace(decision, outcome=LoopOutcome.STRATEGY_STOP, reason=reason, rule=rule, feedback="", figures=figures)
