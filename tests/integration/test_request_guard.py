"""The request guard every server has (agentgate.common.request_guard): malformed bytes are
INVALID_ARGUMENT, an exception no servicer caught is INTERNAL, never UNKNOWN; health (whose
Watch writes through the context) and reflection (a bidirectional stream) still work."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agentgate.common.channels import aio_channel
from agentgate.common.server import start_server
from agentgate.v1 import persistence_pb2, persistence_pb2_grpc, queue_pb2, queue_pb2_grpc


class Careless(queue_pb2_grpc.QueueServiceServicer):
    """A servicer that lets exceptions escape, as a bug would."""

    async def GetWorkOrder(self, request, context):
        raise KeyError(request.work_order_id)

    async def WatchPosition(self, request, context):
        yield queue_pb2.WatchPositionResponse()
        raise RuntimeError("lost track")

    async def GetQueueStats(self, request, context):
        return queue_pb2.GetQueueStatsResponse(waiting=7)


class CarelessApp:
    service_names = ("agentgate.v1.QueueService",)

    async def start(self, server: grpc.aio.Server) -> None:
        queue_pb2_grpc.add_QueueServiceServicer_to_server(Careless(), server)
        persistence_pb2_grpc.add_PersistenceServiceServicer_to_server(
            persistence_pb2_grpc.PersistenceServiceServicer(), server
        )

    async def stop(self) -> None:
        pass


@pytest.fixture
async def channel():
    running = await start_server(CarelessApp(), "127.0.0.1:0")
    async with aio_channel(f"127.0.0.1:{running.port}") as chan:
        yield chan
    await running.stop(grace=0.1)


async def test_malformed_request_bytes_are_invalid_argument(channel):
    raw = channel.unary_unary("/agentgate.v1.QueueService/GetWorkOrder")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await raw(b"\x0a\x05abc", timeout=5)  # field 1 says 5 bytes, 3 follow
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "GetWorkOrder" in failed.value.details()
    stream = channel.unary_stream("/agentgate.v1.QueueService/WatchPosition")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for _ in stream(b"\xff\xff\xff", timeout=5):
            pass
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unhandled_exceptions_are_internal_and_unimplemented_stays(channel):
    queue = queue_pb2_grpc.QueueServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await queue.GetWorkOrder(queue_pb2.GetWorkOrderRequest(work_order_id="wo-1"), timeout=5)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert "KeyError" in failed.value.details()
    responses = []
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for response in queue.WatchPosition(queue_pb2.WatchPositionRequest(work_order_id="wo-1"), timeout=5):
            responses.append(response)
    assert len(responses) == 1 and failed.value.code() == grpc.StatusCode.INTERNAL
    assert (await queue.GetQueueStats(queue_pb2.GetQueueStatsRequest(), timeout=5)).waiting == 7
    persistence = persistence_pb2_grpc.PersistenceServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await persistence.GetRun(persistence_pb2.GetRunRequest(run_id="run-1"), timeout=5)
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for _ in persistence.StreamEvents(persistence_pb2.StreamEventsRequest(run_id="run-1"), timeout=5):
            pass
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_health_watch_and_reflection_pass_through(channel):
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service="agentgate.v1.QueueService"), timeout=5)
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for answer in stub.ServerReflectionInfo(ask(), timeout=5):
        names = {service.name for service in answer.list_services_response.service}
        assert "agentgate.v1.QueueService" in names
        break
