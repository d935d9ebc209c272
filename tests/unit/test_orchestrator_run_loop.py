"""The run loop on in-memory ports: the order of its steps, what it records, and how each
kind of ending reads. The same loop against the real services is in
tests/integration/test_orchestrator_run.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from agentgate.common import events as ev
from agentgate.orchestrator.persistence_port import Saved
from agentgate.orchestrator.retry import OperationFailed
from agentgate.orchestrator.run_loop import RunExecutor
from agentgate.orchestrator.subscribers import EmittedEvent
from agentgate.orchestrator.workspace_port import OutputCallback
from agentgate.v1 import common_pb2, events_pb2, workspace_pb2

# The harness is resolved against $AGENTGATE_HOME/profiles.
pytestmark = pytest.mark.usefixtures("home")

R = common_pb2.RunResult
T = common_pb2.BuildErrorType


def gate(passed: bool) -> common_pb2.VerificationReport:
    level = common_pb2.LevelResult(level="L1", name="tests", ran=True, passed=passed)
    level.checks.add(name="unit", kind="test", command="pytest -q", passed=passed, exit_code=0 if passed else 1,
                     output="ok" if passed else "1 failed in 0.1s")
    return common_pb2.VerificationReport(passed=passed, summary="gate", levels=[level])


class MemoryWorkspace:
    """A workspace port whose gate answers from a script, one report per iteration."""

    def __init__(self, gates: Sequence[bool], snapshot_fails: bool = False):
        self.gates = list(gates)
        self.snapshot_fails = snapshot_fails
        self.calls: list[str] = []
        self.prompts: list[str] = []

    async def prepare(self, run_id, source, harness, patches=()) -> workspace_pb2.PrepareForRunResponse:
        self.calls.append("prepare")
        return workspace_pb2.PrepareForRunResponse(
            workspace=workspace_pb2.Workspace(id="ws-1", path="/ws/1", branch="agentgate/run-1"), rules="be tidy"
        )

    async def run_agent(self, *, prompt: str, iteration: int, on_output: OutputCallback, **_) -> common_pb2.AgentResult:
        self.calls.append(f"agent {iteration}")
        self.prompts.append(prompt)
        on_output(events_pb2.AgentOutput(text=f"working on {iteration}"))
        return common_pb2.AgentResult(success=True, tokens=common_pb2.TokenUsage(total=10), cost_usd=0.01)

    async def restore_snapshot(self, workspace_id: str) -> str:
        self.calls.append("restore")
        return "c0"

    async def snapshot(self, workspace_id: str, message: str) -> workspace_pb2.CreateSnapshotResponse:
        self.calls.append("snapshot")
        if self.snapshot_fails:
            raise OperationFailed(common_pb2.BuildError(type=T.BUILD_ERROR_TYPE_SNAPSHOT_ERROR,
                                                        message="Snapshot failed: disk full"))
        return workspace_pb2.CreateSnapshotResponse(snapshot_id=f"c{len(self.calls)}", has_changes=True)

    async def export_patch(self, workspace_id, from_snapshot_id, to_snapshot_id) -> workspace_pb2.ExportPatchResponse:
        return workspace_pb2.ExportPatchResponse(patch=b"", to_commit=to_snapshot_id)

    async def verify(self, workspace_id, snapshot_id, run_id, iteration, settings) -> common_pb2.VerificationReport:
        self.calls.append(f"verify {iteration}")
        return gate(self.gates.pop(0))

    async def push(self, workspace_id: str, branch: str) -> workspace_pb2.PushResponse:
        raise AssertionError("a local run pushes nothing")

    async def release(self, workspace_id: str, delete: bool = False) -> bool:
        self.calls.append("release")
        self.deleted = delete
        return True


class MemoryPersistence:
    """A persistence port that keeps everything; the saves named in `failing` fail."""

    def __init__(self, failing: Sequence[str] = (), problem: str = "UNAVAILABLE: down"):
        self.failing = set(failing)
        self.problem = problem
        self.runs: list[common_pb2.Run] = []
        self.iterations: list[common_pb2.IterationData] = []
        self.events: list[events_pb2.RunEvent] = []

    def _saved(self, kind: str, file: str) -> Saved:
        return Saved(problem=self.problem) if kind in self.failing else Saved(file)

    async def create_run(self, run: common_pb2.Run) -> Saved:
        self.runs.append(run)
        return self._saved("run", "run.json")

    async def update_run(self, run: common_pb2.Run) -> Saved:
        self.runs.append(run)
        return self._saved("run", "run.json")

    async def save_iteration(self, iteration: common_pb2.IterationData) -> Saved:
        self.iterations.append(iteration)
        return self._saved("iteration", f"iteration-{iteration.iteration}.json")

    async def save_agent_result(self, result: common_pb2.AgentResult) -> Saved:
        return self._saved("agent", "agent.json")

    async def save_verification_report(self, report: common_pb2.VerificationReport) -> Saved:
        return self._saved("verification", "verification.json")

    async def save_patch(self, patch: common_pb2.RunPatch, cumulative: common_pb2.RunPatch) -> Saved:
        return self._saved("patch", f"patch-{patch.iteration}.diff")

    def event_subscriber(self, run_id: str) -> MemoryPersistence:
        return self

    name = "persistence"

    async def handle(self, batch: Sequence[EmittedEvent]) -> None:
        self.events.extend(item.event for item in batch)

    async def aclose(self) -> None:
        """Nothing held."""

    def types(self) -> list[str]:
        return [event.type for event in self.events]


def work_order(max_iterations: int = 3) -> common_pb2.WorkOrder:
    spec = common_pb2.WorkOrderSpec(task_prompt="Fix the bug", agent=common_pb2.AgentSpec(name="scripted"))
    spec.harness.loop_strategy.max_iterations = max_iterations
    return common_pb2.WorkOrder(id="wo-1", run_id="run-1", spec=spec)


async def test_a_run_that_passes_on_its_second_iteration() -> None:
    workspace, persistence = MemoryWorkspace([False, True]), MemoryPersistence()
    outcome = await RunExecutor(work_order(), workspace, persistence).execute()

    assert outcome.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED
    assert workspace.calls == ["prepare", "agent 1", "snapshot", "verify 1", "agent 2", "snapshot", "verify 2",
                               "release"]
    assert "Verification failed — iteration 1" in workspace.prompts[1]  # the feedback reached the next prompt
    run = persistence.runs[-1]
    assert (run.result, run.loop_result, run.stop_reason) == (
        R.RUN_RESULT_SUCCEEDED, common_pb2.LOOP_RESULT_SUCCESS, "Verification passed"
    )
    assert run.tokens.total == 20 and run.persistence_warnings == 0
    first, second = persistence.iterations
    assert dict(first.decision.metadata)["loop_result"] == "continue" and first.feedback_generated
    assert first.error_type == common_pb2.ITERATION_ERROR_TYPE_VERIFICATION_FAILED
    assert dict(second.decision.metadata)["rule"] == "passed"
    types = persistence.types()
    assert types[:4] == [ev.RUN_STARTED, ev.RETRY_ATTEMPT, ev.WORKSPACE_ACQUIRED, ev.ITERATION_STARTED]
    assert types[-2:] == [ev.WORKSPACE_RELEASED, ev.RUN_COMPLETE]
    assert types.count(ev.AGENT_OUTPUT) == 2 and types.count(ev.STRATEGY_DECISION) == 2


async def test_a_failed_last_iteration_is_the_run_error() -> None:
    persistence = MemoryPersistence()
    outcome = await RunExecutor(work_order(max_iterations=2), MemoryWorkspace([False, False]), persistence).execute()

    assert outcome.status == common_pb2.WORK_ORDER_STATUS_FAILED
    run = persistence.runs[-1]
    assert run.result == R.RUN_RESULT_FAILED_VERIFICATION
    assert run.loop_result == common_pb2.LOOP_RESULT_MAX_ITERATIONS
    assert run.build_error.type == T.BUILD_ERROR_TYPE_TEST_FAILED
    assert run.build_error.message == persistence.iterations[-1].error_message == "Test execution failed (1 failed)"
    assert run.error == "Test execution failed (1 failed). Details: agent.json, verification.json"
    assert run.stop_reason == "Reached max iterations (2) without passing verification"


async def test_a_failed_snapshot_ends_the_run_and_still_releases_the_workspace() -> None:
    workspace, persistence = MemoryWorkspace([True], snapshot_fails=True), MemoryPersistence()
    outcome = await RunExecutor(work_order(), workspace, persistence).execute()

    assert outcome.status == common_pb2.WORK_ORDER_STATUS_FAILED
    assert workspace.calls == ["prepare", "agent 1", "snapshot", "release"]
    run = persistence.runs[-1]
    assert (run.result, run.loop_result) == (R.RUN_RESULT_FAILED_SYSTEM, common_pb2.LOOP_RESULT_ERROR)
    assert run.build_error.type == T.BUILD_ERROR_TYPE_SNAPSHOT_ERROR
    assert run.stop_reason == "Snapshot failed: disk full"
    assert persistence.types()[-1] == ev.RUN_FAILED


async def test_a_failed_save_is_a_warning_not_a_failure() -> None:
    persistence = MemoryPersistence(failing=["agent"])
    outcome = await RunExecutor(work_order(), MemoryWorkspace([True]), persistence).execute()

    assert outcome.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED
    warnings = [e.persistence_warning.message for e in persistence.events if e.type == ev.PERSISTENCE_WARNING]
    assert warnings == ["could not save agent-1.json: UNAVAILABLE: down"]
    assert persistence.runs[-1].persistence_warnings == 1
    assert persistence.iterations[0].agent_result_file == ""


class SnapshotSeen(MemoryWorkspace):
    """A workspace port that says when the snapshot was asked for."""

    def __init__(self, gates: Sequence[bool]):
        super().__init__(gates)
        self.asked = asyncio.Event()

    async def snapshot(self, workspace_id: str, message: str) -> workspace_pb2.CreateSnapshotResponse:
        self.asked.set()
        return await super().snapshot(workspace_id, message)


class SlowAgentSave(MemoryPersistence):
    """Saves an agent result only once the iteration's snapshot has been asked for."""

    def __init__(self, workspace: SnapshotSeen):
        super().__init__()
        self.workspace = workspace

    async def save_agent_result(self, result: common_pb2.AgentResult) -> Saved:
        async with asyncio.timeout(5):
            await self.workspace.asked.wait()
        return await super().save_agent_result(result)


