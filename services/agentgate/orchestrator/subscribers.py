"""Event subscribers inside the orchestrator (docs/observability.md), each behind its own bounded buffer.

The run loop emits; every subscriber (persistence, metrics, the audit log) gets each event
through a `SubscriberChannel`: a bounded in-memory buffer drained by the channel's own task.
`offer()` never waits, so a slow subscriber cannot slow a run, and a failing one cannot
stop it:

- a full buffer drops the event for that subscriber only; the drop is counted (per
  subscriber and per run, in the run's `DeliveryTally`);
- a subscriber whose `handle()` raises loses that batch (counted as failed, logged at most
  every few seconds) and keeps getting the next ones.

What a run lost is reported when it ends (see `RunEventEmitter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agentgate.v1 import events_pb2

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 10_000
DEFAULT_MAX_BATCH = 200
#: A failing subscriber logs at most once per this many seconds (it may fail on every event).
FAILURE_LOG_INTERVAL_SECONDS = 10.0


class DeliveryTally:
    """What one run's events did not reach, per subscriber: dropped (buffer full) and
    failed (the subscriber raised)."""

    def __init__(self) -> None:
        self.dropped: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    @property
    def total(self) -> int:
        """Events lost, over all subscribers."""
        return sum(self.dropped.values()) + sum(self.failed.values())

    def summary(self) -> str:
        """One line, e.g. `audit: 3 dropped (buffer full); metrics: 1 failed`; '' when nothing was lost."""
        parts = []
        for name in sorted(set(self.dropped) | set(self.failed)):
            bits = []
            if self.dropped[name]:
                bits.append(f"{self.dropped[name]} dropped (buffer full)")
            if self.failed[name]:
                bits.append(f"{self.failed[name]} failed")
            parts.append(f"{name}: {', '.join(bits)}")
        return "; ".join(parts)


@dataclass(slots=True)
class EmittedEvent:
    """One emitted event as subscribers see it: the typed envelope plus what it cannot carry."""

    event: events_pb2.RunEvent
    #: Emission order within the run, from 1 (the envelope's seq is assigned later, by persistence).
    index: int = 0
    #: Cost of the agent execution an agent:complete / agent:failed event reports.
    cost_usd: float = 0.0
    tally: DeliveryTally | None = field(default=None, repr=False)


class EventSubscriber(Protocol):
    """Something that consumes events in batches, in emission order."""

    #: Short name used in counters, logs and reports ("persistence", "metrics", "audit").
    name: str

    async def handle(self, batch: Sequence[EmittedEvent]) -> None:
        """Consumes a batch; raising counts the whole batch as failed."""
        ...

    async def aclose(self) -> None:
        """Releases what the subscriber holds (called once, after its last batch)."""
        ...


class SubscriberChannel:
    """One subscriber behind a bounded buffer and its own drain task.

    `inherit_context` decides which contextvars (and so which OpenTelemetry span) the drain
    task runs in: a run's own channel inherits the run's span, so its calls join the run's
    trace; a channel shared by all runs starts from an empty context.
    """

    def __init__(
        self,
        subscriber: EventSubscriber,
        capacity: int = DEFAULT_CAPACITY,
        max_batch: int = DEFAULT_MAX_BATCH,
        inherit_context: bool = False,
    ):
        if capacity < 1 or max_batch < 1:
            raise ValueError("capacity and max_batch must be at least 1")
        self.subscriber = subscriber
        self.name = subscriber.name
        self.capacity = capacity
        self.max_batch = max_batch
        self._inherit_context = inherit_context
        self._items: deque[EmittedEvent] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._last_failure_log = float("-inf")
        #: Events handled, dropped (buffer full or closed) and failed, since the start.
        self.delivered = 0
        self.dropped = 0
        self.failed = 0

    @property
    def pending(self) -> int:
        """Events buffered, not yet handed to the subscriber."""
        return len(self._items)

    def offer(self, item: EmittedEvent, force: bool = False) -> bool:
        """Buffers `item` without waiting; False (and counted as dropped) when the buffer is
        full or the channel closed. `force` admits it beyond the capacity: for the few
        events a reader must not miss (the end of a run and the report of losses)."""
        if self._closing or (len(self._items) >= self.capacity and not force):
            self.dropped += 1
            return False
        self._items.append(item)
        self._idle.clear()
        self._wakeup.set()
        if self._task is None:
            context = contextvars.copy_context() if self._inherit_context else contextvars.Context()
            self._task = asyncio.get_running_loop().create_task(
                self._drain(), name=f"subscriber-{self.name}", context=context
            )
        return True

    async def _drain(self) -> None:
        while True:
            if not self._items:
                self._idle.set()
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [self._items.popleft() for _ in range(min(self.max_batch, len(self._items)))]
            try:
                await self.subscriber.handle(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failing subscriber must never stop the others
                self._count_failure(batch, exc)
            else:
                self.delivered += len(batch)

    def _count_failure(self, batch: Sequence[EmittedEvent], exc: Exception) -> None:
        self.failed += len(batch)
        for item in batch:
            if item.tally is not None:
                item.tally.failed[self.name] += 1
        now = time.monotonic()
        if now - self._last_failure_log >= FAILURE_LOG_INTERVAL_SECONDS:
            self._last_failure_log = now
            log.warning(
                "event subscriber %s failed on %d event(s) (%d failed so far): %s: %s",
                self.name, len(batch), self.failed, type(exc).__name__, exc,
            )

    async def flush(self, timeout: float) -> bool:
        """Waits until everything offered so far was handled; False after `timeout`."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Handles what is buffered (up to `timeout`), then stops and closes the subscriber.
        Whatever is still buffered after the timeout is counted as dropped."""
        if self._closed:
            return
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        lost = len(self._items)
        if lost:
            self.dropped += lost
            for item in self._items:
                if item.tally is not None:
                    item.tally.dropped[self.name] += 1
            self._items.clear()
            log.warning("event subscriber %s closed with %d event(s) not handled", self.name, lost)
        self._closed = True
        try:
            await self.subscriber.aclose()
        except Exception:  # noqa: BLE001
            log.warning("event subscriber %s failed to close", self.name, exc_info=True)

    def stats(self) -> dict[str, int]:
        """Counters for status pages and tests."""
        return {"delivered": self.delivered, "dropped": self.dropped, "failed": self.failed, "pending": self.pending}
