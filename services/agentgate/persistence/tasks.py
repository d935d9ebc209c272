"""Running a write to completion even when the RPC that started it is cancelled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


async def run_to_completion(coro: Coroutine[Any, Any, T]) -> T:
    """Awaits `coro` in its own task, shielded from the caller's cancellation.

    A client that hangs up between the SQLite commit and the file write (or the wake-up of
    followers) would otherwise leave the index, the files and live streams disagreeing.
    """
    task = asyncio.ensure_future(coro)
    task.add_done_callback(_retrieve_exception)
    return await asyncio.shield(task)


def _retrieve_exception(task: asyncio.Future[Any]) -> None:
    # When the caller was cancelled nobody awaits the task; reading its exception here
    # avoids "exception was never retrieved" noise; an awaiting caller reports it itself.
    if not task.cancelled() and task.exception() is not None:
        log.debug("write finished with an error: %r", task.exception())