async def test_the_snapshot_starts_while_the_agent_result_is_saved_and_its_event_comes_after() -> None:
    workspace = SnapshotSeen([True])
    persistence = SlowAgentSave(workspace)
    outcome = await RunExecutor(work_order(), workspace, persistence).execute()

    assert outcome.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED  # the save did not wait for ever
    types = persistence.types()
    assert types.index(ev.AGENT_COMPLETE) < types.index(ev.SNAPSHOT_CREATED) < types.index(ev.VERIFICATION_STARTED)
    assert persistence.iterations[0].agent_result_file == "agent.json"


DISK_FULL = (
    "agent-1.json not written (no space left on device while writing runs/run-1/agent-1.json); "
    "the record is kept in the index"
)


async def test_a_full_disk_ends_the_run_failed_with_the_disk_message() -> None:
    workspace, persistence = MemoryWorkspace([True, True]), MemoryPersistence(["agent"], problem=DISK_FULL)
    outcome = await RunExecutor(work_order(), workspace, persistence).execute()

    assert outcome.status == common_pb2.WORK_ORDER_STATUS_FAILED
    assert outcome.error.startswith("No space left on device while writing runs/run-1/agent-1.json")
    # Nothing runs after the failed save: no snapshot, no verification, no second iteration.
    assert workspace.calls == ["prepare", "agent 1", "release"]
    run = persistence.runs[-1]
    assert (run.state, run.result) == (common_pb2.RUN_STATE_FAILED, R.RUN_RESULT_FAILED_SYSTEM)
    assert run.build_error.type == T.BUILD_ERROR_TYPE_SYSTEM_ERROR
    assert run.build_error.message == "No space left on device while writing runs/run-1/agent-1.json"
    assert persistence.types()[-1] == ev.RUN_FAILED


