"""StreamEvents for many (docs/observability.md) on the four services in one event loop: 20 followers of
one run each receive the identical, complete sequence, while a follower that never reads is
cut off with RESOURCE_EXHAUSTED and does not delay the end of the run.

The persistence service buffers 1000 live events per follower here (instead of 10000), and
the run prints 2000 lines of 256 bytes, so the follower that never reads overflows for sure.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from agentgate.common import security
from agentgate.common.timeutil import iso
from agentgate.persistence.server import SUBSCRIBER_QUEUE_ENV
from agentgate.v1 import common_pb2, events_pb2, persistence_pb2, persistence_pb2_grpc

from .inprocess_suite import InProcessSuite

FOLLOWERS = 20
LINES = 2000


@pytest.fixture
async def suite(home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(SUBSCRIBER_QUEUE_ENV, "1000")
    running = await InProcessSuite.start(home)
    yield running
    await running.stop()


def chatty_spec(tmp_path: Path) -> common_pb2.WorkOrderSpec:
    root = tmp_path / "project"
    root.mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (root / "verify.yaml").write_text('version: "1"\ntests:\n  - {name: unit, command: "true"}\n')
    script = (
        "default:\n"
        "  - sleep: 1\n"  # every follower is subscribed before the flood starts
        f"  - run: \"python3 -c 'import sys\\nfor i in range({LINES}): sys.stdout.write(str(i).zfill(6) + \\\"x\\\" * 250 + \\\"\\\\n\\\")'\"\n"
    )
    spec = common_pb2.WorkOrderSpec(
        task_prompt="Print a lot", agent=common_pb2.AgentSpec(name="scripted", options={"script": script})
    )
    spec.source.local_path = str(root)
    spec.harness.loop_strategy.max_iterations = 1
    return spec


async def follow(stub: persistence_pb2_grpc.PersistenceServiceStub, work_order_id: str) -> list[events_pb2.RunEvent]:
    """What `agentgate watch` does: follow, and when cut off (a follower starved of CPU on
    a loaded machine can fall 1000 events behind) reconnect from the last seq seen."""
    received: list[events_pb2.RunEvent] = []
    for _ in range(20):
        after = received[-1].seq if received else 0
        request = persistence_pb2.StreamEventsRequest(work_order_id=work_order_id, follow=True, after_seq=after)
        try:
            async for response in stub.StreamEvents(request, timeout=120):
                received.append(response.event)
            return received
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
    raise AssertionError("cut off 20 times")


async def test_twenty_followers_get_the_same_complete_sequence_and_a_stalled_one_delays_nothing(
    suite: InProcessSuite, tmp_path: Path
) -> None:
    work_order = await suite.submit(chatty_spec(tmp_path))

    # One channel for the followers (like one busy client), and the stalled follower on a
    # channel of its own with a fixed 64 KiB window, so it stops taking data at once.
    followers = [asyncio.create_task(follow(suite.persistence, work_order.id)) for _ in range(FOLLOWERS)]
    stalled_channel = grpc.aio.insecure_channel(
        suite.addresses["persistence"],
        options=[("grpc.http2.bdp_probe", 0)],
        interceptors=security.aio_client_interceptors(),
    )
    suite.channels.append(stalled_channel)
    stalled = persistence_pb2_grpc.PersistenceServiceStub(stalled_channel).StreamEvents(
        persistence_pb2.StreamEventsRequest(work_order_id=work_order.id, follow=True), timeout=120
    )

    final = await suite.wait_terminal(work_order.id, timeout=120)
    assert final.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED, final.error
    results = await asyncio.wait_for(asyncio.gather(*followers), 60)

    stored = [
        r.event
        async for r in suite.persistence.StreamEvents(
            persistence_pb2.StreamEventsRequest(work_order_id=work_order.id), timeout=30
        )
    ]
    seqs = [e.seq for e in stored]
    assert seqs == list(range(1, len(stored) + 1)), "the log has gaps"
    assert sum(e.type == "agent:output" for e in stored) == LINES
    assert stored[-1].type == "run:complete"
    for received in results:
        assert received == stored, "a follower did not get the identical, complete sequence"

    # The run ended on time: from its terminal event to the queue hearing of it is the
    # emitter's flush to persistence, which a stalled follower must not hold up.
    end_event = stored[-1].timestamp.ToDatetime()
    finished = final.finished_at.ToDatetime()
    delay = (finished - end_event).total_seconds()
    assert delay < 1.0, f"the run's end was delayed {delay:.2f}s ({iso(stored[-1].timestamp)} -> {iso(final.finished_at)})"

    # The stalled follower was cut off, saying where to resume.
    got = 0
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stalled:
            got += 1
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "after_seq=" in (info.value.details() or "")
    assert got < len(stored)
