"""One run of a work order: prepare the workspace, then iterate agent -> snapshot ->
verify -> strategy decision until the strategy stops, and record everything.

Files, git and processes are reached only through the workspace service; everything
worth keeping goes to the persistence service. A persistence failure never fails a run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc

from agentgate.common import events as ev
from agentgate.common.timeutil import now_timestamp
from agentgate.orchestrator import build_errors
from agentgate.orchestrator.emitter import RunEventEmitter
from agentgate.orchestrator.harness import resolve_harness
from agentgate.orchestrator.prompt import assemble_prompt
from agentgate.orchestrator.run_state import transition
from agentgate.orchestrator.strategies import IterationCompleteEvent, IterationSummary, strategy_for
from agentgate.v1 import (
    common_pb2,
    events_pb2,
    persistence_pb2,
    persistence_pb2_grpc,
    workspace_pb2,
    workspace_pb2_grpc,
)

log = logging.getLogger(__name__)

S = common_pb2.RunState
R = common_pb2.RunResult
W = common_pb2.WorkOrderStatus
E = common_pb2.IterationErrorType

RPC_TIMEOUT_SECONDS = 30.0
PREPARE_TIMEOUT_SECONDS = 600.0
# The gate has its own limits per check; this only bounds a stuck call.
VERIFY_TIMEOUT_SECONDS = 3600.0


class StepFailed(Exception):
    """A step of the run failed in a way that ends it; carries the structured error."""

    def __init__(self, error: common_pb2.BuildError, result: int = R.RUN_RESULT_FAILED_SYSTEM):
        super().__init__(error.message)
        self.error = error
        self.result = result


@dataclass
class RunOutcome:
    """How a run ended, in the queue's terms."""

    status: int
    error: str = ""


@dataclass
class IterationOutcome:
    """What one iteration produced, for the strategy and the run record."""

    agent: common_pb2.AgentResult
    agent_file: str
    report: common_pb2.VerificationReport | None
    report_file: str
    decision: common_pb2.LoopDecision


