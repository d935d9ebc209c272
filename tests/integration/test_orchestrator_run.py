"""The orchestrator's run loop against the real queue, workspace and persistence services,
all in one event loop: the endings other than success."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from agentgate.v1 import common_pb2, orchestrator_pb2, persistence_pb2, queue_pb2

from .inprocess_suite import InProcessSuite

R = common_pb2.RunResult
T = common_pb2.BuildErrorType


@pytest.fixture
async def suite(home: Path):
    running = await InProcessSuite.start(home)
    yield running
    await running.stop()


def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (root / "verify.yaml").write_text(
        'version: "1"\ntests:\n  - {name: unit, kind: test, command: "grep -q \'a + b\' calc.py"}\n'
    )
    return root


def spec(root: Path, script: str, **harness) -> common_pb2.WorkOrderSpec:
    built = common_pb2.WorkOrderSpec(
        task_prompt="Fix add()",
        agent=common_pb2.AgentSpec(name="scripted", options={"script": script}),
    )
    built.source.local_path = str(root)
    if "max_iterations" in harness:
        built.harness.loop_strategy.max_iterations = harness["max_iterations"]
    if "agent_timeout" in harness:
        built.harness.limits.agent_timeout_seconds = harness["agent_timeout"]
    if "wall_clock" in harness:
        built.harness.limits.max_wall_clock_seconds = harness["wall_clock"]
    return built


async def test_agent_crash_fails_build_with_error_naming_the_file(suite, tmp_path):
    script = "default:\n  - stderr: 'cannot continue'\n  - exit: 3\n"
    work_order = await suite.submit(spec(project(tmp_path), script, max_iterations=2))
    final = await suite.wait_terminal(work_order.id)
    assert final.status == common_pb2.WORK_ORDER_STATUS_FAILED
    run = await suite.run(work_order.run_id)
    assert run.result == R.RUN_RESULT_FAILED_BUILD
    assert run.build_error.type == T.BUILD_ERROR_TYPE_AGENT_CRASH
    assert run.error == "Agent crashed with exit code 3. Details: agent-2.json"
    assert "cannot continue" in run.build_error.stderr_tail
    # Verification is skipped when the agent failed; the next prompt got the agent's failure.
    iteration = suite.run_file(work_order.run_id, "iteration-1.json")
    assert iteration["verification_file"] == ""
    assert iteration["error_type"] == "ITERATION_ERROR_TYPE_AGENT_CRASH"
    assert "Agent failed — iteration 1" in iteration["decision"]["feedback"]
    types = [e.type for e in await suite.events(work_order.id)]
    assert "agent:failed" in types and "verification:started" not in types
    assert types[-1] == "run:failed"


async def test_agent_timeout_is_killed_and_classified(suite, tmp_path):
    script = "default:\n  - print: thinking\n  - sleep: 30\n"
    work_order = await suite.submit(spec(project(tmp_path), script, max_iterations=1, agent_timeout=1))
    final = await asyncio.wait_for(suite.wait_terminal(work_order.id), 30)
    assert final.status == common_pb2.WORK_ORDER_STATUS_FAILED
    run = await suite.run(work_order.run_id)
    assert run.build_error.type == T.BUILD_ERROR_TYPE_AGENT_TIMEOUT
    agent = suite.run_file(work_order.run_id, "agent-1.json")
    assert agent["timed_out"] is True
    assert "thinking" in agent["stdout"]


async def test_wall_clock_limit_ends_run_failed_timeout(suite, tmp_path):
    script = "default:\n  - sleep: 30\n"
    work_order = await suite.submit(spec(project(tmp_path), script, wall_clock=1, agent_timeout=60))
    final = await asyncio.wait_for(suite.wait_terminal(work_order.id), 30)
    assert final.status == common_pb2.WORK_ORDER_STATUS_FAILED
    run = await suite.run(work_order.run_id)
    assert run.result == R.RUN_RESULT_FAILED_TIMEOUT
    assert run.loop_result == common_pb2.LOOP_RESULT_TIMEOUT
    assert "wall-clock limit of 1s" in run.error
    assert run.state == common_pb2.RUN_STATE_FAILED


async def test_cancel_of_a_running_work_order_stops_its_agent(suite, tmp_path):
    marker = tmp_path / "agent-still-alive"
    script = f"default:\n  - print: started\n  - sleep: 3\n  - run: 'touch {marker}'\n"
    work_order = await suite.submit(spec(project(tmp_path), script))
    async with asyncio.timeout(20):
        while True:
            types = [e.type for e in await _events_so_far(suite, work_order.id)]
            if "agent:output" in types:
                break
            await asyncio.sleep(0.05)
    status = await suite.orchestrator.GetWorkerStatus(orchestrator_pb2.GetWorkerStatusRequest(), timeout=5)
    assert [run.work_order_id for run in status.active_runs] == [work_order.id]
    await suite.queue.CancelWorkOrder(queue_pb2.CancelWorkOrderRequest(work_order_id=work_order.id), timeout=5)
    final = await asyncio.wait_for(suite.wait_terminal(work_order.id), 20)
    assert final.status == common_pb2.WORK_ORDER_STATUS_CANCELED
    run = await suite.run(work_order.run_id)
    assert run.state == common_pb2.RUN_STATE_CANCELED and run.result == R.RUN_RESULT_CANCELED
    events = await suite.events(work_order.id)
    assert events[-1].type == "run:canceled"
    await asyncio.sleep(3.5)
    assert not marker.exists(), "the agent's process kept running after the cancel"


async def test_workspace_failure_fails_run_as_workspace_error(suite, tmp_path):
    built = spec(project(tmp_path), "default: [{print: hi}]\n")
    built.source.git_url = f"file://{tmp_path}/no-such-repo"
    work_order = await suite.submit(built)
    final = await suite.wait_terminal(work_order.id)
    assert final.status == common_pb2.WORK_ORDER_STATUS_FAILED
    run = await suite.run(work_order.run_id)
    assert run.result == R.RUN_RESULT_FAILED_SYSTEM
    assert run.build_error.type == T.BUILD_ERROR_TYPE_WORKSPACE_ERROR
    assert run.error.startswith("Workspace preparation failed")


async def _events_so_far(suite, work_order_id):
    call = suite.persistence.StreamEvents(
        persistence_pb2.StreamEventsRequest(work_order_id=work_order_id, follow=False), timeout=5
    )
    try:
        return [response.event async for response in call]
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:  # nothing recorded yet
            return []
        raise
