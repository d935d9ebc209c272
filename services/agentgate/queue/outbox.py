"""The queue's events and their transactional outbox.

The queue records each event in its own database, in the same transaction as the state
change it describes (see `QueueStore`), and `OutboxForwarder` delivers the recorded events
to the persistence service's `AppendEvents`, in the order they were recorded. So a Submit
never waits for persistence, an event is never lost while persistence is down or
restarting, and events reach persistence in the order the changes happened.

Delivery is at least once: a call that timed out after persistence stored the events is
sent again; each event carries an `event_id`, so persistence stores it once.

On PostgreSQL the outbox is one table for every queue replica and one of them delivers it
at a time (`QueueStore.outbox_batch`); the others look now and then, to take over when it
dies (docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import grpc

from agentgate.common import events as event_names
from agentgate.common.channels import CHANNEL_OPTIONS, aio_channel
from agentgate.common.events import make_event
from agentgate.common.timeutil import now_timestamp
from agentgate.v1 import common_pb2, events_pb2, persistence_pb2, persistence_pb2_grpc

if TYPE_CHECKING:
    from agentgate.queue.store import QueueStore

log = logging.getLogger(__name__)

TASK_SUMMARY_CHARS = 120
#: PostgreSQL: how often a Lease waiting for a work order's events asks whether they left.
SHARED_FLUSH_POLL_SECONDS = 0.01
#: PostgreSQL: how often an idle forwarder looks at the shared outbox without a wake-up.
SHARED_IDLE_POLL_SECONDS = 1.0

# gRPC's own reconnect backoff grows to two minutes by default; persistence coming back
# must be noticed within seconds, so the channel retries connecting at a brisk pace.
FORWARDER_CHANNEL_OPTIONS = [
    *CHANNEL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def task_summary(prompt: str) -> str:
    """The first non-blank line of a task prompt, at most 120 characters."""
    line = next((ln.strip() for ln in prompt.splitlines() if ln.strip()), "")
    if len(line) > TASK_SUMMARY_CHARS:
        line = line[: TASK_SUMMARY_CHARS - 1] + "…"
    return line


def queued_event(work_order: common_pb2.WorkOrder, position: int) -> events_pb2.RunEvent:
    """`work_order:queued`: a work order was accepted and waits at `position`."""
    return make_event(
        event_names.WORK_ORDER_QUEUED,
        work_order.id,
        work_order.run_id,
        trace_id=work_order.trace_id,
        work_order_queued=events_pb2.WorkOrderQueued(
            priority=work_order.spec.priority,
            position=position,
            task_summary=task_summary(work_order.spec.task_prompt),
        ),
    )


def position_event(work_order_id: str, run_id: str, trace_id: str, position: int) -> events_pb2.RunEvent:
    """`work_order:position`: a waiting work order moved to `position` (1 = next)."""
    return make_event(
        event_names.WORK_ORDER_POSITION,
        work_order_id,
        run_id,
        trace_id=trace_id,
        work_order_position=events_pb2.WorkOrderPosition(position=position, ahead=position - 1),
    )


def ended_event(event_type: str, work_order: common_pb2.WorkOrder, reason: str) -> events_pb2.RunEvent:
    """`work_order:canceled` or `work_order:timed_out`, with the final status and why."""
    return make_event(
        event_type,
        work_order.id,
        work_order.run_id,
        trace_id=work_order.trace_id,
        work_order_ended=events_pb2.WorkOrderEnded(status=work_order.status, reason=reason),
    )


def worker_lost_event(work_order: common_pb2.WorkOrder) -> events_pb2.RunEvent:
    """`run:failed` for a work order whose workers all vanished.

    The orchestrator normally emits the run's end, but here no worker is left to do it;
    without this event a client following the work order would wait forever.
    """
    return make_event(
        event_names.RUN_FAILED,
        work_order.id,
        work_order.run_id,
        trace_id=work_order.trace_id,
        run_ended=events_pb2.RunEnded(
            result=common_pb2.RUN_RESULT_FAILED_SYSTEM,
            error=work_order.error,
            build_error=common_pb2.BuildError(
                type=common_pb2.BUILD_ERROR_TYPE_SYSTEM_ERROR,
                message=work_order.error,
                failed_at=now_timestamp(),
            ),
        ),
    )


class OutboxForwarder:
    """Background task that delivers the outbox to persistence, oldest event first.

    While persistence is unavailable it retries with exponential backoff (from
    `initial_backoff` to `max_backoff` seconds); an event that persistence refuses as
    invalid is moved to the store's dead-letter table rather than blocking every later one.
    """

    def __init__(
        self,
        store: QueueStore,
        address: str,
        batch_size: int = 100,
        initial_backoff: float = 0.1,
        max_backoff: float = 2.0,
        call_timeout: float = 5.0,
        credential: str | None = None,
    ):
        self._store = store
        #: The queue's service credential: persistence takes events from services, not clients.
        self._credential = credential
        self.address = address
        self._batch_size = batch_size
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._call_timeout = call_timeout
        self._wakeup = asyncio.Event()
        self._retry_now = asyncio.Event()
        self._delivered = asyncio.Condition()
        # Highest outbox id that left the outbox; delivery is in id order, so every
        # lower id has left too.
        self._delivered_id = 0
        self._available = True
        self._channel: grpc.aio.Channel | None = None
        self._stub: persistence_pb2_grpc.PersistenceServiceAsyncStub | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Opens the channel to persistence and starts delivering."""
        # Through the common factory: it adds the token and TLS of the suite.
        self._channel = aio_channel(
            self.address, "queue", options=FORWARDER_CHANNEL_OPTIONS, credential=self._credential
        )
        self._stub = persistence_pb2_grpc.PersistenceServiceStub(self._channel)
        self._task = asyncio.create_task(self._run(), name="queue-outbox-forwarder")

    async def stop(self) -> None:
        """Stops delivering; undelivered events stay in the outbox for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def wake(self) -> None:
        """Tells the forwarder new events were committed."""
        self._wakeup.set()

    async def flush(self, work_order_id: str, timeout: float) -> bool:
        """Waits up to `timeout` seconds until every event recorded so far for
        `work_order_id` is delivered; True when they are. The store tracks undelivered
        work orders in memory, so when they are delivered (the common case once a worker
        asks) this returns at once, with no database call."""
        if self._store.shared:
            return await self._flush_shared(work_order_id, timeout)
        target = self._store.undelivered_last_id(work_order_id)
        if target is None or self._delivered_id >= target:
            return True
        # Someone is waiting: skip the rest of a backoff pause and try now.
        self._wakeup.set()
        self._retry_now.set()
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                async with self._delivered:
                    await self._delivered.wait_for(lambda: self._delivered_id >= target)
        except TimeoutError:
            return False
        return True

    async def _flush_shared(self, work_order_id: str, timeout: float) -> bool:
        """`flush` on PostgreSQL: the outbox is shared and another replica may be the one
        delivering it, so the database says when the work order's events are gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        # Someone is waiting: if this replica delivers, it skips a backoff pause.
        self._wakeup.set()
        self._retry_now.set()
        while await self._store.undelivered_now(work_order_id) is not None:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(SHARED_FLUSH_POLL_SECONDS)
        return True

    async def _run(self) -> None:
        backoff = self._initial_backoff
        while True:
            # Cleared before reading, so a commit that lands after the read still wakes us.
            self._wakeup.clear()
            try:
                batch = await self._store.outbox_batch(self._batch_size)
            except Exception:
                log.exception("reading the outbox failed")
                await asyncio.sleep(self._max_backoff)
                continue
            if not batch:
                if self._store.shared:
                    # Another replica may deliver now and die later: look again now and
                    # then, to take over its lock (`QueueStore.outbox_batch`).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(SHARED_IDLE_POLL_SECONDS):
                            await self._wakeup.wait()
                else:
                    await self._wakeup.wait()
                continue
            try:
                await self._deliver(batch)
            except grpc.RpcError as err:
                self._note_unavailable(err)
                self._retry_now.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self._retry_now.wait()
                backoff = min(backoff * 2, self._max_backoff)
                continue
            except Exception:
                log.exception("delivering events to persistence failed")
                await asyncio.sleep(self._max_backoff)
                continue
            backoff = self._initial_backoff
            if not self._available:
                log.info("persistence at %s reachable again; delivering queued events", self.address)
                self._available = True

    async def _deliver(self, batch: list[tuple[int, events_pb2.RunEvent]]) -> None:
        try:
            await self._append([event for _, event in batch])
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            # One bad event must not hold back the rest: find it by sending one at a time.
            for outbox_id, event in batch:
                try:
                    await self._append([event])
                except grpc.aio.AioRpcError as single_err:
                    if single_err.code() != grpc.StatusCode.INVALID_ARGUMENT:
                        raise
                    log.error(
                        "persistence refused event %s of %s: %s; kept in outbox_dead",
                        event.type,
                        event.work_order_id,
                        single_err.details(),
                    )
                    await self._store.outbox_dead_letter(outbox_id, single_err.details() or "")
                else:
                    await self._store.outbox_delete([outbox_id])
                await self._mark_delivered(outbox_id)
            return
        await self._store.outbox_delete([outbox_id for outbox_id, _ in batch])
        await self._mark_delivered(batch[-1][0])

    async def _append(self, events: list[events_pb2.RunEvent]) -> None:
        assert self._stub is not None
        # wait_for_ready: while persistence is down the call waits for the channel to
        # reconnect (up to the timeout) instead of failing at once, so events go out as
        # soon as persistence is back rather than at the next backoff step.
        await self._stub.AppendEvents(
            persistence_pb2.AppendEventsRequest(events=events), timeout=self._call_timeout, wait_for_ready=True
        )

    async def _mark_delivered(self, outbox_id: int) -> None:
        async with self._delivered:
            self._delivered_id = max(self._delivered_id, outbox_id)
            self._delivered.notify_all()

    def _note_unavailable(self, err: grpc.RpcError) -> None:
        # One warning per outage, not one per retry.
        if self._available:
            code = err.code() if isinstance(err, grpc.aio.AioRpcError) else None
            log.warning("cannot deliver events to persistence at %s (%s); retrying with backoff", self.address, code)
            self._available = False
