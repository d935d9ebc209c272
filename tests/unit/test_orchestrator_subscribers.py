"""Event subscribers inside the orchestrator: bounded buffers, a slow or failing subscriber
never blocks a run, losses counted and reported; the audit log and the metrics."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from agentgate.common import events as ev
from agentgate.orchestrator.audit_log import AuditLog, audit_path, audit_record
from agentgate.orchestrator.emitter import RunEventEmitter
from agentgate.orchestrator.event_subscribers import WorkerSubscribers
from agentgate.orchestrator.run_metrics import RunMetrics
from agentgate.orchestrator.subscribers import DeliveryTally, EmittedEvent, SubscriberChannel
from agentgate.v1 import common_pb2, events_pb2


class Recording:
    """Keeps what it gets."""

    def __init__(self, name: str = "recording"):
        self.name = name
        self.events: list[events_pb2.RunEvent] = []
        self.closed = False

    async def handle(self, batch: Sequence[EmittedEvent]) -> None:
        self.events.extend(item.event for item in batch)

    async def aclose(self) -> None:
        self.closed = True


def dropped(emitter: RunEventEmitter) -> int:
    """Events of the emitter's run that some subscriber dropped (buffer full)."""
    return sum(emitter.tally.dropped.values())


class Stuck(Recording):
    """Never finishes handling until released."""

    def __init__(self, name: str = "stuck"):
        super().__init__(name)
        self.release = asyncio.Event()

    async def handle(self, batch: Sequence[EmittedEvent]) -> None:
        await self.release.wait()
        await super().handle(batch)


class Failing(Recording):
    """Raises on the first `failures` batches, then records."""

    def __init__(self, failures: int, name: str = "failing"):
        super().__init__(name)
        self.failures = failures

    async def handle(self, batch: Sequence[EmittedEvent]) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("disk full")
        await super().handle(batch)


def item(kind: str = ev.AGENT_OUTPUT, tally: DeliveryTally | None = None) -> EmittedEvent:
    return EmittedEvent(event=ev.make_event(kind, "wo-1", "run-1"), tally=tally)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# --- SubscriberChannel ------------------------------------------------------------------


async def test_a_stuck_subscriber_never_blocks_offer_and_overflow_is_counted() -> None:
    stuck = Stuck()
    channel = SubscriberChannel(stuck, capacity=10, max_batch=4)
    tally = DeliveryTally()
    started = time.monotonic()
    accepted = [channel.offer(item(tally=tally)) for _ in range(1000)]
    assert time.monotonic() - started < 0.5
    await settle()
    # 10 fit the buffer, the rest is dropped; the drain task now holds a batch of 4 (stuck).
    assert accepted.count(True) == 10
    assert channel.dropped == 990 and channel.pending == 6
    assert channel.offer(item(), force=True), "force admits beyond the capacity"
    stuck.release.set()
    assert await channel.flush(2.0)
    assert len(stuck.events) == 11 and channel.delivered == 11
    await channel.close()
    assert stuck.closed


async def test_a_failing_subscriber_loses_its_batch_and_keeps_getting_the_next_ones() -> None:
    failing = Failing(failures=1)
    channel = SubscriberChannel(failing, max_batch=3)
    tally = DeliveryTally()
    for _ in range(3):
        channel.offer(item(tally=tally))
    assert await channel.flush(1.0)
    for _ in range(2):
        channel.offer(item(tally=tally))
    assert await channel.flush(1.0)
    assert channel.failed == 3 and tally.failed["failing"] == 3
    assert channel.delivered == 2 and len(failing.events) == 2
    assert tally.summary() == "failing: 3 failed"


async def test_close_gives_up_after_its_timeout_and_counts_what_was_left() -> None:
    stuck = Stuck()
    channel = SubscriberChannel(stuck, max_batch=2)
    tally = DeliveryTally()
    for _ in range(5):
        channel.offer(item(tally=tally))
    started = time.monotonic()
    await channel.close(timeout=0.2)
    assert time.monotonic() - started < 1.0
    assert channel.pending == 0 and channel.dropped == 3  # the held batch was cancelled, the rest dropped
    assert tally.dropped["stuck"] == 3
    assert not channel.offer(item()), "a closed channel takes nothing"


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SubscriberChannel(Recording(), capacity=0)


# --- RunEventEmitter --------------------------------------------------------------------


