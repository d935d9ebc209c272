"""Hard budgets inside one agent execution (docs/agents.md, "Budgets").

The orchestrator knows what a run has spent and sends what is left with each RunAgent call
(`RunAgentRequest.budget`, an `AgentBudget`: tokens and dollars, 0 = no cap). A driver of a
CLI that prints its usage while it runs keeps a running total in a `BudgetMeter` and the
process is stopped (SIGTERM, then SIGKILL after the grace period) the moment the total
crosses the cap, rather than after the execution as the loop's own check would.

How a driver uses it (`run_stream_cli` does all of this for stream parsers that implement
`running_usage()`):

    meter = BudgetMeter(invocation.budget)
    process = await run_process(..., stop=meter.stop)      # stop is an asyncio.Event
    ...  # for each event of the stream:
    meter.update(tokens=total_tokens_so_far, cost_usd=cost_so_far)   # running totals
    ...  # after the process ended:
    meter.apply(result)   # a crossed cap -> success False, BUDGET_EXCEEDED, its message

`update` takes running totals of this execution (not deltas), so a parser may report the
same figure twice. The partial result (tool calls, session id, tokens at the stop) is kept.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from agentgate.v1 import common_pb2

T = common_pb2.BuildErrorType


@dataclass(frozen=True)
class AgentBudget:
    """What one agent execution may spend (0 = no cap)."""

    max_tokens: int = 0
    max_cost_usd: float = 0.0

    @classmethod
    def from_proto(cls, budget: common_pb2.AgentBudget) -> AgentBudget:
        """The budget of a RunAgent request (negative figures mean no cap)."""
        return cls(max_tokens=max(budget.max_tokens, 0), max_cost_usd=max(budget.max_cost_usd, 0.0))

    def capped(self) -> bool:
        """Whether there is any cap at all."""
        return bool(self.max_tokens or self.max_cost_usd)


@dataclass
class BudgetMeter:
    """Running usage of one agent execution against its budget.

    `stop` is set the first time a cap is crossed; pass it to `run_process(stop=...)`.
    """

    budget: AgentBudget = field(default_factory=AgentBudget)
    tokens: int = 0
    cost_usd: float = 0.0
    #: Why the execution was stopped ('' while within budget).
    reason: str = ""
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def update(self, *, tokens: int | None = None, cost_usd: float | None = None) -> bool:
        """Records running totals (never lowered); returns True the first time a cap is
        crossed, which sets `stop`."""
        if tokens is not None:
            self.tokens = max(self.tokens, int(tokens))
        if cost_usd is not None:
            self.cost_usd = max(self.cost_usd, float(cost_usd))
        if self.reason:
            return False
        if self.budget.max_tokens and self.tokens > self.budget.max_tokens:
            self.reason = (
                f"Token budget exceeded: the agent had used {self.tokens:,} tokens, "
                f"{self.budget.max_tokens:,} were left of the run's max_total_tokens"
            )
        elif self.budget.max_cost_usd and self.cost_usd > self.budget.max_cost_usd:
            self.reason = (
                f"Cost budget exceeded: the agent had spent ${self.cost_usd:.4f}, "
                f"${self.budget.max_cost_usd:.4f} was left of the run's max_cost_usd"
            )
        if self.reason:
            self.stop.set()
            return True
        return False

    @property
    def exceeded(self) -> bool:
        """Whether a cap was crossed."""
        return bool(self.reason)

    def apply(self, result: common_pb2.AgentResult) -> None:
        """Marks a result whose execution crossed a cap: failed, BUDGET_EXCEEDED, the reason;
        the figures the stream gave are kept, and raised to the meter's when the result has
        less (an agent killed before its final usage report)."""
        if not self.reason:
            return
        result.success = False
        result.error_type = T.BUILD_ERROR_TYPE_BUDGET_EXCEEDED
        result.error_message = self.reason
        if result.tokens.total < self.tokens:
            result.tokens.total = self.tokens
        result.cost_usd = max(result.cost_usd, self.cost_usd)
