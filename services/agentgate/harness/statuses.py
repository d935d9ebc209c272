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

#: A run in one of these states has ended: nothing works in its workspace any more.
TERMINAL_RUN_STATES = frozenset(
    {common_pb2.RUN_STATE_SUCCEEDED, common_pb2.RUN_STATE_FAILED, common_pb2.RUN_STATE_CANCELED}
)
