"""The append-only event log: seq assignment, the events.jsonl files, and live fan-out.

One lock orders every append: the SQLite transaction that assigns seqs, the hand-off to
live subscribers and the events.jsonl append all happen in seq order, so followers and files
never see a later event before an earlier one. The queue and the orchestrator append to the
same work order at once; the lock is what keeps their seqs unique and gap-free.

On PostgreSQL several replicas append to one database: the counter row of the work order
(`PersistenceStore.append_events`) orders their seqs, and each replica's followers hear
another replica's appends through LISTEN (`hear`), read them from the database and get
them like local ones; `streaming` de-duplicates and fills any gap by seq.

Events are redacted (secrets become [REDACTED]) before any of that. When a run's
events.jsonl cannot be written, the log itself records one `persistence:warning` for the
run (stored and streamed, not written to the file that just failed) until a write succeeds.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence

from agentgate.common.errors import DiskFull
from agentgate.common.events import PERSISTENCE_WARNING, make_event
from agentgate.common.redaction import Redactor
from agentgate.common.timeutil import now_timestamp
from agentgate.persistence.event_redaction import EventRedactor
from agentgate.persistence.run_files import EVENTS_FILE, AppendOutcome, RunFiles
from agentgate.persistence.store import EventNotice, PersistenceStore
from agentgate.persistence.tasks import run_to_completion
from agentgate.v1 import events_pb2

log = logging.getLogger(__name__)

DEFAULT_SUBSCRIBER_QUEUE = 10_000


class SubscriberTooSlow(Exception):
    """The subscriber's buffer overflowed; it must reconnect with its last seq."""


class EventLogClosed(Exception):
    """The service is shutting down; the subscriber should reconnect later."""


class Subscription:
    """Live events of one work order for one follower, buffered up to `limit`.

    A deque (not an asyncio.Queue) so that events the replay has already sent can be
    dropped from the front, which keeps a long replay from overflowing the buffer.
    """

    def __init__(self, work_order_id: str, limit: int):
        self.work_order_id = work_order_id
        self.limit = limit
        self.overflowed = False
        self.closed = False
        self._items: deque[events_pb2.RunEvent] = deque()
        self._ready = asyncio.Event()

    def offer(self, event: events_pb2.RunEvent) -> bool:
        """Buffers an event without waiting; False when the subscriber is full (now
        marked overflowed) or closed. Never blocks the appender."""
        if self.overflowed or self.closed:
            return False
        if len(self._items) >= self.limit:
            self.overflowed = True
            self._items.clear()  # its memory is of no use any more
            self._ready.set()
            return False
        self._items.append(event)
        self._ready.set()
        return True

    def discard_through(self, seq: int) -> None:
        """Drops buffered events with seq <= `seq` (already sent by the replay)."""
        while self._items and self._items[0].seq <= seq:
            self._items.popleft()

    def close(self) -> None:
        """Ends the subscription: a waiting `next()` raises EventLogClosed."""
        self.closed = True
        self._ready.set()

    async def next(self) -> events_pb2.RunEvent:
        """The next live event. Raises SubscriberTooSlow after an overflow and
        EventLogClosed after `close()`, before any buffered event, so both end promptly."""
        while True:
            if self.overflowed:
                raise SubscriberTooSlow(self.work_order_id)
            if self.closed:
                raise EventLogClosed(self.work_order_id)
            if self._items:
                return self._items.popleft()
            self._ready.clear()
            await self._ready.wait()

    def __len__(self) -> int:
        return len(self._items)


