"""StreamEvents on the wire: each event is serialized once, whatever the number of followers.

With 100 followers of one busy run, building and serializing one `StreamEventsResponse`
per follower per event was most of the service's time (docs/benchmarks.md, hot spot 6).
`WireCache` keeps the serialized response of recent events, keyed by (work order, seq),
which names an event for good: once stored it never changes. Every follower, live or
replaying, sends those same bytes. `add_persistence_service` registers the servicer like the
generated `add_PersistenceServiceServicer_to_server`, except that StreamEvents has no
response serializer: gRPC sends the bytes the handler yields as they are. Clients see the
same messages as before (the bytes are what `SerializeToString` of the response gives).
"""

from __future__ import annotations

from typing import Any

import grpc

from agentgate.v1 import events_pb2, persistence_pb2, persistence_pb2_grpc

SERVICE_NAME = "agentgate.v1.PersistenceService"

#: Recent events kept serialized: enough for every follower of a busy run to be served
#: from the cache while it keeps up; a follower further behind re-serializes (and refills).
DEFAULT_MAX_EVENTS = 4096
#: A bound on the memory of the cache whatever the size of the events.
DEFAULT_MAX_BYTES = 16 * 1024 * 1024


class WireCache:
    """Serialized `StreamEventsResponse` of recent events, oldest dropped first."""

    def __init__(self, max_events: int = DEFAULT_MAX_EVENTS, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._bytes: dict[tuple[str, int], bytes] = {}
        self._size = 0
        #: Serializations done (a miss each): with N followers in step, ~1/N of the sends.
        self.serialized = 0

    def response_bytes(self, event: events_pb2.RunEvent) -> bytes:
        """The wire form of `StreamEventsResponse(event=event)`, serialized at most once
        while it stays in the cache."""
        key = (event.work_order_id, event.seq)
        data = self._bytes.get(key)
        if data is not None:
            return data
        data = persistence_pb2.StreamEventsResponse(event=event).SerializeToString()
        self.serialized += 1
        if len(data) <= self.max_bytes:
            self._bytes[key] = data
            self._size += len(data)
            # Insertion order is age (dicts keep it): drop the oldest until within bounds.
            while len(self._bytes) > self.max_events or self._size > self.max_bytes:
                oldest = next(iter(self._bytes))
                self._size -= len(self._bytes.pop(oldest))
        return data

    def __len__(self) -> int:
        return len(self._bytes)


class _Capture:
    """Stands in for the server to collect the handlers the generated code registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers also come through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers.update(handlers)


def persistence_handlers(servicer: persistence_pb2_grpc.PersistenceServiceServicer) -> dict[str, Any]:
    """The generated method handlers of `servicer`, StreamEvents sending its bytes as is."""
    capture = _Capture()
    persistence_pb2_grpc.add_PersistenceServiceServicer_to_server(servicer, capture)  # type: ignore[arg-type]  # duck-typed: records handlers
    handlers: dict[str, Any] = dict(capture.handlers)
    # No response_serializer: gRPC writes the handler's bytes unchanged.
    handlers["StreamEvents"] = grpc.unary_stream_rpc_method_handler(
        servicer.StreamEvents,
        request_deserializer=persistence_pb2.StreamEventsRequest.FromString,
        response_serializer=None,
    )
    return handlers


def add_persistence_service(servicer: persistence_pb2_grpc.PersistenceServiceServicer, server: Any) -> None:
    """Registers `servicer` on `server` (see the module docstring)."""
    handlers = persistence_handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
