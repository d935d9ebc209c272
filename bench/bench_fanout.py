"""4. Event fan-out: 100 concurrent StreamEvents subscribers on one busy run.

The real persistence service runs as its own process. One client process holds the 100
followers (StreamEvents, follow, from seq 0); another appends `agent:output` events of the
same work order with AppendEvents in a loop (one event a call, as an agent's output lines
arrive), stamped with the send time, then a `run:complete` that ends every stream.

Delivery latency = time a follower received an event - the event's timestamp (set by the
appender just before AppendEvents, so it includes the append itself). Measured at fixed
append rates and with the loop unpaced (as fast as persistence accepts appends).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import benchlib
import grpc

from agentgate.common import events as ev
from agentgate.common.events import make_event
from agentgate.v1 import events_pb2, persistence_pb2, persistence_pb2_grpc

SUBSCRIBERS = 100
WORK_ORDER = "wo-fanout000001"
RUN = "run-fanout00001"
LINE = "x" * 80


def subscribe(conn: Any, address: str, work_order_id: str, count: int, measure_from: float) -> None:
    """Child process: `count` followers; reports latencies of events stamped after
    `measure_from` once every stream ended."""
    from agentgate.v1 import persistence_pb2 as pb

    async def main() -> dict[str, Any]:
        async with benchlib.aio_insecure_channel(address) as channel:
            method = channel.unary_stream("/agentgate.v1.PersistenceService/StreamEvents")
            request = pb.StreamEventsRequest(work_order_id=work_order_id, follow=True).SerializeToString()
            latencies: list[float] = []
            received = 0
            errors: dict[str, int] = {}

            async def follower() -> None:
                nonlocal received
                try:
                    async for raw in method(request, timeout=600):
                        now = time.time()
                        event = pb.StreamEventsResponse.FromString(raw).event
                        sent = event.timestamp.seconds + event.timestamp.nanos / 1e9
                        received += 1
                        if sent >= measure_from and event.type == "agent:output":
                            latencies.append(now - sent)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1

            tasks = [asyncio.create_task(follower()) for _ in range(count)]
            await asyncio.sleep(1.0)  # every stream subscribed
            conn.send("ready")
            await asyncio.gather(*tasks)
            return {"latencies": latencies, "received": received, "errors": errors}

    conn.send(asyncio.run(main()))


def append_loop(address: str, work_order_id: str, rate: float, warmup: float, duration: float) -> dict[str, Any]:
    """Client process: appends one agent:output event a call at `rate` per second (0 = as
    fast as possible) for warmup+duration seconds, then run:complete."""

    async def main() -> dict[str, Any]:
        async with benchlib.aio_insecure_channel(address) as channel:
            stub = persistence_pb2_grpc.PersistenceServiceStub(channel)
            loop = asyncio.get_running_loop()
            start = loop.time()
            stop = start + warmup + duration
            sent = 0
            measured_from = time.time() + warmup
            while (now := loop.time()) < stop:
                if rate:
                    due = start + sent / rate
                    if due > now:
                        await asyncio.sleep(due - now)
                event = make_event(
                    ev.AGENT_OUTPUT,
                    work_order_id,
                    RUN,
                    iteration=1,
                    agent_output=events_pb2.AgentOutput(stream=events_pb2.OUTPUT_STREAM_STDOUT, text=LINE),
                )
                await stub.AppendEvents(persistence_pb2.AppendEventsRequest(events=[event]), timeout=30)
                sent += 1
            elapsed = loop.time() - start
            end = make_event(ev.RUN_COMPLETE, work_order_id, RUN, run_ended=events_pb2.RunEnded(iterations=1))
            await stub.AppendEvents(persistence_pb2.AppendEventsRequest(events=[end]), timeout=30)
            return {"sent": sent, "append_rate": sent / elapsed, "measured_from": measured_from}

    return asyncio.run(main())


def run_level(
    services: benchlib.Services,
    rate: float,
    index: int,
    args: Any,
    profiler: benchlib.Profiler,
    subscribers: int = SUBSCRIBERS,
) -> dict:
    """One measurement: fresh work order id, subscribers up, appender at `rate`."""
    warmup, duration = (0.5, 3.0) if args.quick else (1.0, 8.0)
    address = services.addresses["persistence"]
    work_order = f"{WORK_ORDER}{index}"
    measure_from = time.time() + 1.5 + warmup  # subscribe time + appender warm-up
    proc, conn = benchlib.start_process(subscribe, address, work_order, subscribers, measure_from)
    conn.recv()
    pids = {"persistence": services.pid("persistence")}
    with benchlib.cpu_meter(pids) as cpu, profiler.record(pids):
        (appended,) = benchlib.run_in_processes(append_loop, [(address, work_order, rate, warmup, duration)])
        result = conn.recv()
    proc.join(30)
    lat = benchlib.summary(result["latencies"])
    return {
        "followers": subscribers,
        "append_rate_target": rate or "max",
        "appended/s": appended["append_rate"],
        "delivered/s": len(result["latencies"]) / duration,
        "median_ms": benchlib.ms(lat["median"]),
        "p99_ms": benchlib.ms(lat["p99"]),
        "max_ms": benchlib.ms(lat["max"]),
        "stream_errors": sum(result["errors"].values()),
        "persistence_cpu%": cpu["persistence%"],
    }


def main() -> int:
    parser = benchlib.arg_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--rates", type=float, nargs="+", default=[20, 50, 100, 0], help="events appended per second (0 = unpaced loop)"
    )
    args = parser.parse_args()
    report = benchlib.Report(f"fan-out: {SUBSCRIBERS} StreamEvents followers of one run")
    figures = []
    with benchlib.Services() as services:
        services.start("persistence")
        for index, rate in enumerate(args.rates):
            profiler = benchlib.Profiler(args.profile if rate == 0 else None, "fanout")
            f = run_level(services, rate, index, args, profiler)
            figures.append(f)
            report.row(**f)
            profiler.print_top()
        report.row(**run_level(services, 0, len(args.rates), args, benchlib.Profiler(None, ""), subscribers=0))
    for f in figures:
        report.target(
            f"fan-out p99 with {SUBSCRIBERS} followers, appends at {benchlib.fmt(f['appended/s'])}/s",
            f["p99_ms"],
            50.0,
            "ms",
            higher_is_better=False,
        )
    report.note("the row with 0 followers is the append loop alone, for comparison")
    report.note("delivered/s counts agent:output events received by all followers together in the measured window")
    report.print()
    report.save(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