class StuckAgentWorkspace(MemoryWorkspace):
    """An agent that prints one line, then runs until cancelled."""

    cancelled = False

    async def run_agent(self, *, on_output: OutputCallback, **_) -> common_pb2.AgentResult:
        self.calls.append("agent")
        on_output(events_pb2.AgentOutput(text="filling the disk"))
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("never reached")


async def test_events_that_find_the_disk_full_stop_the_agent_in_progress() -> None:
    from agentgate.orchestrator.persistence_port import PersistenceSubscriber

    class FullDiskEvents(PersistenceSubscriber):
        """The run's event log, full after the first batch."""

        def __init__(self, persistence: MemoryPersistence) -> None:
            super().__init__(None, "run-1")  # type: ignore[arg-type]
            self.persistence = persistence

        async def handle(self, batch: Sequence[EmittedEvent]) -> None:
            if any(item.event.type == ev.AGENT_OUTPUT for item in batch) and self.on_disk_full is not None:
                self.on_disk_full("no space left on device while writing persistence.db")
                raise RuntimeError("RESOURCE_EXHAUSTED")
            await self.persistence.handle(batch)

    persistence = MemoryPersistence()
    persistence.event_subscriber = lambda run_id: FullDiskEvents(persistence)  # type: ignore[method-assign]
    workspace = StuckAgentWorkspace([True])
    outcome = await asyncio.wait_for(RunExecutor(work_order(), workspace, persistence).execute(), 10)

    assert workspace.cancelled and workspace.calls == ["prepare", "agent", "release"]
    assert outcome.status == common_pb2.WORK_ORDER_STATUS_FAILED
    run = persistence.runs[-1]
    assert run.build_error.message == "No space left on device while writing persistence.db (saving events)"
    assert persistence.types()[-1] == ev.RUN_FAILED


