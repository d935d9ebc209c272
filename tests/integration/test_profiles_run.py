"""Profiles, loop strategies and budgets on the four real services in one event loop:
bad profiles refused at submit with the key named, the resolved harness stored with the
run, a token budget stopping a run, and each strategy's stop reaching the run record."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest

from agentgate.common.errors import field_violations
from agentgate.orchestrator.persistence_port import GrpcPersistence
from agentgate.orchestrator.run_loop import RunExecutor
from agentgate.orchestrator.workspace_port import GrpcWorkspace
from agentgate.v1 import common_pb2, persistence_pb2_grpc, queue_pb2, workspace_pb2_grpc

from .inprocess_suite import InProcessSuite

M = common_pb2.LoopStrategyMode
R = common_pb2.RunResult


@pytest.fixture
async def suite(home: Path):
    running = await InProcessSuite.start(home)
    yield running
    await running.stop()


@pytest.fixture
def profiles_dir(home: Path) -> Path:
    path = home / "profiles"
    path.mkdir()
    return path


def project(tmp_path: Path, checks: tuple[str, ...] = ("A",)) -> Path:
    """A project whose gate wants each of `checks` as a line of notes.txt."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "notes.txt").write_text("start\n")
    tests = "".join(f"  - {{name: has-{c}, kind: test, command: \"grep -qx {c} notes.txt\"}}\n" for c in checks)
    (root / "verify.yaml").write_text(f'version: "1"\ntests:\n{tests}')
    return root


def spec(root: Path, script: str, harness: common_pb2.HarnessSettings | None = None) -> common_pb2.WorkOrderSpec:
    built = common_pb2.WorkOrderSpec(
        task_prompt="Write the notes",
        agent=common_pb2.AgentSpec(name="scripted", options={"script": script}),
        harness=harness,
    )
    built.source.local_path = str(root)
    return built


