"""PersistenceService through a real grpc.aio server and channel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentgate.common.channels import aio_channel
from agentgate.common.config import ServiceSettings
from agentgate.common.errors import field_violations
from agentgate.common.events import (
    AGENT_OUTPUT,
    ITERATION_STARTED,
    RUN_COMPLETE,
    RUN_STARTED,
    WORK_ORDER_QUEUED,
    make_event,
)
from agentgate.common.server import RunningServer, start_server
from agentgate.persistence.server import PersistenceApp
from agentgate.v1 import common_pb2, events_pb2, persistence_pb2, persistence_pb2_grpc
from tests.credentials import service_credential
from tests.pg_server import PgServer

pb = persistence_pb2


@dataclass
class Service:
    """A running persistence server and a stub connected to it."""

    home: Path
    app: PersistenceApp
    running: RunningServer
    channel: grpc.aio.Channel
    stub: persistence_pb2_grpc.PersistenceServiceStub


async def launch(home: Path, subscriber_queue_size: int | None = None, database_url: str | None = None) -> Service:
    settings = ServiceSettings.load("persistence", "127.0.0.1:0", str(home))
    app = PersistenceApp(settings, subscriber_queue_size=subscriber_queue_size, database_url=database_url)
    running = await start_server(app, "127.0.0.1:0")
    channel = aio_channel(f"127.0.0.1:{running.port}", credential=service_credential(home))
    return Service(home, app, running, channel, persistence_pb2_grpc.PersistenceServiceStub(channel))


async def shutdown(service: Service) -> None:
    await service.channel.close()
    await service.running.stop(0)


@pytest.fixture
async def svc(home: Path, database_url: str) -> AsyncIterator[Service]:
    service = await launch(home)
    yield service
    await shutdown(service)


def new_run(run_id: str = "run-1", work_order_id: str = "wo-1", **fields: object) -> common_pb2.Run:
    return common_pb2.Run(id=run_id, work_order_id=work_order_id, **fields)


def ev(event_type: str, work_order_id: str = "wo-1", run_id: str = "run-1", **payload: object) -> events_pb2.RunEvent:
    return make_event(event_type, work_order_id, run_id, **payload)


async def append(stub: persistence_pb2_grpc.PersistenceServiceStub, *events: events_pb2.RunEvent) -> list[int]:
    response = await stub.AppendEvents(pb.AppendEventsRequest(events=events))
    return list(response.seqs)


async def read_stream(call: grpc.aio.UnaryStreamCall) -> list[events_pb2.RunEvent]:
    return [response.event async for response in call]


async def expect_error(code: grpc.StatusCode, awaitable) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    assert info.value.code() == code, info.value.details()
    return info.value


def violated_fields(error: grpc.aio.AioRpcError) -> set[str]:
    return {v.field for v in field_violations(error)}


async def test_health_and_service_name(svc: Service) -> None:
    health = health_pb2_grpc.HealthStub(svc.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="agentgate.v1.PersistenceService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_create_get_update_run_writes_run_json(svc: Service) -> None:
    created = await svc.stub.CreateRun(pb.CreateRunRequest(run=new_run(max_iterations=3, trace_id="abc")))
    assert created.run.created_at.seconds > 0  # stamped when unset
    got = await svc.stub.GetRun(pb.GetRunRequest(run_id="run-1"))
    assert got.run == created.run
    run_json = svc.home / "runs" / "run-1" / "run.json"
    assert json.loads(run_json.read_text())["trace_id"] == "abc"

    update = common_pb2.Run()
    update.CopyFrom(created.run)
    update.state = common_pb2.RUN_STATE_SUCCEEDED
    update.result = common_pb2.RUN_RESULT_SUCCEEDED
    update.iteration_count = 2
    update.ClearField("work_order_id")  # kept from the stored run
    updated = await svc.stub.UpdateRun(pb.UpdateRunRequest(run=update))
    assert updated.run.work_order_id == "wo-1"
    assert updated.run.created_at == created.run.created_at
    stored = (await svc.stub.GetRun(pb.GetRunRequest(run_id="run-1"))).run
    assert stored.state == common_pb2.RUN_STATE_SUCCEEDED and stored.iteration_count == 2
    on_disk = json.loads(run_json.read_text())
    assert on_disk["state"] == "RUN_STATE_SUCCEEDED" and on_disk["result"] == "RUN_RESULT_SUCCEEDED"
    assert on_disk["iteration_count"] == 2
    assert [p.name for p in run_json.parent.iterdir()] == ["run.json"]  # no temp files left


async def test_run_errors(svc: Service) -> None:
    await svc.stub.CreateRun(pb.CreateRunRequest(run=new_run()))
    await expect_error(grpc.StatusCode.ALREADY_EXISTS, svc.stub.CreateRun(pb.CreateRunRequest(run=new_run())))
    await expect_error(grpc.StatusCode.NOT_FOUND, svc.stub.GetRun(pb.GetRunRequest(run_id="nope")))
    await expect_error(grpc.StatusCode.NOT_FOUND, svc.stub.UpdateRun(pb.UpdateRunRequest(run=new_run("nope"))))

    error = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, svc.stub.CreateRun(pb.CreateRunRequest()))
    assert violated_fields(error) == {"run.id", "run.work_order_id"}
    assert "run.id" in error.details()
    error = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, svc.stub.CreateRun(pb.CreateRunRequest(run=new_run("../escape")))
    )
    assert violated_fields(error) == {"run.id"}
    assert not (svc.home / "escape").exists()
    error = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, svc.stub.GetRun(pb.GetRunRequest()))
    assert violated_fields(error) == {"run_id"}
    error = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, svc.stub.UpdateRun(pb.UpdateRunRequest(run=new_run("run-1", "wo-other")))
    )
    assert violated_fields(error) == {"run.work_order_id"}


async def test_list_runs_paginates_newest_first(svc: Service) -> None:
    for i in range(7):
        run = new_run(f"run-{i}", "wo-a" if i % 2 else "wo-b")
        run.created_at.seconds = 1_700_000_000 + i
        await svc.stub.CreateRun(pb.CreateRunRequest(run=run))

    ids: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await svc.stub.ListRuns(pb.ListRunsRequest(page_size=3, page_token=token))
        pages += 1
        ids += [run.id for run in page.runs]
        token = page.next_page_token
        if not token:
            break
    assert ids == [f"run-{i}" for i in range(6, -1, -1)]
    assert pages == 3

    only_a = await svc.stub.ListRuns(pb.ListRunsRequest(work_order_id="wo-a"))
    assert [run.id for run in only_a.runs] == ["run-5", "run-3", "run-1"]
    assert only_a.next_page_token == ""
    none = await svc.stub.ListRuns(pb.ListRunsRequest(work_order_id="wo-none"))
    assert list(none.runs) == []

    error = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, svc.stub.ListRuns(pb.ListRunsRequest(page_size=-1)))
    assert violated_fields(error) == {"page_size"}
    error = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, svc.stub.ListRuns(pb.ListRunsRequest(page_token="not-a-token"))
    )
    assert violated_fields(error) == {"page_token"}
    first = await svc.stub.ListRuns(pb.ListRunsRequest(page_size=1, work_order_id="wo-a"))
    error = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        svc.stub.ListRuns(pb.ListRunsRequest(page_size=1, work_order_id="wo-b", page_token=first.next_page_token)),
    )
    assert violated_fields(error) == {"page_token"}


async def test_save_iteration_records_writes_files(svc: Service) -> None:
    await svc.stub.CreateRun(pb.CreateRunRequest(run=new_run()))
    result = common_pb2.AgentResult(
        run_id="run-1",
        iteration=1,
        session_id="s-1",
        model="m",
        success=True,
        exit_code=0,
        stdout="out ✓",
        stderr="err",
        duration_seconds=1.5,
        cost_usd=0.25,
        tokens=common_pb2.TokenUsage(input=10, output=5, total=15),
        tool_calls=[common_pb2.ToolCall(tool="bash", output="ok", duration_seconds=0.1)],
    )
    result.structured_output.update({"status": "done"})
    reply = await svc.stub.SaveAgentResult(pb.SaveAgentResultRequest(result=result))
    assert reply.file == "agent-1.json"

    check = common_pb2.CheckResult(name="pytest", kind="test", passed=False, output="1 failed", exit_code=1)
    report = common_pb2.VerificationReport(
        run_id="run-1",
        iteration=1,
        passed=False,
        summary="tests failed",
        levels_run=["L0", "L1"],
        skipped_levels=["L3"],
        levels=[common_pb2.LevelResult(level="L1", ran=True, checks=[check])],
    )
    reply = await svc.stub.SaveVerificationReport(pb.SaveVerificationReportRequest(report=report))
    assert reply.file == "verification-1.json"

    iteration = common_pb2.IterationData(
        run_id="run-1",
        iteration=1,
        agent_result_file="agent-1.json",
        verification_file="verification-1.json",
        error_type=common_pb2.ITERATION_ERROR_TYPE_VERIFICATION_FAILED,
        error_details={"failed": "1"},
    )
    reply = await svc.stub.SaveIteration(pb.SaveIterationRequest(iteration=iteration))
    assert reply.file == "iteration-1.json"

    folder = svc.home / "runs" / "run-1"
    agent = json.loads((folder / "agent-1.json").read_text(encoding="utf-8"))
    assert agent["stdout"] == "out ✓" and agent["session_id"] == "s-1"
    assert agent["tokens"] == {"input": "10", "output": "5", "total": "15"}  # int64 as JSON strings
    assert agent["structured_output"] == {"status": "done"}
    assert agent["tool_calls"][0]["tool"] == "bash"
    verification = json.loads((folder / "verification-1.json").read_text())
    assert verification["passed"] is False and verification["skipped_levels"] == ["L3"]
    assert verification["levels"][0]["checks"][0]["name"] == "pytest"
    saved_iteration = json.loads((folder / "iteration-1.json").read_text())
    assert saved_iteration["error_type"] == "ITERATION_ERROR_TYPE_VERIFICATION_FAILED"
    assert saved_iteration["error_details"] == {"failed": "1"}

    # Saving the same iteration again replaces it.
    result.stdout = "second try"
    await svc.stub.SaveAgentResult(pb.SaveAgentResultRequest(result=result))
    assert json.loads((folder / "agent-1.json").read_text())["stdout"] == "second try"
    assert sorted(p.name for p in folder.iterdir()) == [
        "agent-1.json",
        "iteration-1.json",
        "run.json",
        "verification-1.json",
    ]
    assert await svc.app.store.saved_files("agent_results", "run-1") == [(1, "agent-1.json")]


async def test_save_errors(svc: Service) -> None:
    await expect_error(
        grpc.StatusCode.NOT_FOUND,
        svc.stub.SaveAgentResult(pb.SaveAgentResultRequest(result=common_pb2.AgentResult(run_id="ghost", iteration=1))),
    )
    await expect_error(
        grpc.StatusCode.NOT_FOUND,
        svc.stub.SaveVerificationReport(
            pb.SaveVerificationReportRequest(report=common_pb2.VerificationReport(run_id="ghost", iteration=1))
        ),
    )
    await expect_error(
        grpc.StatusCode.NOT_FOUND,
        svc.stub.SaveIteration(
            pb.SaveIterationRequest(iteration=common_pb2.IterationData(run_id="ghost", iteration=1))
        ),
    )
    assert not (svc.home / "runs" / "ghost").exists()

    error = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        svc.stub.SaveAgentResult(pb.SaveAgentResultRequest(result=common_pb2.AgentResult(iteration=0))),
    )
    assert violated_fields(error) == {"result.run_id", "result.iteration"}
    error = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        svc.stub.SaveVerificationReport(
            pb.SaveVerificationReportRequest(report=common_pb2.VerificationReport(run_id="r", iteration=-2))
        ),
    )
    assert violated_fields(error) == {"report.iteration"}
    error = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        svc.stub.SaveIteration(pb.SaveIterationRequest(iteration=common_pb2.IterationData(run_id="a/b", iteration=1))),
    )
    assert violated_fields(error) == {"iteration.run_id"}


async def test_file_write_failure_is_counted_and_rpc_succeeds(svc: Service) -> None:
    runs = svc.home / "runs"
    runs.mkdir(exist_ok=True)
    (runs / "run-1").write_text("not a folder")
    created = await svc.stub.CreateRun(pb.CreateRunRequest(run=new_run()))
    assert created.run.id == "run-1"
    assert (await svc.stub.GetRun(pb.GetRunRequest(run_id="run-1"))).run.id == "run-1"
    assert await append(svc.stub, ev(RUN_STARTED)) == [1]
    assert svc.app.file_write_failures == 2


async def test_append_before_create_run_and_replay(svc: Service) -> None:
    # The queue appends work_order:queued at submit, before any run exists.
    queued = ev(WORK_ORDER_QUEUED, work_order_queued=events_pb2.WorkOrderQueued(priority=2, position=1))
    assert await append(svc.stub, queued) == [1]
    await svc.stub.CreateRun(pb.CreateRunRequest(run=new_run()))
    assert await append(svc.stub, ev(RUN_STARTED), ev(ITERATION_STARTED), ev(AGENT_OUTPUT)) == [2, 3, 4]
    assert await append(svc.stub, ev(WORK_ORDER_QUEUED, "wo-2", "run-2")) == [1]  # per work order

    everything = await read_stream(svc.stub.StreamEvents(pb.StreamEventsRequest(work_order_id="wo-1")))
    assert [e.seq for e in everything] == [1, 2, 3, 4]
    assert everything[0].work_order_queued.priority == 2
    assert everything[0].timestamp.seconds > 0
    rest = await read_stream(svc.stub.StreamEvents(pb.StreamEventsRequest(work_order_id="wo-1", after_seq=2)))
    assert [(e.seq, e.type) for e in rest] == [(3, ITERATION_STARTED), (4, AGENT_OUTPUT)]
    by_run = await read_stream(svc.stub.StreamEvents(pb.StreamEventsRequest(run_id="run-1", after_seq=1)))
    assert [e.seq for e in by_run] == [2, 3, 4]

    lines = (svc.home / "runs" / "run-1" / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == [
        WORK_ORDER_QUEUED,
        RUN_STARTED,
        ITERATION_STARTED,
        AGENT_OUTPUT,
    ]
    assert [json.loads(line)["seq"] for line in lines] == ["1", "2", "3", "4"]


async def test_stream_by_run_known_only_from_runs_table(svc: Service) -> None:
    await svc.stub.CreateRun(pb.CreateRunRequest(run=new_run("run-9", "wo-9")))
    assert await read_stream(svc.stub.StreamEvents(pb.StreamEventsRequest(run_id="run-9"))) == []


async def test_event_errors(svc: Service) -> None:
    error = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        svc.stub.AppendEvents(
            pb.AppendEventsRequest(
                events=[ev(RUN_STARTED), events_pb2.RunEvent(type=RUN_STARTED, run_id="run-1"), ev("", run_id="../x")]
            )
        ),
    )
    assert violated_fields(error) == {"events[1].work_order_id", "events[2].run_id", "events[2].type"}
    # Nothing of a refused batch is stored.
    await expect_error(
        grpc.StatusCode.NOT_FOUND, read_stream(svc.stub.StreamEvents(pb.StreamEventsRequest(work_order_id="wo-1")))
    )
    assert (await svc.stub.AppendEvents(pb.AppendEventsRequest())).seqs == []

    error = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, read_stream(svc.stub.StreamEvents(pb.StreamEventsRequest(follow=True)))
    )
    assert violated_fields(error) == {"work_order_id"}
    await expect_error(
        grpc.StatusCode.NOT_FOUND,
        read_stream(svc.stub.StreamEvents(pb.StreamEventsRequest(run_id="ghost", follow=True))),
    )


async def poll(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Waits until `condition()` holds (server-side state has no event to wait on)."""
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


