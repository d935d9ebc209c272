"""One run of a work order: prepare the workspace, then iterate agent -> snapshot ->
verify -> strategy decision until the strategy stops, deliver, and record everything.

Files, git and processes are reached only through the workspace port; everything worth
keeping goes through the persistence port (workspace_port.py, persistence_port.py). A
persistence failure never fails a run, except a full disk: a run whose records and events
can no longer be kept stops at once and ends FAILED with the disk message
(docs/troubleshooting.md, "Disk full").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from agentgate.common import events as ev
from agentgate.common import telemetry
from agentgate.common.errors import disk_full_excerpt
from agentgate.common.redaction import default_redactor
from agentgate.common.timeutil import now_timestamp
from agentgate.harness.resolution import HarnessError, resolve_harness
from agentgate.harness.retention import deletes_workspace
from agentgate.orchestrator import budgets, build_errors
from agentgate.orchestrator.ci import CI_OPERATION
from agentgate.orchestrator.decisions import LoopDecision, LoopOutcome
from agentgate.orchestrator.delivery import Delivery, DeliveryOutcome, DeliveryRequest, verification_summary
from agentgate.orchestrator.emitter import RunEventEmitter
from agentgate.orchestrator.ordered_saves import OrderedSaves
from agentgate.orchestrator.persistence_port import PersistencePort, PersistenceSubscriber, Saved
from agentgate.orchestrator.prompt import assemble_prompt
from agentgate.orchestrator.resume import ResumePoint, load_resume_point
from agentgate.orchestrator.retry import (
    AttemptCallback,
    Failure,
    OperationFailed,
    RetryExecutor,
    retries_message,
    settings_from_policy,
)
from agentgate.orchestrator.run_state import TERMINAL_STATES, transition
from agentgate.orchestrator.strategies import IterationCompleteEvent, IterationSummary, strategy_for
from agentgate.orchestrator.subscribers import SubscriberChannel
from agentgate.orchestrator.workspace_port import WorkspacePort
from agentgate.v1 import common_pb2, events_pb2, workspace_pb2

log = logging.getLogger(__name__)

S = common_pb2.RunState
R = common_pb2.RunResult
W = common_pb2.WorkOrderStatus
T = common_pb2.BuildErrorType
#: Agent failures after which no iteration follows.
FINAL_AGENT_ERRORS = frozenset({T.BUILD_ERROR_TYPE_AGENT_AUTH_ERROR, T.BUILD_ERROR_TYPE_BUDGET_EXCEEDED})


@dataclass
class RunOutcome:
    """How a run ended, in the queue's terms."""

    status: common_pb2.WorkOrderStatus.ValueType
    error: str = ""


@dataclass(frozen=True)
class AgentStep:
    """The agent step of an iteration: the last attempt's result and file, and every attempt."""

    result: common_pb2.AgentResult
    file: str
    attempts: list[common_pb2.RetryAttempt]
    #: Retries spent on an agent that still failed (0 when it succeeded).
    retries: int

    def error(self) -> common_pb2.BuildError:
        """The error of a failed agent, saying how often it was retried."""
        error = build_errors.from_agent_result(self.result, self.file)
        error.message = retries_message(self.retries, error.message)
        return error


@dataclass(frozen=True)
class IterationOutcome:
    """What one iteration came to, for the loop."""

    agent: common_pb2.AgentResult
    report: common_pb2.VerificationReport | None
    decision: LoopDecision
    #: Why the iteration failed (None when its gate passed).
    error: common_pb2.BuildError | None

    @property
    def passed(self) -> bool:
        """Whether the iteration's gate passed."""
        return self.report is not None and self.report.passed