class EventLog:
    """Appends events (assigning seqs) and delivers them to live subscribers."""

    def __init__(
        self,
        store: PersistenceStore,
        files: RunFiles,
        subscriber_queue_size: int = DEFAULT_SUBSCRIBER_QUEUE,
        redactor: Redactor | None = None,
    ):
        self.store = store
        self.files = files
        self.subscriber_queue_size = subscriber_queue_size
        self.redactor = EventRedactor(redactor or Redactor())
        #: Subscribers ended because they fell too far behind.
        self.dropped_subscribers = 0
        #: Runs whose events.jsonl failed and that were already warned about.
        self._warned_runs: set[str] = set()
        self._lock = asyncio.Lock()
        self._subscribers: dict[str, set[Subscription]] = {}
        #: Highest seq published per followed work order (catch-up after a lost LISTEN).
        self._published: dict[str, int] = {}
        #: Reads of other replicas' appends in flight.
        self._fetches: set[asyncio.Task[None]] = set()

    async def append(self, events: Sequence[events_pb2.RunEvent]) -> list[events_pb2.RunEvent]:
        """Stores events with their new seqs, wakes followers and appends events.jsonl.
        An event already stored under its `event_id` (a retry) is neither stored nor
        sent again.

        Returns every event's stored copy (seq set), in order. Runs shielded: a caller that goes away after
        the commit must not stop followers from hearing about committed events.
        """
        return await run_to_completion(self._append(list(events)))

    async def _append(self, events: list[events_pb2.RunEvent]) -> list[events_pb2.RunEvent]:
        for event in events:
            if not event.HasField("timestamp"):
                event.timestamp.CopyFrom(now_timestamp())
        async with self._lock:
            for event in events:
                self.redactor.redact(event)
            every, stored = await self.store.append_events_once(events)
            self._publish(stored)
            # Files after the fan-out, so a slow disk delays no follower; still under the
            # lock, so events.jsonl stays in seq order.
            outcome = await self.files.append_events(stored)
            await self._warn_failed_files(stored, outcome)
        return every

    async def _warn_failed_files(self, stored: Sequence[events_pb2.RunEvent], outcome: AppendOutcome) -> None:
        """Records one persistence:warning per run whose events.jsonl just started failing."""
        for written in outcome.outcomes:
            if written:
                self._warned_runs.discard(written.run_id)
        warnings: list[events_pb2.RunEvent] = []
        for failed in outcome.failed:
            if failed.run_id in self._warned_runs:
                continue
            if len(self._warned_runs) >= 10_000:
                self._warned_runs.clear()  # a bound on memory; at worst a warning repeats
            self._warned_runs.add(failed.run_id)
            sample = next(event for event in stored if event.run_id == failed.run_id)
            warnings.append(
                make_event(
                    PERSISTENCE_WARNING,
                    sample.work_order_id,
                    failed.run_id,
                    iteration=sample.iteration,
                    trace_id=sample.trace_id,
                    persistence_warning=events_pb2.PersistenceWarning(
                        message=f"{EVENTS_FILE} not saved ({failed.error}); the events are kept in the index"
                    ),
                )
            )
        if warnings:
            for warning in warnings:
                self.redactor.redact(warning)
            try:
                self._publish(await self.store.append_events(warnings))
            except DiskFull:
                # The events themselves are committed: their call must not fail for a
                # warning about them that found no room (the file's error is logged).
                log.error("no room to record the warning of %d run(s) about events.jsonl", len(warnings))

    def hear(self, payload: str) -> None:
        """An append notice from PostgreSQL (`EventNotice`): events another replica stored
        for a work order someone here follows are read and published."""
        notice = EventNotice.parse(payload)
        if notice is None or notice.replica_id == self.store.replica_id:
            return
        if notice.work_order_id in self._subscribers:
            self._fetch(notice.work_order_id, notice.first - 1, notice.last)

    def catch_up(self) -> None:
        """After the LISTEN connection was (re)opened: notices may have been missed, so
        every followed work order is read from its last published seq."""
        for work_order_id in list(self._subscribers):
            self._fetch(work_order_id, self._published.get(work_order_id, 0), None)

    def _fetch(self, work_order_id: str, after_seq: int, up_to_seq: int | None) -> None:
        task = asyncio.create_task(self._fetch_and_publish(work_order_id, after_seq, up_to_seq))
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)

    async def _fetch_and_publish(self, work_order_id: str, after_seq: int, up_to_seq: int | None) -> None:
        try:
            if up_to_seq is None:
                events = await self.store.read_events(work_order_id, after_seq, self.subscriber_queue_size)
            else:
                events = await self.store.read_events(work_order_id, after_seq, up_to_seq - after_seq, up_to_seq)
        except Exception:
            # A follower that misses them still fills the gap from the log at the next event.
            log.exception("reading events of %s appended by another replica failed", work_order_id)
            return
        self._publish(events)

    def _publish(self, events: Sequence[events_pb2.RunEvent]) -> None:
        for event in events:
            subscribers = self._subscribers.get(event.work_order_id)
            if not subscribers:
                continue
            if event.seq > self._published.get(event.work_order_id, 0):
                self._published[event.work_order_id] = event.seq
            for subscription in list(subscribers):
                if not subscription.offer(event):
                    self._drop(subscription)

    def _drop(self, subscription: Subscription) -> None:
        if subscription.overflowed:
            self.dropped_subscribers += 1
            log.warning(
                "dropped a slow subscriber of %s (more than %d events behind)",
                subscription.work_order_id,
                subscription.limit,
            )
        self.unsubscribe(subscription)

    def subscribe(self, work_order_id: str) -> Subscription:
        """Starts buffering the work order's new events for one follower."""
        subscription = Subscription(work_order_id, self.subscriber_queue_size)
        self._subscribers.setdefault(work_order_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stops delivering to `subscription` (idempotent)."""
        subscribers = self._subscribers.get(subscription.work_order_id)
        if subscribers is None:
            return
        subscribers.discard(subscription)
        if not subscribers:
            del self._subscribers[subscription.work_order_id]
            self._published.pop(subscription.work_order_id, None)

    def subscriber_count(self, work_order_id: str | None = None) -> int:
        """Live subscribers, of one work order or of all."""
        if work_order_id is not None:
            return len(self._subscribers.get(work_order_id, ()))
        return sum(len(subs) for subs in self._subscribers.values())

    def close(self) -> None:
        """Ends every subscription (service shutdown) and the reads in flight."""
        for task in list(self._fetches):
            task.cancel()
        for subscribers in list(self._subscribers.values()):
            for subscription in list(subscribers):
                subscription.close()
        self._subscribers.clear()
