"""The Python client library (`agentgate.client`), async and blocking, against the four real
services in one event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from agentgate.client import AgentGateClient, AsyncAgentGateClient, SubmitError, WorkOrderStatus
from agentgate.common.config import ServiceSettings
from agentgate.common.server import start_server
from agentgate.persistence.server import PersistenceApp
from agentgate.v1 import common_pb2

from .inprocess_suite import InProcessSuite

FIX_ON_SECOND = (
    "iterations:\n"
    "  1:\n"
    "    - print: looking\n"
    "  2:\n"
    "    - write: {path: calc.py, content: \"def add(a, b):\\n    return a + b\\n\"}\n"
)


@pytest.fixture
async def suite(home: Path):
    running = await InProcessSuite.start(home, max_concurrent=1)
    yield running
    await running.stop()


def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir(exist_ok=True)
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (root / "verify.yaml").write_text(
        'version: "1"\ntests:\n  - {name: unit, kind: test, command: "grep -q \'a + b\' calc.py"}\n'
    )
    return root


def spec(root: Path, script: str, prompt: str = "Fix add()") -> common_pb2.WorkOrderSpec:
    built = common_pb2.WorkOrderSpec(
        task_prompt=prompt, agent=common_pb2.AgentSpec(name="scripted", options={"script": script})
    )
    built.source.local_path = str(root)
    built.harness.loop_strategy.max_iterations = 3
    return built


def client_for(suite: InProcessSuite) -> AsyncAgentGateClient:
    return AsyncAgentGateClient(suite.addresses["queue"], suite.addresses["persistence"], timeout=10)


async def test_async_client_submits_follows_and_reads_results(suite, tmp_path):
    async with client_for(suite) as client:
        work_order, position = await client.submit(spec(project(tmp_path), FIX_ON_SECOND))
        assert position == 1 and work_order.id.startswith("wo-")
        events = [event async for event in client.events(work_order.id)]
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert events[0].type == "work_order:queued" and events[-1].type == "run:complete"

        status = await client.wait(work_order.id, timeout=20)
        assert isinstance(status, WorkOrderStatus) and status.done and status.succeeded
        assert status.run is not None and status.run.iteration_count == 2
        # The same answer through the run's id.
        by_run = await client.status(work_order.run_id)
        assert by_run.work_order.id == work_order.id

        # Replay from a seq: exactly the rest.
        tail = [e.seq async for e in client.events(work_order.id, after_seq=3)]
        assert tail == list(range(4, len(events) + 1))
        assert (await client.position(work_order.id)).position == 0
        stats = await client.queue_stats()
        assert stats.max_concurrent == 1 and stats.accepting
        assert [wo.id for wo in await client.work_orders(limit=5)] == [work_order.id]
        assert await client.run("run-unknown") is None


async def test_async_client_reads_run_results(suite, tmp_path):
    async with client_for(suite) as client:
        work_order, _ = await client.submit(spec(project(tmp_path), FIX_ON_SECOND))
        await client.wait(work_order.id, timeout=20)
        run_id = work_order.run_id
        assert [r.iteration for r in await client.agent_results(run_id)] == [1, 2]
        assert (await client.agent_result(run_id, 1)).stdout.startswith("looking")
        reports = await client.verification_reports(run_id)
        assert [r.passed for r in reports] == [False, True]
        assert (await client.verification_report(run_id, 2)).passed
        assert [i.iteration for i in await client.iterations(run_id)] == [1, 2]
        assert (await client.iteration(run_id, 2)).verification_file == "verification-2.json"
        assert [r.id for r in await client.runs(work_order.id)] == [run_id]


async def test_async_client_queue_position_and_cancel(suite, tmp_path):
    root = project(tmp_path)
    async with client_for(suite) as client:
        first, _ = await client.submit(spec(root, "default: [{sleep: 30}]\n", prompt="busy"))
        async with asyncio.timeout(10):
            while True:
                if (await client.work_order(first.id)).status == common_pb2.WORK_ORDER_STATUS_RUNNING:
                    break
                await asyncio.sleep(0.05)
        waiting, position = await client.submit(spec(root, FIX_ON_SECOND))
        assert position == 1
        where = await client.position(waiting.id)
        assert (where.position, where.state) == (1, "waiting")
        watched = []
        first_seen = asyncio.Event()

        async def watch() -> None:
            async for change in client.watch_position(waiting.id):
                watched.append(change)
                first_seen.set()

        watcher = asyncio.create_task(watch())
        await asyncio.wait_for(first_seen.wait(), 10)
        canceled = await client.cancel(waiting.id, reason="not needed")
        assert canceled.status == common_pb2.WORK_ORDER_STATUS_CANCELED
        await asyncio.wait_for(watcher, 10)  # the stream ends with the work order
        assert watched[0].work_order_id == waiting.id and watched[0].position == 1
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await client.cancel(waiting.id)
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(TimeoutError):
            await client.wait(first.id, timeout=0.2)
        await client.cancel(first.id)
        final = await client.wait(first.id, timeout=20)
        assert final.work_order.status == common_pb2.WORK_ORDER_STATUS_CANCELED


async def test_async_client_refusal_names_the_field(suite, tmp_path):
    async with client_for(suite) as client:
        with pytest.raises(SubmitError) as refused:
            await client.submit(spec(project(tmp_path), FIX_ON_SECOND, prompt=""))
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in refused.value.violations] == ["spec.task_prompt"]
        assert await client.work_orders() == []
        with pytest.raises(LookupError):
            await client.status("run-does-not-exist")


async def test_async_follower_resumes_after_persistence_restarts(suite, tmp_path):
    """The follower's stream breaks when persistence restarts; it reconnects from its last
    seq and ends with every event exactly once."""
    script = "default:\n  - print: one\n  - sleep: 1.5\n  - write: {path: calc.py, content: \"def add(a, b):\\n    return a + b\\n\"}\n"
    async with client_for(suite) as client:
        work_order, _ = await client.submit(spec(project(tmp_path), script))
        seen: list[int] = []
        three_seen = asyncio.Event()

        async def follow() -> None:
            async for event in client.events(work_order.id):
                seen.append(event.seq)
                if len(seen) == 3:
                    three_seen.set()

        follower = asyncio.create_task(follow())
        await asyncio.wait_for(three_seen.wait(), 20)
        persistence = suite.servers[0]
        assert isinstance(persistence.app, PersistenceApp)
        await persistence.stop(grace=0.5)
        await asyncio.sleep(0.3)
        settings = ServiceSettings(name="persistence", address=suite.addresses["persistence"], home=suite.home)
        suite.servers[0] = await start_server(PersistenceApp(settings), suite.addresses["persistence"])
        await asyncio.wait_for(follower, 30)
        assert seen == list(range(1, len(seen) + 1))
        status = await client.wait(work_order.id, timeout=20)
        assert status.work_order.status in {common_pb2.WORK_ORDER_STATUS_SUCCEEDED, common_pb2.WORK_ORDER_STATUS_FAILED}


async def test_blocking_client_has_the_same_surface(suite, tmp_path):
    root = project(tmp_path)

    def use_blocking_client() -> tuple[WorkOrderStatus, list[int], int]:
        with AgentGateClient(suite.addresses["queue"], suite.addresses["persistence"]) as client:
            work_order, _ = client.submit(spec(root, FIX_ON_SECOND))
            seqs = [event.seq for event in client.events(work_order.id)]
            status = client.wait(work_order.id, timeout=20)
            run_id = work_order.run_id
            assert client.status(run_id).work_order.id == work_order.id
            assert client.position(work_order.id).position == 0
            assert client.queue_stats().max_concurrent == 1
            with pytest.raises(TimeoutError):
                second, _ = client.submit(spec(root, "default: [{sleep: 30}]\n"))
                try:
                    client.wait(second.id, timeout=0.3)
                finally:
                    client.cancel(second.id)
            return status, seqs, len(client.work_orders())

    status, seqs, listed = await asyncio.to_thread(use_blocking_client)
    assert status.succeeded and status.run is not None and status.run.result == common_pb2.RUN_RESULT_SUCCEEDED
    assert seqs == list(range(1, len(seqs) + 1))
    assert listed == 2


async def test_blocking_client_reads_run_results(suite, tmp_path):
    root = project(tmp_path)

    def use_blocking_client() -> None:
        with AgentGateClient(suite.addresses["queue"], suite.addresses["persistence"]) as client:
            work_order, _ = client.submit(spec(root, FIX_ON_SECOND))
            client.wait(work_order.id, timeout=20)
            run_id = work_order.run_id
            assert [i.iteration for i in client.iterations(run_id)] == [1, 2]
            assert [r.iteration for r in client.agent_results(run_id)] == [1, 2]
            assert client.agent_result(run_id, 2).success
            assert [r.passed for r in client.verification_reports(run_id)] == [False, True]
            assert client.verification_report(run_id, 1).passed is False
            assert client.iteration(run_id, 1).iteration == 1
            assert [r.id for r in client.runs(work_order.id)] == [run_id]

    await asyncio.to_thread(use_blocking_client)