async def test_emitter_reports_losses_before_the_terminal_event_and_the_run_is_never_blocked() -> None:
    own = Recording("persistence")
    stuck = Stuck("audit")
    failing = Failing(failures=100, name="metrics")
    shared = [SubscriberChannel(stuck, capacity=5, max_batch=1), SubscriberChannel(failing, max_batch=1)]
    emitter = RunEventEmitter(own, "wo-1", "run-1", trace_id="ab" * 16, subscribers=shared)
    started = time.monotonic()
    emitter.emit(ev.RUN_STARTED, run_started=events_pb2.RunStarted(agent="scripted"))
    for n in range(19):
        emitter.emit(ev.AGENT_OUTPUT, 1, agent_output=events_pb2.AgentOutput(text=f"line {n}"))
    await settle()  # the failing subscriber has failed on what it got so far
    emitter.emit(ev.RUN_COMPLETE, 1, run_ended=events_pb2.RunEnded(result=common_pb2.RUN_RESULT_SUCCEEDED))
    assert time.monotonic() - started < 0.5
    await emitter.close(timeout=2.0)

    types = [e.type for e in own.events]
    assert types[0] == ev.RUN_STARTED and types[-2:] == [ev.PERSISTENCE_WARNING, ev.RUN_COMPLETE]
    assert len(own.events) == 22, "the run's own subscriber got every event"
    warning = own.events[-2].persistence_warning.message
    # audit: 5 buffered (the drain task had not run yet), 15 of the 20 dropped before the report.
    assert "audit: 15 dropped (buffer full)" in warning
    assert "metrics: 20 failed" in warning
    assert {e.trace_id for e in own.events} == {"ab" * 16}
    assert dropped(emitter) == 15  # the report and the terminal event are forced in
    stuck.release.set()
    for channel in shared:
        await channel.close(1.0)


async def test_emitter_without_losses_sends_no_warning() -> None:
    own = Recording("persistence")
    emitter = RunEventEmitter(own, "wo-1", "run-1")
    emitter.emit(ev.RUN_STARTED)
    emitter.emit(ev.RUN_FAILED, run_ended=events_pb2.RunEnded(result=common_pb2.RUN_RESULT_FAILED_BUILD))
    await emitter.close()
    assert [e.type for e in own.events] == [ev.RUN_STARTED, ev.RUN_FAILED]
    assert dropped(emitter) == 0 and emitter.tally.failed[own.name] == 0


async def test_a_full_own_buffer_still_takes_the_terminal_event() -> None:
    stuck = Stuck("persistence")
    emitter = RunEventEmitter(stuck, "wo-1", "run-1")
    for _ in range(10_050):
        emitter.emit(ev.AGENT_OUTPUT, 1, agent_output=events_pb2.AgentOutput(text="x"))
    emitter.emit(ev.RUN_COMPLETE, 1, run_ended=events_pb2.RunEnded())
    stuck.release.set()
    await emitter.close(timeout=5.0)
    assert stuck.events[-1].type == ev.RUN_COMPLETE
    assert stuck.events[-2].type == ev.PERSISTENCE_WARNING
    assert "persistence: 50 dropped (buffer full)" in stuck.events[-2].persistence_warning.message


# --- audit log --------------------------------------------------------------------------


async def test_audit_log_writes_one_redacted_line_per_event(tmp_path: Path) -> None:
    path = audit_path(tmp_path)
    audit = AuditLog(path)
    channel = SubscriberChannel(audit)
    emitter = RunEventEmitter(Recording(), "wo-1", "run-1", trace_id="cd" * 16, subscribers=[channel])
    emitter.emit(ev.RUN_STARTED, run_started=events_pb2.RunStarted(agent="scripted", worker_id="w1"))
    emitter.emit(ev.AGENT_OUTPUT, 1, agent_output=events_pb2.AgentOutput(text="token ghp_" + "a" * 36))
    error = common_pb2.BuildError(
        type=common_pb2.BUILD_ERROR_TYPE_TEST_FAILED,
        message="failed with key ghp_" + "b" * 36,
        stdout_tail="lots of output",
    )
    emitter.emit(ev.AGENT_COMPLETE, 1, agent_ended=events_pb2.AgentEnded(success=True), cost_usd=0.25)
    emitter.emit(ev.RUN_FAILED, 1, run_ended=events_pb2.RunEnded(build_error=error, error=error.message))
    await emitter.close()
    await channel.close()

    lines = path.read_text().splitlines()
    assert len(lines) == 4
    records = [json.loads(line) for line in lines]
    assert [r["type"] for r in records] == [ev.RUN_STARTED, ev.AGENT_OUTPUT, ev.AGENT_COMPLETE, ev.RUN_FAILED]
    assert [r["n"] for r in records] == [1, 2, 3, 4]
    assert {r["trace_id"] for r in records} == {"cd" * 16}
    assert records[0]["payload"] == {"run_started": {"agent": "scripted", "worker_id": "w1"}}
    assert records[1]["payload"] == {"agent_output": {"stream": "OUTPUT_STREAM_UNSPECIFIED", "text_bytes": 46}}
    assert records[2]["cost_usd"] == 0.25
    ended = records[3]["payload"]["run_ended"]
    assert "ghp_" not in lines[3] and "[REDACTED]" in ended["error"]
    assert "stdout_tail" not in ended["build_error"]
    assert records[3]["time"].endswith("+00:00")


def test_audit_record_does_not_change_a_copy_it_was_not_given() -> None:
    event = ev.make_event(ev.AGENT_OUTPUT, "wo", "run", agent_output=events_pb2.AgentOutput(text="hello"))
    record = audit_record(event)
    assert record["payload"]["agent_output"]["text_bytes"] == 5
    assert event.agent_output.text == "hello"


