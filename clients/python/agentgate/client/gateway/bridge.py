"""The Connect protocol on one side, gRPC on the other: routing by method path and framing,
without network (the HTTP edge is `server.py`). docs/dashboard.md explains the design.

The bridge never decodes a request or a response: it forwards the serialized protobuf bytes.
A method is found by its path (`/agentgate.v1.QueueService/Submit`) in the descriptors of the
generated stubs, which also say whether it streams and which service serves it
(`QueueService` -> `queue`). So a new RPC, message or field reaches the browser by
regenerating the stubs (`make protos`), with no code here.
"""

from __future__ import annotations

import base64
import importlib
import json
import pkgutil
import struct
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor

import agentgate.v1
from agentgate.common.config import SERVICES

#: The package of our contracts: only its services are bridged (not health, reflection).
PACKAGE = "agentgate.v1"

#: Connect's name and HTTP status for each gRPC code (connectrpc.com/docs/protocol).
_CONNECT_CODES: dict[grpc.StatusCode, tuple[str, int]] = {
    grpc.StatusCode.CANCELLED: ("canceled", 499),
    grpc.StatusCode.UNKNOWN: ("unknown", 500),
    grpc.StatusCode.INVALID_ARGUMENT: ("invalid_argument", 400),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("deadline_exceeded", 504),
    grpc.StatusCode.NOT_FOUND: ("not_found", 404),
    grpc.StatusCode.ALREADY_EXISTS: ("already_exists", 409),
    grpc.StatusCode.PERMISSION_DENIED: ("permission_denied", 403),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("resource_exhausted", 429),
    grpc.StatusCode.FAILED_PRECONDITION: ("failed_precondition", 400),
    grpc.StatusCode.ABORTED: ("aborted", 409),
    grpc.StatusCode.OUT_OF_RANGE: ("out_of_range", 400),
    grpc.StatusCode.UNIMPLEMENTED: ("unimplemented", 501),
    grpc.StatusCode.INTERNAL: ("internal", 500),
    grpc.StatusCode.UNAVAILABLE: ("unavailable", 503),
    grpc.StatusCode.DATA_LOSS: ("data_loss", 500),
    grpc.StatusCode.UNAUTHENTICATED: ("unauthenticated", 401),
}

#: Envelope flags of Connect's streaming framing: compressed (never sent by us), end of stream.
FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02
_HEADER = struct.Struct(">BI")

#: Content types: unary bodies are bare messages, streams are enveloped.
UNARY_PROTO = "application/proto"
STREAM_PROTO = "application/connect+proto"


@dataclass(frozen=True)
class Route:
    """Where a method path goes: the suite service that serves it and its shape."""

    path: str
    service: str
    server_streaming: bool
    client_streaming: bool


class BridgeError(Exception):
    """A call that ends before reaching a service; `code` is a gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def load_contracts() -> None:
    """Imports every generated module of `agentgate.v1`, so the default descriptor pool holds
    every service (a new .proto file too, without naming it here)."""
    for module in pkgutil.iter_modules(agentgate.v1.__path__):
        if module.name.endswith("_pb2"):
            importlib.import_module(f"{agentgate.v1.__name__}.{module.name}")


def route(path: str) -> Route:
    """The route of `/agentgate.v1.<Service>/<Method>`; NOT_FOUND-like BridgeError
    (UNIMPLEMENTED, as a gRPC server answers) for any other path."""
    service_name, _, method_name = path.strip("/").partition("/")
    if not service_name.startswith(PACKAGE + ".") or not method_name or "/" in method_name:
        raise BridgeError(grpc.StatusCode.UNIMPLEMENTED, f"{path}: not a method of {PACKAGE}")
    try:
        method: MethodDescriptor = descriptor_pool.Default().FindMethodByName(f"{service_name}.{method_name}")
    except KeyError:
        raise BridgeError(grpc.StatusCode.UNIMPLEMENTED, f"{path}: no such method") from None
    # QueueService -> queue: the suite names each service after its proto service.
    service = method.containing_service.name.removesuffix("Service").lower()
    if service not in SERVICES:
        raise BridgeError(grpc.StatusCode.UNIMPLEMENTED, f"{path}: no AgentGate service serves it")
    return Route(
        path=f"/{service_name}/{method_name}",
        service=service,
        server_streaming=method.server_streaming,
        client_streaming=method.client_streaming,
    )


def routes() -> list[Route]:
    """Every method of every `agentgate.v1` service the descriptors know (the bridge serves
    exactly these)."""
    load_contracts()
    pool = descriptor_pool.Default()
    found = []
    for module in pkgutil.iter_modules(agentgate.v1.__path__):
        if not module.name.endswith("_pb2"):
            continue
        file = pool.FindFileByName(f"agentgate/v1/{module.name.removesuffix('_pb2')}.proto")
        for service in file.services_by_name.values():
            found += [route(f"/{service.full_name}/{method.name}") for method in service.methods]
    return found


def timeout_seconds(header: str | None) -> float | None:
    """The deadline a Connect client sends (`connect-timeout-ms`), in seconds; None without
    one. A bad value is INVALID_ARGUMENT."""
    if header is None or header == "":
        return None
    if not header.isdigit() or len(header) > 10:
        raise BridgeError(grpc.StatusCode.INVALID_ARGUMENT, f"connect-timeout-ms: {header!r} is not a number of ms")
    return int(header) / 1000


def envelope(payload: bytes, flags: int = 0) -> bytes:
    """One frame of Connect's streaming framing: flags, big-endian length, payload."""
    return _HEADER.pack(flags, len(payload)) + payload


def single_message(body: bytes) -> bytes:
    """The one message of a server-streaming request's enveloped body."""
    if len(body) < _HEADER.size:
        raise BridgeError(grpc.StatusCode.INVALID_ARGUMENT, "stream request: no envelope")
    flags, length = _HEADER.unpack_from(body)
    if flags & FLAG_COMPRESSED:
        raise BridgeError(grpc.StatusCode.UNIMPLEMENTED, "stream request: compression is not supported")
    if len(body) != _HEADER.size + length:
        raise BridgeError(grpc.StatusCode.INVALID_ARGUMENT, "stream request: expected exactly one message")
    return body[_HEADER.size :]


def connect_code(code: grpc.StatusCode) -> tuple[str, int]:
    """Connect's name and HTTP status of a gRPC code."""
    return _CONNECT_CODES.get(code, ("unknown", 500))


def error_json(code: grpc.StatusCode, message: str, details: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """A Connect error object."""
    error: dict[str, Any] = {"code": connect_code(code)[0], "message": message}
    if details:
        error["details"] = details
    return error


def end_stream(error: dict[str, Any] | None) -> bytes:
    """The last frame of a stream: empty on success, else `{"error": ...}`."""
    return envelope(json.dumps({"error": error} if error else {}).encode(), FLAG_END_STREAM)


def status_details(trailing_metadata: Any) -> list[dict[str, str]]:
    """The `google.rpc.Status` details a service attached (e.g. BadRequest field violations),
    as Connect details: the type name and the base64 (unpadded) bytes, still undecoded."""
    from google.rpc import status_pb2

    for key, value in trailing_metadata or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            return [
                {
                    "type": detail.type_url.rpartition("/")[2],
                    "value": base64.b64encode(detail.value).decode().rstrip("="),
                }
                for detail in status.details
            ]
    return []
