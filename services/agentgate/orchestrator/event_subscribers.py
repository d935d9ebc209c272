"""The subscribers an orchestrator worker shares between its runs: metrics and the audit log.

(Each run also has its own persistence subscriber, made by its `RunEventEmitter`.)

Buffer size per subscriber: `AGENTGATE_SUBSCRIBER_BUFFER` (events, default 10000).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry.metrics import Meter

from agentgate.common.config import env_int
from agentgate.orchestrator.audit_log import AuditLog, audit_path
from agentgate.orchestrator.run_metrics import DEFAULT_QUEUE_POLL_SECONDS, QueueDepthPoller, RunMetrics
from agentgate.orchestrator.subscribers import DEFAULT_CAPACITY, SubscriberChannel
from agentgate.v1 import queue_pb2_grpc

log = logging.getLogger(__name__)

BUFFER_ENV = "AGENTGATE_SUBSCRIBER_BUFFER"
CLOSE_TIMEOUT_SECONDS = 5.0


@dataclass
class WorkerSubscribers:
    """Metrics and audit channels, plus the queue-depth poller that feeds the metrics."""

    metrics: RunMetrics
    audit: AuditLog
    channels: list[SubscriberChannel]
    poller: QueueDepthPoller | None = field(default=None)

    @classmethod
    def create(cls, home: Path, meter: Meter, capacity: int | None = None) -> WorkerSubscribers:
        """The shared subscribers of a worker whose data lives under `home`."""
        capacity = capacity or env_int(BUFFER_ENV, DEFAULT_CAPACITY, minimum=1)
        run_metrics = RunMetrics(meter)
        audit = AuditLog(audit_path(home))
        channels = [SubscriberChannel(run_metrics, capacity), SubscriberChannel(audit, capacity)]
        return cls(metrics=run_metrics, audit=audit, channels=channels)

    def start_queue_polling(
        self, queue: queue_pb2_grpc.QueueServiceAsyncStub, interval: float = DEFAULT_QUEUE_POLL_SECONDS
    ) -> None:
        """Starts feeding the queue-depth gauge (only worth it while metrics are exported)."""
        self.poller = QueueDepthPoller(queue, self.metrics, interval)
        self.poller.start()

    def channel(self, name: str) -> SubscriberChannel:
        """The channel of a subscriber by name ("metrics", "audit")."""
        return next(channel for channel in self.channels if channel.name == name)

    async def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Stops polling and flushes what the subscribers still buffer (up to `timeout` each)."""
        if self.poller is not None:
            await self.poller.stop()
        for channel in self.channels:
            await channel.close(timeout)
