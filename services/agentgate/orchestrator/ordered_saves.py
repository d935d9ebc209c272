"""Saves of a run's record that run behind the run instead of in front of it.

Each `UpdateRun` replaces the whole run in persistence, so the run need not wait for one
to land before its next step (a workspace or persistence call of its own): the saves are
handed to one background task that performs them strictly in order, one at a time. A save
still waiting to start when a newer one arrives is replaced by it (only the latest state
matters), so a burst of state changes costs one write. `flush()` waits until every save
handed in so far has finished: the run calls it before its terminal event, so a follower
that sees the end of the run finds the final run record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Save = Callable[[], Awaitable[None]]


@dataclass
class _Pending:
    save: Save
    replaceable: bool


class OrderedSaves:
    """Performs saves in the order they are submitted, in the background, one at a time."""

    def __init__(self, name: str = "run"):
        self.name = name
        self._pending: list[_Pending] = []
        self._task: asyncio.Task[None] | None = None

    def submit(self, save: Save, replaceable: bool = True) -> None:
        """Queues `save` after every earlier one. A replaceable save waiting to start is
        dropped in favour of this one when this one is replaceable too (a full-record
        update); a non-replaceable one (the record's creation) always runs."""
        if replaceable and self._pending and self._pending[-1].replaceable:
            self._pending[-1] = _Pending(save, True)
        else:
            self._pending.append(_Pending(save, replaceable))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    @property
    def idle(self) -> bool:
        """Whether no save is waiting or running."""
        return not self._pending and (self._task is None or self._task.done())

    async def _drain(self) -> None:
        while self._pending:
            item = self._pending.pop(0)
            try:
                await item.save()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a save's own errors are its business; keep the order going
                log.exception("%s: a background save failed", self.name)

    async def flush(self) -> None:
        """Waits until every save submitted so far has finished. Cancelling the caller
        does not cancel the saves (they are shielded): a save handed in is not lost."""
        while self._task is not None and not self._task.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._task)
