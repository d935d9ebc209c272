"""Event emission for one run (SPEC §11).

`emit()` builds the typed `RunEvent` envelope and offers it to every subscriber without
waiting: the run's own persistence subscriber (events appended to the persistence service
in order, in batches) and the subscribers shared by all runs of this worker (metrics, the
audit log). Each sits behind its own bounded buffer (`SubscriberChannel`), so a slow or
failing subscriber never blocks the run.

Losses are counted per run. Just before the run's terminal event, when anything was lost so
far, a `persistence:warning` event says what (`events not delivered: audit: 3 dropped
(buffer full)`) and a warning is logged; losses noticed later (while flushing at the end)
are logged. The terminal event and that report are admitted even to a full buffer, so a
follower always sees the end of the run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc

from agentgate.common.events import PERSISTENCE_WARNING, TERMINAL_EVENT_TYPES, make_event
from agentgate.orchestrator.subscribers import (
    DeliveryTally,
    EmittedEvent,
    EventSubscriber,
    SubscriberChannel,
)
from agentgate.v1 import events_pb2, persistence_pb2, persistence_pb2_grpc

log = logging.getLogger(__name__)

MAX_BUFFERED_EVENTS = 10_000
MAX_BATCH = 200
#: A batch is sent as several AppendEvents calls when its events would not fit one message
#: comfortably (200 agent:output lines of 64 KiB would pass the 16 MiB message limit).
MAX_APPEND_BYTES = 4 * 1024 * 1024
APPEND_TIMEOUT_SECONDS = 10.0
APPEND_ATTEMPTS = 5


def append_chunks(
    events: Sequence[events_pb2.RunEvent], limit: int = MAX_APPEND_BYTES
) -> list[list[events_pb2.RunEvent]]:
    """Splits events, in order, into runs whose serialized size stays under `limit` (an
    event larger than `limit` goes alone)."""
    chunks: list[list[events_pb2.RunEvent]] = []
    size = 0
    for event in events:
        n = event.ByteSize()
        if not chunks or (chunks[-1] and size + n > limit):
            chunks.append([])
            size = 0
        chunks[-1].append(event)
        size += n
    return chunks


class AppendFailed(RuntimeError):
    """A batch of events could not be appended to the persistence service."""


class PersistenceSubscriber:
    """Appends a run's events to the persistence service, which assigns their seq."""

    name = "persistence"

    def __init__(self, persistence: persistence_pb2_grpc.PersistenceServiceStub, run_id: str):
        self._persistence = persistence
        self.run_id = run_id

    async def handle(self, batch: Sequence[EmittedEvent]) -> None:
        """Appends the batch, in order, in calls of at most MAX_APPEND_BYTES."""
        for chunk in append_chunks([item.event for item in batch]):
            await self._append(chunk)

    async def _append(self, events: list[events_pb2.RunEvent]) -> None:
        """One AppendEvents call; retried while persistence is UNAVAILABLE (restarting),
        since an event lost here is a gap a user would notice in `watch`."""
        request = persistence_pb2.AppendEventsRequest(events=events)
        batch = events
        for attempt in range(APPEND_ATTEMPTS):
            try:
                await self._persistence.AppendEvents(request, timeout=APPEND_TIMEOUT_SECONDS)
                return
            except grpc.aio.AioRpcError as exc:
                # Only UNAVAILABLE: after a deadline the batch may have been stored, and
                # sending it again would duplicate events.
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == APPEND_ATTEMPTS - 1:
                    raise AppendFailed(
                        f"could not persist {len(batch)} events of {self.run_id}: {exc.code().name}: {exc.details()}"
                    ) from exc
                await asyncio.sleep(0.2 * 2**attempt)

    async def aclose(self) -> None:
        """Nothing to release: the channel belongs to the worker."""


class RunEventEmitter:
    """Emits the events of one work order's run to its subscribers."""

    def __init__(
        self,
        persistence: persistence_pb2_grpc.PersistenceServiceStub | None,
        work_order_id: str,
        run_id: str,
        trace_id: str = "",
        subscribers: Sequence[SubscriberChannel] = (),
        own_subscriber: EventSubscriber | None = None,
    ):
        """`subscribers` are channels shared by all runs (never closed here);
        `own_subscriber` replaces the persistence subscriber (tests)."""
        self.work_order_id = work_order_id
        self.run_id = run_id
        self.trace_id = trace_id
        if own_subscriber is None:
            assert persistence is not None, "a persistence stub or an own_subscriber is needed"
            own_subscriber = PersistenceSubscriber(persistence, run_id)
        # The run's own channel inherits the run's span: its AppendEvents calls join the trace.
        self._own = SubscriberChannel(own_subscriber, MAX_BUFFERED_EVENTS, MAX_BATCH, inherit_context=True)
        self._shared = list(subscribers)
        self.tally = DeliveryTally()
        self._count = 0
        self._reported = 0

    @property
    def dropped(self) -> int:
        """Events of this run some subscriber dropped (buffer full)."""
        return sum(self.tally.dropped.values())

    @property
    def failed_appends(self) -> int:
        """Events of this run the persistence service did not take."""
        return self.tally.failed[self._own.name]

    @property
    def emitted(self) -> int:
        """Events handed to the persistence subscriber successfully."""
        return self._own.delivered

    def emit(self, event_type: str, iteration: int = 0, *, cost_usd: float = 0.0, **payload: object) -> None:
        """Offers one event to every subscriber; never blocks. `payload` is one field of the
        envelope's oneof (e.g. `agent_output=AgentOutput(...)`); `cost_usd` is the cost of
        the agent execution an agent:complete / agent:failed event reports (for metrics)."""
        event = make_event(
            event_type, self.work_order_id, self.run_id, iteration=iteration, trace_id=self.trace_id, **payload
        )
        terminal = event_type in TERMINAL_EVENT_TYPES
        if terminal:
            self._report_losses(iteration)
        self._offer(event, cost_usd, force=terminal)

    def _offer(self, event: events_pb2.RunEvent, cost_usd: float = 0.0, force: bool = False) -> None:
        self._count += 1
        item = EmittedEvent(event=event, index=self._count, cost_usd=cost_usd, tally=self.tally)
        for channel in (self._own, *self._shared):
            if not channel.offer(item, force=force):
                self.tally.dropped[channel.name] += 1

    def _report_losses(self, iteration: int) -> None:
        """Before the terminal event: one persistence:warning naming what was lost so far."""
        lost = self.tally.total
        if lost <= self._reported:
            return
        self._reported = lost
        message = f"events not delivered: {self.tally.summary()}"
        log.warning("run %s: %s", self.run_id, message)
        event = make_event(
            PERSISTENCE_WARNING,
            self.work_order_id,
            self.run_id,
            iteration=iteration,
            trace_id=self.trace_id,
            persistence_warning=events_pb2.PersistenceWarning(message=message),
        )
        self._offer(event, force=True)

    async def close(self, timeout: float = 30.0) -> None:
        """Flushes the run's own subscriber (waiting up to `timeout`) and stops it. Shared
        subscribers keep running; they belong to the worker."""
        await self._own.close(timeout)
        if self.tally.total > self._reported:
            log.warning("run %s: events not delivered: %s", self.run_id, self.tally.summary())