async def wait_subscribers(svc: Service, work_order_id: str, count: int) -> None:
    await poll(lambda: svc.app.event_log.subscriber_count(work_order_id) >= count)


async def test_follow_receives_new_events_and_ends_after_run_complete(svc: Service) -> None:
    await append(svc.stub, ev(WORK_ORDER_QUEUED))
    call = svc.stub.StreamEvents(pb.StreamEventsRequest(work_order_id="wo-1", follow=True))
    reader = asyncio.create_task(read_stream(call))
    await wait_subscribers(svc, "wo-1", 1)
    await append(svc.stub, ev(RUN_STARTED))
    await append(svc.stub, ev(AGENT_OUTPUT), ev(RUN_COMPLETE))
    got = await asyncio.wait_for(reader, 5)
    assert [(e.seq, e.type) for e in got] == [
        (1, WORK_ORDER_QUEUED),
        (2, RUN_STARTED),
        (3, AGENT_OUTPUT),
        (4, RUN_COMPLETE),
    ]
    assert await call.code() == grpc.StatusCode.OK
    await wait_subscribers_gone(svc)


async def wait_subscribers_gone(svc: Service) -> None:
    await poll(lambda: svc.app.event_log.subscriber_count() == 0)


async def test_follow_waits_for_a_work_order_without_events(svc: Service) -> None:
    reader = asyncio.create_task(
        read_stream(svc.stub.StreamEvents(pb.StreamEventsRequest(work_order_id="wo-new", follow=True)))
    )
    await wait_subscribers(svc, "wo-new", 1)
    await append(svc.stub, ev(WORK_ORDER_QUEUED, "wo-new", "run-new"), ev(RUN_COMPLETE, "wo-new", "run-new"))
    got = await asyncio.wait_for(reader, 5)
    assert [e.seq for e in got] == [1, 2]
    # Without follow an unknown work order is NOT_FOUND.
    await expect_error(
        grpc.StatusCode.NOT_FOUND, read_stream(svc.stub.StreamEvents(pb.StreamEventsRequest(work_order_id="wo-zzz")))
    )


