"""The waiting work orders in lease order, in memory: counts and positions without scans.

SQLite stays the source of truth; `PendingIndex` is a cache of the PENDING rows' lease
order (`priority DESC, seq ASC`) that `QueueStore` rebuilds from the database when it opens
(and after any rolled-back transaction that touched it) and updates in the same
transaction function as every state change. So the waiting count is `len()`, a position is
one binary search, and a Submit at 100,000 waiting costs what it costs at 100.

It is only touched on the database thread (inside the store's transaction and read
functions), so it is always consistent with what that thread has committed. On PostgreSQL,
where other replicas change the rows too, `SharedPendingIndex` asks the database instead.
"""

from __future__ import annotations

import bisect
import sqlite3
from typing import Any

from agentgate.queue import sql

#: Sort key of a waiting work order: lower = leased sooner.
Key = tuple[int, int]


def lease_key(priority: int, seq: int) -> Key:
    """Higher priority first, then submission order."""
    return (-priority, seq)


class PendingIndex:
    """Ordered set of waiting work orders with O(log n) rank queries.

    A sorted Python list with `bisect`: inserts and removals move memory (a memmove of a
    few hundred KiB at 100,000 entries, microseconds), lookups are binary searches.
    """

    def __init__(self) -> None:
        self._keys: list[Key] = []
        self._by_key: dict[Key, str] = {}
        #: id -> (key, enqueued_at_us)
        self._by_id: dict[str, tuple[Key, int]] = {}

    @classmethod
    def load(cls, conn: sqlite3.Connection, pending_status: int) -> PendingIndex:
        """The index of every row with `status = pending_status`, read in one query."""
        index = cls()
        rows = conn.execute(
            "SELECT id, priority, seq, enqueued_at FROM work_orders WHERE status = ? ORDER BY priority DESC, seq ASC",
            (pending_status,),
        ).fetchall()
        for work_order_id, priority, seq, enqueued_at in rows:
            key = lease_key(priority, seq)
            index._keys.append(key)
            index._by_key[key] = work_order_id
            index._by_id[work_order_id] = (key, enqueued_at)
        return index

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, work_order_id: object) -> bool:
        return work_order_id in self._by_id

    def add(self, work_order_id: str, priority: int, seq: int, enqueued_at_us: int) -> int:
        """Adds a waiting work order (replacing its old entry); returns its position (1 = next)."""
        self.remove(work_order_id)
        key = lease_key(priority, seq)
        place = bisect.bisect_left(self._keys, key)
        self._keys.insert(place, key)
        self._by_key[key] = work_order_id
        self._by_id[work_order_id] = (key, enqueued_at_us)
        return place + 1

    def position_for(self, priority: int, seq: int) -> int:
        """The position a work order with this priority and seq would take (not added)."""
        return bisect.bisect_left(self._keys, lease_key(priority, seq)) + 1

    def remove(self, work_order_id: str) -> bool:
        """Drops a work order that stopped waiting; False when it was not in the index."""
        found = self._by_id.pop(work_order_id, None)
        if found is None:
            return False
        key = found[0]
        place = bisect.bisect_left(self._keys, key)
        del self._keys[place]
        del self._by_key[key]
        return True

    def position(self, work_order_id: str) -> int | None:
        """1-based place in lease order, None when it does not wait."""
        found = self._by_id.get(work_order_id)
        if found is None:
            return None
        return bisect.bisect_left(self._keys, found[0]) + 1

    def enqueued_at(self, work_order_id: str) -> int | None:
        """When the work order (last) became waiting, epoch microseconds; None if not waiting."""
        found = self._by_id.get(work_order_id)
        return None if found is None else found[1]

    def first(self) -> str | None:
        """The id of the next work order to lease, None when none waits."""
        return self._by_key[self._keys[0]] if self._keys else None

    def first_ids(self, count: int) -> list[str]:
        """The ids of the first `count` waiting work orders, next first."""
        return [self._by_key[key] for key in self._keys[:count]]

    def order(self) -> list[tuple[str, int]]:
        """(id, enqueued_at) of every waiting work order, next first."""
        by_id = self._by_id
        result = []
        for key in self._keys:
            work_order_id = self._by_key[key]
            result.append((work_order_id, by_id[work_order_id][1]))
        return result


class SharedPendingIndex:
    """`PendingIndex`'s answers asked of the database itself, for PostgreSQL: there several
    queue replicas change the waiting work orders, so no replica's memory may be the
    authority on counts or positions (docs/deployment.md, "Several replicas on
    PostgreSQL"). Used only inside the store's functions on its database thread, where
    write transactions already hold the queue's advisory lock, so answers are exact.

    `add` and `remove` change nothing (the row's status is the record); `add` returns the
    position the row takes by its priority and seq.
    """

    def __init__(self, conn: Any, pending_status: int):
        self._conn = conn
        self._pending = pending_status

    def __len__(self) -> int:
        return int(self._conn.execute(sql.COUNT_WITH_STATUS, (self._pending,)).fetchone()[0])

    def add(self, work_order_id: str, priority: int, seq: int, enqueued_at_us: int) -> int:
        """The position of a work order with this priority and seq (1 = next)."""
        return self.position_for(priority, seq)

    def position_for(self, priority: int, seq: int) -> int:
        """The position a work order with this priority and seq takes among the waiting."""
        params = (self._pending, priority, priority, seq)
        return int(self._conn.execute(sql.PENDING_COUNT_AHEAD, params).fetchone()[0]) + 1

    def remove(self, work_order_id: str) -> bool:
        """Nothing to do: the row's new status takes it out of the waiting order."""
        return True

    def position(self, work_order_id: str) -> int | None:
        """1-based place in lease order, None when it does not wait."""
        row = self._conn.execute(sql.PENDING_ENTRY, (work_order_id, self._pending)).fetchone()
        return None if row is None else self.position_for(row["priority"], row["seq"])

    def enqueued_at(self, work_order_id: str) -> int | None:
        """When the work order (last) became waiting, epoch microseconds; None if not waiting."""
        row = self._conn.execute(sql.PENDING_ENTRY, (work_order_id, self._pending)).fetchone()
        return None if row is None else int(row["enqueued_at"])

    def first(self) -> str | None:
        """The id of the next work order to lease, None when none waits."""
        ids = self.first_ids(1)
        return ids[0] if ids else None

    def first_ids(self, count: int) -> list[str]:
        """The ids of the first `count` waiting work orders, next first."""
        return [row["id"] for row in self._conn.execute(sql.PENDING_FIRST, (self._pending, count)).fetchall()]

    def order(self) -> list[tuple[str, int]]:
        """(id, enqueued_at) of every waiting work order, next first."""
        rows = self._conn.execute(sql.PENDING_ORDER, (self._pending,)).fetchall()
        return [(row["id"], int(row["enqueued_at"])) for row in rows]
