"""StreamEvents wire form: one serialization per event, StreamEvents registered without a
response serializer, every other method as the generated code registers it."""

from __future__ import annotations

from agentgate.common.events import AGENT_OUTPUT, make_event
from agentgate.persistence.wire import WireCache, persistence_handlers
from agentgate.v1 import events_pb2, persistence_pb2, persistence_pb2_grpc


def output_event(seq: int, text: str = "line", work_order_id: str = "wo-1") -> events_pb2.RunEvent:
    event = make_event(
        AGENT_OUTPUT, work_order_id, "run-1", iteration=1, agent_output=events_pb2.AgentOutput(text=text)
    )
    event.seq = seq
    return event


def test_bytes_are_the_serialized_response_and_made_once() -> None:
    cache = WireCache()
    event = output_event(1)
    first = cache.response_bytes(event)
    assert persistence_pb2.StreamEventsResponse.FromString(first).event == event
    assert first == persistence_pb2.StreamEventsResponse(event=event).SerializeToString()
    # A copy of the same stored event (another follower, a replay) gets the same bytes.
    copy = events_pb2.RunEvent()
    copy.CopyFrom(event)
    assert cache.response_bytes(copy) is first
    assert cache.serialized == 1


def test_events_of_other_work_orders_or_seqs_are_not_confused() -> None:
    cache = WireCache()
    a = cache.response_bytes(output_event(1, "a", "wo-1"))
    b = cache.response_bytes(output_event(1, "b", "wo-2"))
    c = cache.response_bytes(output_event(2, "c", "wo-1"))
    texts = [persistence_pb2.StreamEventsResponse.FromString(x).event.agent_output.text for x in (a, b, c)]
    assert texts == ["a", "b", "c"]
    assert cache.serialized == 3


def test_the_oldest_are_dropped_beyond_the_event_bound() -> None:
    cache = WireCache(max_events=3)
    for seq in range(1, 6):
        cache.response_bytes(output_event(seq))
    assert len(cache) == 3
    cache.response_bytes(output_event(5))  # still cached
    assert cache.serialized == 5
    cache.response_bytes(output_event(1))  # dropped: serialized again
    assert cache.serialized == 6


def test_the_byte_bound_holds_and_a_huge_event_is_not_kept() -> None:
    cache = WireCache(max_bytes=1000)
    for seq in range(1, 20):
        cache.response_bytes(output_event(seq, "x" * 200))
    assert 0 < len(cache) <= 4
    huge = cache.response_bytes(output_event(99, "y" * 5000))
    assert len(huge) > 5000
    assert all(len(cache.response_bytes(output_event(s, "x" * 200))) < 1000 for s in (18, 19))
    before = cache.serialized
    cache.response_bytes(output_event(99, "y" * 5000))
    assert cache.serialized == before + 1


def test_stream_events_is_registered_without_a_response_serializer() -> None:
    servicer = persistence_pb2_grpc.PersistenceServiceServicer()
    handlers = persistence_handlers(servicer)
    service = persistence_pb2.DESCRIPTOR.services_by_name["PersistenceService"]
    assert set(handlers) == {method.name for method in service.methods}
    stream = handlers["StreamEvents"]
    assert stream.unary_stream is not None and stream.response_serializer is None
    request = persistence_pb2.StreamEventsRequest(work_order_id="wo-1", follow=True)
    assert stream.request_deserializer(request.SerializeToString()) == request
    for name, handler in handlers.items():
        if name != "StreamEvents":
            assert handler.response_serializer is not None, name