async def test_an_unwritable_audit_log_fails_without_stopping_the_others(tmp_path: Path) -> None:
    blocker = tmp_path / "audit"
    blocker.write_text("a file where the folder should be")
    audit_channel = SubscriberChannel(AuditLog(audit_path(tmp_path)))
    own = Recording("persistence")
    emitter = RunEventEmitter(own, "wo-1", "run-1", subscribers=[audit_channel])
    emitter.emit(ev.RUN_STARTED)
    assert await audit_channel.flush(2.0)
    emitter.emit(ev.RUN_COMPLETE, run_ended=events_pb2.RunEnded())
    await emitter.close()
    await audit_channel.close()
    assert audit_channel.failed >= 1
    assert [e.type for e in own.events] == [ev.RUN_STARTED, ev.PERSISTENCE_WARNING, ev.RUN_COMPLETE]
    assert "audit: 1 failed" in own.events[1].persistence_warning.message


# --- metrics ----------------------------------------------------------------------------


def metric_points(reader: InMemoryMetricReader) -> dict[str, list]:
    found: dict[str, list] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


async def test_metrics_from_events() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    run_metrics = RunMetrics(provider.get_meter("test"))
    channel = SubscriberChannel(run_metrics)
    emitter = RunEventEmitter(Recording(), "wo-1", "run-1", subscribers=[channel])
    emitter.emit(ev.RUN_STARTED, run_started=events_pb2.RunStarted(agent="scripted"))
    emitter.emit(
        ev.AGENT_COMPLETE, 1,
        agent_ended=events_pb2.AgentEnded(
            success=True, duration_seconds=2.0, tokens=common_pb2.TokenUsage(input=100, output=20, total=120)
        ),
        cost_usd=0.5,
    )
    emitter.emit(ev.VERIFICATION_COMPLETE, 1, verification_complete=events_pb2.VerificationComplete(duration_seconds=1))
    emitter.emit(
        ev.ITERATION_COMPLETE, 1,
        iteration_complete=events_pb2.IterationComplete(verification_passed=True, duration_seconds=3.5),
    )
    emitter.emit(
        ev.RUN_COMPLETE, 1,
        run_ended=events_pb2.RunEnded(result=common_pb2.RUN_RESULT_SUCCEEDED, duration_seconds=4.0),
    )
    await emitter.close()
    await channel.flush(1.0)
    run_metrics.set_queue_depth(waiting=3, running=1)

    points = metric_points(reader)
    assert [p.value for p in points["agentgate.runs.started"]] == [1]
    assert [(dict(p.attributes), p.value) for p in points["agentgate.runs.completed"]] == [({"result": "succeeded"}, 1)]
    assert [p.value for p in points["agentgate.runs.active"]] == [0]
    assert {p.attributes["direction"]: p.value for p in points["agentgate.agent.tokens"]} == {"input": 100, "output": 20}
    assert [p.value for p in points["agentgate.agent.cost"]] == [0.5]
    assert [(p.count, p.sum) for p in points["agentgate.agent.duration"]] == [(1, 2.0)]
    assert [(p.count, p.sum) for p in points["agentgate.iteration.duration"]] == [(1, 3.5)]
    assert [(p.count, p.sum) for p in points["agentgate.run.duration"]] == [(1, 4.0)]
    assert [(p.count, p.sum) for p in points["agentgate.verification.duration"]] == [(1, 1.0)]
    assert {p.attributes["state"]: p.value for p in points["agentgate.queue.depth"]} == {"waiting": 3, "running": 1}
    provider.shutdown()


async def test_worker_subscribers_write_the_audit_log_under_home(tmp_path: Path) -> None:
    subscribers = WorkerSubscribers.create(tmp_path, MeterProvider().get_meter("test"), capacity=100)
    emitter = RunEventEmitter(Recording(), "wo-1", "run-1", subscribers=subscribers.channels)
    emitter.emit(ev.RUN_STARTED)
    await emitter.close()
    await subscribers.close()
    assert (tmp_path / "audit" / "audit.jsonl").read_text().count("\n") == 1
    assert subscribers.channel("metrics").delivered == 1
    assert subscribers.channel("audit").capacity == 100


def test_append_chunks_keep_order_and_stay_under_the_limit():
    from agentgate.orchestrator.persistence_port import append_chunks
    from agentgate.v1 import events_pb2

    events = [
        events_pb2.RunEvent(type="agent:output", agent_output=events_pb2.AgentOutput(text=str(i) * 60_000))
        for i in range(10)
    ]
    chunks = append_chunks(events, limit=200_000)
    assert [e for chunk in chunks for e in chunk] == events
    assert len(chunks) == 4
    assert all(sum(e.ByteSize() for e in chunk) <= 200_000 for chunk in chunks)
    big = events_pb2.RunEvent(agent_output=events_pb2.AgentOutput(text="x" * 300_000))
    assert append_chunks([big, events[0]], limit=200_000) == [[big], [events[0]]]
    assert append_chunks([]) == []
