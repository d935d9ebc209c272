"""StreamEvents logic: replay from a seq, then follow live until the work order ends.

The subscription is taken BEFORE the replay is read: an event committed in between then
shows up in both, and de-duplication by seq drops the second copy. Taking it after would
lose such an event. A client that reconnects with the last seq it saw gets exactly the rest.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from agentgate.common.events import TERMINAL_EVENT_TYPES
from agentgate.persistence.event_log import EventLog, Subscription
from agentgate.persistence.store import PersistenceStore
from agentgate.v1 import events_pb2

REPLAY_PAGE = 500


async def stream_events(
    store: PersistenceStore,
    event_log: EventLog,
    work_order_id: str,
    after_seq: int,
    follow: bool,
    run_id: str = "",
) -> AsyncGenerator[events_pb2.RunEvent, None]:
    """Events of a work order with seq > after_seq, in seq order (only those of `run_id`
    when given). With `follow`, continues with live events and ends after the first
    terminal event; a terminal event already in the log (even before after_seq) ends it
    too. Raises SubscriberTooSlow / EventLogClosed from the live phase."""
    subscription = event_log.subscribe(work_order_id) if follow else None
    try:
        stream = _Stream(store, work_order_id, run_id, after_seq, follow)
        async for event in stream.replay(subscription):
            yield event
        if subscription is None or stream.ended:
            return
        if await store.has_terminal_event(work_order_id, stream.last_seen, run_id):
            return  # the run ended at or before after_seq: nothing more will come
        async for event in stream.live(subscription):
            yield event
    finally:
        if subscription is not None:
            event_log.unsubscribe(subscription)


class _Stream:
    """Position of one stream: the last seq seen (sent or filtered out) and whether it ended."""

    def __init__(self, store: PersistenceStore, work_order_id: str, run_id: str, after_seq: int, follow: bool):
        self.store = store
        self.work_order_id = work_order_id
        self.run_id = run_id
        self.last_seen = after_seq
        self.follow = follow
        self.ended = False

    def _accept(self, event: events_pb2.RunEvent) -> bool:
        """Advances past `event`; True when it should be sent."""
        self.last_seen = event.seq
        if self.run_id and event.run_id != self.run_id:
            return False
        if self.follow and event.type in TERMINAL_EVENT_TYPES:
            self.ended = True
        return True

    async def replay(self, subscription: Subscription | None) -> AsyncIterator[events_pb2.RunEvent]:
        """Stored events after last_seen, page by page, until the log is read to its end."""
        while True:
            page = await self.store.read_events(self.work_order_id, self.last_seen, REPLAY_PAGE)
            for event in page:
                if self._accept(event):
                    yield event
                    if self.ended:
                        return
            if subscription is not None:
                # The replay covers these; dropping them keeps the live buffer from filling up.
                subscription.discard_through(self.last_seen)
            if len(page) < REPLAY_PAGE:
                return

    async def live(self, subscription: Subscription) -> AsyncIterator[events_pb2.RunEvent]:
        """Live events, de-duplicated against the replay, until a terminal event."""
        while not self.ended:
            event = await subscription.next()
            if event.seq <= self.last_seen:
                continue  # already sent by the replay
            if event.seq > self.last_seen + 1:
                # Should not happen (publishing is ordered), but a follower must never skip
                # a seq: fetch the missing ones from the log first.
                missing = await self.store.read_events(
                    self.work_order_id, self.last_seen, event.seq - self.last_seen - 1, event.seq - 1
                )
                for earlier in missing:
                    if self._accept(earlier):
                        yield earlier
                        if self.ended:
                            return
            if self._accept(event):
                yield event
