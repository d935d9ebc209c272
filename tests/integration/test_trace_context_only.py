"""Trace ids cross every call when no span is recorded (docs/observability.md): the calls
then carry the context without the instrumentation (telemetry.carries_context_only).

Real `grpc.aio` servers on 127.0.0.1:0, real channels from `channels.aio_channel`, and the
in-process suite with providers that record nothing (no exporter, no endpoint).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentgate.common import telemetry
from agentgate.common.channels import aio_channel
from agentgate.v1 import queue_pb2

from .inprocess_suite import InProcessSuite
from .test_tracing import SERVICES, work_order_spec

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def unrecorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Providers for the four services and two test services, none recording a span."""
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_SAMPLER"):
        monkeypatch.delenv(name, raising=False)
    names = [*SERVICES, "front", "back"]
    made = [telemetry.init_telemetry(name, install_global=False) for name in names]
    assert all(telemetry.carries_context_only(name) for name in names)
    yield names
    for item in made:
        item.shutdown()


def _trace_of_current() -> str:
    return telemetry.trace_id_of()


async def _serve(service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=telemetry.server_interceptors(service))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(f"test.{service}", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_the_trace_id_crosses_two_hops_and_a_stream(unrecorded: list[str]) -> None:
    seen: dict[str, Any] = {}

    async def back(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen["back"] = _trace_of_current()
        seen["back metadata"] = dict(context.invocation_metadata() or ())
        return b"ok"

    back_server, back_address = await _serve("back", {"Call": grpc.unary_unary_rpc_method_handler(back)})
    back_channel = aio_channel(back_address, service="front", credential="")

    async def front(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen["front"] = _trace_of_current()
        return await back_channel.unary_unary("/test.back/Call")(b"x", timeout=10)

    async def front_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for _ in range(2):
            yield _trace_of_current().encode()

    front_server, front_address = await _serve(
        "front",
        {
            "Call": grpc.unary_unary_rpc_method_handler(front),
            "Stream": grpc.unary_stream_rpc_method_handler(front_stream),
        },
    )
    channel = grpc.aio.insecure_channel(front_address)
    try:
        metadata = (("traceparent", CLIENT_TRACEPARENT),)
        assert await channel.unary_unary("/test.front/Call")(b"x", metadata=metadata, timeout=10) == b"ok"
        assert seen["front"] == seen["back"] == CLIENT_TRACE
        assert seen["back metadata"]["traceparent"].split("-")[1] == CLIENT_TRACE
        streamed = [item async for item in channel.unary_stream("/test.front/Stream")(b"x", metadata=metadata)]
        assert streamed == [CLIENT_TRACE.encode()] * 2

        # No traceparent: the call starts a trace of its own, which the next hop continues.
        seen.clear()
        assert await channel.unary_unary("/test.front/Call")(b"x", timeout=10) == b"ok"
        assert len(seen["front"]) == 32 and seen["front"] != CLIENT_TRACE
        assert seen["back"] == seen["front"]
    finally:
        await channel.close()
        await back_channel.close()
        await front_server.stop(None)
        await back_server.stop(None)


@pytest.fixture
async def suite(home: Path, unrecorded: list[str]) -> AsyncIterator[InProcessSuite]:
    running = await InProcessSuite.start(home)
    yield running
    await running.stop()


async def test_a_work_order_its_run_and_its_events_share_the_clients_trace(
    suite: InProcessSuite, tmp_path: Path
) -> None:
    response = await suite.queue.Submit(
        queue_pb2.SubmitRequest(spec=work_order_spec(tmp_path)),
        metadata=(("traceparent", CLIENT_TRACEPARENT),),
        timeout=10,
    )
    work_order = response.work_order
    assert work_order.trace_id == CLIENT_TRACE
    await suite.wait_terminal(work_order.id)
    assert (await suite.run(work_order.run_id)).trace_id == CLIENT_TRACE
    assert {event.trace_id for event in await suite.events(work_order.id)} == {CLIENT_TRACE}

    # Without a traceparent the work order still gets a trace of its own.
    second = (await suite.queue.Submit(queue_pb2.SubmitRequest(spec=work_order_spec(tmp_path / "b")), timeout=10))
    assert len(second.work_order.trace_id) == 32 and second.work_order.trace_id != CLIENT_TRACE
    await suite.wait_terminal(second.work_order.id)
    assert {event.trace_id for event in await suite.events(second.work_order.id)} == {second.work_order.trace_id}
