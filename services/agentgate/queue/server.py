"""The queue service's gRPC edge (`agentgate.v1.QueueService`) and its `ServiceApp`.

The rules live in plain modules: `validation` (what a work order may say), `store` (state,
order, leases, all durable) and `outbox` (events to persistence). This module turns
requests into calls on them and runs the two background tasks: the lease reaper and the
outbox forwarder. Their errors become gRPC statuses in the request guard that every
server runs (`agentgate.common.request_guard`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc

from agentgate.common import security, telemetry
from agentgate.common.config import ConfigError, ServiceSettings, service_address
from agentgate.common.database import Listener
from agentgate.common.database import database_url as database_url_setting
from agentgate.common.disk_reserve import DiskReserve, reserve_path
from agentgate.common.errors import FieldViolation, InvalidArgument, Unavailable
from agentgate.queue.outbox import OutboxForwarder
from agentgate.queue.positions import PositionBoard
from agentgate.queue.store import (
    COMPLETION_STATUSES,
    NOTIFY_CHANNEL,
    Position,
    QueueNotice,
    QueueStore,
    timestamp_from_us,
)
from agentgate.queue.validation import AgentCheck, validate_spec
from agentgate.v1 import common_pb2, queue_pb2, queue_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_LEASE_WAIT_SECONDS = 20.0
MAX_LEASE_WAIT_SECONDS = 60.0
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Time kept back from the client's deadline to write the answer, so a lease granted at the
# last moment is not lost to DEADLINE_EXCEEDED.
DEADLINE_MARGIN_SECONDS = 0.25
MAX_TRACEPARENT_CHARS = 512
MAX_ERROR_CHARS = 64 * 1024
MAX_IDEMPOTENCY_KEY_CHARS = 128

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")

def trace_id_from_traceparent(traceparent: str) -> str:
    """The 32-hex trace id of a valid W3C `traceparent`, else ''."""
    match = _TRACEPARENT.match(traceparent)
    if match is None:
        return ""
    version, trace_id, parent_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or set(trace_id) == {"0"} or set(parent_id) == {"0"}:
        return ""
    return trace_id


def submit_traceparent(explicit: str, context: grpc.aio.ServicerContext) -> str:
    """The trace context stored with a submitted work order (docs/observability.md, "Tracing"): the one the request
    names, else the Submit call's own server span (which continues a `traceparent` the
    client sent as metadata, or starts the trace), else the raw metadata value; '' when
    none is valid. The orchestrator's run span continues it."""
    for candidate in (explicit.strip(), telemetry.current_traceparent(), _metadata_value(context, "traceparent")):
        if len(candidate) <= MAX_TRACEPARENT_CHARS and trace_id_from_traceparent(candidate):
            return candidate
    return ""


