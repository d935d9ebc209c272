"""The loop strategies' parameters: their defaults and bounds (docs/harness.md).

The one place they are written: profiles check profile keys and inline settings with
them, the resolution fills the defaults, and the orchestrator's strategies take their
constructor defaults and checks from here. A new strategy parameter is added here (and to
`LoopStrategySettings` in the protos).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agentgate.harness.checks import between, fraction
from agentgate.v1 import common_pb2

M = common_pb2.LoopStrategyMode

#: No strategy runs more iterations than this.
MAX_ITERATIONS_LIMIT = 100
MAX_COMPLETION_SIGNALS = 20
#: Loop detection: stop after this many iterations in a row without changes.
DEFAULT_NO_CHANGE_LIMIT = 2

#: Each strategy's own parameters and their defaults (docs/harness.md).
STRATEGY_DEFAULTS: dict[int, dict[str, Any]] = {
    M.LOOP_STRATEGY_MODE_FIXED: {"max_iterations": 3},
    M.LOOP_STRATEGY_MODE_HYBRID: {"base_iterations": 3, "max_bonus_iterations": 2, "progress_threshold": 0.1},
    M.LOOP_STRATEGY_MODE_RALPH: {
        "min_iterations": 2,
        "max_iterations": 10,
        "window_size": 3,
        "convergence_threshold": 0.95,
    },
}

#: Parameters every strategy uses; the others belong to the modes in STRATEGY_DEFAULTS.
COMMON_LOOP_PARAMETERS = ("no_change_limit", "completion_signals")

#: Which modes use a mode-specific loop parameter.
MODE_PARAMETERS: dict[int, tuple[str, ...]] = {mode: tuple(defaults) for mode, defaults in STRATEGY_DEFAULTS.items()}


def completion_signals_problem(values: list[str]) -> str | None:
    """Completion signals must be text, and not too many."""
    if any(not v.strip() for v in values):
        return "a completion signal must not be blank"
    if len(values) > MAX_COMPLETION_SIGNALS:
        return f"at most {MAX_COMPLETION_SIGNALS} completion signals, got {len(values)}"
    return None


@dataclass(frozen=True)
class Parameter:
    """One loop strategy parameter: its kind (int, float, strs) and its bounds."""

    name: str
    kind: str
    check: Callable[[Any], str | None]


#: Every loop parameter, in the order their problems are reported.
PARAMETERS: tuple[Parameter, ...] = (
    Parameter("max_iterations", "int", between(1, MAX_ITERATIONS_LIMIT)),
    Parameter("base_iterations", "int", between(1, MAX_ITERATIONS_LIMIT)),
    Parameter("max_bonus_iterations", "int", between(0, MAX_ITERATIONS_LIMIT)),
    Parameter("progress_threshold", "float", fraction),
    Parameter("min_iterations", "int", between(1, MAX_ITERATIONS_LIMIT)),
    Parameter("window_size", "int", between(2, MAX_ITERATIONS_LIMIT)),
    Parameter("convergence_threshold", "float", fraction),
    Parameter("no_change_limit", "int", between(0, MAX_ITERATIONS_LIMIT)),
    Parameter("completion_signals", "strs", completion_signals_problem),
)


def cross_problems(mode: int, values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems between the parameters of one mode, as (parameter, message); `values`
    holds every parameter of the mode."""
    problems: list[tuple[str, str]] = []
    if mode == M.LOOP_STRATEGY_MODE_HYBRID:
        total = values["base_iterations"] + values["max_bonus_iterations"]
        if total > MAX_ITERATIONS_LIMIT:
            problems.append(
                (
                    "max_bonus_iterations",
                    f"base_iterations + max_bonus_iterations is {total}; at most {MAX_ITERATIONS_LIMIT}",
                )
            )
    if mode == M.LOOP_STRATEGY_MODE_RALPH:
        low, high, window = values["min_iterations"], values["max_iterations"], values["window_size"]
        if low > high:
            problems.append(("min_iterations", f"{low} is more than max_iterations ({high})"))
        if window > high:
            problems.append(("window_size", f"{window} is more than max_iterations ({high}): it could never converge"))
    return problems


def check_parameters(mode: int | None, **values: Any) -> None:
    """Raises ValueError naming every parameter out of its bounds (and, given a `mode`,
    every conflict between that mode's parameters, all of which `values` then holds)."""
    checks = {p.name: p.check for p in PARAMETERS}
    problems = [(name, checks[name](value)) for name, value in values.items()]
    found = [(name, message) for name, message in problems if message]
    if mode is not None and not found:
        found = cross_problems(mode, values)
    if found:
        raise ValueError("; ".join(f"{name} {message}" for name, message in found))
