"""Event emission for one run: events are queued in memory and appended to persistence in
order, in batches, by a background task, so a slow persistence service never blocks the run."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from agentgate.common.events import make_event
from agentgate.v1 import events_pb2, persistence_pb2, persistence_pb2_grpc

log = logging.getLogger(__name__)

MAX_BUFFERED_EVENTS = 10_000
MAX_BATCH = 200
APPEND_TIMEOUT_SECONDS = 10.0


class RunEventEmitter:
    """Emits the events of one work order's run to the persistence service."""

    def __init__(
        self,
        persistence: persistence_pb2_grpc.PersistenceServiceStub,
        work_order_id: str,
        run_id: str,
        trace_id: str = "",
    ):
        self._persistence = persistence
        self.work_order_id = work_order_id
        self.run_id = run_id
        self.trace_id = trace_id
        self._buffer: asyncio.Queue[events_pb2.RunEvent | None] = asyncio.Queue(MAX_BUFFERED_EVENTS)
        self._task = asyncio.create_task(self._drain(), name=f"emitter-{run_id}")
        self.dropped = 0
        self.failed_appends = 0
        self.emitted = 0

    def emit(self, event_type: str, iteration: int = 0, **payload: object) -> None:
        """Queues one event; never blocks. When the buffer is full the event is dropped and counted."""
        event = make_event(
            event_type, self.work_order_id, self.run_id, iteration=iteration, trace_id=self.trace_id, **payload
        )
        try:
            self._buffer.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    async def _drain(self) -> None:
        while True:
            first = await self._buffer.get()
            if first is None:
                return
            batch = [first]
            closing = False
            while len(batch) < MAX_BATCH and not self._buffer.empty():
                item = self._buffer.get_nowait()
                if item is None:
                    closing = True
                    break
                batch.append(item)
            await self._append(batch)
            if closing:
                return

    async def _append(self, batch: list[events_pb2.RunEvent]) -> None:
        # Persistence may be restarting: retry a few times before giving the batch up,
        # since an event lost here is a gap a user would notice in `watch`.
        for attempt in range(5):
            try:
                await self._persistence.AppendEvents(
                    persistence_pb2.AppendEventsRequest(events=batch), timeout=APPEND_TIMEOUT_SECONDS
                )
                self.emitted += len(batch)
                return
            except grpc.aio.AioRpcError as exc:
                # Only UNAVAILABLE: after a deadline the batch may have been stored, and
                # sending it again would duplicate events.
                retryable = exc.code() == grpc.StatusCode.UNAVAILABLE
                if not retryable or attempt == 4:
                    self.failed_appends += len(batch)
                    log.warning("could not persist %d events of %s: %s", len(batch), self.run_id, exc.details())
                    return
                await asyncio.sleep(0.2 * 2**attempt)

    async def close(self, timeout: float = 30.0) -> None:
        """Flushes what is queued (waiting up to `timeout`) and stops."""
        with contextlib.suppress(asyncio.QueueFull):
            self._buffer.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            log.warning("event emitter of %s did not flush within %.0fs", self.run_id, timeout)
            self._task.cancel()
        if self.dropped:
            log.warning("%d events of %s were dropped (buffer full)", self.dropped, self.run_id)
