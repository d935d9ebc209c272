"""The persistence read API, redaction, output limits and file-write warnings, through a
real grpc.aio server (docs/troubleshooting.md)."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from agentgate.common.channels import aio_channel
from agentgate.common.config import ServiceSettings
from agentgate.common.events import AGENT_OUTPUT, RUN_STARTED, make_event
from agentgate.common.persistence_warnings import warning_from_metadata
from agentgate.common.redaction import REDACTED, Redactor
from agentgate.common.server import start_server
from agentgate.persistence.server import PersistenceApp
from agentgate.v1 import common_pb2, events_pb2, persistence_pb2, persistence_pb2_grpc
from tests.credentials import service_credential

from .test_persistence_service import Service, expect_error, shutdown, violated_fields

pb = persistence_pb2
S = common_pb2.RunState
SECRET = "configured-secret-value-42"
GHP = "ghp_" + "q" * 36


async def launch(home: Path, **app_options: object) -> Service:
    settings = ServiceSettings.load("persistence", "127.0.0.1:0", str(home))
    app = PersistenceApp(settings, **app_options)  # type: ignore[arg-type]
    running = await start_server(app, "127.0.0.1:0")
    channel = aio_channel(f"127.0.0.1:{running.port}", credential=service_credential(home))
    return Service(home, app, running, channel, persistence_pb2_grpc.PersistenceServiceStub(channel))


@pytest.fixture
async def svc(home: Path, database_url: str) -> AsyncIterator[Service]:
    service = await launch(home, max_output_bytes=2048, redactor=Redactor([SECRET]))
    yield service
    await shutdown(service)


async def create(stub: persistence_pb2_grpc.PersistenceServiceStub, run_id: str = "run-1", **fields: object) -> None:
    await stub.CreateRun(pb.CreateRunRequest(run=common_pb2.Run(id=run_id, work_order_id="wo-1", **fields)))


async def save_iteration_records(stub: persistence_pb2_grpc.PersistenceServiceStub, run_id: str, n: int) -> None:
    await stub.SaveAgentResult(
        pb.SaveAgentResultRequest(result=common_pb2.AgentResult(run_id=run_id, iteration=n, stdout=f"out {n}"))
    )
    await stub.SaveVerificationReport(
        pb.SaveVerificationReportRequest(report=common_pb2.VerificationReport(run_id=run_id, iteration=n, summary=f"s{n}"))
    )
    await stub.SaveIteration(
        pb.SaveIterationRequest(iteration=common_pb2.IterationData(run_id=run_id, iteration=n, agent_result_file=f"agent-{n}.json"))
    )


async def test_get_and_list_every_record(svc: Service) -> None:
    await create(svc.stub)
    for n in (2, 1):  # saved out of order, listed in order
        await save_iteration_records(svc.stub, "run-1", n)
    agent = await svc.stub.GetAgentResult(pb.GetAgentResultRequest(run_id="run-1", iteration=2))
    assert agent.result.stdout == "out 2" and agent.result.stdout_bytes == 5
    report = await svc.stub.GetVerificationReport(pb.GetVerificationReportRequest(run_id="run-1", iteration=1))
    assert report.report.summary == "s1"
    iteration = await svc.stub.GetIteration(pb.GetIterationRequest(run_id="run-1", iteration=1))
    assert iteration.iteration.agent_result_file == "agent-1.json"
    results = await svc.stub.ListAgentResults(pb.ListAgentResultsRequest(run_id="run-1"))
    assert [r.iteration for r in results.results] == [1, 2]
    reports = await svc.stub.ListVerificationReports(pb.ListVerificationReportsRequest(run_id="run-1"))
    assert [r.summary for r in reports.reports] == ["s1", "s2"]
    iterations = await svc.stub.ListIterations(pb.ListIterationsRequest(run_id="run-1"))
    assert [i.iteration for i in iterations.iterations] == [1, 2]


async def test_absent_records_and_runs_are_not_found_and_bad_requests_name_the_field(svc: Service) -> None:
    await create(svc.stub)
    error = await expect_error(
        grpc.StatusCode.NOT_FOUND, svc.stub.GetAgentResult(pb.GetAgentResultRequest(run_id="run-1", iteration=3))
    )
    assert "has no agent-3.json" in error.details()
    error = await expect_error(
        grpc.StatusCode.NOT_FOUND,
        svc.stub.GetVerificationReport(pb.GetVerificationReportRequest(run_id="run-404", iteration=1)),
    )
    assert "run 'run-404' not found" in error.details()
    await expect_error(grpc.StatusCode.NOT_FOUND, svc.stub.ListIterations(pb.ListIterationsRequest(run_id="run-404")))
    empty = await svc.stub.ListAgentResults(pb.ListAgentResultsRequest(run_id="run-1"))
    assert list(empty.results) == []  # a known run without results yet
    error = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, svc.stub.GetIteration(pb.GetIterationRequest(run_id="../x", iteration=0))
    )
    assert violated_fields(error) == {"run_id", "iteration"}
    error = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, svc.stub.ListVerificationReports(pb.ListVerificationReportsRequest())
    )
    assert violated_fields(error) == {"run_id"}


async def test_list_runs_filters_by_state_with_tokens_bound_to_the_filter(svc: Service) -> None:
    for n in range(5):
        await create(svc.stub, f"run-{n}", state=S.RUN_STATE_FAILED if n % 2 else S.RUN_STATE_SUCCEEDED)
    await create(svc.stub, "run-9", state=S.RUN_STATE_BUILDING)
    first = await svc.stub.ListRuns(pb.ListRunsRequest(states=[S.RUN_STATE_SUCCEEDED], page_size=2))
    assert [r.id for r in first.runs] == ["run-4", "run-2"] and first.next_page_token
    second = await svc.stub.ListRuns(
        pb.ListRunsRequest(states=[S.RUN_STATE_SUCCEEDED], page_size=2, page_token=first.next_page_token)
    )
    assert [r.id for r in second.runs] == ["run-0"] and not second.next_page_token
    both = await svc.stub.ListRuns(pb.ListRunsRequest(states=[S.RUN_STATE_FAILED, S.RUN_STATE_BUILDING]))
    assert [r.id for r in both.runs] == ["run-9", "run-3", "run-1"]
    error = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        svc.stub.ListRuns(pb.ListRunsRequest(states=[S.RUN_STATE_FAILED], page_token=first.next_page_token)),
    )
    assert violated_fields(error) == {"page_token"}
    error = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, svc.stub.ListRuns(pb.ListRunsRequest(states=[0, 99], page_size=-1))
    )
    assert violated_fields(error) == {"states[0]", "states[1]", "page_size"}


async def test_secrets_never_reach_files_database_or_streams(svc: Service) -> None:
    await create(svc.stub, error=f"failed with {SECRET}", task_prompt=f"use {GHP}")
    await svc.stub.SaveAgentResult(
        pb.SaveAgentResultRequest(
            result=common_pb2.AgentResult(
                run_id="run-1", iteration=1, stdout=f"token {GHP}\n", stderr=f"Authorization: Bearer {SECRET}"
            )
        )
    )
    await svc.stub.SaveIteration(
        pb.SaveIterationRequest(
            iteration=common_pb2.IterationData(run_id="run-1", iteration=1, error_details={"stderr": SECRET})
        )
    )
    await svc.stub.AppendEvents(
        pb.AppendEventsRequest(
            events=[
                make_event(
                    AGENT_OUTPUT, "wo-1", "run-1", iteration=1, agent_output=events_pb2.AgentOutput(text=f"echo {GHP}")
                )
            ]
        )
    )
    streamed = [
        r.event
        async for r in svc.stub.StreamEvents(pb.StreamEventsRequest(work_order_id="wo-1"))
    ]
    assert streamed[0].agent_output.text == f"echo {REDACTED}"
    agent = (await svc.stub.GetAgentResult(pb.GetAgentResultRequest(run_id="run-1", iteration=1))).result
    assert agent.stdout == f"token {REDACTED}\n" and agent.stderr == f"Authorization: Bearer {REDACTED}"
    run = (await svc.stub.GetRun(pb.GetRunRequest(run_id="run-1"))).run
    assert run.error == f"failed with {REDACTED}"
    await shutdown(svc)  # checkpoints the WAL, so the database file holds everything
    for path in svc.home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data and GHP.encode() not in data, path
    assert (svc.home / "runs" / "run-1" / "agent-1.json").exists()


async def test_secret_variants_are_redacted_in_files_database_and_streams(svc: Service) -> None:
    """Glued, split over lines, base64 and hex of a configured value, and glued token
    shapes (issue 22): none reaches events.jsonl, agent-1.json, run.json, the database or a
    stream."""
    import base64

    aws_id = "AKIA" + "IOSFODNN7EXAMPLE"
    anthropic = "sk-ant-api03-" + "Q1w2E3r4" * 5
    b64 = base64.b64encode(b"x" + SECRET.encode() + b"\n").decode()
    variants = [
        f"x{aws_id}X",
        f"my_{anthropic}",
        f"glued{SECRET}glued",
        f"{SECRET[:9]}\n{SECRET[9:]}",
        f"echo {b64} | base64 -d",
        f"hex {SECRET.encode().hex()}",
    ]
    await create(svc.stub, error=variants[3], task_prompt=variants[4])
    await svc.stub.SaveAgentResult(
        pb.SaveAgentResultRequest(
            result=common_pb2.AgentResult(run_id="run-1", iteration=1, stdout="\n".join(variants), stderr=variants[0])
        )
    )
    await svc.stub.AppendEvents(
        pb.AppendEventsRequest(
            events=[
                make_event(AGENT_OUTPUT, "wo-1", "run-1", iteration=1, agent_output=events_pb2.AgentOutput(text=text))
                # The last two: a value split over two lines, one event each.
                for text in [*variants, f"key {SECRET[:12]}", f"{SECRET[12:]} done"]
            ]
        )
    )
    streamed = [r.event async for r in svc.stub.StreamEvents(pb.StreamEventsRequest(work_order_id="wo-1"))]
    texts = [e.agent_output.text for e in streamed]
    assert texts[:4] + texts[5:] == [
        f"x{REDACTED}X",
        f"my_{REDACTED}",
        f"glued{REDACTED}glued",
        f"{REDACTED}\n{REDACTED}",
        f"hex {REDACTED}",
        f"key {REDACTED}",
        f"{REDACTED} done",
    ]
    # Only the characters the encoding shares with the bytes around the secret are left.
    assert texts[4].startswith(f"echo {b64[:2]}{REDACTED}") and len(texts[4]) <= len(f"echo xx{REDACTED}xxxxxx | base64 -d")
    agent = (await svc.stub.GetAgentResult(pb.GetAgentResultRequest(run_id="run-1", iteration=1))).result
    run = (await svc.stub.GetRun(pb.GetRunRequest(run_id="run-1"))).run
    assert agent.stdout == "\n".join(texts[: len(variants)])
    assert run.error == f"{REDACTED}\n{REDACTED}" and REDACTED in run.task_prompt
    await shutdown(svc)  # checkpoints the WAL, so the database file holds everything
    leaks = [aws_id, anthropic, SECRET, SECRET[:9], SECRET[9:], b64[2:-6], SECRET.encode().hex()]
    files = [path for path in svc.home.rglob("*") if path.is_file()]
    assert {"events.jsonl", "agent-1.json", "run.json"} <= {path.name for path in files}
    for path in files:
        data = path.read_bytes()
        for leak in leaks:
            assert leak.encode() not in data, (path, leak)


async def test_output_is_cut_at_the_configured_size(svc: Service) -> None:
    await create(svc.stub)
    stdout = "x" + "€" * 1500  # 4501 bytes; the 2048-byte cut falls inside a character
    await svc.stub.SaveAgentResult(
        pb.SaveAgentResultRequest(result=common_pb2.AgentResult(run_id="run-1", iteration=1, stdout=stdout, stderr="e"))
    )
    stored = json.loads((svc.home / "runs" / "run-1" / "agent-1.json").read_text(encoding="utf-8"))
    assert stored["stdout"] == "x" + "€" * 682 + "\n[TRUNCATED - exceeded 2048 bytes]"
    assert stored["stdout_bytes"] == "4501" and stored["stdout_truncated"] is True
    assert stored["stderr"] == "e" and stored["stderr_truncated"] is False


async def test_unwritable_file_is_named_in_trailing_metadata_and_kept_in_the_index(svc: Service) -> None:
    await create(svc.stub)
    run_dir = svc.home / "runs" / "run-1"
    shutil.rmtree(run_dir)
    run_dir.write_text("a file where the run folder should be")  # fails for root too
    call = svc.stub.SaveAgentResult(
        pb.SaveAgentResultRequest(result=common_pb2.AgentResult(run_id="run-1", iteration=1, stdout="kept"))
    )
    response = await call
    assert response.file == "agent-1.json"
    warning = warning_from_metadata(await call.trailing_metadata())
    assert warning.startswith("agent-1.json not written (") and "kept in the index" in warning
    assert (await svc.stub.GetAgentResult(pb.GetAgentResultRequest(run_id="run-1", iteration=1))).result.stdout == "kept"
    update = svc.stub.UpdateRun(pb.UpdateRunRequest(run=common_pb2.Run(id="run-1", state=S.RUN_STATE_FAILED)))
    await update
    assert warning_from_metadata(await update.trailing_metadata()).startswith("run.json not written")
    # events.jsonl failing: the log itself records one warning for the run.
    await svc.stub.AppendEvents(pb.AppendEventsRequest(events=[make_event(RUN_STARTED, "wo-1", "run-1")]))
    await svc.stub.AppendEvents(pb.AppendEventsRequest(events=[make_event(RUN_STARTED, "wo-1", "run-1")]))
    events = [r.event async for r in svc.stub.StreamEvents(pb.StreamEventsRequest(run_id="run-1"))]
    assert [e.type for e in events] == ["run:started", "persistence:warning", "run:started"]
    assert events[1].persistence_warning.message.startswith("events.jsonl not saved (")
    ok = svc.stub.SaveIteration(pb.SaveIterationRequest(iteration=common_pb2.IterationData(run_id="run-1", iteration=1)))
    await ok
    assert warning_from_metadata(await ok.trailing_metadata()).startswith("iteration-1.json not written")
    run_dir.unlink()
    ok = svc.stub.SaveIteration(pb.SaveIterationRequest(iteration=common_pb2.IterationData(run_id="run-1", iteration=1)))
    await ok
    assert warning_from_metadata(await ok.trailing_metadata()) == ""


async def test_missing_older_and_damaged_files_read_as_absent_or_defaults(home: Path) -> None:
    """A run folder without index rows (e.g. copied from another machine or written by an
    older version) is read from its files."""
    run_dir = home / "runs" / "run-old"
    run_dir.mkdir(parents=True)
    # An older run.json: a field this version does not know, and most fields missing.
    (run_dir / "run.json").write_text(json.dumps({"id": "run-old", "state": "RUN_STATE_FAILED", "legacy": 1}))
    (run_dir / "agent-1.json").write_text(json.dumps({"stdout": "from an old version", "exit_code": 2}))
    (run_dir / "agent-2.json").write_text("{ damaged")
    (run_dir / "iteration-1.json").write_text(json.dumps({"error_type": "ITERATION_ERROR_TYPE_AGENT_CRASH"}))
    service = await launch(home)
    try:
        stub = service.stub
        run = (await stub.GetRun(pb.GetRunRequest(run_id="run-old"))).run
        assert run.state == S.RUN_STATE_FAILED and run.iteration_count == 0
        agent = (await stub.GetAgentResult(pb.GetAgentResultRequest(run_id="run-old", iteration=1))).result
        assert (agent.run_id, agent.iteration, agent.stdout, agent.exit_code) == ("run-old", 1, "from an old version", 2)
        await expect_error(
            grpc.StatusCode.NOT_FOUND, stub.GetAgentResult(pb.GetAgentResultRequest(run_id="run-old", iteration=2))
        )
        listed = (await stub.ListAgentResults(pb.ListAgentResultsRequest(run_id="run-old"))).results
        assert [r.iteration for r in listed] == [1]
        assert list((await stub.ListVerificationReports(pb.ListVerificationReportsRequest(run_id="run-old"))).reports) == []
        iterations = (await stub.ListIterations(pb.ListIterationsRequest(run_id="run-old"))).iterations
        assert iterations[0].error_type == common_pb2.ITERATION_ERROR_TYPE_AGENT_CRASH
        await expect_error(
            grpc.StatusCode.NOT_FOUND,
            stub.GetVerificationReport(pb.GetVerificationReportRequest(run_id="run-old", iteration=1)),
        )
        # A damaged run.json of an unknown run is NOT_FOUND, not a crash.
        (home / "runs" / "run-bad").mkdir()
        (home / "runs" / "run-bad" / "run.json").write_text("[]")
        await expect_error(grpc.StatusCode.NOT_FOUND, stub.GetRun(pb.GetRunRequest(run_id="run-bad")))
        # The index wins over the file once it has the record.
        await stub.CreateRun(pb.CreateRunRequest(run=common_pb2.Run(id="run-new", work_order_id="wo-2")))
        await stub.SaveAgentResult(
            pb.SaveAgentResultRequest(result=common_pb2.AgentResult(run_id="run-new", iteration=1, stdout="index"))
        )
        (home / "runs" / "run-new" / "agent-1.json").write_text(json.dumps({"stdout": "edited by hand"}))
        agent = (await stub.GetAgentResult(pb.GetAgentResultRequest(run_id="run-new", iteration=1))).result
        assert agent.stdout == "index"
    finally:
        await shutdown(service)


async def test_a_list_too_big_for_one_message_says_to_read_one_by_one(
    svc: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentgate.persistence import server as server_module

    await create(svc.stub)
    for n in (1, 2):
        await save_iteration_records(svc.stub, "run-1", n)
    monkeypatch.setattr(server_module, "LIST_BUDGET_BYTES", 30)
    error = await expect_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, svc.stub.ListAgentResults(pb.ListAgentResultsRequest(run_id="run-1"))
    )
    assert "read them one by one with GetAgentResult" in error.details()
    one = await svc.stub.GetAgentResult(pb.GetAgentResultRequest(run_id="run-1", iteration=2))
    assert one.result.stdout == "out 2"