async def test_bad_profiles_are_refused_at_submit_with_the_key_named(suite, profiles_dir, tmp_path):
    (profiles_dir / "typo.yaml").write_text("loop_strategy: {mode: fixed, max_iteratons: 2}\n")
    (profiles_dir / "ring-a.yaml").write_text("extends: ring-b\n")
    (profiles_dir / "ring-b.yaml").write_text("extends: ring-a\n")
    (profiles_dir / "enum.yaml").write_text("extends: reliable\ngit_ops: {mode: carrier-pigeon}\n")
    root = project(tmp_path)
    expected = {
        "typo": f"profile 'typo' ({profiles_dir / 'typo.yaml'}): loop_strategy.max_iteratons: unknown key",
        "ring-a": "extends: cycle: ring-a -> ring-b -> ring-a",
        "enum": "git_ops.mode: unknown value 'carrier-pigeon' (expected one of local, push, pr)",
        "nowhere": "unknown profile 'nowhere' (known: default, fast, reliable, enum, ring-a, ring-b, typo;",
    }
    for name, text in expected.items():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await suite.submit(spec(root, "default: []\n", common_pb2.HarnessSettings(profile=name)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        [violation] = field_violations(err.value)
        assert violation.field == "spec.harness.profile"
        assert text in violation.description, (name, violation.description)
    listed = await suite.queue.ListWorkOrders(queue_pb2.ListWorkOrdersRequest(), timeout=5)
    assert list(listed.work_orders) == []


async def test_resolved_harness_is_stored_with_the_run(suite, profiles_dir, tmp_path):
    (profiles_dir / "team.yaml").write_text(
        "extends: fast\n"
        "loop_strategy: {max_iterations: 2, completion_signals: [DONE]}\n"
        "limits: {max_total_tokens: 100000, max_wall_clock_seconds: 600}\n"
    )
    harness = common_pb2.HarnessSettings(profile="team")
    harness.limits.agent_timeout_seconds = 60  # inline beats the profile chain
    script = "default:\n  - write: {path: notes.txt, content: \"A\\n\"}\n  - tokens: {input: 10, output: 5}\n"
    work_order = await suite.submit(spec(project(tmp_path), script, harness))
    final = await suite.wait_terminal(work_order.id)
    assert final.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED, final.error
    run = await suite.run(work_order.run_id)
    stored = run.harness
    assert stored.profile == "team"
    assert (stored.loop_strategy.mode, stored.loop_strategy.max_iterations) == (M.LOOP_STRATEGY_MODE_FIXED, 2)
    assert list(stored.loop_strategy.completion_signals) == ["DONE"]
    assert stored.loop_strategy.no_change_limit == 2
    assert (stored.limits.max_total_tokens, stored.limits.max_wall_clock_seconds) == (100000, 600)
    assert stored.limits.agent_timeout_seconds == 60
    assert (stored.retry.preset, stored.retry.max_attempts) == ("none", 1)  # from fast
    assert run.max_iterations == 2
    assert run.loop_result == common_pb2.LOOP_RESULT_SUCCESS
    assert (run.tokens.total, run.tokens.input, run.tokens.output) == (15, 10, 5)
    on_disk = suite.run_file(work_order.run_id, "run.json")
    assert on_disk["harness"]["profile"] == "team"
    assert on_disk["harness"]["limits"]["max_total_tokens"] in (100000, "100000")


async def test_a_token_budget_stops_the_run_with_the_reason(suite, tmp_path):
    harness = common_pb2.HarnessSettings()
    harness.loop_strategy.max_iterations = 5
    harness.limits.max_total_tokens = 1000
    # Each iteration changes the workspace (no loop detection) but never satisfies the gate.
    script = "default:\n  - append: {path: notes.txt, content: \"x\\n\"}\n  - tokens: {input: 300, output: 100}\n"
    work_order = await suite.submit(spec(project(tmp_path), script, harness))
    final = await suite.wait_terminal(work_order.id)
    assert final.status == common_pb2.WORK_ORDER_STATUS_FAILED
    run = await suite.run(work_order.run_id)
    reason = "Token budget exceeded: 1,200 tokens used, max_total_tokens is 1,000"
    assert run.iteration_count == 3  # 400, 800, then 1200 > 1000
    assert run.tokens.total == 1200
    assert run.result == R.RUN_RESULT_FAILED_VERIFICATION
    assert run.loop_result == common_pb2.LOOP_RESULT_STRATEGY_STOP
    assert run.stop_reason == reason
    assert run.error.startswith(f"{reason}. Last iteration: ")
    iteration = suite.run_file(work_order.run_id, "iteration-3.json")
    assert iteration["decision"]["reason"] == reason
    assert iteration["decision"]["metadata"]["rule"] == "token_budget"
    assert iteration["has_changes"] is True
    decisions = [e.strategy_decision.decision for e in await suite.events(work_order.id) if e.type == "strategy:decision"]
    assert [d.should_continue for d in decisions] == [True, True, False]
    assert decisions[-1].reason == reason


async def test_loop_detection_stops_an_agent_that_changes_nothing(suite, tmp_path):
    work_order = await suite.submit(spec(project(tmp_path), "default:\n  - print: thinking hard\n"))
    final = await suite.wait_terminal(work_order.id)
    assert final.status == common_pb2.WORK_ORDER_STATUS_FAILED
    run = await suite.run(work_order.run_id)
    assert run.iteration_count == 2
    assert run.loop_result == common_pb2.LOOP_RESULT_STRATEGY_STOP
    assert run.stop_reason == (
        "Loop detected: the agent changed nothing in the workspace for 2 iteration(s) in a row "
        "(iterations 1-2; no_change_limit 2)"
    )
    assert suite.run_file(work_order.run_id, "iteration-1.json")["has_changes"] is False
    events = await suite.events(work_order.id)
    snapshots = [e.snapshot_created.has_changes for e in events if e.type == "snapshot:created"]
    assert snapshots == [False, False]


async def test_hybrid_takes_a_bonus_iteration_while_checks_fall(suite, tmp_path):
    harness = common_pb2.HarnessSettings(profile="reliable")  # hybrid, with aggressive retry
    harness.loop_strategy.base_iterations = 2
    harness.loop_strategy.max_bonus_iterations = 2
    script = (
        "iterations:\n"
        "  1: [{append: {path: notes.txt, content: \"A\\n\"}}]\n"
        "  2: [{append: {path: notes.txt, content: \"B\\n\"}}]\n"
        "  3: [{append: {path: notes.txt, content: \"C\\n\"}}]\n"
    )
    work_order = await suite.submit(spec(project(tmp_path, ("A", "B", "C")), script, harness))
    final = await suite.wait_terminal(work_order.id)
    assert final.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED, final.error
    run = await suite.run(work_order.run_id)
    assert run.iteration_count == 3 and run.max_iterations == 4
    second = suite.run_file(work_order.run_id, "iteration-2.json")["decision"]
    # Totals count every check that ran (the gate may add its own, e.g. a security scan).
    assert re.fullmatch(
        r"Progress: failed checks fell from 2/(\d) \(\d+%\) to 1/\1 \(\d+%\) \(threshold 10%\); bonus iteration 1 of 2",
        second["reason"],
    ), second["reason"]
    assert second["metadata"]["rule"] == "progress"
    assert suite.run_file(work_order.run_id, "iteration-3.json")["decision"]["reason"] == "Verification passed"


async def test_ralph_stops_when_iterations_converge(suite, tmp_path):
    harness = common_pb2.HarnessSettings()
    harness.loop_strategy.mode = M.LOOP_STRATEGY_MODE_RALPH
    harness.loop_strategy.max_iterations = 6
    script = "default:\n  - append: {path: scratch.txt, content: \"try\\n\"}\n"
    work_order = await suite.submit(spec(project(tmp_path), script, harness))
    final = await suite.wait_terminal(work_order.id)
    assert final.status == common_pb2.WORK_ORDER_STATUS_FAILED
    run = await suite.run(work_order.run_id)
    assert run.iteration_count == 3  # min 2, then the window of 3 converged
    assert run.loop_result == common_pb2.LOOP_RESULT_STRATEGY_STOP
    assert run.stop_reason.startswith("Converged: the last 3 iterations failed the same checks (L1/has-A)")
    assert run.result == R.RUN_RESULT_FAILED_VERIFICATION
    assert run.error.startswith("Converged: ")


async def test_repeated_completion_claims_with_a_failing_gate_stop_the_run(suite, tmp_path):
    harness = common_pb2.HarnessSettings()
    harness.loop_strategy.max_iterations = 5
    harness.loop_strategy.completion_signals.append("TASK COMPLETE")
    script = "default:\n  - append: {path: notes.txt, content: \"x\\n\"}\n  - print: \"TASK COMPLETE\"\n"
    work_order = await suite.submit(spec(project(tmp_path), script, harness))
    final = await suite.wait_terminal(work_order.id)
    assert final.status == common_pb2.WORK_ORDER_STATUS_FAILED
    run = await suite.run(work_order.run_id)
    assert run.iteration_count == 2
    assert run.stop_reason == (
        "The agent signalled completion ('TASK COMPLETE') in iterations 1 and 2, but the gate still fails "
        "(verification failed)"
    )
    first = suite.run_file(work_order.run_id, "iteration-1.json")["decision"]
    assert first["reason"].endswith("so the claim is rejected")
    assert first["feedback"].startswith("Note: you reported the task complete ('TASK COMPLETE')")


async def test_a_profile_broken_after_submit_fails_the_run_with_the_reason(suite, profiles_dir, tmp_path):
    # What a worker does when the profile file changed between submit and lease.
    (profiles_dir / "team.yaml").write_text("limits: {max_total_tokens: many}\n")
    work_order = common_pb2.WorkOrder(
        id="wo-broken1", run_id="run-broken1", spec=spec(project(tmp_path), "default: []\n"),
    )
    work_order.spec.harness.profile = "team"
    executor = RunExecutor(
        work_order,
        GrpcWorkspace(workspace_pb2_grpc.WorkspaceServiceStub(suite._channel("workspace"))),
        GrpcPersistence(persistence_pb2_grpc.PersistenceServiceStub(suite.service_channel("persistence"))),
        profiles_dir=profiles_dir,
    )
    outcome = await executor.execute()
    assert outcome.status == common_pb2.WORK_ORDER_STATUS_FAILED
    run = await suite.run("run-broken1")
    assert run.result == R.RUN_RESULT_FAILED_SYSTEM
    assert run.loop_result == common_pb2.LOOP_RESULT_ERROR
    assert run.error.startswith(
        "The work order's harness cannot be resolved: harness.profile: profile 'team' "
        f"({profiles_dir / 'team.yaml'}): limits.max_total_tokens: must be an integer, got 'many'"
    )
    assert run.iteration_count == 0 and not run.workspace_id  # nothing was prepared or run
