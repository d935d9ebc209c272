"""The in-execution budget meter (workspace/drivers/budget.py) and the process stop it drives."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from agentgate.orchestrator.budgets import RunBudget
from agentgate.v1 import common_pb2
from agentgate.workspace.drivers.budget import AgentBudget, BudgetMeter
from agentgate.workspace.processes import run_process


def test_meter_stops_once_at_the_first_crossed_cap() -> None:
    meter = BudgetMeter(AgentBudget(max_tokens=100))
    assert not meter.update(tokens=60)
    assert not meter.update(tokens=100)
    assert meter.update(tokens=101) and meter.stop.is_set()
    assert not meter.update(tokens=500)  # only the first crossing reports
    assert "101" in meter.reason and meter.tokens == 500
    result = common_pb2.AgentResult(success=True, tokens=common_pb2.TokenUsage(total=90))
    meter.apply(result)
    assert not result.success and result.error_type == common_pb2.BUILD_ERROR_TYPE_BUDGET_EXCEEDED
    assert result.tokens.total == 500 and result.error_message.startswith("Token budget exceeded")


def test_cost_cap_and_no_cap() -> None:
    meter = BudgetMeter(AgentBudget(max_cost_usd=0.5))
    assert meter.update(cost_usd=0.51) and meter.reason.startswith("Cost budget exceeded")
    free = BudgetMeter(AgentBudget())
    assert not free.update(tokens=10**9, cost_usd=10**6) and not free.stop.is_set()


def test_remaining_budget_of_a_run() -> None:
    budget = RunBudget(max_total_tokens=1000, max_cost_usd=1.0)
    budget.add(common_pb2.AgentResult(tokens=common_pb2.TokenUsage(total=400), cost_usd=0.25))
    left = budget.remaining()
    assert (left.max_tokens, left.max_cost_usd) == (600, 0.75)
    budget.add(common_pb2.AgentResult(tokens=common_pb2.TokenUsage(total=900)))
    assert budget.remaining().max_tokens == 1  # never 0, which would mean "no cap"
    assert RunBudget().remaining() == common_pb2.AgentBudget()


async def test_stop_event_terminates_the_process(tmp_path: Path) -> None:
    stop = asyncio.Event()

    def on_output(stream: str, line: str) -> None:
        if line == "up":  # stopped once it runs, however slow the machine is to start it
            stop.set()

    result = await run_process(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"],
        cwd=tmp_path,
        timeout=20,
        kill_grace=1,
        stop=stop,
        on_output=on_output,
    )
    assert result.stopped and not result.timed_out and result.duration_seconds < 15
    assert result.stdout.startswith("up")
