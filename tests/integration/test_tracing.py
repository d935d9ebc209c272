"""One trace per work order across the four services (docs/observability.md), in one event loop: each
service gets its own TracerProvider (not the global one) with an in-memory exporter, which
`start_server` and the orchestrator's channels pick up by service name.

Also: cancelling a traced unary call cancels the RPC on the server (see grpc_tracing).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id

from agentgate.common import telemetry
from agentgate.common.channels import aio_channel
from agentgate.v1 import common_pb2, queue_pb2

from .inprocess_suite import InProcessSuite

SERVICES = ("queue", "orchestrator", "workspace", "persistence")


@pytest.fixture
def exporters() -> Iterator[dict[str, InMemorySpanExporter]]:
    found: dict[str, InMemorySpanExporter] = {}
    made = []
    for service in SERVICES:
        found[service] = InMemorySpanExporter()
        made.append(telemetry.init_telemetry(service, install_global=False, span_exporter=found[service]))
    yield found
    for item in made:
        item.shutdown()


@pytest.fixture
async def suite(home: Path, exporters: dict[str, InMemorySpanExporter]):
    running = await InProcessSuite.start(home)
    yield running
    await running.stop()


def work_order_spec(tmp_path: Path) -> common_pb2.WorkOrderSpec:
    root = tmp_path / "project"
    root.mkdir(parents=True)
    (root / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (root / "verify.yaml").write_text('version: "1"\ntests:\n  - {name: unit, command: "grep -q \'a + b\' calc.py"}\n')
    spec = common_pb2.WorkOrderSpec(
        task_prompt="Check add()",
        agent=common_pb2.AgentSpec(name="scripted", options={"script": "default: [{print: looking}]\n"}),
    )
    spec.source.local_path = str(root)
    return spec


def spans_of(exporters: dict[str, InMemorySpanExporter], trace_id: str) -> dict[str, list]:
    return {
        service: [s for s in exporter.get_finished_spans() if format_trace_id(s.context.trace_id) == trace_id]
        for service, exporter in exporters.items()
    }


async def test_one_trace_covers_the_work_order_in_all_four_services(
    suite: InProcessSuite, exporters: dict[str, InMemorySpanExporter], tmp_path: Path
) -> None:
    # No trace context from the client: the queue's Submit span starts the trace.
    work_order = await suite.submit(work_order_spec(tmp_path))
    trace_id = work_order.trace_id
    assert len(trace_id) == 32 and set(trace_id) != {"0"}
    final = await suite.wait_terminal(work_order.id)
    assert final.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED, final.error

    run = await suite.run(work_order.run_id)
    assert run.trace_id == trace_id
    events = await suite.events(work_order.id)
    assert {e.type for e in events} >= {"work_order:queued", "run:started", "run:complete"}
    assert {e.trace_id for e in events} == {trace_id}, "every event carries the work order's trace id"

    found = spans_of(exporters, trace_id)
    for service in SERVICES:
        assert found[service], f"no span of agentgate-{service} in the work order's trace"
        assert {s.resource.attributes["service.name"] for s in found[service]} == {f"agentgate-{service}"}

    submit = next(s for s in found["queue"] if s.name == "/agentgate.v1.QueueService/Submit")
    assert submit.kind == SpanKind.SERVER
    assert work_order.traceparent.split("-")[2] == format_span_id(submit.context.span_id)
    run_span = next(s for s in found["orchestrator"] if s.name == "run")
    assert run_span.parent is not None and run_span.parent.span_id == submit.context.span_id
    assert run_span.attributes["agentgate.run_id"] == work_order.run_id
    assert run_span.attributes["agentgate.status"] == "WORK_ORDER_STATUS_SUCCEEDED"
    # The run's calls are children of the run span, on both ends.
    server_methods = {s.name for s in found["workspace"]} | {s.name for s in found["persistence"]}
    assert {
        "/agentgate.v1.WorkspaceService/PrepareForRun",
        "/agentgate.v1.WorkspaceService/RunAgent",
        "/agentgate.v1.WorkspaceService/Verify",
        "/agentgate.v1.PersistenceService/CreateRun",
        "/agentgate.v1.PersistenceService/AppendEvents",
    } <= server_methods
    clients = [s for s in found["orchestrator"] if s.kind == SpanKind.CLIENT]
    assert clients and all(s.parent is not None for s in clients)
    # Health checks make no spans.
    everything = [s for exporter in exporters.values() for s in exporter.get_finished_spans()]
    assert not [s for s in everything if "grpc.health" in s.name]


async def test_a_client_traceparent_is_continued(
    suite: InProcessSuite, exporters: dict[str, InMemorySpanExporter], tmp_path: Path
) -> None:
    client_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    metadata = (("traceparent", f"00-{client_trace}-00f067aa0ba902b7-01"),)
    response = await suite.queue.Submit(
        queue_pb2.SubmitRequest(spec=work_order_spec(tmp_path)), metadata=metadata, timeout=10
    )
    work_order = response.work_order
    assert work_order.trace_id == client_trace
    await suite.wait_terminal(work_order.id)
    assert (await suite.run(work_order.run_id)).trace_id == client_trace
    found = spans_of(exporters, client_trace)
    assert all(found[service] for service in SERVICES), {k: len(v) for k, v in found.items()}

    # A traceparent in the request itself wins over the metadata.
    explicit = "0af7651916cd43dd8448eb211c80319c"
    request = queue_pb2.SubmitRequest(
        spec=work_order_spec(tmp_path / "second"), traceparent=f"00-{explicit}-b7ad6b7169203331-01"
    )
    second = (await suite.queue.Submit(request, metadata=metadata, timeout=10)).work_order
    assert second.trace_id == explicit
    assert second.traceparent == f"00-{explicit}-b7ad6b7169203331-01"
    await suite.wait_terminal(second.id)
    assert {e.trace_id for e in await suite.events(second.id)} == {explicit}


async def test_cancelling_a_traced_unary_call_cancels_it_on_the_server(
    exporters: dict[str, InMemorySpanExporter],
) -> None:
    outcome: dict[str, bool] = {}
    started = asyncio.Event()

    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started.set()
        try:
            await asyncio.sleep(3)
        except asyncio.CancelledError:
            outcome["cancelled"] = True
            raise
        outcome["finished"] = True
        return b"done"

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Slow", {"Call": grpc.unary_unary_rpc_method_handler(slow)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = aio_channel(f"127.0.0.1:{port}", service="orchestrator")
    try:
        call = channel.unary_unary("/test.Slow/Call")

        async def caller() -> bytes:
            return await call(b"x", timeout=10)

        task = asyncio.create_task(caller())
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for _ in range(100):
            if outcome:
                break
            await asyncio.sleep(0.02)
        assert outcome == {"cancelled": True}
        await asyncio.sleep(0.05)
        span = next(s for s in exporters["orchestrator"].get_finished_spans() if s.name == "/test.Slow/Call")
        assert span.kind == SpanKind.CLIENT and span.status.status_code == StatusCode.ERROR
    finally:
        await channel.close()
        await server.stop(0)
