"""The error vocabulary (agentgate.common.errors) and its one mapping to gRPC statuses (the
request guard every server runs), against a real grpc.aio server on an ephemeral port:
each error becomes its code, message and rich details; anything else becomes INTERNAL with
a logged traceback and the server keeps serving; streams end with the same statuses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agentgate.common.channels import aio_channel
from agentgate.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    field_violations,
)
from agentgate.common.server import RunningServer, start_server

SERVICE = "test.Errors"


class Crowded(ResourceExhausted):
    """A vocabulary error with a reason, as a service defines one (e.g. the queue's QueueFull)."""

    reason = "CROWDED"


#: What the test servicer raises for each request (the request's bytes name the case).
RAISED: dict[str, Callable[[], Exception]] = {
    "invalid": lambda: InvalidArgument(
        [FieldViolation("spec.task_prompt", "is required"), FieldViolation("page_size", "must not be negative")]
    ),
    "not_found": lambda: NotFound("run 'run-1' not found"),
    "already_exists": lambda: AlreadyExists("run 'run-1' already exists"),
    "failed_precondition": lambda: FailedPrecondition("work order wo-1 already SUCCEEDED"),
    "resource_exhausted": lambda: ResourceExhausted("the answer is too big"),
    "unavailable": lambda: Unavailable("the remote could not be reached"),
    "crowded": lambda: Crowded("too many waiting"),
    "bug": lambda: KeyError("wo-1"),
    "unimplemented": lambda: NotImplementedError(),
}


async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    case = request.decode()
    if case == "ok":
        return b"fine"
    raise RAISED[case]()


async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    """One message, then the failure the request names."""
    yield b"first"
    raise RAISED[request.decode()]()


class ErrorsApp:
    """A service whose methods raise what they are asked to."""

    service_names = (SERVICE,)

    async def start(self, server: grpc.aio.Server) -> None:
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

    async def stop(self) -> None:
        pass


@pytest.fixture
async def running() -> AsyncIterator[RunningServer]:
    server = await start_server(ErrorsApp(), "127.0.0.1:0")
    yield server
    await server.stop(grace=0.1)


@pytest.fixture
async def channel(running: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with aio_channel(f"127.0.0.1:{running.port}") as chan:
        yield chan


async def call(channel: grpc.aio.Channel, case: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await channel.unary_unary(f"/{SERVICE}/Unary")(case.encode(), timeout=5)
    return failed.value


def reasons(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    found = []
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            found.append(f"{info.domain}/{info.reason}")
    return found


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("not_found", grpc.StatusCode.NOT_FOUND),
        ("already_exists", grpc.StatusCode.ALREADY_EXISTS),
        ("failed_precondition", grpc.StatusCode.FAILED_PRECONDITION),
        ("resource_exhausted", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("unavailable", grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_each_error_is_its_code_with_its_message(channel: grpc.aio.Channel, case: str, code) -> None:
    error = await call(channel, case)
    expected = RAISED[case]()
    assert isinstance(expected, ServiceError)
    assert error.code() == code == expected.code
    assert error.details() == expected.message
    # Nothing to detail: a plain status, no empty details trailer.
    assert rpc_status.from_call(error) is None


async def test_invalid_argument_carries_every_field_violation(channel: grpc.aio.Channel) -> None:
    error = await call(channel, "invalid")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "spec.task_prompt: is required; page_size: must not be negative"
    assert field_violations(error) == [
        FieldViolation("spec.task_prompt", "is required"),
        FieldViolation("page_size", "must not be negative"),
    ]


async def test_a_reason_travels_as_error_info(channel: grpc.aio.Channel) -> None:
    error = await call(channel, "crowded")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == "too many waiting"
    assert reasons(error) == ["agentgate/CROWDED"]


async def test_an_unexpected_exception_is_internal_logged_and_the_server_keeps_serving(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="agentgate.common.request_guard"):
        error = await call(channel, "bug")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "Unary failed: KeyError: 'wo-1'"
    logged = [record for record in caplog.records if record.exc_info]
    assert logged and logged[0].exc_info[0] is KeyError
    assert await channel.unary_unary(f"/{SERVICE}/Unary")(b"ok", timeout=5) == b"fine"


async def test_not_implemented_stays_unimplemented(channel: grpc.aio.Channel) -> None:
    error = await call(channel, "unimplemented")
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error.details() == f"/{SERVICE}/Unary is not implemented"


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT),
        ("not_found", grpc.StatusCode.NOT_FOUND),
        ("unavailable", grpc.StatusCode.UNAVAILABLE),
        ("bug", grpc.StatusCode.INTERNAL),
    ],
)
async def test_a_stream_ends_with_the_status_of_its_error(channel: grpc.aio.Channel, case: str, code) -> None:
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for message in channel.unary_stream(f"/{SERVICE}/Stream")(case.encode(), timeout=5):
            received.append(message)
    assert received == [b"first"]
    assert failed.value.code() == code
    if case == "invalid":
        assert [v.field for v in field_violations(failed.value)] == ["spec.task_prompt", "page_size"]


async def test_while_shutting_down_an_unexpected_exception_is_unavailable(
    running: RunningServer, channel: grpc.aio.Channel
) -> None:
    # What `RunningServer.stop` sets before the app closes its stores under in-flight calls.
    running.guard.shutting_down = True
    error = await call(channel, "bug")
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "the service is shutting down"
    # A vocabulary error still says what it is.
    assert (await call(channel, "not_found")).code() == grpc.StatusCode.NOT_FOUND


def test_invalid_argument_without_violations_has_no_bad_request() -> None:
    error = InvalidArgument([], "/x.Y/Z: the request is not a valid message")
    assert error.details() == []
    assert error.message == "/x.Y/Z: the request is not a valid message"


def test_disk_full_is_recognised_from_oserrors_and_sqlite() -> None:
    import errno
    import sqlite3

    from agentgate.common.errors import DiskFull, disk_full_excerpt, is_disk_full

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EFBIG, "File too large"))  # RLIMIT_FSIZE
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("no space left on device"))
    error = DiskFull("persistence.db")
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.message == "no space left on device while writing persistence.db"
    warning = "run.json not written (no space left on device while writing runs/r/run.json); kept in the index"
    assert disk_full_excerpt(warning) == "no space left on device while writing runs/r/run.json"
    assert disk_full_excerpt("UNAVAILABLE: down") == ""
