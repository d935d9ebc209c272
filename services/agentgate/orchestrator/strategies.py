"""Loop strategies (docs/strategies.md): after each iteration, decide whether the run goes on.

A strategy is one callback, `on_iteration_complete(event) -> LoopDecision`, plus an
optional `on_loop_end(result)`. Strategies are plain Python: no network, no files. One
strategy object serves one run and remembers what it needs of earlier iterations.

Every decision (a typed `LoopDecision`, see decisions.py) has a reason (text for people)
and, for programs, the `strategy`, the `rule` that decided (passed, max_iterations,
base_iteration, progress, no_progress, min_iterations, converged, not_converged,
no_changes, completion_claimed, ...), its outcome (continue, success, max_iterations,
strategy_stop) and the figures the rule looked at.

Verification passed -> stop, success, whatever the strategy. Otherwise the strategy's own
rules decide; when they would go on, two rules shared by every strategy may stop the loop
early, in this order:

1. loop detection: the agent changed nothing in the workspace for `no_change_limit`
   iterations in a row (0 = off) -> stop, strategy_stop;
2. completion signals: when the agent's stdout holds one of `completion_signals`, it
   says the task is complete. The gate is the judge, so a claim with a failing gate does
   not end the run as a success: the first such claim is rejected (the strategy decides
   as usual, and the next prompt says the claim was rejected and why); a second claim in
   the very next iteration, the gate still failing, stops the loop (strategy_stop): the
   agent insists it is done and another iteration would most likely spend tokens on
   nothing.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from agentgate.harness.loop_parameters import DEFAULT_NO_CHANGE_LIMIT, STRATEGY_DEFAULTS, check_parameters
from agentgate.orchestrator.decisions import LoopDecision, LoopOutcome
from agentgate.orchestrator.feedback import MAX_FEEDBACK_BYTES, agent_failure_feedback, verification_feedback
from agentgate.v1 import common_pb2

M = common_pb2.LoopStrategyMode
FIXED = STRATEGY_DEFAULTS[M.LOOP_STRATEGY_MODE_FIXED]
HYBRID = STRATEGY_DEFAULTS[M.LOOP_STRATEGY_MODE_HYBRID]
RALPH = STRATEGY_DEFAULTS[M.LOOP_STRATEGY_MODE_RALPH]

#: Only the end of a check's output is compared for convergence (it holds the verdict,
#: and it bounds the cost of the comparison).
CONVERGENCE_TAIL_CHARS = 2000
#: Durations (`in 0.12s`) differ between identical failures; they are not progress.
_DURATION = re.compile(r"\d+(?:\.\d+)?\s?(?:ms|s)\b")
_EPSILON = 1e-9


@dataclass(frozen=True)
class IterationSummary:
    """What a strategy remembers of an earlier iteration."""

    iteration: int
    agent_success: bool
    passed: bool
    duration_seconds: float
    tokens: int
    has_changes: bool = True


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
    #: Whether the agent changed the workspace (the snapshot's has_changes).
    has_changes: bool = True


class LoopStrategy(Protocol):
    """The callback every strategy implements."""

    name: str

    def on_iteration_complete(self, event: IterationCompleteEvent) -> LoopDecision:
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


def _decision(outcome: LoopOutcome, reason: str, rule: str, feedback: str = "", /, **figures: object) -> LoopDecision:
    return LoopDecision(outcome, reason, rule, feedback, figures={k: str(v) for k, v in figures.items()})


def _what_failed(event: IterationCompleteEvent) -> str:
    if not event.agent_success:
        return "agent failed"
    return "verification failed"


def _with_note(note: str, feedback: str) -> str:
    """`note` before `feedback`, the whole within the feedback size limit."""
    room = MAX_FEEDBACK_BYTES - len(note.encode()) - 2
    body = feedback.encode()
    if len(body) > room:
        feedback = body[: max(room, 0)].decode(errors="ignore")
    return f"{note}\n\n{feedback}" if feedback else note


def _percent(value: float) -> str:
    return f"{value * 100:.0f}%"


@dataclass(frozen=True)
class GateFigures:
    """What hybrid compares between iterations."""

    failed: int
    total: int
    failed_levels: frozenset[str]
    passed_levels: frozenset[str]

    @property
    def fraction(self) -> float:
        """Fraction of the checks that ran and failed (1.0 when nothing was verified)."""
        return self.failed / self.total if self.total else 1.0

    def text(self) -> str:
        """`2/5 (40%)`."""
        if not self.total:
            return "nothing verified"
        return f"{self.failed}/{self.total} ({_percent(self.fraction)})"


def gate_figures(event: IterationCompleteEvent) -> GateFigures:
    """Failed and total checks, and the levels that failed and passed, of an iteration.
    An iteration whose agent failed verified nothing: every check counts as failed."""
    report = event.verification_report
    if report is None or not event.agent_success:
        return GateFigures(0, 0, frozenset(), frozenset())
    checks = [check for level in report.levels if level.ran for check in level.checks]
    failed = sum(1 for check in checks if not check.passed)
    ran = [level for level in report.levels if level.ran]
    failed_levels = frozenset(level.level for level in ran if not level.passed)
    passed_levels = frozenset(level.level for level in ran if level.passed)
    if not checks and not report.passed:
        # A failed gate without checks (e.g. no plan could be loaded) is one failure.
        return GateFigures(1, 1, failed_levels, passed_levels)
    return GateFigures(failed, len(checks), failed_levels, passed_levels)


def failure_signature(event: IterationCompleteEvent) -> dict[str, str]:
    """The failing checks of an iteration (`L1/unit`) with the tail of their output, which
    ralph compares for convergence. A failed agent is one failure, `agent`, with its exit
    code and stderr; a failed gate without failed checks is `gate`, with its summary."""
    if not event.agent_success:
        result = event.agent_result
        status = "timed out" if result.timed_out else f"exit {result.exit_code}"
        return {"agent": _normalize(f"{status}\n{result.stderr}")}
    report = event.verification_report
    if report is None:
        return {}
    failing = {
        f"{level.level}/{check.name}": _normalize(check.output)
        for level in report.levels
        if level.ran
        for check in level.checks
        if not check.passed
    }
    if not failing and not report.passed:
        failing["gate"] = _normalize(report.summary)
    return failing


def _normalize(output: str) -> str:
    return _DURATION.sub("<t>", output[-CONVERGENCE_TAIL_CHARS:])


def similarity(a: str, b: str) -> float:
    """How alike two outputs are, 0..1 (difflib's ratio)."""
    if a == b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


class BaseStrategy:
    """The rules every strategy shares (see the module docstring); subclasses decide the
    rest in `_decide`."""

    name = "base"

    def __init__(
        self, no_change_limit: int = DEFAULT_NO_CHANGE_LIMIT, completion_signals: tuple[str, ...] | list[str] = ()
    ):
        check_parameters(None, no_change_limit=no_change_limit, completion_signals=completion_signals)
        self.no_change_limit = no_change_limit
        self.completion_signals = tuple(completion_signals)
        self.loop_result: int | None = None
        self._no_change_streak = 0
        self._claim_rejected_last = False

    def completion_signal(self, event: IterationCompleteEvent) -> str:
        """The first completion signal in the agent's stdout ('' when none)."""
        stdout = event.agent_result.stdout
        return next((signal for signal in self.completion_signals if signal in stdout), "")

    def on_iteration_complete(self, event: IterationCompleteEvent) -> LoopDecision:
        """The shared rules, then the strategy's own; the decision's rule says which."""
        self._no_change_streak = 0 if event.has_changes else self._no_change_streak + 1
        signal = self.completion_signal(event)
        claim_rejected_before = self._claim_rejected_last
        self._claim_rejected_last = bool(signal) and not event.passed
        # The strategy keeps its history whatever decides in the end.
        own = self._decide(event)
        if event.passed:
            reason = "Verification passed"
            if signal:
                reason += f" (the agent signalled completion: {signal!r})"
            decision = _decision(LoopOutcome.SUCCESS, reason, "passed")
        elif not own.should_continue:
            decision = own
        else:
            decision = self._early_stop(event, signal, claim_rejected_before) or own
        if signal and decision.should_continue:
            decision = replace(
                decision,
                reason=f"{decision.reason}; the agent signalled completion ({signal!r}) but the gate did not "
                "pass, so the claim is rejected",
                feedback=_with_note(
                    f"Note: you reported the task complete ({signal!r}), but the verification gate did not pass. "
                    "The task is complete only when every check passes; if you report completion again while "
                    "checks still fail, the run stops as failed.",
                    decision.feedback,
                ),
            )
        figures = {**decision.figures, "no_change_streak": str(self._no_change_streak)}
        if signal:
            figures["completion_signal"] = signal
        return replace(decision, strategy=self.name, figures=figures)

    def _early_stop(
        self, event: IterationCompleteEvent, signal: str, claim_rejected_before: bool
    ) -> LoopDecision | None:
        """Loop detection and repeated completion claims, for a loop that would go on."""
        if self.no_change_limit and self._no_change_streak >= self.no_change_limit:
            first = event.iteration - self._no_change_streak + 1
            span = f"iteration {first}" if first == event.iteration else f"iterations {first}-{event.iteration}"
            return _decision(
                LoopOutcome.STRATEGY_STOP,
                f"Loop detected: the agent changed nothing in the workspace for {self._no_change_streak} "
                f"iteration(s) in a row ({span}; no_change_limit {self.no_change_limit})",
                "no_changes",
                no_change_limit=self.no_change_limit,
            )
        if signal and claim_rejected_before:
            return _decision(
                LoopOutcome.STRATEGY_STOP,
                f"The agent signalled completion ({signal!r}) in iterations {event.iteration - 1} and "
                f"{event.iteration}, but the gate still fails ({_what_failed(event)})",
                "completion_claimed",
            )
        return None

    def _decide(self, event: IterationCompleteEvent) -> LoopDecision:
        raise NotImplementedError

    def on_loop_end(self, result: int) -> None:
        """Remembers the final result (for metrics and tests)."""
        self.loop_result = result


class FixedStrategy(BaseStrategy):
    """`fixed(max_iterations=3)`: stop when verification passed; otherwise go on until N."""

    name = "fixed"

    def __init__(self, max_iterations: int = FIXED["max_iterations"], **shared: Any):
        super().__init__(**shared)
        check_parameters(M.LOOP_STRATEGY_MODE_FIXED, max_iterations=max_iterations)
        self.max_iterations = max_iterations

    def _decide(self, event: IterationCompleteEvent) -> LoopDecision:
        """Continue while verification fails and iterations remain."""
        if event.iteration >= self.max_iterations:
            return _decision(
                LoopOutcome.MAX_ITERATIONS,
                f"Reached max iterations ({self.max_iterations}) without passing verification",
                "max_iterations",
                max_iterations=self.max_iterations,
            )
        what = _what_failed(event).capitalize()
        return _decision(
            LoopOutcome.CONTINUE,
            f"{what}; iteration {event.iteration} of {self.max_iterations}, trying again",
            "iterations_left",
            feedback_for(event),
            max_iterations=self.max_iterations,
        )


class HybridStrategy(BaseStrategy):
    """`hybrid(base_iterations=3, max_bonus_iterations=2, progress_threshold=0.1)`: the base
    iterations always run; after them, a bonus iteration only while progress is made,
    progress being that the fraction of failed checks fell by at least
    `progress_threshold` since the iteration before, or that a level passed which failed
    before. At most base + bonus iterations."""

    name = "hybrid"

    def __init__(
        self,
        base_iterations: int = HYBRID["base_iterations"],
        max_bonus_iterations: int = HYBRID["max_bonus_iterations"],
        progress_threshold: float = HYBRID["progress_threshold"],
        **shared: Any,
    ):
        super().__init__(**shared)
        check_parameters(
            M.LOOP_STRATEGY_MODE_HYBRID,
            base_iterations=base_iterations,
            max_bonus_iterations=max_bonus_iterations,
            progress_threshold=progress_threshold,
        )
        self.base_iterations = base_iterations
        self.max_bonus_iterations = max_bonus_iterations
        self.progress_threshold = progress_threshold
        self._last: GateFigures | None = None

    @property
    def max_iterations(self) -> int:
        """base + bonus."""
        return self.base_iterations + self.max_bonus_iterations

    def _decide(self, event: IterationCompleteEvent) -> LoopDecision:
        previous, current = self._last, gate_figures(event)
        self._last = current
        figures = {
            "failed_checks": current.text(),
            "base_iterations": self.base_iterations,
            "max_bonus_iterations": self.max_bonus_iterations,
        }
        what = _what_failed(event).capitalize()
        if event.iteration >= self.max_iterations:
            return _decision(
                LoopOutcome.MAX_ITERATIONS,
                f"Reached max iterations ({self.base_iterations} base + {self.max_bonus_iterations} bonus) "
                "without passing verification",
                "max_iterations",
                **figures,
            )
        if event.iteration < self.base_iterations:
            return _decision(
                LoopOutcome.CONTINUE,
                f"{what}; base iteration {event.iteration} of {self.base_iterations}, trying again",
                "base_iteration",
                feedback_for(event),
                **figures,
            )
        bonus = event.iteration - self.base_iterations + 1  # the bonus iteration that would come next
        if previous is None:
            return _decision(
                LoopOutcome.STRATEGY_STOP,
                f"No progress measurable after {event.iteration} iteration(s): there is no earlier iteration "
                "to compare with, so no bonus iteration",
                "no_progress",
                **figures,
            )
        drop = previous.fraction - current.fraction
        newly_passed = sorted(previous.failed_levels & current.passed_levels)
        figures.update(previous_failed_checks=previous.text(), progress=f"{drop:.3f}")
        if drop + _EPSILON >= self.progress_threshold or newly_passed:
            why = (
                f"failed checks fell from {previous.text()} to {current.text()}"
                if drop + _EPSILON >= self.progress_threshold
                else f"level(s) {', '.join(newly_passed)} passed after failing before"
            )
            return _decision(
                LoopOutcome.CONTINUE,
                f"Progress: {why} (threshold {_percent(self.progress_threshold)}); "
                f"bonus iteration {bonus} of {self.max_bonus_iterations}",
                "progress",
                feedback_for(event),
                **figures,
            )
        return _decision(
            LoopOutcome.STRATEGY_STOP,
            f"No progress: failed checks went from {previous.text()} to {current.text()}, a fall below the "
            f"threshold of {_percent(self.progress_threshold)}, and no level newly passed; stopping after "
            f"{event.iteration} iteration(s) ({self.base_iterations} base + {bonus - 1} bonus)",
            "no_progress",
            **figures,
        )


class RalphStrategy(BaseStrategy):
    """`ralph(min_iterations=2, max_iterations=10, window_size=3, convergence_threshold=0.95)`:
    after the minimum, stop when the last `window_size` iterations converged (the same
    failing checks, each one's output at least `convergence_threshold` similar between
    consecutive iterations); else continue up to the maximum."""

    name = "ralph"

    def __init__(
        self,
        min_iterations: int = RALPH["min_iterations"],
        max_iterations: int = RALPH["max_iterations"],
        window_size: int = RALPH["window_size"],
        convergence_threshold: float = RALPH["convergence_threshold"],
        **shared: Any,
    ):
        super().__init__(**shared)
        check_parameters(
            M.LOOP_STRATEGY_MODE_RALPH,
            min_iterations=min_iterations,
            max_iterations=max_iterations,
            window_size=window_size,
            convergence_threshold=convergence_threshold,
        )
        self.min_iterations = min_iterations
        self.max_iterations = max_iterations
        self.window_size = window_size
        self.convergence_threshold = convergence_threshold
        self._signatures: list[dict[str, str]] = []

    def converged(self) -> tuple[bool, str, float]:
        """Whether the last `window_size` iterations converged, why not, and the lowest
        similarity seen between consecutive iterations' outputs."""
        window = self._signatures[-self.window_size :]
        lowest = 1.0
        for older, newer in zip(window, window[1:], strict=False):
            if set(older) != set(newer):
                return False, "the failing checks changed", 0.0
            for name in newer:
                lowest = min(lowest, similarity(older[name], newer[name]))
        if lowest + _EPSILON < self.convergence_threshold:
            return False, f"outputs only {_percent(lowest)} similar", lowest
        return True, "", lowest

    def _decide(self, event: IterationCompleteEvent) -> LoopDecision:
        self._signatures.append(failure_signature(event))
        what = _what_failed(event).capitalize()
        figures: dict[str, object] = {
            "min_iterations": self.min_iterations,
            "max_iterations": self.max_iterations,
            "window_size": self.window_size,
        }
        if event.iteration >= self.max_iterations:
            return _decision(
                LoopOutcome.MAX_ITERATIONS,
                f"Reached max iterations ({self.max_iterations}) without passing verification or converging",
                "max_iterations",
                **figures,
            )
        if event.iteration < self.min_iterations:
            return _decision(
                LoopOutcome.CONTINUE,
                f"{what}; iteration {event.iteration} of at least {self.min_iterations}, trying again",
                "min_iterations",
                feedback_for(event),
                **figures,
            )
        if len(self._signatures) < self.window_size:
            return _decision(
                LoopOutcome.CONTINUE,
                f"{what}; {len(self._signatures)} of the {self.window_size} iterations needed to judge "
                f"convergence; iteration {event.iteration} of at most {self.max_iterations}",
                "window_filling",
                feedback_for(event),
                **figures,
            )
        done, why_not, lowest = self.converged()
        figures["similarity"] = f"{lowest:.3f}"
        if done:
            checks = ", ".join(sorted(self._signatures[-1])) or "none"
            return _decision(
                LoopOutcome.STRATEGY_STOP,
                f"Converged: the last {self.window_size} iterations failed the same checks ({checks}) with outputs "
                f"at least {_percent(self.convergence_threshold)} similar (lowest {_percent(lowest)})",
                "converged",
                **figures,
            )
        return _decision(
            LoopOutcome.CONTINUE,
            f"{what}, not converged over the last {self.window_size} iterations ({why_not}); "
            f"iteration {event.iteration} of at most {self.max_iterations}",
            "not_converged",
            feedback_for(event),
            **figures,
        )


def strategy_for(harness: common_pb2.HarnessSettings) -> LoopStrategy:
    """The strategy a resolved harness asks for, with every parameter it sets (unset ones
    take the strategy's defaults)."""
    loop = harness.loop_strategy

    # Keyword arguments by parameter name (Any: each constructor checks its own with
    # check_parameters); HasField by a run-time name, which mypy-protobuf types as a Literal.
    def given(name: str) -> dict[str, Any]:
        return {name: getattr(loop, name)} if loop.HasField(name) else {}  # type: ignore[arg-type]  # see above

    shared: dict[str, Any] = {"completion_signals": tuple(loop.completion_signals), **given("no_change_limit")}
    if loop.mode in (M.LOOP_STRATEGY_MODE_FIXED, M.LOOP_STRATEGY_MODE_UNSPECIFIED):
        return FixedStrategy(**given("max_iterations"), **shared)
    if loop.mode == M.LOOP_STRATEGY_MODE_HYBRID:
        params = {**given("base_iterations"), **given("max_bonus_iterations"), **given("progress_threshold")}
        return HybridStrategy(**params, **shared)
    if loop.mode == M.LOOP_STRATEGY_MODE_RALPH:
        params = {
            **given("min_iterations"),
            **given("max_iterations"),
            **given("window_size"),
            **given("convergence_threshold"),
        }
        return RalphStrategy(**params, **shared)
    raise ValueError(f"unknown loop strategy mode {loop.mode}")
