"""6. Peer: enqueue -> dequeue -> done of no-op jobs through huey (SqliteHuey) and through
the AgentGate queue (Submit -> Lease -> Complete), both durable, same machine, same run.

Both sides get the same shape: a producer process with 4 concurrent enqueuers puts N jobs
in; a consumer process with 4 workers takes them out and marks them done.

- huey: huey's own consumer (`huey.create_consumer`, 4 worker threads, polling from 10 ms
  up to 100 ms when idle) on SQLite in WAL mode; the task returns a timestamp, so "done" =
  huey executed it and stored its result. Run twice: `synchronous=NORMAL` (the same
  durability as our queue) and huey's default `synchronous=FULL`.
- AgentGate: the real queue and persistence services as processes
  (AGENTGATE_MAX_CONCURRENT=4); a worker process with 4 tasks looping Lease -> Complete.
  "done" = Complete returned (the work order is SUCCEEDED in queue.db).

Figures: jobs per second (N / first enqueue -> last done) and the latency of each job
(enqueue -> done).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import benchlib

WORKERS = 4
PRODUCERS = 4


# -- huey ---------------------------------------------------------------------------------


def huey_consumer(conn: Any, db: str, synchronous: str) -> None:
    """Child process: huey's consumer with 4 worker threads, until terminated."""
    os.environ["BENCH_HUEY_DB"] = db
    os.environ["BENCH_HUEY_SYNCHRONOUS"] = synchronous
    import logging

    import peer_huey

    logging.basicConfig(level=logging.WARNING)
    consumer = peer_huey.huey.create_consumer(
        workers=WORKERS,
        worker_type="thread",
        periodic=False,
        initial_delay=0.01,
        backoff=1.15,
        max_delay=0.1,
        check_worker_health=False,
    )
    conn.send("ready")
    consumer.run()


def huey_producer(db: str, synchronous: str, count: int) -> dict[str, float]:
    """Client process: enqueues `count` no-op tasks from 4 threads; task id -> enqueue time."""
    os.environ["BENCH_HUEY_DB"] = db
    os.environ["BENCH_HUEY_SYNCHRONOUS"] = synchronous
    import peer_huey

    sent: dict[str, float] = {}
    lock = threading.Lock()

    def enqueue(n: int) -> None:
        for _ in range(n):
            t0 = time.time()
            result = peer_huey.noop()
            with lock:
                sent[result.id] = t0

    threads = [threading.Thread(target=enqueue, args=(count // PRODUCERS,)) for _ in range(PRODUCERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent


def run_huey(count: int, synchronous: str) -> dict[str, Any]:
    """One huey measurement on a fresh database."""
    with tempfile.TemporaryDirectory(prefix="bench-huey-") as tmp:
        db = str(Path(tmp) / "huey.db")
        os.environ["BENCH_HUEY_DB"] = db
        os.environ["BENCH_HUEY_SYNCHRONOUS"] = synchronous
        import peer_huey

        # This process reads the results through its own storage object on this run's file.
        storage = peer_huey.TunedSqliteStorage("bench", filename=db)
        consumer, conn = benchlib.start_process(huey_consumer, db, synchronous)
        conn.recv()
        try:
            pids = {"consumer": consumer.pid}
            with benchlib.cpu_meter(pids) as cpu:
                (sent,) = benchlib.run_in_processes(huey_producer, [(db, synchronous, count)])
                deadline = time.monotonic() + 300
                while storage.result_store_size() < len(sent) and time.monotonic() < deadline:
                    time.sleep(0.01)
            done = {}
            for task_id in sent:
                value = storage.peek_data(task_id)
                done[task_id] = peer_huey.huey.serializer.deserialize(value)
        finally:
            consumer.terminate()
            consumer.join(10)
            storage.close()
    return figures(f"huey SqliteHuey, synchronous={synchronous}", sent, done, cpu)


# -- AgentGate ----------------------------------------------------------------------------


def ag_worker(conn: Any, address: str, count: int) -> None:
    """Child process: 4 tasks looping Lease -> Complete until `count` jobs are done."""
    from agentgate.v1 import common_pb2, queue_pb2, queue_pb2_grpc

    async def main() -> dict[str, Any]:
        done: dict[str, float] = {}
        lease_s: list[float] = []
        complete_s: list[float] = []
        async with benchlib.aio_insecure_channel(address) as channel:
            queue = queue_pb2_grpc.QueueServiceStub(channel)
            await queue.GetQueueStats(queue_pb2.GetQueueStatsRequest(), timeout=10)
            conn.send("ready")

            async def worker() -> None:
                while len(done) < count:
                    t0 = time.perf_counter()
                    lease = await queue.Lease(queue_pb2.LeaseRequest(worker_id="bench", wait_seconds=0.5), timeout=10)
                    if not lease.leased:
                        continue
                    t1 = time.perf_counter()
                    lease_s.append(t1 - t0)
                    await queue.Complete(
                        queue_pb2.CompleteRequest(
                            lease_id=lease.lease_id, status=common_pb2.WORK_ORDER_STATUS_SUCCEEDED
                        ),
                        timeout=10,
                    )
                    complete_s.append(time.perf_counter() - t1)
                    done[lease.work_order.id] = time.time()

            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(WORKERS))), 300)
        return {"done": done, "lease": lease_s, "complete": complete_s}

    conn.send(asyncio.run(main()))


