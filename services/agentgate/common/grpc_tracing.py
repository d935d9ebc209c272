"""The OpenTelemetry aio client interceptors, with cancellation that reaches the server.

The instrumentation's unary interceptors (`opentelemetry-instrumentation-grpc` 0.66b2) wait
for the call's status inside the interceptor to finish the span. Cancelling the caller then
only cancels that wait: the RPC itself goes on until its deadline. A cancelled `Lease` long
poll would still take a work order for a worker that is gone, and a cancelled
`AppendEvents` would still append (twice, when the caller retries). These interceptors
return the call at once instead and finish the span from a small task when the call ends,
so cancelling the caller cancels the RPC exactly as without instrumentation.

Streaming responses are left to the instrumentation: there the caller iterates the call
and a cancellation already ends it.

`TraceContextServerInterceptor` is the server side of a service whose spans are never
recorded: the caller's context without a span (telemetry.carries_context_only).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import _aio_client
from opentelemetry.trace import Span

from agentgate.common.telemetry import context_from_traceparent, new_traceparent

_pending: set[asyncio.Task[None]] = set()


async def _finish_when_done(call: grpc.aio.Call, span: Span, response_hook: Any) -> None:
    code = await call.code()
    details = await call.details()
    _aio_client._unary_done_callback(span, code, details, response_hook)(call)


class _ReturnsCallAtOnce:
    """Mixin replacing `_wrap_unary_response` of the instrumentation's unary interceptors."""

    # Provided by the instrumentation's interceptor this is mixed into.
    add_error_details_to_span: Any
    _call_response_hook: Any

    async def _wrap_unary_response(self, continuation: Any, span: Span) -> Any:
        try:
            call = await continuation()
        except grpc.aio.AioRpcError as exc:
            self.add_error_details_to_span(span, exc)
            span.end()
            raise
        if not span.is_recording():
            span.end()  # nothing to record: no task needed
            return call
        task = asyncio.get_running_loop().create_task(
            _finish_when_done(call, span, self._call_response_hook)
        )
        _pending.add(task)
        task.add_done_callback(_pending.discard)
        return call


class UnaryUnaryClientInterceptor(_ReturnsCallAtOnce, _aio_client.UnaryUnaryAioClientInterceptor):
    """Client spans for unary calls; cancelling the caller cancels the RPC."""


class StreamUnaryClientInterceptor(_ReturnsCallAtOnce, _aio_client.StreamUnaryAioClientInterceptor):
    """Client spans for client-streaming calls; cancelling the caller cancels the RPC."""


def aio_client_interceptors(tracer: Any, filter_: Any = None) -> list[grpc.aio.ClientInterceptor]:
    """The four client interceptors for an asyncio channel, spans made by `tracer`."""
    return [
        UnaryUnaryClientInterceptor(tracer, filter_=filter_),
        _aio_client.UnaryStreamAioClientInterceptor(tracer, filter_=filter_),
        StreamUnaryClientInterceptor(tracer, filter_=filter_),
        _aio_client.StreamStreamAioClientInterceptor(tracer, filter_=filter_),
    ]


class TraceContextServerInterceptor(grpc.aio.ServerInterceptor):
    """Runs each traced call in its caller's trace context, without a span of its own: for a
    service whose spans are never recorded (telemetry.carries_context_only). A call that
    brings no valid `traceparent` starts a trace, as the instrumentation's span would, so
    what it does (a work order it queues) still has a trace id (docs/observability.md)."""

    def __init__(self, is_traced: Callable[[Any], bool]):
        self._is_traced = is_traced

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        """The handler, with its behavior run inside the caller's trace context."""
        handler = await continuation(handler_call_details)
        if handler is None or not self._is_traced(handler_call_details):
            return handler
        parent = _incoming_context(handler_call_details.invocation_metadata)
        if handler.response_streaming:
            field = "stream_stream" if handler.request_streaming else "unary_stream"
            return handler._replace(**{field: _streaming_in(parent, getattr(handler, field))})
        field = "stream_unary" if handler.request_streaming else "unary_unary"
        return handler._replace(**{field: _unary_in(parent, getattr(handler, field))})


def _incoming_context(metadata: Any) -> otel_context.Context:
    traceparent = next((value for key, value in metadata or () if key == "traceparent"), "")
    found = context_from_traceparent(traceparent if isinstance(traceparent, str) else "")
    if trace.get_current_span(found).get_span_context().is_valid:
        return found
    return context_from_traceparent(new_traceparent())


def _unary_in(parent: otel_context.Context, behavior: Any) -> Any:
    async def unary(request: Any, context: Any) -> Any:
        token = otel_context.attach(parent)
        try:
            return await behavior(request, context)
        finally:
            otel_context.detach(token)

    return unary


def _streaming_in(parent: otel_context.Context, behavior: Any) -> Any:
    # Every streaming handler of ours is an async generator (as the instrumentation assumes).
    async def streaming(request: Any, context: Any) -> Any:
        token = otel_context.attach(parent)
        try:
            async for response in behavior(request, context):
                yield response
        finally:
            otel_context.detach(token)

    return streaming
