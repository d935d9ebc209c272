"""The one error vocabulary of the services, and how each error reads as a gRPC status.

Logic modules raise these as plain exceptions; none of them needs to know about gRPC. The
request guard (`agentgate.common.request_guard`), which every server runs, turns a raised
`ServiceError` into its status: the code its class names, its message, and rich details
(`google.rpc.Status`): `BadRequest` field violations for `InvalidArgument`, an `ErrorInfo`
reason for an error class that sets one (e.g. the queue's QUEUE_FULL). Anything else a
servicer lets escape is INTERNAL. See docs/architecture.md, "Errors".
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

#: The `ErrorInfo.domain` of every reason AgentGate sends.
ERROR_DOMAIN = "agentgate"


@dataclass(frozen=True)
class FieldViolation:
    """One wrong field of a request: its path (e.g. spec.task_prompt) and what is wrong."""

    field: str
    description: str


class ServiceError(Exception):
    """A request the service cannot honour, for a reason the caller should know.

    A subclass names the gRPC status `code` it becomes; one may also set `reason`, sent as
    an `ErrorInfo` so that a client can tell this failure from others of the same code."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    reason: ClassVar[str] = ""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def details(self) -> list[Message]:
        """The rich details the status carries (none unless the class sets a `reason`)."""
        if not self.reason:
            return []
        return [error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN)]

    def status(self) -> grpc.Status:
        """This error as a status with its details, for `context.abort_with_status`."""
        packed = []
        for detail in self.details():
            any_detail = any_pb2.Any()
            any_detail.Pack(detail)
            packed.append(any_detail)
        return rpc_status.to_status(status_pb2.Status(code=self.code.value[0], message=self.message, details=packed))


class InvalidArgument(ServiceError):
    """The request itself is wrong: INVALID_ARGUMENT with a `BadRequest` naming every wrong
    field. `message` defaults to the violations joined; a request too broken to name a
    field (bytes that are not a message) has a message and no violations."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Sequence[FieldViolation], message: str = ""):
        self.violations = list(violations)
        super().__init__(message or "; ".join(f"{v.field}: {v.description}" for v in self.violations))

    def details(self) -> list[Message]:
        """A `BadRequest` with the field violations (none when there are none)."""
        if not self.violations:
            return []
        return [
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in self.violations
                ]
            )
        ]


class NotFound(ServiceError):
    """Something the request names does not exist (a run, a work order, a lease ...)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    """What the request would create exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    """The request is well formed but the state does not allow it; asking again as is will
    not help (a work order that already ended, a workspace leased by another holder)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    """A limit was reached (a full queue, an answer too big for one message, a follower
    too slow for the stream's buffer)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


#: How every disk-full failure reads, whichever service or file met it (docs/troubleshooting.md).
DISK_FULL_MESSAGE = "no space left on device"
#: The errnos that mean "no room to write": the device, a quota, or a file size limit
#: (RLIMIT_FSIZE) is full.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class DiskFull(ResourceExhausted):
    """A write failed because the disk (a quota, a file size limit) is full. The message
    names the file: "no space left on device while writing runs/run-1/agent-1.json"."""

    reason = "DISK_FULL"

    def __init__(self, file: str):
        super().__init__(disk_full_message(file))
        self.file = file


def disk_full_message(file: str) -> str:
    """The one wording of a disk-full failure while writing `file`."""
    return f"{DISK_FULL_MESSAGE} while writing {file}"


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc` says there is no room to write: an OSError with a disk-full errno,
    or SQLite's SQLITE_FULL ("database or disk is full")."""
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL_ERRNOS
    if isinstance(exc, sqlite3.Error):
        # The primary result code is the low byte of the extended one.
        return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return False


def is_disk_full_message(text: str) -> bool:
    """True when a status message or warning (from another service) reports a full disk."""
    return DISK_FULL_MESSAGE in text


def disk_full_excerpt(text: str) -> str:
    """The disk-full wording inside a longer message ("no space left on device while
    writing runs/r/agent-1.json"), or '' when it has none."""
    start = text.find(DISK_FULL_MESSAGE)
    if start < 0:
        return ""
    end = start + len(DISK_FULL_MESSAGE)
    while end < len(text) and text[end] not in ");\n":
        end += 1
    return text[start:end].rstrip()


class Unavailable(ServiceError):
    """Failed for a passing reason (an unreachable remote, a service shutting down): the
    same request may succeed later."""

    code = grpc.StatusCode.UNAVAILABLE


def field_violations(error: grpc.RpcError) -> list[FieldViolation]:
    """The field violations carried by an INVALID_ARGUMENT error (client side)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]  # a client's RpcError is also its Call
    found: list[FieldViolation] = []
    if status is None:
        return found
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
    return found