async def test_two_followers_with_concurrent_appenders_get_everything(svc: Service) -> None:
    await append(svc.stub, ev(WORK_ORDER_QUEUED))
    followers = [
        asyncio.create_task(
            read_stream(
                svc.stub.StreamEvents(pb.StreamEventsRequest(work_order_id="wo-1", after_seq=after, follow=True))
            )
        )
        for after in (0, 1)
    ]
    await wait_subscribers(svc, "wo-1", 2)

    # Two clients (like the queue and the orchestrator) append to one work order at once.
    second_channel = aio_channel(f"127.0.0.1:{svc.running.port}", credential=service_credential(svc.home))
    other = persistence_pb2_grpc.PersistenceServiceStub(second_channel)
    try:

        async def client(stub: persistence_pb2_grpc.PersistenceServiceStub, name: str) -> list[int]:
            seqs: list[int] = []
            for i in range(25):
                seqs += await append(stub, *(ev(f"{name}:{i}") for _ in range(1 + i % 3)))
            return seqs

        a, b = await asyncio.gather(client(svc.stub, "a"), client(other, "b"))
    finally:
        await second_channel.close()
    assert sorted(a + b) == list(range(2, 2 + len(a) + len(b)))
    final = await append(svc.stub, ev(RUN_COMPLETE))
    first, second = await asyncio.wait_for(asyncio.gather(*followers), 10)
    assert [e.seq for e in first] == list(range(1, final[0] + 1))
    assert [e.seq for e in second] == list(range(2, final[0] + 1))
    assert first[-1].type == second[-1].type == RUN_COMPLETE


