"""A server interceptor that makes every call end with a proper status (SPEC §13: bad input
never crashes a service).

gRPC's own handling answers UNKNOWN in two cases that are the caller's fault or ours, and
both say nothing useful:
- a request whose bytes are not a valid message (DecodeError while deserializing): here it
  is INVALID_ARGUMENT naming the method;
- an exception no servicer caught: here it is INTERNAL with the exception's type (logged
  with its traceback), and NotImplementedError stays UNIMPLEMENTED.

Every service's servicer already maps its own errors; this is the net under them.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

log = logging.getLogger(__name__)

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class MalformedRequest(Exception):
    """The request's bytes are not a valid message of the method's request type."""


def _decoder(deserializer: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except (DecodeError, ValueError, TypeError) as exc:
            raise MalformedRequest(f"{method}: the request is not a valid message ({exc})") from None

    return decode


async def _fail(context: grpc.aio.ServicerContext, method: str, exc: BaseException) -> None:
    """Aborts with the status `exc` stands for (always raises AbortError)."""
    if isinstance(exc, MalformedRequest):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, NotImplementedError):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented")
    log.error("%s raised an unhandled exception", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"{method}: internal error: {type(exc).__name__}")


class RequestGuard(grpc.aio.ServerInterceptor):
    """Wraps every handler: its own request decoding (malformed → INVALID_ARGUMENT) and a
    last catch of unhandled exceptions (→ INTERNAL)."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        decode = _decoder(handler.request_deserializer, method)
        serializer = handler.response_serializer

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
                try:
                    result = inner(decode(raw), context)
                    return await result if inspect.isawaitable(result) else result
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _fail(context, method, exc)

            return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream, decode, method), response_serializer=serializer
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _streaming(handler.stream_stream, lambda requests: _decoded(requests, decode), method),
                response_serializer=serializer,
            )
        # No AgentGate RPC streams requests into one answer: left as it is.
        return handler


def _streaming(inner: Callable[..., Any], prepare: Callable[[Any], Any], method: str) -> Callable[..., Any]:
    """`inner` (a response-streaming behavior) behind the guard, of the same kind: an async
    generator stays one, a coroutine that writes through `context.write` stays a coroutine
    (gRPC refuses to mix the two)."""
    if inspect.isasyncgenfunction(inner):

        async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in inner(prepare(request), context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _fail(context, method, exc)

        return generator

    async def coroutine(request: Any, context: grpc.aio.ServicerContext) -> None:
        try:
            await inner(prepare(request), context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _fail(context, method, exc)

    return coroutine


async def _decoded(requests: AsyncIterator[bytes], decode: Callable[[bytes], Any]) -> AsyncIterator[Any]:
    async for raw in requests:
        yield decode(raw)