def encode_page_token(seq: int) -> str:
    """An opaque token for the page that continues below submission `seq`."""
    return base64.urlsafe_b64encode(f"wo:{seq}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> int:
    """The seq a page token stands for; InvalidArgument (`page_token`) when it is not ours."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, number = text.partition(":")
        if prefix != "wo" or not number.isdigit() or int(number) < 1:
            raise ValueError(text)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument([FieldViolation("page_token", "invalid page token")]) from None


class WorkSignal:
    """Wakes `Lease` long polls when work or capacity may have appeared (submit, complete,
    lease expiry). A waiter takes `current()` before looking at the queue, so a change
    made between its look and its wait still wakes it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        """The event the next `notify` sets."""
        return self._event

    def notify(self) -> None:
        """Wakes every waiter."""
        self._event.set()
        self._event = asyncio.Event()


class QueueServicer(queue_pb2_grpc.QueueServiceServicer):
    """`agentgate.v1.QueueService` over a `QueueStore`."""

    def __init__(
        self,
        store: QueueStore,
        forwarder: OutboxForwarder,
        signal: WorkSignal,
        max_concurrent: int,
        max_queue_size: int,
        lease_seconds: int,
        lease_flush_timeout: float = 2.0,
        agent_check: AgentCheck | None = None,
        board: PositionBoard | None = None,
        profiles_dir: Path | None = None,
        service_key: bytes = b"",
    ):
        self._store = store
        #: Signs lease tokens (agentgate.common.security); none are issued without it.
        self._service_key = service_key
        self._forwarder = forwarder
        self._signal = signal
        self._board = board or PositionBoard(store)
        self.max_concurrent = max_concurrent
        self.max_queue_size = max_queue_size
        self.lease_seconds = lease_seconds
        self._lease_flush_timeout = lease_flush_timeout
        self._agent_check = agent_check
        self._profiles_dir = profiles_dir
        #: Set while the app stops: long polls and position watches end.
        self.closing = False

    async def Submit(
        self, request: queue_pb2.SubmitRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.SubmitResponse:
        """Validates the spec and stores it PENDING with `work_order:queued` in the outbox.
        INVALID_ARGUMENT (nothing stored) for a bad spec, RESOURCE_EXHAUSTED/QUEUE_FULL when
        `max_queue_size` work orders already wait."""
        violations = validate_spec(request.spec, self._agent_check, self._profiles_dir)
        if len(request.idempotency_key) > MAX_IDEMPOTENCY_KEY_CHARS:
            violations.append(
                FieldViolation("idempotency_key", f"at most {MAX_IDEMPOTENCY_KEY_CHARS} characters")
            )
        if violations:
            raise InvalidArgument(violations)
        traceparent = submit_traceparent(request.traceparent, context)
        work_order, position = await self._store.submit(
            request.spec,
            max_queue_size=self.max_queue_size,
            traceparent=traceparent,
            trace_id=trace_id_from_traceparent(traceparent),
            idempotency_key=request.idempotency_key,
        )
        log.info("queued %s (run %s) at position %d", work_order.id, work_order.run_id, position)
        return queue_pb2.SubmitResponse(work_order=work_order, position=position)

    async def GetWorkOrder(
        self, request: queue_pb2.GetWorkOrderRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.GetWorkOrderResponse:
        """One work order; NOT_FOUND when unknown."""
        _require_id(request.work_order_id)
        return queue_pb2.GetWorkOrderResponse(work_order=await self._store.get(request.work_order_id))

    async def ListWorkOrders(
        self, request: queue_pb2.ListWorkOrdersRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.ListWorkOrdersResponse:
        """Work orders newest first, optionally only some statuses; `page_size` default 50,
        at most 1000; `next_page_token` is empty on the last page."""
        violations = []
        defined = common_pb2.WorkOrderStatus.DESCRIPTOR.values_by_number
        bad = [s for s in request.statuses if s not in defined or s == common_pb2.WORK_ORDER_STATUS_UNSPECIFIED]
        if bad:
            violations.append(FieldViolation("statuses", f"unknown status value(s) {', '.join(map(str, bad))}"))
        if request.page_size < 0:
            violations.append(FieldViolation("page_size", f"must not be negative, got {request.page_size}"))
        if violations:
            raise InvalidArgument(violations)
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        before = decode_page_token(request.page_token) if request.page_token else None
        work_orders, next_seq = await self._store.list_work_orders(list(request.statuses), page_size, before)
        return queue_pb2.ListWorkOrdersResponse(
            work_orders=work_orders, next_page_token=encode_page_token(next_seq) if next_seq else ""
        )

    async def CancelWorkOrder(
        self, request: queue_pb2.CancelWorkOrderRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.CancelWorkOrderResponse:
        """A waiting work order ends CANCELED now; a running one is flagged and its worker
        learns it from Heartbeat. FAILED_PRECONDITION when it already ended."""
        _require_id(request.work_order_id)
        work_order = await self._store.cancel(request.work_order_id, request.reason)
        log.info("cancel of %s: now %s", work_order.id, common_pb2.WorkOrderStatus.Name(work_order.status))
        return queue_pb2.CancelWorkOrderResponse(work_order=work_order)

    async def Lease(
        self, request: queue_pb2.LeaseRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.LeaseResponse:
        """Long poll: hands out the next work order as soon as one waits and fewer than
        `max_concurrent` run, else answers leased=false after `wait_seconds` (default 20,
        at most 60) or just before the client's deadline."""
        wait = request.wait_seconds
        if math.isnan(wait) or wait < 0:
            raise InvalidArgument([FieldViolation("wait_seconds", f"must be 0 (default 20) or more, got {wait}")])
        wait = min(wait or DEFAULT_LEASE_WAIT_SECONDS, MAX_LEASE_WAIT_SECONDS)
        client_left = context.time_remaining()
        if client_left is not None:
            wait = min(wait, max(client_left - DEADLINE_MARGIN_SECONDS, 0.0))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            wakeup = self._signal.current()
            if self.closing:
                return queue_pb2.LeaseResponse(leased=False, lease_seconds=self.lease_seconds)
            lease = await self._store.lease_next(request.worker_id, self.max_concurrent, self.lease_seconds)
            if lease is not None:
                break
            left = deadline - loop.time()
            if left <= 0:
                return queue_pb2.LeaseResponse(leased=False, lease_seconds=self.lease_seconds)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await wakeup.wait()

        # `work_order:queued` must reach persistence before the worker's `run:started`,
        # so the queued event gets seq 1; bounded so a persistence outage cannot stall work.
        flush_budget = self._lease_flush_timeout
        client_left = context.time_remaining()
        if client_left is not None:
            flush_budget = min(flush_budget, max(client_left - DEADLINE_MARGIN_SECONDS, 0.0))
        if not await self._forwarder.flush(lease.work_order.id, flush_budget):
            log.warning("events of %s not yet delivered to persistence when leased", lease.work_order.id)
        log.info("leased %s to %r (attempt %d)", lease.work_order.id, request.worker_id, lease.work_order.attempts)
        grant = security.LeaseGrant(
            lease.work_order.run_id, request.worker_id, lease.lease_id, -(-lease.expires_at_us // 1_000_000)
        )
        return queue_pb2.LeaseResponse(
            leased=True,
            work_order=lease.work_order,
            lease_id=lease.lease_id,
            lease_seconds=self.lease_seconds,
            lease_token=self._lease_token(grant),
        )

    def _lease_token(self, grant: security.LeaseGrant) -> str:
        return security.sign_lease(self._service_key, grant) if self._service_key else ""

    def _renewed_token(self, context: grpc.aio.ServicerContext, lease_id: str, expires_us: int) -> str:
        """The worker's lease token (its metadata) signed again to the new expiry. Signed by
        us and naming this lease, it says which run and worker the lease is for, so the
        queue keeps no table of tokens."""
        presented = dict(context.invocation_metadata() or ()).get(security.LEASE_METADATA)
        if not presented or not self._service_key:
            return ""
        grant = security.verify_lease(self._service_key, str(presented))
        if grant is None or grant.lease_id != lease_id:
            return ""
        renewed = security.LeaseGrant(grant.run_id, grant.worker_id, lease_id, -(-expires_us // 1_000_000))
        return self._lease_token(renewed)

    async def Heartbeat(
        self, request: queue_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.HeartbeatResponse:
        """Extends a live lease by `lease_seconds` and says whether its work order was
        canceled; NOT_FOUND for an unknown or expired lease (the worker must stop)."""
        if not request.lease_id:
            raise InvalidArgument([FieldViolation("lease_id", "is required")])
        cancel_requested, expires_us = await self._store.heartbeat(request.lease_id, self.lease_seconds)
        return queue_pb2.HeartbeatResponse(
            cancel_requested=cancel_requested,
            lease_expires_at=timestamp_from_us(expires_us),
            lease_token=self._renewed_token(context, request.lease_id, expires_us),
        )

    async def Complete(
        self, request: queue_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.CompleteResponse:
        """Ends a live lease with SUCCEEDED, FAILED or CANCELED (any other status is
        INVALID_ARGUMENT); NOT_FOUND for an unknown or expired lease."""
        violations = []
        if not request.lease_id:
            violations.append(FieldViolation("lease_id", "is required"))
        if request.status not in COMPLETION_STATUSES:
            name = common_pb2.WorkOrderStatus.DESCRIPTOR.values_by_number.get(request.status)
            violations.append(
                FieldViolation(
                    "status",
                    f"must be SUCCEEDED, FAILED or CANCELED, got {name.name if name else request.status}",
                )
            )
        if violations:
            raise InvalidArgument(violations)
        work_order = await self._store.complete(request.lease_id, request.status, request.error[:MAX_ERROR_CHARS])
        log.info("%s completed %s", work_order.id, common_pb2.WorkOrderStatus.Name(work_order.status))
        return queue_pb2.CompleteResponse(work_order=work_order)

    async def GetPosition(
        self, request: queue_pb2.GetPositionRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.GetPositionResponse:
        """Position among waiting work orders in lease order (1 = next; 0 once running or
        ended), how many are ahead, the state, and for a waiting one the estimated wait
        (position x seconds per place of the recent leases; absent until there is data)."""
        _require_id(request.work_order_id)
        return position_response(request.work_order_id, await self._store.position(request.work_order_id))

    async def WatchPosition(
        self, request: queue_pb2.WatchPositionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[queue_pb2.WatchPositionResponse]:
        """Streams the position now and on every change of position, ahead or state;
        ends after the message that says the work order is running or ended.
        NOT_FOUND for an unknown work order; UNAVAILABLE when the queue shuts down (the
        client reconnects and gets the current position first)."""
        _require_id(request.work_order_id)
        async for where in self._board.watch(request.work_order_id):
            yield queue_pb2.WatchPositionResponse(position=position_response(request.work_order_id, where))
        if self.closing:
            raise Unavailable("the queue service is shutting down")

    async def GetQueueStats(
        self, request: queue_pb2.GetQueueStatsRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.GetQueueStatsResponse:
        """Waiting and running counts, the limits, whether a Submit would be accepted, and
        the average wait of the latest leased work orders (absent until there is one)."""
        waiting, running = await self._store.counts()
        stats = await self._store.wait_stats()
        return queue_pb2.GetQueueStatsResponse(
            waiting=waiting,
            running=running,
            max_concurrent=self.max_concurrent,
            max_queue_size=self.max_queue_size,
            accepting=waiting < self.max_queue_size,
            average_wait_seconds=stats.average_wait_seconds,
        )


def position_response(work_order_id: str, where: Position) -> queue_pb2.GetPositionResponse:
    """A `GetPositionResponse` from a store position (the estimate only when known)."""
    return queue_pb2.GetPositionResponse(
        work_order_id=work_order_id,
        position=where.position,
        ahead=where.ahead,
        state=where.state,
        enqueued_at=timestamp_from_us(where.enqueued_at_us),
        estimated_wait_seconds=where.estimated_wait_seconds,
    )


class QueueApp:
    """The queue service as a `ServiceApp`: store, servicer, reaper and outbox forwarder.

    `persistence_address` defaults to AGENTGATE_PERSISTENCE_ADDR (or 127.0.0.1:50054).
    `reap_interval` (seconds between reaper passes), `lease_flush_timeout` (how long a
    Lease waits for the work order's events to reach persistence), `agent_check` and
    `clock` exist for tests. `database_url` (`postgresql://...`) puts the state in
    PostgreSQL, shared with other replicas; '' keeps `queue.db` under the home folder;
    None = $AGENTGATE_DATABASE_URL.
    """

    service_names = ("agentgate.v1.QueueService",)

    def __init__(
        self,
        settings: ServiceSettings,
        persistence_address: str | None = None,
        max_concurrent: int = 2,
        max_queue_size: int = 1000,
        lease_seconds: int = 30,
        max_lease_attempts: int = 3,
        *,
        reap_interval: float = 1.0,
        lease_flush_timeout: float = 2.0,
        agent_check: AgentCheck | None = None,
        clock: Callable[[], float] = time.time,
        database_url: str | None = None,
    ):
        for key, value in (
            ("max_concurrent", max_concurrent),
            ("max_queue_size", max_queue_size),
            ("lease_seconds", lease_seconds),
            ("max_lease_attempts", max_lease_attempts),
        ):
            if value < 1:
                raise ConfigError(f"{key}: must be at least 1, got {value}")
        if reap_interval <= 0:
            raise ConfigError(f"reap_interval: must be greater than 0, got {reap_interval}")
        self.settings = settings
        self.persistence_address = service_address("persistence", persistence_address)
        self.max_concurrent = max_concurrent
        self.max_queue_size = max_queue_size
        self.lease_seconds = lease_seconds
        self.max_lease_attempts = max_lease_attempts
        self.reap_interval = reap_interval
        self.lease_flush_timeout = lease_flush_timeout
        self._agent_check = agent_check
        self._clock = clock
        self.database_url = database_url_setting(database_url)
        self._listener: Listener | None = None
        self.store: QueueStore | None = None
        self.forwarder: OutboxForwarder | None = None
        self.servicer: QueueServicer | None = None
        self._signal: WorkSignal | None = None
        self._board: PositionBoard | None = None
        self._reaper: asyncio.Task[None] | None = None
        # Set when the waiting work orders change: a new wait limit may be due sooner.
        self._reap_wakeup = asyncio.Event()

    async def start(self, server: grpc.aio.Server) -> None:
        """Opens `queue.db`, renews the leases of running work orders (no worker could
        heartbeat while the queue was down), starts the forwarder and reaper, registers
        the servicer."""
        store = await QueueStore.open(
            self.settings.database_path,
            max_lease_attempts=self.max_lease_attempts,
            clock=self._clock,
            database_url=self.database_url,
        )
        store.reserve = DiskReserve(reserve_path(self.settings.home, "queue"))
        if not await store.reserve.ensure():
            log.warning("disk full at start: no room for the reserve %s", store.reserve.path)
        renewed = await store.renew_running_leases(self.lease_seconds)
        if renewed:
            log.info("renewed the leases of %d running work order(s) after the restart", renewed)
        service_key = security.load_service_key(self.settings.home)
        forwarder = OutboxForwarder(
            store,
            self.persistence_address,
            credential=security.service_credential(service_key, "service", "queue"),
        )
        signal = WorkSignal()
        board = PositionBoard(store)
        store.on_events = forwarder.wake
        store.on_work_changed = signal.notify
        store.on_order_changed = self._on_order_changed
        self.store, self.forwarder, self._signal, self._board = store, forwarder, signal, board
        await forwarder.start()
        if store.shared:
            # Other replicas' commits wake this one's long polls, watches, reaper and
            # forwarder; after a reconnect, as if everything changed.
            self._listener = Listener(
                self.database_url,
                NOTIFY_CHANNEL,
                store.hear,
                lambda: store.hear(QueueNotice.WORK + QueueNotice.ORDER + QueueNotice.EVENTS),
            )
            await self._listener.start()
        self.servicer = QueueServicer(
            store,
            forwarder,
            signal,
            max_concurrent=self.max_concurrent,
            max_queue_size=self.max_queue_size,
            lease_seconds=self.lease_seconds,
            lease_flush_timeout=self.lease_flush_timeout,
            agent_check=self._agent_check,
            board=board,
            profiles_dir=self.settings.home / "profiles",
            service_key=service_key,
        )
        queue_pb2_grpc.add_QueueServiceServicer_to_server(self.servicer, server)
        self._reaper = asyncio.create_task(self._reap_forever(), name="queue-reaper")
        log.info(
            "queue ready: max_concurrent=%d max_queue_size=%d lease_seconds=%d persistence=%s",
            self.max_concurrent,
            self.max_queue_size,
            self.lease_seconds,
            self.persistence_address,
        )

    async def closing(self) -> None:
        """Ends open long polls (leased=false) and position watches before shutdown."""
        if self.servicer is not None:
            self.servicer.closing = True
        if self._signal is not None:
            self._signal.notify()
        if self._board is not None:
            self._board.close()

    async def stop(self) -> None:
        """Stops the background tasks and closes the database (after in-flight calls finished)."""
        await self.closing()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self.forwarder is not None:
            await self.forwarder.stop()
            self.forwarder = None
        if self.store is not None:
            await self.store.close()
            self.store = None

    def _on_order_changed(self) -> None:
        if self._board is not None:
            self._board.notify()
        self._reap_wakeup.set()

    async def _sleep_until_due(self) -> None:
        """Sleeps until just past the next lease expiry or wait limit, at most
        `reap_interval`. A change of the waiting work orders (which may bring a nearer
        wait limit) makes it look again; only a due deadline or the interval ends it, so a
        busy queue still reaps at most once per interval plus once per deadline."""
        assert self.store is not None
        loop = asyncio.get_running_loop()
        latest = loop.time() + self.reap_interval
        while True:
            self._reap_wakeup.clear()
            delay = latest - loop.time()
            try:
                due = await self.store.next_deadline_us()
            except Exception:
                log.exception("reading the next deadline failed")
                due = None
            if due is not None:
                # The reaper acts on what is strictly past its time: wake a little after.
                delay = min(delay, (due - self.store.now_us()) / 1_000_000 + 0.005)
            if delay <= 0:
                return
            try:
                async with asyncio.timeout(delay):
                    await self._reap_wakeup.wait()
            except TimeoutError:
                return

    async def _reap_forever(self) -> None:
        # A timer, not a side effect of other requests: an idle queue must still expire
        # leases and time out waiting work orders, and on time (a 2 s wait limit ends
        # after 2 s, not at the next round second).
        assert self.store is not None
        while True:
            await self._sleep_until_due()
            try:
                result = await self.store.reap()
            except Exception:
                log.exception("reaper pass failed")
                # The deadline that woke it is still due: pause rather than spin.
                await asyncio.sleep(self.reap_interval)
                continue
            if result.changed:
                log.info(
                    "reaper: %d requeued, %d failed, %d canceled, %d timed out",
                    result.requeued,
                    result.failed,
                    result.canceled,
                    result.timed_out,
                )


def _require_id(work_order_id: str) -> None:
    if not work_order_id:
        raise InvalidArgument([FieldViolation("work_order_id", "is required")])


def _metadata_value(context: grpc.aio.ServicerContext, key: str) -> str:
    for name, value in context.invocation_metadata() or ():
        if name == key and isinstance(value, str):
            return value.strip()
    return ""
