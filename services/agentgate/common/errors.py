"""Errors that cross the wire: gRPC statuses with rich details (google.rpc.Status)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    """One wrong field of a request: its path (e.g. spec.task_prompt) and what is wrong."""

    field: str
    description: str


class InvalidArgument(Exception):
    """Raised by plain logic when a request is invalid; the gRPC edge turns it into
    INVALID_ARGUMENT with BadRequest details."""

    def __init__(self, violations: list[FieldViolation]):
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))


def invalid_argument_status(violations: list[FieldViolation]) -> grpc.Status:
    """An INVALID_ARGUMENT status naming every wrong field, with BadRequest details."""
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in violations
        ]
    )
    detail = any_pb2.Any()
    detail.Pack(bad_request)
    message = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[detail])
    )


def status_with_reason(code: grpc.StatusCode, message: str, reason: str, domain: str = "agentgate") -> grpc.Status:
    """A status carrying an ErrorInfo reason (e.g. QUEUE_FULL) in its details."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=domain)
    detail = any_pb2.Any()
    detail.Pack(info)
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=[detail]))


def field_violations(error: grpc.RpcError) -> list[FieldViolation]:
    """The field violations carried by an INVALID_ARGUMENT error (client side)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    found: list[FieldViolation] = []
    if status is None:
        return found
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
    return found