class RunExecutor:
    """Drives one leased work order from PREPARING to a terminal state."""

    def __init__(
        self,
        work_order: common_pb2.WorkOrder,
        workspace: WorkspacePort,
        persistence: PersistencePort,
        worker_id: str = "",
        subscribers: Sequence[SubscriberChannel] = (),
        profiles_dir: Path | None = None,
    ):
        self.work_order = work_order
        self._workspace = workspace
        self._persistence = persistence
        self.worker_id = worker_id
        spec = work_order.spec
        # Profiles were checked at submit, but a profile file may have changed since: the
        # run then fails at its start with the reason (built-in defaults carry it there).
        self._harness_error = ""
        try:
            self.harness = resolve_harness(spec.harness, profiles_dir)
        except HarnessError as exc:
            self._harness_error = str(exc)
            self.harness = resolve_harness(common_pb2.HarnessSettings(), read_files=False)
        self.budget = budgets.RunBudget.from_limits(self.harness.limits)
        self.max_iterations = self.harness.loop_strategy.max_iterations
        self.strategy = strategy_for(self.harness)
        self.run = common_pb2.Run(
            id=work_order.run_id,
            work_order_id=work_order.id,
            created_at=now_timestamp(),
            max_iterations=self.max_iterations,
            trace_id=work_order.trace_id,
            harness=self.harness,
            task_prompt=spec.task_prompt,
            agent=spec.agent,
            source=spec.source,
        )
        #: The queue's attempt of the work order (a lost worker's run is leased again as
        #: attempt 2, ...): names this attempt's files beside the earlier ones' (docs/results.md).
        self.attempt = max(work_order.attempts, 1)
        #: What earlier attempts completed (set by `_adopt_stored_run`), and what of it this
        #: attempt goes on from (set by `_prepare` once the workspace holds it).
        self._resume_point: ResumePoint | None = None
        self._resumed: ResumePoint | None = None
        #: The snapshot the next iteration's patch is taken against.
        self._previous_snapshot = ""
        #: The iteration's snapshot, started as soon as its agent succeeded (`_snapshot` takes it).
        self._snapshot_started: asyncio.Future[workspace_pb2.CreateSnapshotResponse] | None = None
        #: Why the run's writes stopped finding room (None while they do): see `_disk_full`.
        self._disk_error: common_pb2.BuildError | None = None
        self._disk_full_seen = asyncio.Event()
        own = persistence.event_subscriber(work_order.run_id)
        if isinstance(own, PersistenceSubscriber):
            own.on_disk_full = lambda message: self._disk_full(message, "events")
        # `subscribers`: the worker's shared ones (metrics, audit); the event log is the emitter's own.
        self.emitter = RunEventEmitter(
            own,
            work_order.id,
            work_order.run_id,
            work_order.trace_id,
            subscribers=subscribers,
        )
        self.iteration = 0
        self.persistence_warnings = 0
        #: Set by the worker before it cancels the task for a user's cancel request.
        self.cancel_requested = False
        self._started = time.monotonic()
        self._workspace_id = ""
        #: The agent session of the previous iteration, resumed by drivers that can (claude-code).
        self._last_session_id = ""
        # Emitted last, after the workspace is released: followers stop at it.
        self._terminal_event = ""
        #: One retry executor (docs/profiles.md) for the agent, workspace preparation and delivery.
        self.retry = RetryExecutor(settings_from_policy(self.harness.retry))
        #: run.json saves run behind the run, in order (the next step does not wait for them).
        self._saves = OrderedSaves(f"run {work_order.run_id}")
        #: The last gate report (its summary goes into the pull request).
        self._last_report: common_pb2.VerificationReport | None = None
        #: What the passing iteration delivered while waiting for CI (None: deliver at the end).
        self._delivered: DeliveryOutcome | None = None

    # -- persistence, never fatal ------------------------------------------------

    def _saved(self, what: str, saved: Saved) -> str:
        """The file a save wrote. A save that failed, or whose file the service could not
        write, is logged, counted and emitted as a warning, never fatal, unless the disk is
        full (see `_disk_full`)."""
        if saved.problem:
            self._disk_full(saved.problem, what)
            self.persistence_warnings += 1
            message = f"could not save {what}: {saved.problem}"
            log.warning("run %s: %s", self.run.id, message)
            self.emitter.emit(
                ev.PERSISTENCE_WARNING,
                self.iteration,
                persistence_warning=events_pb2.PersistenceWarning(message=message),
            )
        return saved.file

    def _disk_full(self, problem: str, what: str) -> None:
        """Ends the run when `problem` (a save's or an event batch's) says the disk is full:
        the step in progress is cancelled (see `_loop_until_disk_full`) and the run fails
        as a SYSTEM_ERROR naming the file. Going on would lose every later record and event
        while the agent kept running; the final writes use the room persistence keeps
        aside for them (common/disk_reserve.py)."""
        excerpt = disk_full_excerpt(problem)
        if not excerpt or self._disk_error is not None:
            return
        message = excerpt[0].upper() + excerpt[1:]
        if what and what not in excerpt:
            message += f" (saving {what})"
        log.error("run %s: %s", self.run.id, message)
        self._disk_error = build_errors.from_step(T.BUILD_ERROR_TYPE_SYSTEM_ERROR, message)
        self._disk_full_seen.set()

    def _save_run(self) -> None:
        """Hands a save of the run as it is now to the background saves (see ordered_saves):
        the run goes on at once; `_finish` waits for them before the terminal event."""
        run = self._run_copy()
        self._saves.submit(lambda: self._store_run(self._persistence.update_run, run))

    def _create_run(self) -> None:
        """Creates the run record in the background, first of the run's saves."""
        run = self._run_copy()
        self._saves.submit(lambda: self._store_run(self._persistence.create_run, run), replaceable=False)

    def _run_copy(self) -> common_pb2.Run:
        self.run.persistence_warnings = self.persistence_warnings
        run = common_pb2.Run()
        run.CopyFrom(self.run)
        return run

    async def _store_run(self, save: Callable[[common_pb2.Run], Awaitable[Saved]], run: common_pb2.Run) -> None:
        # Warnings counted since the copy was taken (by earlier saves) belong in it too.
        run.persistence_warnings = max(run.persistence_warnings, self.persistence_warnings)
        self._saved("run.json", await save(run))

    def _set_state(self, state: common_pb2.RunState.ValueType) -> None:
        transition(self.run, state)

    # -- the run -----------------------------------------------------------------

    async def execute(self) -> RunOutcome:
        """Runs the work order inside its `run` span, which continues the trace stored with
        the work order at submit (docs/observability.md): every call the run makes
        (workspace, persistence) is part of that one trace, and its id is on the run and
        every event."""
        attributes = {"agentgate.work_order_id": self.work_order.id, "agentgate.run_id": self.run.id}
        with telemetry.span_continuing(
            telemetry.tracer("orchestrator"), "run", self.work_order.traceparent, attributes
        ) as span:
            if not self.run.trace_id:  # submitted without a trace context: the run span starts one
                self.run.trace_id = self.emitter.trace_id = telemetry.trace_id_of(span)
            outcome = await self._execute()
            span.set_attribute("agentgate.status", common_pb2.WorkOrderStatus.Name(outcome.status))
            return outcome

    async def _execute(self) -> RunOutcome:
        """Runs the work order to the end and returns its final queue status.

        Cancellation of the task running this (the work order was canceled) ends the
        run CANCELED; the agent's process group is killed by the workspace service when
        the RunAgent call is cancelled.
        """
        self._set_state(S.RUN_STATE_PREPARING)
        self.run.started_at.CopyFrom(now_timestamp())
        if self.attempt > 1:
            await self._adopt_stored_run()
        self.run.attempts.append(
            common_pb2.RunAttempt(attempt=self.attempt, worker_id=self.worker_id, started_at=now_timestamp())
        )
        self._create_run()
        self.emitter.emit(
            ev.RUN_STARTED,
            run_started=events_pb2.RunStarted(
                agent=self.work_order.spec.agent.name,
                max_iterations=self.max_iterations,
                worker_id=self.worker_id,
                attempt=self.work_order.attempts,
            ),
        )
        try:
            try:
                async with asyncio.timeout(self.harness.limits.max_wall_clock_seconds):
                    outcome = await self._loop_until_disk_full()
            except TimeoutError:
                error = build_errors.from_step(
                    T.BUILD_ERROR_TYPE_AGENT_TIMEOUT,
                    f"Run exceeded its wall-clock limit of {self.harness.limits.max_wall_clock_seconds}s",
                )
                outcome = self._fail(R.RUN_RESULT_FAILED_TIMEOUT, error, common_pb2.LOOP_RESULT_TIMEOUT)
            except OperationFailed as exc:
                # A step failed for good: one no retry covers (snapshot, verification), or
                # one whose retries ran out.
                outcome = self._fail(R.RUN_RESULT_FAILED_SYSTEM, exc.failure.error, common_pb2.LOOP_RESULT_ERROR)
            except asyncio.CancelledError:
                if self.cancel_requested:
                    self._cancel()
                else:
                    # Worker shutdown: no terminal event; the lease expires and the work
                    # order goes back to the queue for another attempt of this run.
                    log.warning("run %s interrupted by worker shutdown", self.run.id)
                raise
            except Exception as exc:  # noqa: BLE001 - any bug must still end the run cleanly
                log.exception("run %s failed with an internal error", self.run.id)
                outcome = self._fail(
                    R.RUN_RESULT_FAILED_SYSTEM, build_errors.from_exception(exc), common_pb2.LOOP_RESULT_ERROR
                )
        finally:
            await asyncio.shield(self._finish())
        return outcome

    async def _loop_until_disk_full(self) -> RunOutcome:
        """`_loop`, stopped as soon as a write of the run finds the disk full: the step in
        progress is cancelled (an agent or check process group is killed by the workspace
        service when its call is cancelled), and the run fails with the disk message
        rather than run on with nothing kept. Steps that do not wait long enough for the
        cancel to land check at their end (`_check_disk`)."""
        loop = asyncio.create_task(self._loop())
        full = asyncio.create_task(self._disk_full_seen.wait())
        try:
            await asyncio.wait({loop, full}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            full.cancel()
            if not loop.done():
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
        if self._disk_error is not None and (loop.cancelled() or loop.exception() is not None):
            raise OperationFailed(self._disk_error)
        return loop.result()

    def _check_disk(self) -> None:
        """Stops the run here when its writes found the disk full (see `_disk_full`)."""
        if self._disk_error is not None:
            # Permanent: a retry of the agent would write to the same full disk.
            raise OperationFailed(self._disk_error, permanent=True)

    async def _loop(self) -> RunOutcome:
        """prepare -> iterations until the strategy stops -> deliver, or the run's failure."""
        if self._harness_error:
            raise OperationFailed(
                build_errors.from_step(
                    T.BUILD_ERROR_TYPE_SYSTEM_ERROR,
                    f"The work order's harness cannot be resolved: {self._harness_error}",
                )
            )
        prepared = await self._prepare()
        feedback = ""
        history: list[IterationSummary] = []
        last: IterationOutcome | None = None
        first = 1
        if self._resumed is not None:
            feedback = await self._restore(self._resumed, history)
            first = self._resumed.last_iteration + 1
        for iteration in range(first, self.max_iterations + 1):
            self.iteration = iteration
            last = await self._iteration(iteration, prepared, feedback, history)
            if not last.decision.should_continue:
                break
            self._set_state(S.RUN_STATE_FEEDBACK)
            # Feedback quotes agent and check output; the prompt it goes into is written to
            # disk by some drivers, so secrets are redacted like everything else written.
            feedback = default_redactor().redact_text(last.decision.feedback)
        assert last is not None
        self.run.stop_reason = last.decision.reason
        if last.passed:
            return await self._succeed()
        assert last.error is not None  # every iteration that did not pass has its error
        error = common_pb2.BuildError()
        error.CopyFrom(last.error)
        if last.decision.outcome is LoopOutcome.STRATEGY_STOP and last.decision.reason not in error.message:
            # Why the loop stopped early (no progress, loop detected, budget) leads the error.
            error.message = f"{last.decision.reason}. Last iteration: {error.message}"
        result = R.RUN_RESULT_FAILED_VERIFICATION if last.agent.success else R.RUN_RESULT_FAILED_BUILD
        return self._fail(result, error, last.decision.loop_result)

    async def _adopt_stored_run(self) -> None:
        """A later attempt of the work order takes over the run an earlier one stored: its
        creation time, its spending so far (the budget counts it) and its attempts, and
        notes what those attempts completed (docs/results.md)."""
        point = await load_resume_point(self._persistence, self.run.id)
        if point is None:
            return
        stored = point.run
        self.run.created_at.CopyFrom(stored.created_at)
        self.run.attempts.extend(stored.attempts)
        self.budget.tokens.CopyFrom(stored.tokens)
        self.budget.cost_usd = stored.cost_usd
        self.run.tokens.CopyFrom(stored.tokens)
        self.run.cost_usd = stored.cost_usd
        # The last iteration must stay for this attempt to run (a profile may have changed).
        keep = min(point.last_iteration, self.max_iterations - 1)
        self._resume_point = ResumePoint(stored, point.completed[:keep], point.patches[:keep])

    async def _prepare(self) -> workspace_pb2.PrepareForRunResponse:
        """A workspace for the run; for a resumed run, made from the source plus the stored
        patches of the completed iterations. When those no longer apply (the source moved)
        the run starts over from iteration 1, with a warning."""
        point = self._resume_point
        if point is not None and point.last_iteration:
            try:
                prepared = await self._prepare_workspace(point.patches)
            except OperationFailed as exc:
                self._saved(
                    "the workspace of a resumed run",
                    Saved(problem=f"{exc.failure.error.message}; the run starts over from iteration 1"),
                )
            else:
                self._resumed = point
                self.run.attempts[-1].resumed_after_iteration = point.last_iteration
                self._previous_snapshot = self.run.final_commit = prepared.patch_snapshots[-1]
                return prepared
        prepared = await self._prepare_workspace(())
        self._previous_snapshot = prepared.workspace.base_commit
        return prepared

    async def _restore(self, point: ResumePoint, history: list[IterationSummary]) -> str:
        """Brings the run to where the earlier attempts left it after iteration K: the
        strategy is replayed on the stored records (it remembers what it saw), the agent
        session resumes, and K's feedback goes into the next prompt, which is returned."""
        elapsed = 0.0
        for data in point.completed:
            number = data.iteration
            agent = await self._persistence.get_agent_result(self.run.id, number) or common_pb2.AgentResult(
                run_id=self.run.id, iteration=number, success=data.agent_success
            )
            report = None
            if data.verification_file:
                report = await self._persistence.get_verification_report(self.run.id, number)
            elapsed += data.duration_seconds
            # The decision stored with the record stands; the replay only rebuilds memory.
            self.strategy.on_iteration_complete(
                IterationCompleteEvent(
                    iteration=number,
                    max_iterations=self.max_iterations,
                    elapsed_seconds=elapsed,
                    agent_result=agent,
                    agent_success=data.agent_success,
                    verification_report=report,
                    passed=data.verification_passed,
                    run_id=self.run.id,
                    work_order_id=self.run.work_order_id,
                    previous=list(history),
                    has_changes=data.has_changes,
                )
            )
            history.append(
                IterationSummary(
                    number, data.agent_success, data.verification_passed, data.duration_seconds,
                    data.tokens.total, data.has_changes,
                )
            )
            self._last_session_id = data.agent_session_id or self._last_session_id
        last = point.completed[-1]
        self.iteration = self.run.iteration_count = last.iteration
        log.info("run %s: attempt %d resumes after iteration %d", self.run.id, self.attempt, last.iteration)
        return default_redactor().redact_text(last.decision.feedback)

    async def _prepare_workspace(self, patches: Sequence[bytes]) -> workspace_pb2.PrepareForRunResponse:
        """A workspace for the run, under the retry policy."""
        source = self.work_order.spec.source
        attempts = await self.retry.run(
            "prepare_workspace",
            lambda attempt: self._workspace.prepare(self.run.id, source, self.harness, patches),
            on_attempt=self._retry_event(0),
        )
        if attempts.error is not None or attempts.value is None:
            raise OperationFailed(attempts.error or build_errors.from_exception(RuntimeError("no workspace")))
        prepared = attempts.value
        ws = prepared.workspace
        self._workspace_id = ws.id
        self.run.workspace_id = ws.id
        self.run.workspace_path = ws.path
        self.run.branch_name = ws.branch
        self._save_run()
        self.emitter.emit(
            ev.WORKSPACE_ACQUIRED,
            workspace_changed=events_pb2.WorkspaceChanged(workspace_id=ws.id, path=ws.path, branch=ws.branch),
        )
        return prepared

    async def _iteration(
        self,
        iteration: int,
        prepared: workspace_pb2.PrepareForRunResponse,
        feedback: str,
        history: list[IterationSummary],
    ) -> IterationOutcome:
        """agent (with retry) -> snapshot -> verify (when the agent succeeded) -> decision."""
        started = time.monotonic()
        data = common_pb2.IterationData(
            run_id=self.run.id, iteration=iteration, started_at=now_timestamp(), run_attempt=self.attempt
        )
        self._set_state(S.RUN_STATE_BUILDING)
        self.run.iteration_count = iteration
        self._save_run()
        self.emitter.emit(
            ev.ITERATION_STARTED,
            iteration,
            iteration_started=events_pb2.IterationStarted(
                max_iterations=self.max_iterations, has_feedback=bool(feedback)
            ),
        )
        prompt = assemble_prompt(
            self.work_order.spec.task_prompt,
            rules=prepared.rules,
            gate_plan_summary=prepared.gate_plan_summary,
            feedback=feedback,
            extra_instructions=self.harness.extra_instructions,
        )
        try:
            step = await self._run_agent(iteration, prompt)
        except BaseException:
            await self._drop_started_snapshot()
            raise
        agent = step.result
        data.attempts.extend(step.attempts)
        data.agent_session_id = agent.session_id
        data.agent_result_file = step.file
        data.agent_duration_seconds = agent.duration_seconds
        data.agent_success = agent.success
        data.model = agent.model
        data.tokens.CopyFrom(agent.tokens)
        data.cost_usd = agent.cost_usd

        self._set_state(S.RUN_STATE_SNAPSHOTTING)
        snapshot = await self._snapshot(iteration)
        data.snapshot_id = snapshot.snapshot_id
        data.snapshot_commit = snapshot.snapshot_id
        data.has_changes = snapshot.has_changes
        self.run.final_commit = snapshot.snapshot_id
        # Stored while the gate runs (off the run's critical path, docs/benchmarks.md), and
        # awaited before the iteration's record: a record on file means its patch is too
        # (resume.py). Awaited however verification ends, so it never outlives the iteration.
        patch_stored = asyncio.create_task(self._store_patch(iteration, snapshot.snapshot_id))
        report: common_pb2.VerificationReport | None = None
        report_file = ""
        try:
            if agent.success:
                self._set_state(S.RUN_STATE_VERIFYING)
                report, report_file = await self._verify(iteration, snapshot.snapshot_id)
                data.verification_file = report_file
                data.verification_passed = report.passed
                data.levels_run.extend(report.levels_run)
                data.verification_duration_seconds = report.duration_seconds
        finally:
            await patch_stored

        decision = self._decide(iteration, agent, report, snapshot.has_changes, history, started)
        error: common_pb2.BuildError | None = None
        if not agent.success:
            error = step.error()
        elif report is not None and not report.passed:
            error = build_errors.from_verification_report(report, report_file, step.file)
        self._record_iteration(data, decision, error, started)
        return IterationOutcome(agent, report, decision, error)

    async def _store_patch(self, iteration: int, snapshot_id: str) -> None:
        """Stores the iteration's change (against the previous snapshot) and the run's
        change so far (against the source) through persistence, so both outlive the
        workspace and the worker (docs/results.md). Never fatal: a patch that cannot be
        made or kept (one over the bound) is a persistence warning."""
        previous, self._previous_snapshot = self._previous_snapshot, snapshot_id
        try:
            step, total = await asyncio.gather(
                self._workspace.export_patch(self._workspace_id, previous, snapshot_id),
                self._workspace.export_patch(self._workspace_id, "", snapshot_id),
            )
        except OperationFailed as exc:
            self._saved(f"patch-{iteration}.diff", Saved(problem=exc.failure.error.message))
            return
        patch, cumulative = (
            common_pb2.RunPatch(
                run_id=self.run.id,
                iteration=number,
                run_attempt=self.attempt,
                patch=made.patch,
                from_commit=made.from_commit,
                to_commit=made.to_commit,
                to_tree=made.to_tree,
                changed_files=made.changed_files,
            )
            for number, made in ((iteration, step), (0, total))
        )
        self._saved(f"patch-{iteration}.diff", await self._persistence.save_patch(patch, cumulative))

    def _decide(
        self,
        iteration: int,
        agent: common_pb2.AgentResult,
        report: common_pb2.VerificationReport | None,
        has_changes: bool,
        history: list[IterationSummary],
        started: float,
    ) -> LoopDecision:
        """The strategy's decision, with the budgets applied; emitted, and the iteration
        added to `history`."""
        passed = report is not None and report.passed
        event = IterationCompleteEvent(
            iteration=iteration,
            max_iterations=self.max_iterations,
            elapsed_seconds=time.monotonic() - self._started,
            agent_result=agent,
            agent_success=agent.success,
            verification_report=report,
            passed=passed,
            run_id=self.run.id,
            work_order_id=self.run.work_order_id,
            previous=list(history),
            has_changes=has_changes,
        )
        decision = budgets.enforce(self.strategy.on_iteration_complete(event), self.budget, passed)
        if decision.should_continue and agent.error_type in FINAL_AGENT_ERRORS:
            # Another iteration would meet the same refusal (bad credentials) or spend past
            # the cap again: the loop ends here, whatever the strategy would do.
            rule = "agent_auth_error" if agent.error_type == T.BUILD_ERROR_TYPE_AGENT_AUTH_ERROR else "budget"
            decision = replace(
                decision, outcome=LoopOutcome.STRATEGY_STOP, reason=agent.error_message, rule=rule, feedback=""
            )
        self.emitter.emit(
            ev.STRATEGY_DECISION,
            iteration,
            strategy_decision=events_pb2.StrategyDecision(strategy=self.strategy.name, decision=decision.to_proto()),
        )
        history.append(
            IterationSummary(
                iteration, agent.success, passed, time.monotonic() - started, agent.tokens.total, has_changes
            )
        )
        return decision

    def _record_iteration(
        self,
        data: common_pb2.IterationData,
        decision: LoopDecision,
        error: common_pb2.BuildError | None,
        started: float,
    ) -> None:
        """Completes the iteration's record, saves it and emits iteration:complete."""
        data.error_type = build_errors.iteration_error_type(error)
        if error is not None:
            data.error_message = error.message
            data.error_details.update(build_errors.error_details(error))
        data.feedback_generated = bool(decision.feedback)
        data.decision.CopyFrom(decision.to_proto())
        data.state = self.run.state
        data.finished_at.CopyFrom(now_timestamp())
        data.duration_seconds = time.monotonic() - started

        # Nothing waits for the iteration record: it is saved behind the run, in order with
        # the run's saves (flushed before the terminal event).
        async def save_iteration() -> None:
            self._saved(f"iteration-{data.iteration}.json", await self._persistence.save_iteration(data))

        self._saves.submit(save_iteration, replaceable=False)
        self.emitter.emit(
            ev.ITERATION_COMPLETE,
            data.iteration,
            iteration_complete=events_pb2.IterationComplete(
                agent_success=data.agent_success,
                verification_passed=data.verification_passed,
                duration_seconds=data.duration_seconds,
                error_type=data.error_type,
            ),
        )

    def _retry_event(self, iteration: int, sink: list[common_pb2.RetryAttempt] | None = None) -> AttemptCallback:
        """A callback that records a retry attempt (in `sink`) and emits it as retry:attempt."""

        def on_attempt(attempt: common_pb2.RetryAttempt) -> None:
            if sink is not None:
                sink.append(attempt)
            self.emitter.emit(ev.RETRY_ATTEMPT, iteration, retry_attempt=attempt)

        return on_attempt

    def _emit_agent_item(
        self, iteration: int, item: events_pb2.AgentOutput | events_pb2.SandboxConnectionRefused
    ) -> None:
        """An output line as agent:output, a refused connection as sandbox:connection_refused."""
        if isinstance(item, events_pb2.SandboxConnectionRefused):
            self.emitter.emit(ev.SANDBOX_CONNECTION_REFUSED, iteration, sandbox_connection_refused=item)
        else:
            self.emitter.emit(ev.AGENT_OUTPUT, iteration, agent_output=item)

    async def _run_agent(self, iteration: int, prompt: str) -> AgentStep:
        """Runs the agent under the retry policy (docs/profiles.md): a timeout or crash the
        policy names is tried again with the attempt number passed on; every try is recorded."""
        attempts: list[common_pb2.RetryAttempt] = []

        def failure_of(outcome: tuple[common_pb2.AgentResult, str]) -> Failure | None:
            result = outcome[0]
            if result.success:
                return None
            error = build_errors.from_agent_result(result)
            # Bad credentials stay bad; a crossed budget must not be spent again.
            permanent = error.type in FINAL_AGENT_ERRORS
            return Failure(error, permanent=permanent, timed_out=error.type == T.BUILD_ERROR_TYPE_AGENT_TIMEOUT)

        tried = await self.retry.run(
            "agent",
            lambda attempt: self._run_agent_once(iteration, prompt, attempt),
            failure_of,
            on_attempt=self._retry_event(iteration, attempts),
        )
        if tried.value is None:
            # The last try could not run the agent at all (the workspace service failed).
            raise OperationFailed(tried.error or build_errors.from_exception(RuntimeError("no agent result")))
        result, file = tried.value
        self._last_session_id = result.session_id or self._last_session_id
        return AgentStep(result, file, attempts, tried.retries if tried.error is not None else 0)

    async def _run_agent_once(self, iteration: int, prompt: str, attempt: int) -> tuple[common_pb2.AgentResult, str]:
        if attempt > 1:  # a retry starts from the iteration's snapshot, not from a half-done attempt
            commit = await self._workspace.restore_snapshot(self._workspace_id)
            if commit:
                self.emitter.emit(
                    ev.SNAPSHOT_RESTORED, iteration, snapshot_restored=events_pb2.SnapshotRestored(commit=commit)
                )
        spec = self.work_order.spec.agent
        self.emitter.emit(
            ev.AGENT_STARTED,
            iteration,
            agent_started=events_pb2.AgentStarted(
                driver=spec.name, prompt_bytes=len(prompt.encode()), attempt=attempt
            ),
        )
        result = await self._workspace.run_agent(
            workspace_id=self._workspace_id,
            run_id=self.run.id,
            iteration=iteration,
            attempt=attempt,
            agent=spec,
            prompt=prompt,
            timeout_seconds=self.harness.limits.agent_timeout_seconds,
            resume_session_id=self._last_session_id,
            budget=self.budget.remaining(),
            on_output=lambda item: self._emit_agent_item(iteration, item),
        )
        self._count_usage(result)
        result.run_attempt = self.attempt
        if result.success:
            # No other attempt follows a success: the snapshot starts while the result is
            # saved (a persistence round trip off the run's path, docs/benchmarks.md).
            self._snapshot_started = asyncio.ensure_future(
                self._workspace.snapshot(self._workspace_id, f"agentgate: iteration {iteration}")
            )
        if result.session_note:
            self.emitter.emit(
                ev.AGENT_SESSION_LOST,
                iteration,
                session_lost=events_pb2.SessionLost(session_id=self._last_session_id, reason=result.session_note),
            )
        if result.error_type == T.BUILD_ERROR_TYPE_BUDGET_EXCEEDED:
            rule = "cost_budget" if result.error_message.startswith("Cost") else "token_budget"
            self.emitter.emit(
                ev.BUDGET_EXCEEDED,
                iteration,
                budget_exceeded=events_pb2.BudgetExceeded(
                    rule=rule, reason=result.error_message, tokens=self.budget.tokens, cost_usd=self.budget.cost_usd
                ),
            )
        agent_file = self._saved(f"agent-{iteration}.json", await self._persistence.save_agent_result(result))
        self._check_disk()
        ended = events_pb2.AgentEnded(
            success=result.success,
            exit_code=result.exit_code,
            duration_seconds=result.duration_seconds,
            tokens=result.tokens,
            timed_out=result.timed_out,
            agent_result_file=agent_file,
        )
        if result.success:
            self.emitter.emit(ev.AGENT_COMPLETE, iteration, agent_ended=ended, cost_usd=result.cost_usd)
        else:
            ended.error = build_errors.from_agent_result(result).message
            self.emitter.emit(ev.AGENT_FAILED, iteration, agent_ended=ended, cost_usd=result.cost_usd)
        return result, agent_file

    def _count_usage(self, result: common_pb2.AgentResult) -> None:
        """Adds one agent execution (any attempt) to the run's token and cost totals."""
        self.budget.add(result)
        self.run.tokens.CopyFrom(self.budget.tokens)
        self.run.cost_usd = self.budget.cost_usd

    async def _drop_started_snapshot(self) -> None:
        """Cancels a snapshot started for an iteration that does not get to it."""
        started, self._snapshot_started = self._snapshot_started, None
        if started is not None:
            started.cancel()
            await asyncio.gather(started, return_exceptions=True)

    async def _snapshot(self, iteration: int) -> workspace_pb2.CreateSnapshotResponse:
        started, self._snapshot_started = self._snapshot_started, None
        snapshot = await (
            started or self._workspace.snapshot(self._workspace_id, f"agentgate: iteration {iteration}")
        )
        self.emitter.emit(
            ev.SNAPSHOT_CREATED,
            iteration,
            snapshot_created=events_pb2.SnapshotCreated(
                commit=snapshot.snapshot_id, changed_files=snapshot.changed_files, has_changes=snapshot.has_changes
            ),
        )
        return snapshot

    async def _verify(self, iteration: int, snapshot_id: str) -> tuple[common_pb2.VerificationReport, str]:
        self.emitter.emit(
            ev.VERIFICATION_STARTED,
            iteration,
            verification_started=events_pb2.VerificationStarted(snapshot_commit=snapshot_id),
        )
        report = await self._workspace.verify(
            self._workspace_id, snapshot_id, self.run.id, iteration, self.harness.verification
        )
        report.run_attempt = self.attempt
        self._last_report = report
        self._delivered = None
        if report.passed and self._waits_for_ci():
            await self._deliver_and_wait_for_ci(report)
        report_file = self._saved(
            f"verification-{iteration}.json", await self._persistence.save_verification_report(report)
        )
        self._check_disk()
        self.emitter.emit(
            ev.VERIFICATION_COMPLETE,
            iteration,
            verification_complete=events_pb2.VerificationComplete(
                passed=report.passed,
                summary=report.summary,
                levels_run=report.levels_run,
                duration_seconds=report.duration_seconds,
                verification_file=report_file,
            ),
        )
        return report, report_file

    # -- endings -----------------------------------------------------------------

    def _ended_payload(self, result: common_pb2.RunResult.ValueType) -> events_pb2.RunEnded:
        return events_pb2.RunEnded(
            result=result,
            iterations=self.run.iteration_count,
            duration_seconds=time.monotonic() - self._started,
            error=self.run.error,
            build_error=self.run.build_error,
            loop_result=self.run.loop_result,
            branch_name=self.run.branch_name,
            final_commit=self.run.final_commit,
        )

    async def _succeed(self) -> RunOutcome:
        self._check_disk()  # a background save may have found the disk full: deliver nothing
        self._set_state(S.RUN_STATE_DELIVERING)
        self._save_run()
        # With wait_for_ci the passing iteration delivered already (its CI passed).
        outcome = self._delivered or await self._deliver()
        failure = outcome.failure
        if failure is not None:
            return self._fail(R.RUN_RESULT_FAILED_GITHUB, failure, common_pb2.LOOP_RESULT_SUCCESS)
        self._set_state(S.RUN_STATE_SUCCEEDED)
        self.run.result = R.RUN_RESULT_SUCCEEDED
        self.run.loop_result = common_pb2.LOOP_RESULT_SUCCESS
        self.strategy.on_loop_end(common_pb2.LOOP_RESULT_SUCCESS)
        self._terminal_event = ev.RUN_COMPLETE
        return RunOutcome(W.WORK_ORDER_STATUS_SUCCEEDED)

    def _delivery(self) -> Delivery:
        return Delivery(
            self._workspace,
            self.retry,
            lambda event_type, **payload: self.emitter.emit(event_type, self.iteration, **payload),
            on_attempt=self._retry_event(self.iteration),
        )

    async def _deliver(self, delivery: Delivery | None = None) -> DeliveryOutcome:
        """Delivery per git_ops (docs/delivery.md); records the GitHub summary and PR URL on
        the run; the outcome's failure fails the run (github_mode fail_fast)."""
        outcome = await (delivery or self._delivery()).deliver(
            DeliveryRequest(
                run=self.run,
                git_ops=self.harness.git_ops,
                source=self.work_order.spec.source,
                workspace_id=self._workspace_id,
                verification_summary=verification_summary(self._last_report),
            )
        )
        self.run.github_summary.CopyFrom(outcome.summary)
        self.run.pr_url = outcome.summary.pr_url
        return outcome

    def _waits_for_ci(self) -> bool:
        """Whether a passing gate is followed by the pull request's CI (docs/delivery.md)."""
        git_ops = self.harness.git_ops
        return (
            self.harness.verification.wait_for_ci
            and git_ops.mode == common_pb2.GIT_MODE_PR
            and git_ops.github_mode != common_pb2.GIT_HUB_MODE_DISABLED
        )

    async def _deliver_and_wait_for_ci(self, report: common_pb2.VerificationReport) -> None:
        """Delivers the passing snapshot (push, pull request) and waits for its CI, whose
        outcome joins `report` as the level `CI`: a failed CI fails the report, so the
        strategy decides on it and its failed checks become the next iteration's feedback,
        whose change is pushed to the same pull request. A failed delivery (or CI that
        cannot be read) is kept for `_succeed`, which fails the run per github_mode."""
        delivery = self._delivery()
        outcome = await self._deliver(delivery)
        self._delivered = outcome
        if outcome.failure is not None or outcome.pull_request is None:
            return
        summary = self.run.github_summary
        level, error = await delivery.wait_for_ci(outcome.pull_request, summary)
        if error is not None:
            failure = delivery.on_failure(
                self.harness.git_ops.github_mode, f"Waiting for CI failed: {error.message}", CI_OPERATION, error
            )
            self._delivered = DeliveryOutcome(summary, failure, outcome.pull_request)
            return
        assert level is not None
        report.levels.append(level)
        report.levels_run.append(level.level)
        if not level.passed:
            report.passed = False
            failed = [check.name for check in level.checks if not check.passed]
            report.summary = f"{report.summary}; CI failed: {', '.join(failed)}".lstrip("; ")
            # The next iteration delivers again: nothing is delivered for this one.
            self._delivered = None

    def _fail(
        self,
        result: common_pb2.RunResult.ValueType,
        error: common_pb2.BuildError,
        loop_result: common_pb2.LoopResult.ValueType,
    ) -> RunOutcome:
        self._set_state(S.RUN_STATE_FAILED)
        self.run.result = result
        self.run.loop_result = loop_result
        self.run.build_error.CopyFrom(error)
        self.run.error = build_errors.error_string(error)
        if not self.run.stop_reason:
            self.run.stop_reason = error.message
        self.strategy.on_loop_end(loop_result)
        self._terminal_event = ev.RUN_FAILED
        return RunOutcome(W.WORK_ORDER_STATUS_FAILED, self.run.error)

    def _cancel(self) -> None:
        self._set_state(S.RUN_STATE_CANCELED)
        self.run.result = R.RUN_RESULT_CANCELED
        self.run.error = "Canceled by request"
        self.run.stop_reason = "canceled"
        self._terminal_event = ev.RUN_CANCELED

    async def _release_workspace(self) -> None:
        """Releases the workspace, deleting it per the harness's retention (docs/workspaces.md):
        this runs after delivery, so a pushed branch or pull request is already out."""
        if not self._workspace_id:
            return
        # A worker shutting down leaves a run that is not over (it goes back to the queue):
        # only an ended run's workspace is deleted.
        ended = self.run.state in TERMINAL_STATES
        delete = ended and deletes_workspace(self.harness.retention, self.run.result == R.RUN_RESULT_SUCCEEDED)
        if await self._workspace.release(self._workspace_id, delete=delete):
            self.emitter.emit(
                ev.WORKSPACE_RELEASED,
                self.iteration,
                workspace_changed=events_pb2.WorkspaceChanged(
                    workspace_id=self._workspace_id,
                    path=self.run.workspace_path,
                    branch=self.run.branch_name,
                    deleted=delete,
                ),
            )

    async def _finish(self) -> None:
        """Releases the workspace, saves the final run, emits the terminal event and flushes."""
        self.run.finished_at.CopyFrom(now_timestamp())
        # The final save queues behind the earlier ones (whose warnings it counts when it
        # runs) and overlaps the release; the terminal event waits for both.
        self._save_run()
        await asyncio.gather(self._release_workspace(), self._saves.flush())
        if self._terminal_event:
            self.emitter.emit(self._terminal_event, self.iteration, run_ended=self._ended_payload(self.run.result))
        await self.emitter.close()
