"""Errors of the workspace logic that the gRPC edge turns into status codes."""

from __future__ import annotations

import grpc


class WorkspaceServiceError(Exception):
    """A request that cannot be served; `code` is the gRPC status it becomes."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


class NotFound(WorkspaceServiceError):
    """Something the request names does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(WorkspaceServiceError):
    """The request is well formed but the state does not allow it (bad source, unknown commit)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unimplemented(WorkspaceServiceError):
    """A feature that is not built yet."""

    code = grpc.StatusCode.UNIMPLEMENTED
