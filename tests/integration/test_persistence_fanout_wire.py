"""StreamEvents through a real server: many followers get the same events, each event
serialized once for all of them (persistence/wire.py), and clients decode them as before."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agentgate.common.events import AGENT_OUTPUT, RUN_COMPLETE, make_event
from agentgate.v1 import events_pb2, persistence_pb2
from tests.integration.test_persistence_service import launch, poll, shutdown

FOLLOWERS = 8
LINES = 20


async def test_followers_share_one_serialization_per_event(home: Path) -> None:
    svc = await launch(home)
    try:
        request = persistence_pb2.StreamEventsRequest(work_order_id="wo-1", follow=True)

        async def follow() -> list[events_pb2.RunEvent]:
            return [response.event async for response in svc.stub.StreamEvents(request, timeout=30)]

        followers = [asyncio.create_task(follow()) for _ in range(FOLLOWERS)]
        await poll(lambda: svc.app.event_log.subscriber_count("wo-1") >= FOLLOWERS)
        for i in range(LINES):
            output = events_pb2.AgentOutput(text=f"line {i}")
            event = make_event(AGENT_OUTPUT, "wo-1", "run-1", iteration=1, agent_output=output)
            await svc.stub.AppendEvents(persistence_pb2.AppendEventsRequest(events=[event]))
        await svc.stub.AppendEvents(
            persistence_pb2.AppendEventsRequest(events=[make_event(RUN_COMPLETE, "wo-1", "run-1")])
        )
        received = await asyncio.wait_for(asyncio.gather(*followers), 30)

        assert all(events == received[0] for events in received)
        assert [e.seq for e in received[0]] == list(range(1, LINES + 2))
        assert [e.agent_output.text for e in received[0][:LINES]] == [f"line {i}" for i in range(LINES)]
        assert received[0][-1].type == RUN_COMPLETE
        # One serialization per event, not one per follower per event.
        assert svc.app.servicer.wire.serialized == LINES + 1

        # A late reader replaying the log gets the same events from the cache.
        replay = [
            r.event async for r in svc.stub.StreamEvents(persistence_pb2.StreamEventsRequest(work_order_id="wo-1"))
        ]
        assert replay == received[0]
        assert svc.app.servicer.wire.serialized == LINES + 1
    finally:
        await shutdown(svc)
