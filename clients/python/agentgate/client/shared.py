"""What the blocking and the asyncio clients share: answers, terminal statuses and the
reconnect policy of an event follower."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from agentgate.harness.statuses import TERMINAL_STATUSES
from agentgate.v1 import common_pb2

if TYPE_CHECKING:
    from agentgate.common.errors import FieldViolation

#: Deadline of every unary call a client makes.
RPC_TIMEOUT_SECONDS = 30.0

#: Codes after which a follower reconnects from its last seq instead of giving up:
#: the service restarted or went away for a moment (UNAVAILABLE), or dropped a follower
#: that fell behind (RESOURCE_EXHAUSTED).
RECONNECT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)

#: Reconnects in a row (without an event in between) before a follower gives up.
MAX_RECONNECTS = 30


class SubmitError(Exception):
    """The queue refused a work order; `violations` name the wrong fields."""

    def __init__(self, code: grpc.StatusCode, message: str, violations: list[FieldViolation]):
        super().__init__(message)
        self.code = code
        self.violations = violations


@dataclass(frozen=True)
class WorkOrderStatus:
    """Where a work order stands: the queue's record and the run persistence holds for it
    (None until the run was created)."""

    work_order: common_pb2.WorkOrder
    run: common_pb2.Run | None

    @property
    def done(self) -> bool:
        """True once the work order ended (its status never changes again)."""
        return self.work_order.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        """True when the work order ended SUCCEEDED."""
        return self.work_order.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED


def reconnect_delay(attempt: int) -> float:
    """Seconds to wait before reconnect `attempt` (1, 2, ...): grows, capped at 2 s."""
    return min(0.2 * attempt, 2.0)


def should_reconnect(error: grpc.RpcError, attempt: int) -> bool:
    """Whether a follower whose stream failed with `error` tries reconnect `attempt`."""
    return error.code() in RECONNECT_CODES and attempt <= MAX_RECONNECTS


def is_run_id(ident: str) -> bool:
    """Run ids start with `run-`, work order ids with `wo-`."""
    return ident.startswith("run-")
