"""The metrics subscriber: OpenTelemetry metrics recorded from the run events (docs/observability.md).

| instrument | kind | unit | attributes |
|---|---|---|---|
| `agentgate.runs.started` | counter | {run} | `agent` |
| `agentgate.runs.completed` | counter | {run} | `result` (succeeded, failed_build, ..., canceled) |
| `agentgate.runs.active` | up-down counter | {run} | |
| `agentgate.run.duration` | histogram | s | `result` |
| `agentgate.iterations` | counter | {iteration} | `passed` |
| `agentgate.iteration.duration` | histogram | s | `passed`, `error_type` |
| `agentgate.agent.duration` | histogram | s | `success`, `timed_out` |
| `agentgate.agent.tokens` | counter | {token} | `direction` (input, output) |
| `agentgate.agent.cost` | counter | USD | |
| `agentgate.verification.duration` | histogram | s | `passed` |
| `agentgate.queue.depth` | gauge | {work_order} | `state` (waiting, running) |

The queue depth is not an event: `QueueDepthPoller` asks the queue (`GetQueueStats`) every
few seconds while metrics are exported. They are exported with OTLP when
`OTEL_EXPORTER_OTLP_ENDPOINT` is set (see `agentgate.common.telemetry`); otherwise the
instruments record into nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence

import grpc
from opentelemetry import metrics
from opentelemetry.instrumentation.utils import suppress_instrumentation

from agentgate.common import events as ev
from agentgate.orchestrator.subscribers import EmittedEvent
from agentgate.v1 import common_pb2, queue_pb2, queue_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_QUEUE_POLL_SECONDS = 10.0

_ENDED = {ev.RUN_COMPLETE, ev.RUN_FAILED, ev.RUN_CANCELED}


def _result_name(result: common_pb2.RunResult.ValueType) -> str:
    name = common_pb2.RunResult.Name(result) if result in common_pb2.RunResult.values() else "RUN_RESULT_UNSPECIFIED"
    return name.removeprefix("RUN_RESULT_").lower()


class RunMetrics:
    """Turns events into measurements on a meter."""

    name = "metrics"

    def __init__(self, meter: metrics.Meter):
        self.runs_started = meter.create_counter("agentgate.runs.started", unit="{run}", description="Runs started")
        self.runs_completed = meter.create_counter(
            "agentgate.runs.completed", unit="{run}", description="Runs that ended, by result"
        )
        self.runs_active = meter.create_up_down_counter(
            "agentgate.runs.active", unit="{run}", description="Runs in progress on this worker"
        )
        self.run_duration = meter.create_histogram("agentgate.run.duration", unit="s", description="Run duration")
        self.iterations = meter.create_counter("agentgate.iterations", unit="{iteration}", description="Iterations")
        self.iteration_duration = meter.create_histogram(
            "agentgate.iteration.duration", unit="s", description="Iteration duration"
        )
        self.agent_duration = meter.create_histogram(
            "agentgate.agent.duration", unit="s", description="Agent execution duration"
        )
        self.tokens = meter.create_counter("agentgate.agent.tokens", unit="{token}", description="Tokens used")
        self.cost = meter.create_counter("agentgate.agent.cost", unit="USD", description="Agent cost")
        self.verification_duration = meter.create_histogram(
            "agentgate.verification.duration", unit="s", description="Verification duration"
        )
        self._queue: tuple[int, int] | None = None
        meter.create_observable_gauge(
            "agentgate.queue.depth",
            callbacks=[self._observe_queue],
            unit="{work_order}",
            description="Work orders waiting and running in the queue",
        )

    def set_queue_depth(self, waiting: int, running: int) -> None:
        """The queue's latest counts, reported at the next collection."""
        self._queue = (waiting, running)

    def _observe_queue(self, _options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        if self._queue is None:
            return []
        waiting, running = self._queue
        return [metrics.Observation(waiting, {"state": "waiting"}), metrics.Observation(running, {"state": "running"})]

    async def handle(self, batch: Sequence[EmittedEvent]) -> None:
        """Records what each event measures."""
        for item in batch:
            self.record(item)

    def record(self, item: EmittedEvent) -> None:
        """The measurements of one event (most events measure nothing)."""
        event = item.event
        kind = event.type
        if kind == ev.RUN_STARTED:
            self.runs_started.add(1, {"agent": event.run_started.agent})
            self.runs_active.add(1)
        elif kind in _ENDED:
            result = _result_name(event.run_ended.result)
            self.runs_completed.add(1, {"result": result})
            self.runs_active.add(-1)
            self.run_duration.record(event.run_ended.duration_seconds, {"result": result})
        elif kind == ev.ITERATION_COMPLETE:
            done = event.iteration_complete
            passed = {"passed": done.verification_passed}
            self.iterations.add(1, passed)
            error_type = common_pb2.IterationErrorType.Name(done.error_type).removeprefix("ITERATION_ERROR_TYPE_")
            self.iteration_duration.record(done.duration_seconds, {**passed, "error_type": error_type.lower()})
        elif kind in (ev.AGENT_COMPLETE, ev.AGENT_FAILED):
            ended = event.agent_ended
            self.agent_duration.record(ended.duration_seconds, {"success": ended.success, "timed_out": ended.timed_out})
            if ended.tokens.input:
                self.tokens.add(ended.tokens.input, {"direction": "input"})
            if ended.tokens.output:
                self.tokens.add(ended.tokens.output, {"direction": "output"})
            if item.cost_usd > 0:
                self.cost.add(item.cost_usd)
        elif kind == ev.VERIFICATION_COMPLETE:
            verified = event.verification_complete
            self.verification_duration.record(verified.duration_seconds, {"passed": verified.passed})

    async def aclose(self) -> None:
        """The meter belongs to the service's provider: nothing to close here."""


class QueueDepthPoller:
    """Asks the queue for its counts every `interval` seconds and hands them to `RunMetrics`."""

    def __init__(self, queue: queue_pb2_grpc.QueueServiceAsyncStub, metrics_: RunMetrics,
                 interval: float = DEFAULT_QUEUE_POLL_SECONDS):
        self._queue = queue
        self._metrics = metrics_
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts polling in the background."""
        self._task = asyncio.create_task(self._poll(), name="queue-depth-poller")

    async def poll_once(self) -> bool:
        """One poll; False when the queue did not answer (the last value stays)."""
        try:
            # No span: a poll every few seconds would be a trace of its own each time.
            with suppress_instrumentation():
                stats = await self._queue.GetQueueStats(queue_pb2.GetQueueStatsRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            log.debug("queue stats unavailable: %s", exc.code().name)
            return False
        self._metrics.set_queue_depth(stats.waiting, stats.running)
        return True

    async def _poll(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        """Stops polling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
