"""9. PostgreSQL: the queue cycle and the event log on SQLite and on PostgreSQL, one and two
replicas, beside a PostgreSQL-backed peer queue (pgqueuer), in the same run on one private
PostgreSQL 15 server (tests/pg_server.py: a temporary cluster, fsync off for every side).

- Queue cycle: a producer process with 4 concurrent Submit loops and a worker process with
  4 Lease -> Complete loops (bench_peer.py's clients), N no-op work orders, through one
  queue replica or through a channel to two (`a,b`: round robin over both).
- pgqueuer (asyncpg driver): 4 concurrent enqueuers and one QueueManager running up to 4
  jobs at once on the same server; "done" = the job function ran (pgqueuer marks it done
  after).
- Events: 4 concurrent appenders (AppendEvents, one event per call, 4 work orders) through
  one persistence replica or split over two, while one follower per work order streams it
  (follow) from the first replica: append rate, and how long an event takes from its append
  to its follower (through LISTEN/NOTIFY when another replica stored it).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib
from bench_peer import PRODUCERS, WORKERS, ag_producer, ag_worker, figures

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.pg_server import PgServer  # noqa: E402 - the repository root is on the path only now

APPENDERS = 4


def start_replicas(names: tuple[str, ...], replicas: int, database_url: str, home: Path) -> list[benchlib.Services]:
    """`replicas` copies of the named services on one home (one service key) and database;
    every queue forwards its events to the first persistence."""
    env = {"AGENTGATE_MAX_CONCURRENT": str(WORKERS), "AGENTGATE_MAX_QUEUE_SIZE": "10000000"}
    if database_url:
        env["AGENTGATE_DATABASE_URL"] = database_url
    first = benchlib.Services(home=home, env=env).start(*names)
    started = [first]
    for _ in range(replicas - 1):
        more = benchlib.Services(home=home, env=env)
        # This process's bench credential (`use_credential_of`) is no token of the services.
        more.env.pop("AGENTGATE_TOKEN", None)
        if "queue" in names:
            # A second queue; one persistence receives every queue's events.
            more.env["AGENTGATE_PERSISTENCE_ADDR"] = first.addresses["persistence"]
            started.append(more.start("queue"))
        else:
            started.append(more.start(*names))
    return started


def stop_all(services: list[benchlib.Services]) -> None:
    for each in services:
        each.stop()


def run_queue(label: str, count: int, database_url: str, replicas: int) -> dict[str, Any]:
    """One queue-cycle measurement."""
    from agentgate.v1 import queue_pb2

    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
        home = Path(tmp) / "home"
        services = start_replicas(("persistence", "queue"), replicas, database_url, home)
        try:
            address = ",".join(s.addresses["queue"] for s in services)
            spec = benchlib.noop_spec(benchlib.make_project(Path(tmp) / "project"))
            payload = queue_pb2.SubmitRequest(spec=spec).SerializeToString()
            worker, conn = benchlib.start_process(ag_worker, address, count)
            conn.recv()
            pids = {f"{name}-{i}": pid for i, s in enumerate(services) for name, pid in s.pids().items()}
            with benchlib.cpu_meter(pids) as cpu:
                (produced,) = benchlib.run_in_processes(ag_producer, [(address, payload, count)])
                worked = conn.recv()
            worker.join(10)
        finally:
            stop_all(services)
    return figures(label, produced["sent"], worked["done"], cpu)


# -- pgqueuer -----------------------------------------------------------------------------


def pgq_consumer(conn: Any, url: str, count: int) -> None:
    """Child process: pgqueuer's QueueManager (asyncpg driver, its own and most used)
    running up to 4 jobs at once until `count` ran."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager

    async def main() -> dict[str, float]:
        done: dict[str, float] = {}
        db = await asyncpg.connect(url)
        manager = QueueManager(Queries(AsyncpgDriver(db)))

        @manager.entrypoint("noop", concurrency_limit=WORKERS)
        async def noop(job: Any) -> None:
            done[(job.payload or b"").decode()] = time.time()
            if len(done) >= count:
                manager.shutdown.set()

        conn.send("ready")
        await manager.run(dequeue_timeout=_seconds(1))
        await db.close()
        return done

    conn.send(asyncio.run(main()))


def _seconds(value: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=value)


def pgq_producer(url: str, count: int) -> dict[str, float]:
    """Client process: 4 concurrent enqueue loops; job key -> enqueue time."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    async def main() -> dict[str, float]:
        sent: dict[str, float] = {}

        async def producer(index: int, n: int) -> None:
            db = await asyncpg.connect(url)
            queries = Queries(AsyncpgDriver(db))
            for i in range(n):
                key = f"{index}-{i}"
                sent[key] = time.time()
                await queries.enqueue("noop", key.encode())
            await db.close()

        await asyncio.gather(*(producer(p, count // PRODUCERS) for p in range(PRODUCERS)))
        return sent

    return asyncio.run(main())


def run_pgqueuer(count: int, url: str) -> dict[str, Any]:
    """One pgqueuer measurement on its own database."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    async def install() -> None:
        db = await asyncpg.connect(url)
        await Queries(AsyncpgDriver(db)).install()
        await db.close()

    asyncio.run(install())
    consumer, conn = benchlib.start_process(pgq_consumer, url, count)
    conn.recv()
    with benchlib.cpu_meter({"consumer": consumer.pid}) as cpu:
        (sent,) = benchlib.run_in_processes(pgq_producer, [(url, count)])
        done = conn.recv()
    consumer.join(10)
    return figures("pgqueuer 1.6 (PostgreSQL, asyncpg driver)", sent, done, cpu)