def ag_producer(address: str, payload: bytes, count: int) -> dict[str, Any]:
    """Client process: 4 concurrent Submit loops; work order id -> submit time, and the
    Submit latencies."""
    from agentgate.v1 import queue_pb2, queue_pb2_grpc

    async def main() -> dict[str, Any]:
        sent: dict[str, float] = {}
        submit_s: list[float] = []
        request = queue_pb2.SubmitRequest.FromString(payload)
        async with benchlib.aio_insecure_channel(address) as channel:
            queue = queue_pb2_grpc.QueueServiceStub(channel)

            async def producer(n: int) -> None:
                for _ in range(n):
                    t0 = time.time()
                    response = await queue.Submit(request, timeout=30)
                    submit_s.append(time.time() - t0)
                    sent[response.work_order.id] = t0

            await asyncio.gather(*(producer(count // PRODUCERS) for _ in range(PRODUCERS)))
        return {"sent": sent, "submit": submit_s}

    return asyncio.run(main())


def run_agentgate(count: int, profiler: benchlib.Profiler, report: benchlib.Report) -> dict[str, Any]:
    """One measurement of the AgentGate queue on a fresh home."""
    from agentgate.v1 import queue_pb2

    env = {"AGENTGATE_MAX_CONCURRENT": str(WORKERS), "AGENTGATE_MAX_QUEUE_SIZE": "10000000"}
    with benchlib.Services(env=env) as services, tempfile.TemporaryDirectory() as tmp:
        services.start("persistence", "queue")
        address = services.addresses["queue"]
        spec = benchlib.noop_spec(benchlib.make_project(Path(tmp) / "project"))
        payload = queue_pb2.SubmitRequest(spec=spec).SerializeToString()
        worker, conn = benchlib.start_process(ag_worker, address, count)
        conn.recv()
        pids = services.pids()
        with benchlib.cpu_meter(pids) as cpu, profiler.record(pids):
            (produced,) = benchlib.run_in_processes(ag_producer, [(address, payload, count)])
            worked = conn.recv()
        worker.join(10)
    for rpc, values in (("Submit", produced["submit"]), ("Lease", worked["lease"]), ("Complete", worked["complete"])):
        lat = benchlib.summary(values)
        report.row(
            "AgentGate cycle by RPC (client latency)",
            rpc=rpc,
            in_flight=4,
            calls=len(values),
            median_ms=benchlib.ms(lat["median"]),
            p99_ms=benchlib.ms(lat["p99"]),
        )
    report.note(
        "CPU of the AgentGate services during the cycle, % of one core: "
        + ", ".join(f"{n} {benchlib.fmt(cpu[n + '%'])}" for n in pids)
    )
    return figures("AgentGate queue (Submit -> Lease -> Complete)", produced["sent"], worked["done"], cpu)


def figures(name: str, sent: dict[str, float], done: dict[str, float], cpu: dict[str, float]) -> dict[str, Any]:
    """Throughput and latency of one side."""
    finished = [k for k in sent if k in done]
    latencies = [done[k] - sent[k] for k in finished]
    span = max(done[k] for k in finished) - min(sent.values())
    lat = benchlib.summary(latencies)
    return {
        "queue": name,
        "jobs": len(finished),
        "jobs/s": len(finished) / span,
        "median_ms": benchlib.ms(lat["median"]),
        "p99_ms": benchlib.ms(lat["p99"]),
        "server_cpu%": sum(v for k, v in cpu.items() if k.endswith("%")),
    }


def main() -> int:
    parser = benchlib.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    count = 400 if args.quick else args.jobs
    count -= count % PRODUCERS
    report = benchlib.Report("peer: durable no-op job cycle, huey vs AgentGate queue")
    huey_normal = run_huey(count, "NORMAL")
    huey_full = run_huey(count, "FULL")
    profiler = benchlib.Profiler(args.profile, "peer")
    ours = run_agentgate(count, profiler, report)
    for row in (huey_normal, huey_full, ours):
        report.row(**row)
    report.target(
        "AgentGate jobs/s / huey jobs/s (same durability, synchronous=NORMAL)",
        ours["jobs/s"] / huey_normal["jobs/s"],
        1.0,
        "x",
        higher_is_better=True,
    )
    report.note("server_cpu% = huey's consumer process, or the queue + persistence service processes (100 = one core)")
    report.note("huey's producers write SQLite directly; ours go through gRPC to the queue service")
    report.print()
    profiler.print_top()
    report.save(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