async def test_slow_follower_gets_resource_exhausted_others_continue(home: Path) -> None:
    svc = await launch(home, subscriber_queue_size=5)
    try:
        # Connect a follower but do not read from it: its buffer overflows.
        slow_call = svc.stub.StreamEvents(pb.StreamEventsRequest(work_order_id="wo-1", follow=True))
        fast = asyncio.create_task(
            read_stream(svc.stub.StreamEvents(pb.StreamEventsRequest(work_order_id="wo-1", follow=True)))
        )
        await wait_subscribers(svc, "wo-1", 2)
        # Park the slow one's handler: it can only send what gRPC flow control lets through,
        # so big events fill its buffer while the fast reader keeps up.
        big = "x" * 200_000
        for _ in range(60):
            await append(svc.stub, ev(AGENT_OUTPUT, agent_output=events_pb2.AgentOutput(text=big)))
            await asyncio.sleep(0.005)
        await append(svc.stub, ev(RUN_COMPLETE))
        got = await asyncio.wait_for(fast, 10)
        assert [e.seq for e in got] == list(range(1, 62))
        assert svc.app.event_log.dropped_subscribers == 1
        received: list[int] = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for response in slow_call:
                received.append(response.event.seq)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "subscriber too slow; reconnect with after_seq=" in info.value.details()
        resume = int(info.value.details().rsplit("=", 1)[1])
        assert resume == (received[-1] if received else 0)
        # Reconnecting with that seq gets exactly the rest.
        rest = await read_stream(
            svc.stub.StreamEvents(pb.StreamEventsRequest(work_order_id="wo-1", after_seq=resume, follow=True))
        )
        assert [e.seq for e in rest] == list(range(resume + 1, 62))
    finally:
        await shutdown(svc)


