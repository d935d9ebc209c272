"""Event emission for one run (docs/observability.md).

`emit()` builds the typed `RunEvent` envelope and offers it to every subscriber without
waiting: the run's own subscriber (its event log: persistence_port.PersistenceSubscriber
appends the events to the persistence service in order, in batches) and the subscribers
shared by all runs of this worker (metrics, the audit log). Each sits behind its own
bounded buffer (`SubscriberChannel`), so a slow or failing subscriber never blocks the run.

Losses are counted per run. Just before the run's terminal event, when anything was lost so
far, a `persistence:warning` event says what (`events not delivered: audit: 3 dropped
(buffer full)`) and a warning is logged; losses noticed later (while flushing at the end)
are logged. The terminal event and that report are admitted even to a full buffer, so a
follower always sees the end of the run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from agentgate.common.events import PERSISTENCE_WARNING, TERMINAL_EVENT_TYPES, make_event
from agentgate.orchestrator.subscribers import (
    DeliveryTally,
    EmittedEvent,
    EventSubscriber,
    SubscriberChannel,
)
from agentgate.v1 import events_pb2

log = logging.getLogger(__name__)

MAX_BUFFERED_EVENTS = 10_000
MAX_BATCH = 200


class RunEventEmitter:
    """Emits the events of one work order's run to its subscribers."""

    def __init__(
        self,
        own: EventSubscriber,
        work_order_id: str,
        run_id: str,
        trace_id: str = "",
        subscribers: Sequence[SubscriberChannel] = (),
    ):
        """`own` is the run's own subscriber (its event log in persistence); `subscribers`
        are channels shared by all runs (never closed here)."""
        self.work_order_id = work_order_id
        self.run_id = run_id
        self.trace_id = trace_id
        # The run's own channel inherits the run's span: its AppendEvents calls join the trace.
        self._own = SubscriberChannel(own, MAX_BUFFERED_EVENTS, MAX_BATCH, inherit_context=True)
        self._shared = list(subscribers)
        self.tally = DeliveryTally()
        self._count = 0
        self._reported = 0

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
