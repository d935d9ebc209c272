"""Positions for `WatchPosition` streams: one shared view of the waiting order.

Every change to the waiting work orders (submit, lease, cancel, requeue, timeout) bumps a
version and wakes every watcher. The first watcher to look at a new version reads the
whole waiting order once (one query); the others look themselves up in that snapshot. So
W watchers cost one query per change, not W, and nothing is read while nobody watches.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from agentgate.queue.store import Position, QueueStore, WaitStats


@dataclass(frozen=True)
class Snapshot:
    """The waiting order at one version: id -> (position, enqueued_at), and wait stats."""

    version: int
    places: dict[str, tuple[int, int]]
    stats: WaitStats

    def position_of(self, work_order_id: str) -> Position | None:
        """The position of a waiting work order, None when it does not wait."""
        found = self.places.get(work_order_id)
        if found is None:
            return None
        place, enqueued_at = found
        return Position(place, place - 1, "waiting", enqueued_at, self.stats.estimate(place))


class PositionBoard:
    """Shares snapshots of the waiting order between watchers and wakes them on change."""

    def __init__(self, store: QueueStore):
        self._store = store
        self._version = 0
        self._changed = asyncio.Event()
        self._snapshot: Snapshot | None = None
        self._reading = asyncio.Lock()
        #: Set when the service stops: watchers end.
        self.closed = False

    def notify(self) -> None:
        """The waiting order changed (hooked to `QueueStore.on_order_changed`)."""
        self._version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        """Ends every watch."""
        self.closed = True
        self.notify()

    async def snapshot(self) -> Snapshot:
        """The waiting order as of the current version (read at most once per version)."""
        async with self._reading:
            version = self._version
            if self._snapshot is None or self._snapshot.version != version:
                order = await self._store.waiting_order()
                stats = await self._store.wait_stats()
                places = {wid: (place, enqueued) for place, (wid, enqueued) in enumerate(order, start=1)}
                # Tagged with the version seen before the read: a change during the read
                # makes the next caller read again rather than trust a stale snapshot.
                self._snapshot = Snapshot(version, places, stats)
            return self._snapshot

    async def position(self, work_order_id: str) -> Position:
        """Where a work order stands; NotFound when unknown."""
        snapshot = await self.snapshot()
        found = snapshot.position_of(work_order_id)
        if found is not None:
            return found
        return await self._store.position(work_order_id)

    async def watch(self, work_order_id: str) -> AsyncIterator[Position]:
        """Yields the position now, then each time position, ahead or state changes,
        and ends after the work order starts running or ends (or the board closes).
        Changes of the estimate alone are not sent: it moves with every lease."""
        last: tuple[int, int, str] | None = None
        while not self.closed:
            changed = self._changed
            where = await self.position(work_order_id)
            key = (where.position, where.ahead, where.state)
            if key != last:
                last = key
                yield where
            if where.state != "waiting":
                return
            await changed.wait()