class RunExecutor:
    """Drives one leased work order from PREPARING to a terminal state."""

    def __init__(
        self,
        work_order: common_pb2.WorkOrder,
        workspace: workspace_pb2_grpc.WorkspaceServiceStub,
        persistence: persistence_pb2_grpc.PersistenceServiceStub,
        worker_id: str = "",
    ):
        self.work_order = work_order
        self._workspace = workspace
        self._persistence = persistence
        self.worker_id = worker_id
        spec = work_order.spec
        self.harness = resolve_harness(spec.harness)
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
        )
        self.emitter = RunEventEmitter(persistence, work_order.id, work_order.run_id, work_order.trace_id)
        self.iteration = 0
        self.persistence_warnings = 0
        #: Set by the worker before it cancels the task for a user's cancel request.
        self.cancel_requested = False
        self._started = time.monotonic()
        self._workspace_id = ""
        # Emitted last, after the workspace is released: followers stop at it.
        self._terminal_event = ""

    # -- persistence, never fatal ------------------------------------------------

    def _warn_persistence(self, what: str, exc: grpc.aio.AioRpcError) -> None:
        """A failed save is logged, counted and emitted, never fatal."""
        self.persistence_warnings += 1
        message = f"could not save {what}: {exc.code().name}: {exc.details()}"
        log.warning("run %s: %s", self.run.id, message)
        self.emitter.emit(
            ev.PERSISTENCE_WARNING,
            self.iteration,
            persistence_warning=events_pb2.PersistenceWarning(message=message),
        )

    async def _persist(self, what: str, call, request) -> str:  # type: ignore[no-untyped-def]
        """Calls a persistence Save*/Update RPC and returns the file it wrote ('' on failure)."""
        try:
            response = await call(request, timeout=RPC_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            self._warn_persistence(what, exc)
            return ""
        return getattr(response, "file", "")

    async def _save_run(self) -> None:
        await self._persist("run.json", self._persistence.UpdateRun, persistence_pb2.UpdateRunRequest(run=self.run))

    async def _create_run(self) -> None:
        try:
            await self._persistence.CreateRun(
                persistence_pb2.CreateRunRequest(run=self.run), timeout=RPC_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                self._warn_persistence("run.json", exc)
                return
            # A new lease of the same work order after a lost worker: same run, new attempt.
            await self._save_run()

    def _set_state(self, state: int) -> None:
        transition(self.run, state)

    # -- the run -----------------------------------------------------------------

    async def execute(self) -> RunOutcome:
        """Runs the work order to the end and returns its final queue status.

        Cancellation of the task running this (the work order was canceled) ends the
        run CANCELED; the agent's process group is killed by the workspace service when
        the RunAgent call is cancelled.
        """
        self._set_state(S.RUN_STATE_PREPARING)
        self.run.started_at.CopyFrom(now_timestamp())
        await self._create_run()
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
                    outcome = await self._loop()
            except TimeoutError:
                error = common_pb2.BuildError(
                    type=common_pb2.BUILD_ERROR_TYPE_AGENT_TIMEOUT,
                    message=f"Run exceeded its wall-clock limit of {self.harness.limits.max_wall_clock_seconds}s",
                    failed_at=now_timestamp(),
                )
                outcome = await self._fail(R.RUN_RESULT_FAILED_TIMEOUT, error, common_pb2.LOOP_RESULT_TIMEOUT)
            except StepFailed as exc:
                outcome = await self._fail(exc.result, exc.error, common_pb2.LOOP_RESULT_ERROR)
            except asyncio.CancelledError:
                if self.cancel_requested:
                    await asyncio.shield(self._cancel())
                else:
                    # Worker shutdown: no terminal event; the lease expires and the work
                    # order goes back to the queue for another attempt of this run.
                    log.warning("run %s interrupted by worker shutdown", self.run.id)
                raise
            except Exception as exc:  # noqa: BLE001 - any bug must still end the run cleanly
                log.exception("run %s failed with an internal error", self.run.id)
                outcome = await self._fail(
                    R.RUN_RESULT_FAILED_SYSTEM, build_errors.from_exception(exc), common_pb2.LOOP_RESULT_ERROR
                )
        finally:
            await asyncio.shield(self._finish())
        return outcome

    async def _loop(self) -> RunOutcome:
        prepared = await self._prepare()
        feedback = ""
        history: list[IterationSummary] = []
        last: IterationOutcome | None = None
        for iteration in range(1, self.max_iterations + 1):
            self.iteration = iteration
            last = await self._iteration(iteration, prepared, feedback, history)
            if not last.decision.should_continue:
                break
            self._set_state(S.RUN_STATE_FEEDBACK)
            feedback = last.decision.feedback
        assert last is not None
        self.run.stop_reason = last.decision.reason
        if last.report is not None and last.report.passed:
            return await self._succeed()
        if not last.agent.success:
            error = build_errors.from_agent_result(last.agent, last.agent_file)
            result = R.RUN_RESULT_FAILED_BUILD
        else:
            assert last.report is not None
            error = build_errors.from_verification_report(last.report, last.report_file, last.agent_file)
            result = R.RUN_RESULT_FAILED_VERIFICATION
        loop_result = (
            common_pb2.LOOP_RESULT_MAX_ITERATIONS
            if self.iteration >= self.max_iterations
            else common_pb2.LOOP_RESULT_STRATEGY_STOP
        )
        return await self._fail(result, error, loop_result)

    async def _prepare(self) -> workspace_pb2.PrepareForRunResponse:
        try:
            prepared = await self._workspace.PrepareForRun(
                workspace_pb2.PrepareForRunRequest(
                    run_id=self.run.id,
                    source=self.work_order.spec.source,
                    gate_plan_yaml=self.harness.verification.gate_plan_yaml,
                ),
                timeout=PREPARE_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            raise StepFailed(
                common_pb2.BuildError(
                    type=common_pb2.BUILD_ERROR_TYPE_WORKSPACE_ERROR,
                    message=f"Workspace preparation failed: {exc.details()}",
                    context={"code": exc.code().name},
                    failed_at=now_timestamp(),
                )
            ) from exc
        ws = prepared.workspace
        self._workspace_id = ws.id
        self.run.workspace_id = ws.id
        self.run.workspace_path = ws.path
        self.run.branch_name = ws.branch
        await self._save_run()
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
        started = time.monotonic()
        data = common_pb2.IterationData(run_id=self.run.id, iteration=iteration, started_at=now_timestamp())
        self._set_state(S.RUN_STATE_BUILDING)
        self.run.iteration_count = iteration
        await self._save_run()
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
        agent, agent_file = await self._run_agent(iteration, prompt)
        data.agent_session_id = agent.session_id
        data.agent_result_file = agent_file
        data.agent_duration_seconds = agent.duration_seconds
        data.agent_success = agent.success
        data.model = agent.model
        data.tokens.CopyFrom(agent.tokens)
        data.cost_usd = agent.cost_usd

        self._set_state(S.RUN_STATE_SNAPSHOTTING)
        snapshot = await self._snapshot(iteration)
        data.snapshot_id = snapshot.snapshot_id
        data.snapshot_commit = snapshot.snapshot_id
        self.run.final_commit = snapshot.snapshot_id

        report: common_pb2.VerificationReport | None = None
        report_file = ""
        if agent.success:
            self._set_state(S.RUN_STATE_VERIFYING)
            report, report_file = await self._verify(iteration, snapshot.snapshot_id)
            data.verification_file = report_file
            data.verification_passed = report.passed
            data.levels_run.extend(report.levels_run)
            data.verification_duration_seconds = report.duration_seconds

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
        )
        decision = self.strategy.on_iteration_complete(event)
        self.emitter.emit(
            ev.STRATEGY_DECISION,
            iteration,
            strategy_decision=events_pb2.StrategyDecision(strategy=self.strategy.name, decision=decision),
        )
        history.append(
            IterationSummary(iteration, agent.success, passed, time.monotonic() - started, agent.tokens.total)
        )

        if not agent.success:
            data.error_type = E.ITERATION_ERROR_TYPE_TIMEOUT if agent.timed_out else E.ITERATION_ERROR_TYPE_AGENT_CRASH
            data.error_message = build_errors.from_agent_result(agent, agent_file).message
        elif not passed:
            data.error_type = E.ITERATION_ERROR_TYPE_VERIFICATION_FAILED
            data.error_message = report.summary if report else ""
        else:
            data.error_type = E.ITERATION_ERROR_TYPE_NONE
        data.feedback_generated = bool(decision.feedback)
        data.decision.CopyFrom(decision)
        data.state = self.run.state
        data.finished_at.CopyFrom(now_timestamp())
        data.duration_seconds = time.monotonic() - started
        await self._persist(
            f"iteration-{iteration}.json",
            self._persistence.SaveIteration,
            persistence_pb2.SaveIterationRequest(iteration=data),
        )
        self.emitter.emit(
            ev.ITERATION_COMPLETE,
            iteration,
            iteration_complete=events_pb2.IterationComplete(
                agent_success=agent.success,
                verification_passed=passed,
                duration_seconds=data.duration_seconds,
                error_type=data.error_type,
            ),
        )
        return IterationOutcome(agent, agent_file, report, report_file, decision)

    async def _run_agent(self, iteration: int, prompt: str) -> tuple[common_pb2.AgentResult, str]:
        spec = self.work_order.spec.agent
        self.emitter.emit(
            ev.AGENT_STARTED,
            iteration,
            agent_started=events_pb2.AgentStarted(driver=spec.name, prompt_bytes=len(prompt.encode()), attempt=1),
        )
        timeout = self.harness.limits.agent_timeout_seconds
        result: common_pb2.AgentResult | None = None
        try:
            call = self._workspace.RunAgent(
                workspace_pb2.RunAgentRequest(
                    workspace_id=self._workspace_id,
                    run_id=self.run.id,
                    iteration=iteration,
                    attempt=1,
                    agent=spec,
                    prompt=prompt,
                    timeout_seconds=timeout,
                ),
                # The workspace enforces the agent timeout; this only bounds a lost call.
                timeout=timeout + 60,
            )
            async for item in call:
                if item.HasField("output"):
                    self.emitter.emit(ev.AGENT_OUTPUT, iteration, agent_output=item.output)
                elif item.HasField("result"):
                    result = item.result
        except grpc.aio.AioRpcError as exc:
            raise StepFailed(
                build_errors.from_exception(RuntimeError(f"RunAgent failed: {exc.code().name}: {exc.details()}"))
            ) from exc
        if result is None:
            raise StepFailed(build_errors.from_exception(RuntimeError("RunAgent ended without a result")))
        agent_file = await self._persist(
            f"agent-{iteration}.json",
            self._persistence.SaveAgentResult,
            persistence_pb2.SaveAgentResultRequest(result=result),
        )
        ended = events_pb2.AgentEnded(
            success=result.success,
            exit_code=result.exit_code,
            duration_seconds=result.duration_seconds,
            tokens=result.tokens,
            timed_out=result.timed_out,
            agent_result_file=agent_file,
        )
        if result.success:
            self.emitter.emit(ev.AGENT_COMPLETE, iteration, agent_ended=ended)
        else:
            ended.error = build_errors.from_agent_result(result).message
            self.emitter.emit(ev.AGENT_FAILED, iteration, agent_ended=ended)
        return result, agent_file

    async def _snapshot(self, iteration: int) -> workspace_pb2.CreateSnapshotResponse:
        try:
            snapshot = await self._workspace.CreateSnapshot(
                workspace_pb2.CreateSnapshotRequest(
                    workspace_id=self._workspace_id, message=f"agentgate: iteration {iteration}"
                ),
                timeout=RPC_TIMEOUT_SECONDS * 4,
            )
        except grpc.aio.AioRpcError as exc:
            raise StepFailed(
                common_pb2.BuildError(
                    type=common_pb2.BUILD_ERROR_TYPE_SNAPSHOT_ERROR,
                    message=f"Snapshot failed: {exc.details()}",
                    failed_at=now_timestamp(),
                )
            ) from exc
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
        try:
            response = await self._workspace.Verify(
                workspace_pb2.VerifyRequest(
                    workspace_id=self._workspace_id,
                    snapshot_id=snapshot_id,
                    run_id=self.run.id,
                    iteration=iteration,
                    settings=self.harness.verification,
                ),
                timeout=VERIFY_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            raise StepFailed(
                build_errors.from_exception(RuntimeError(f"Verify failed: {exc.code().name}: {exc.details()}"))
            ) from exc
        report = response.report
        report_file = await self._persist(
            f"verification-{iteration}.json",
            self._persistence.SaveVerificationReport,
            persistence_pb2.SaveVerificationReportRequest(report=report),
        )
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

    def _ended_payload(self, result: int) -> events_pb2.RunEnded:
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
        # Delivery modes (push, pull request) come with git_ops; `local` delivers nothing.
        self._set_state(S.RUN_STATE_DELIVERING)
        self._set_state(S.RUN_STATE_SUCCEEDED)
        self.run.result = R.RUN_RESULT_SUCCEEDED
        self.run.loop_result = common_pb2.LOOP_RESULT_SUCCESS
        self.strategy.on_loop_end(common_pb2.LOOP_RESULT_SUCCESS)
        self._terminal_event = ev.RUN_COMPLETE
        return RunOutcome(W.WORK_ORDER_STATUS_SUCCEEDED)

    async def _fail(self, result: int, error: common_pb2.BuildError, loop_result: int) -> RunOutcome:
        self._set_state(S.RUN_STATE_FAILED)
        self.run.result = result  # type: ignore[assignment]
        self.run.loop_result = loop_result  # type: ignore[assignment]
        self.run.build_error.CopyFrom(error)
        self.run.error = build_errors.error_string(error)
        if not self.run.stop_reason:
            self.run.stop_reason = error.message
        self.strategy.on_loop_end(loop_result)
        self._terminal_event = ev.RUN_FAILED
        return RunOutcome(W.WORK_ORDER_STATUS_FAILED, self.run.error)

    async def _cancel(self) -> RunOutcome:
        self._set_state(S.RUN_STATE_CANCELED)
        self.run.result = R.RUN_RESULT_CANCELED
        self.run.error = "Canceled by request"
        self.run.stop_reason = "canceled"
        self._terminal_event = ev.RUN_CANCELED
        return RunOutcome(W.WORK_ORDER_STATUS_CANCELED, self.run.error)

    async def _finish(self) -> None:
        """Releases the workspace, saves the final run, emits the terminal event and flushes."""
        if self._workspace_id:
            try:
                await self._workspace.ReleaseLease(
                    workspace_pb2.ReleaseLeaseRequest(workspace_id=self._workspace_id), timeout=RPC_TIMEOUT_SECONDS
                )
                self.emitter.emit(
                    ev.WORKSPACE_RELEASED,
                    self.iteration,
                    workspace_changed=events_pb2.WorkspaceChanged(
                        workspace_id=self._workspace_id, path=self.run.workspace_path, branch=self.run.branch_name
                    ),
                )
            except grpc.aio.AioRpcError as exc:
                log.warning("run %s: could not release workspace: %s", self.run.id, exc.details())
        self.run.finished_at.CopyFrom(now_timestamp())
        await self._save_run()
        if self._terminal_event:
            self.emitter.emit(self._terminal_event, self.iteration, run_ended=self._ended_payload(self.run.result))
        await self.emitter.close()