class StoredPersistence(MemoryPersistence):
    """A persistence port holding what attempt 1 of run-1 stored: iteration 1 done, with
    its patch, its session and its feedback; 120 tokens and $0.50 spent."""

    def __init__(self) -> None:
        super().__init__()
        self.stored_run = common_pb2.Run(
            id="run-1", tokens=common_pb2.TokenUsage(total=120), cost_usd=0.5,
            attempts=[common_pb2.RunAttempt(attempt=1, worker_id="w-lost")],
        )
        decision = common_pb2.LoopDecision(should_continue=True, reason="gate failed", feedback="FIX THE TEST")
        self.stored = [
            common_pb2.IterationData(run_id="run-1", iteration=1, snapshot_id="old-1", agent_success=True,
                                     agent_session_id="sess-1", decision=decision, has_changes=True),
        ]
        self.patches = {1: common_pb2.RunPatch(run_id="run-1", iteration=1, patch=b"P1", to_commit="old-1")}
        self.prepared_with: list[bytes] = []

    async def get_run(self, run_id: str) -> common_pb2.Run | None:
        return self.stored_run

    async def list_iterations(self, run_id: str) -> list[common_pb2.IterationData]:
        return self.stored

    async def get_patch(self, run_id: str, iteration: int) -> common_pb2.RunPatch | None:
        return self.patches.get(iteration)

    async def get_agent_result(self, run_id: str, iteration: int) -> common_pb2.AgentResult | None:
        return common_pb2.AgentResult(run_id=run_id, iteration=iteration, success=True)

    async def get_verification_report(self, run_id: str, iteration: int) -> common_pb2.VerificationReport | None:
        return None


class ResumingWorkspace(MemoryWorkspace):
    """Records the patches a resumed run's workspace is made with, and resumed sessions."""

    def __init__(self, gates: Sequence[bool]):
        super().__init__(gates)
        self.patches: list[bytes] = []
        self.sessions: list[str] = []

    async def prepare(self, run_id, source, harness, patches=()) -> workspace_pb2.PrepareForRunResponse:
        self.patches = list(patches)
        prepared = await super().prepare(run_id, source, harness)
        prepared.patch_snapshots.extend(f"new-{n}" for n in range(1, len(patches) + 1))
        return prepared

    async def run_agent(self, *, resume_session_id: str = "", **kwargs) -> common_pb2.AgentResult:
        self.sessions.append(resume_session_id)
        return await super().run_agent(**kwargs)


