"""The one place where an exception becomes a gRPC status: a server interceptor every
service runs (see `agentgate.common.server.start_server`), so servicers raise and never
abort by hand. Bad input never crashes a service (docs/architecture.md, "Errors").

- A `ServiceError` of the vocabulary (`agentgate.common.errors`) becomes its status, with
  its rich details (`BadRequest` field violations, an `ErrorInfo` reason).
- A request whose bytes are not a valid message (DecodeError while deserializing) is
  INVALID_ARGUMENT naming the method; gRPC's own answer would be an empty UNKNOWN.
- NotImplementedError (a generated servicer's default) stays UNIMPLEMENTED.
- Anything else is a bug: INTERNAL with the exception's type and message, its traceback
  logged, and the server keeps serving. While the server shuts down it is UNAVAILABLE
  instead: closing stores make in-flight calls fail, and the caller should simply retry.

Unary and response-streaming RPCs are covered alike; an error raised after some messages
of a stream were sent ends the stream with its status.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from agentgate.common.errors import InvalidArgument, ServiceError

log = logging.getLogger(__name__)

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def _decoder(deserializer: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        if deserializer is None or not isinstance(raw, bytes):
            return raw  # decoded already (by the lease check in front, common/security.py)
        try:
            return deserializer(raw)
        except (DecodeError, ValueError, TypeError) as exc:
            raise InvalidArgument([], f"{method}: the request is not a valid message ({exc})") from None

    return decode


class RequestGuard(grpc.aio.ServerInterceptor):
    """Wraps every handler: its own request decoding (malformed → INVALID_ARGUMENT) and the
    mapping of whatever the handler raises to a status (see the module docstring).

    `service` names the service in the UNAVAILABLE message sent while it shuts down."""

    def __init__(self, service: str | None = None):
        self.service = service
        #: Set by `RunningServer.stop` before the app closes its resources.
        self.shutting_down = False

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
                    result = inner(decode(raw), context)  # type: ignore[arg-type]  # types-grpcio: handlers take the sync context
                    return await result if inspect.isawaitable(result) else result
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await self._abort(context, method, exc)

            return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, decode, method), response_serializer=serializer
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(handler.stream_stream, lambda requests: _decoded(requests, decode), method),
                response_serializer=serializer,
            )
        # No AgentGate RPC streams requests into one answer: left as it is.
        return handler

    async def _abort(self, context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
        """Aborts with the status `exc` stands for (always raises AbortError)."""
        if isinstance(exc, ServiceError):
            # Without details a plain abort, so the call carries no empty details trailer.
            if exc.details():
                await context.abort_with_status(exc.status())
            await context.abort(exc.code, exc.message)
        if isinstance(exc, NotImplementedError):
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented")
        if self.shutting_down:
            log.info("%s failed while shutting down: %s: %s", method, type(exc).__name__, exc)
            name = f"the {self.service} service" if self.service else "the service"
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{name} is shutting down")
        log.error("%s raised an unhandled exception", method, exc_info=exc)
        # The RPC's own name: this message often ends up inside a caller's error message.
        rpc = method.rpartition("/")[2]
        await context.abort(grpc.StatusCode.INTERNAL, f"{rpc} failed: {type(exc).__name__}: {exc}")

    def _streaming(self, inner: Callable[..., Any], prepare: Callable[[Any], Any], method: str) -> Callable[..., Any]:
        """`inner` (a response-streaming behavior) behind the guard, of the same kind: an
        async generator stays one, a coroutine that writes through `context.write` stays a
        coroutine (gRPC refuses to mix the two)."""
        if inspect.isasyncgenfunction(inner):

            async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for item in inner(prepare(request), context):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await self._abort(context, method, exc)

            return generator

        async def coroutine(request: Any, context: grpc.aio.ServicerContext) -> None:
            try:
                await inner(prepare(request), context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(context, method, exc)

        return coroutine


async def _decoded(requests: AsyncIterator[bytes], decode: Callable[[bytes], Any]) -> AsyncIterator[Any]:
    async for raw in requests:
        yield decode(raw)