async def test_client_cancel_cleans_up_subscription(svc: Service) -> None:
    call = svc.stub.StreamEvents(pb.StreamEventsRequest(work_order_id="wo-1", follow=True))
    await wait_subscribers(svc, "wo-1", 1)
    call.cancel()
    await wait_subscribers_gone(svc)
    assert await append(svc.stub, ev(RUN_STARTED)) == [1]


async def test_shutdown_ends_followers_with_unavailable(home: Path) -> None:
    svc = await launch(home)
    call = svc.stub.StreamEvents(pb.StreamEventsRequest(work_order_id="wo-1", follow=True))
    await wait_subscribers(svc, "wo-1", 1)
    await append(svc.stub, ev(RUN_STARTED))
    stopping = asyncio.create_task(svc.running.stop(2))
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for response in call:
            received.append(response.event.seq)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"after_seq={received[-1] if received else 0}" in info.value.details()
    await stopping
    await svc.channel.close()


async def test_restart_keeps_runs_and_continues_seqs(home: Path) -> None:
    first = await launch(home)
    await first.stub.CreateRun(pb.CreateRunRequest(run=new_run()))
    assert await append(first.stub, ev(WORK_ORDER_QUEUED), ev(RUN_STARTED)) == [1, 2]
    await shutdown(first)

    second = await launch(home)
    try:
        assert (await second.stub.GetRun(pb.GetRunRequest(run_id="run-1"))).run.work_order_id == "wo-1"
        assert await append(second.stub, ev(RUN_COMPLETE)) == [3]
        got = await read_stream(second.stub.StreamEvents(pb.StreamEventsRequest(run_id="run-1", follow=True)))
        assert [e.seq for e in got] == [1, 2, 3]
        lines = (home / "runs" / "run-1" / "events.jsonl").read_text().splitlines()
        assert len(lines) == 3
    finally:
        await shutdown(second)