async def test_a_later_attempt_resumes_after_the_last_completed_iteration() -> None:
    order = work_order(max_iterations=3)
    order.attempts = 2
    workspace, persistence = ResumingWorkspace([True]), StoredPersistence()
    outcome = await RunExecutor(order, workspace, persistence, worker_id="w-new").execute()

    assert outcome.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED
    assert workspace.patches == [b"P1"]  # the workspace is made from the source plus iteration 1's patch
    assert workspace.calls == ["prepare", "agent 2", "snapshot", "verify 2", "release"]  # iteration 1 is not run
    assert "FIX THE TEST" in workspace.prompts[0]  # iteration 1's feedback
    assert workspace.sessions == ["sess-1"]  # the agent session goes on
    run = persistence.runs[-1]
    assert run.iteration_count == 2
    assert [(a.attempt, a.worker_id, a.resumed_after_iteration) for a in run.attempts] == [
        (1, "w-lost", 0), (2, "w-new", 1)
    ]
    assert (run.tokens.total, round(run.cost_usd, 2)) == (130, 0.51)  # attempt 1's spending counts
    assert [data.run_attempt for data in persistence.iterations] == [2]


async def test_a_later_attempt_starts_over_when_the_patches_no_longer_apply() -> None:
    class MovedSource(ResumingWorkspace):
        async def prepare(self, run_id, source, harness, patches=()) -> workspace_pb2.PrepareForRunResponse:
            if patches:
                raise OperationFailed(
                    common_pb2.BuildError(message="the stored patch of iteration 1 does not apply"), permanent=True
                )
            return await super().prepare(run_id, source, harness)

    order = work_order(max_iterations=3)
    order.attempts = 2
    workspace, persistence = MovedSource([True]), StoredPersistence()
    outcome = await RunExecutor(order, workspace, persistence).execute()

    assert outcome.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED
    assert workspace.calls[:2] == ["prepare", "agent 1"]
    warnings = [e.persistence_warning.message for e in persistence.events if e.type == ev.PERSISTENCE_WARNING]
    assert any("starts over from iteration 1" in message for message in warnings), warnings


@pytest.mark.parametrize(
    ("retention", "gates", "deleted"),
    [
        (0, [True], True),  # the default: delete
        (common_pb2.WORKSPACE_RETENTION_DELETE, [False], True),  # a failed run too
        (common_pb2.WORKSPACE_RETENTION_KEEP, [True], False),
        (common_pb2.WORKSPACE_RETENTION_ON_FAILURE, [False], False),
        (common_pb2.WORKSPACE_RETENTION_ON_FAILURE, [True], True),
    ],
)
async def test_retention_decides_whether_the_ended_run_deletes_its_workspace(retention, gates, deleted) -> None:
    ordered = work_order(max_iterations=1)
    ordered.spec.harness.retention.workspace = retention
    workspace, persistence = MemoryWorkspace(gates), MemoryPersistence()
    await RunExecutor(ordered, workspace, persistence).execute()
    assert workspace.calls[-1] == "release" and workspace.deleted is deleted
    [released] = [e for e in persistence.events if e.type == ev.WORKSPACE_RELEASED]
    assert released.workspace_changed.deleted is deleted


async def test_a_worker_shutting_down_keeps_the_workspace_of_a_run_that_goes_on() -> None:
    class Stuck(MemoryWorkspace):
        async def run_agent(self, **_) -> common_pb2.AgentResult:
            await asyncio.sleep(30)
            raise AssertionError("not reached")

    workspace = Stuck([True])
    task = asyncio.create_task(RunExecutor(work_order(), workspace, MemoryPersistence()).execute())
    await asyncio.sleep(0.2)
    task.cancel()  # not a user's cancel: the lease expires and the run is taken up again
    with pytest.raises(asyncio.CancelledError):
        await task
    assert workspace.calls[-1] == "release" and workspace.deleted is False
