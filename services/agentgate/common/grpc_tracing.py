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
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import _aio_client
from opentelemetry.trace import Span

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