async def test_index_failure_is_internal_and_service_survives(svc: Service, database_url: str) -> None:
    await svc.stub.CreateRun(pb.CreateRunRequest(run=new_run()))
    if database_url:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN RAISE EXCEPTION 'disk I/O error'; END $$;"
                " CREATE TRIGGER no_updates BEFORE UPDATE ON runs FOR EACH ROW EXECUTE FUNCTION boom()"
            )
    else:
        writer = svc.app.store._writer
        await writer.execute(
            "CREATE TRIGGER no_updates BEFORE UPDATE ON runs BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
        await writer.commit()
    error = await expect_error(grpc.StatusCode.INTERNAL, svc.stub.UpdateRun(pb.UpdateRunRequest(run=new_run())))
    assert "disk I/O error" in error.details()
    if database_url:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DROP TRIGGER no_updates ON runs")
    else:
        await writer.execute("DROP TRIGGER no_updates")
        await writer.commit()
    updated = await svc.stub.UpdateRun(pb.UpdateRunRequest(run=new_run(state=common_pb2.RUN_STATE_BUILDING)))
    assert updated.run.state == common_pb2.RUN_STATE_BUILDING


async def test_replicas_on_postgresql_follow_each_others_appends_gap_free(home: Path, pg_server: PgServer) -> None:
    """Two persistence replicas on one PostgreSQL database (docs/deployment.md): a follower
    on A gets, replay then live, every event appended through A and B alike, in seq
    order with no gap, while both replicas append to the same work order at once."""
    url = pg_server.create_database()
    a = await launch(home, database_url=url)
    b = await launch(home, database_url=url)
    try:
        await a.stub.CreateRun(pb.CreateRunRequest(run=new_run()))
        assert await append(b.stub, ev(WORK_ORDER_QUEUED)) == [1]  # before the follower: replayed
        call = a.stub.StreamEvents(pb.StreamEventsRequest(work_order_id="wo-1", follow=True))
        reader = asyncio.create_task(read_stream(call))

        async def burst(svc: Service, n: int) -> None:
            for _ in range(n):
                await append(svc.stub, ev(AGENT_OUTPUT))

        await asyncio.gather(burst(a, 20), burst(b, 20), burst(b, 20))
        assert await append(b.stub, ev(RUN_COMPLETE)) == [62]
        got = await asyncio.wait_for(reader, 10)
        assert [e.seq for e in got] == list(range(1, 63))
        assert got[-1].type == RUN_COMPLETE
        # Either replica reads the run and its whole history.
        replay = await read_stream(b.stub.StreamEvents(pb.StreamEventsRequest(run_id="run-1")))
        assert [e.seq for e in replay] == list(range(1, 63))
        assert (await b.stub.GetRun(pb.GetRunRequest(run_id="run-1"))).run.id == "run-1"
    finally:
        await shutdown(a)
        await shutdown(b)