# -- events -------------------------------------------------------------------------------


def run_events(label: str, count: int, database_url: str, replicas: int) -> dict[str, Any]:
    """Append rate and append -> follower latency."""
    with tempfile.TemporaryDirectory(prefix="bench-pg-events-") as tmp:
        services = start_replicas(("persistence",), replicas, database_url, Path(tmp) / "home")
        try:
            addresses = [s.addresses["persistence"] for s in services]
            result = benchlib.run_in_processes(events_client, [(addresses, count)])[0]
        finally:
            stop_all(services)
    return {"log": label, **result}


def events_client(addresses: list[str], count: int) -> dict[str, Any]:
    """Client process: followers on the first replica, appenders spread over all."""
    from agentgate.common.events import RUN_COMPLETE, make_event
    from agentgate.v1 import persistence_pb2, persistence_pb2_grpc

    async def main() -> dict[str, Any]:
        channels = [benchlib.aio_insecure_channel(address) for address in addresses]
        stubs = [persistence_pb2_grpc.PersistenceServiceStub(channel) for channel in channels]
        sent: dict[tuple[str, int], float] = {}
        latencies: list[float] = []
        per_order = count // APPENDERS

        async def follow(work_order_id: str) -> int:
            received = 0
            call = stubs[0].StreamEvents(persistence_pb2.StreamEventsRequest(work_order_id=work_order_id, follow=True))
            async for message in call:
                event = message.event
                received += 1
                stamp = sent.get((work_order_id, event.seq))
                if stamp is not None:
                    latencies.append(time.time() - stamp)
                if event.type == RUN_COMPLETE:
                    break
            return received

        async def append(index: int) -> None:
            work_order_id = f"wo-bench-{index}"
            stub = stubs[index % len(stubs)]
            for i in range(per_order):
                kind = RUN_COMPLETE if i == per_order - 1 else "agent:output"
                # One appender per work order: this event's seq is i + 1. Stamped before the
                # call, since its follower may get it before the call returns.
                sent[(work_order_id, i + 1)] = time.time()
                response = await stub.AppendEvents(
                    persistence_pb2.AppendEventsRequest(events=[make_event(kind, work_order_id, f"run-bench-{index}")]),
                    timeout=30,
                )
                assert response.seqs[0] == i + 1

        followers = [asyncio.create_task(follow(f"wo-bench-{i}")) for i in range(APPENDERS)]
        await asyncio.sleep(0.5)  # the followers subscribe first
        start = time.perf_counter()
        await asyncio.gather(*(append(i) for i in range(APPENDERS)))
        appended = time.perf_counter() - start
        received = await asyncio.wait_for(asyncio.gather(*followers), 120)
        for channel in channels:
            await channel.close()
        lat = benchlib.summary(latencies)
        return {
            "events": per_order * APPENDERS,
            "appends/s": per_order * APPENDERS / appended,
            "followed": sum(received),
            "follow_median_ms": benchlib.ms(lat["median"]),
            "follow_p99_ms": benchlib.ms(lat["p99"]),
        }

    return asyncio.run(main())


def main() -> int:
    parser = benchlib.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    count = 400 if args.quick else args.jobs
    count -= count % (PRODUCERS * APPENDERS)
    report = benchlib.Report("PostgreSQL: queue cycle and event log, SQLite vs PostgreSQL, 1 and 2 replicas, pgqueuer")
    server = PgServer.start()
    try:
        for label, url, replicas in (
            ("AgentGate queue, SQLite, 1 replica", "", 1),
            ("AgentGate queue, PostgreSQL, 1 replica", server.create_database(), 1),
            ("AgentGate queue, PostgreSQL, 2 replicas", server.create_database(), 2),
        ):
            report.row("queue cycle: no-op jobs, 4 producers, 4 workers", **run_queue(label, count, url, replicas))
        peer = run_pgqueuer(count, server.create_database())
        report.row("queue cycle: no-op jobs, 4 producers, 4 workers", **peer)
        for label, url, replicas in (
            ("persistence, SQLite, 1 replica", "", 1),
            ("persistence, PostgreSQL, 1 replica", server.create_database(), 1),
            ("persistence, PostgreSQL, 2 replicas (follower on the first)", server.create_database(), 2),
        ):
            report.row("event log: 4 appenders, 1 follower per work order", **run_events(label, count, url, replicas))
    finally:
        server.stop()
    queue_rows = report.tables["queue cycle: no-op jobs, 4 producers, 4 workers"]
    report.target(
        "AgentGate on PostgreSQL (1 replica) jobs/s / pgqueuer jobs/s, same server",
        queue_rows[1]["jobs/s"] / peer["jobs/s"],
        1.0,
        "x",
        higher_is_better=True,
    )
    report.note(
        "server_cpu% = the queue + persistence processes (AgentGate) or pgqueuer's consumer;"
        " PostgreSQL's own CPU is not counted for either"
    )
    report.note(
        "the PostgreSQL server runs with fsync=off and synchronous_commit=off (a test cluster);"
        " SQLite runs WAL, synchronous=NORMAL"
    )
    report.print()
    report.save(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
