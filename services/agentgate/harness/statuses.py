"""Facts about work-order statuses that every side of the contract shares."""

from __future__ import annotations

from agentgate.v1 import common_pb2

#: A work order in one of these statuses never changes again.
TERMINAL_STATUSES = frozenset(
    {
        common_pb2.WORK_ORDER_STATUS_SUCCEEDED,
        common_pb2.WORK_ORDER_STATUS_FAILED,
        common_pb2.WORK_ORDER_STATUS_CANCELED,
        common_pb2.WORK_ORDER_STATUS_TIMED_OUT,
    }
)
