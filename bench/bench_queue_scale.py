"""3. Queue scale: Submit and Lease rates and GetPosition latency with 100, 10,000 and
100,000 pending work orders.

Pre-fill (documented in docs/benchmarks.md): with the queue service stopped, one work order
is submitted through the store API (`QueueStore.submit`, so the row is exactly what the
service writes), then cloned N-1 times with fresh ids, run ids and increasing `seq` in one
SQLite transaction (`executemany`, every other column copied from the template row, so a
new column keeps working). 100,000 rows take a few seconds; 100,000 Submits would take
many minutes. The clones have no `work_order:queued` event in persistence; the queue does
not need one to lease them.

Then the real persistence and queue services start (fresh home per level, lease time 10 min
so the reaper does not interfere, max_concurrent and max_queue_size out of the way) and a
separate client process measures, in this order:
- GetPosition of random pending work orders, one call at a time (latency);
- Lease, 16 in flight, leases kept, until none is left or the time is up (rate of leases
  handed out, and latency); at 100 pending that is 100 leases;
- Submit, 16 in flight (rate and latency).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib

from agentgate.queue.store import QueueStore
from agentgate.v1 import queue_pb2

LEVELS = (100, 10_000, 100_000)
QUEUE = "/agentgate.v1.QueueService/"


def prefill(db_path: Path, spec: Any, count: int) -> list[str]:
    """Fills the queue database with `count` pending work orders; returns their ids."""

    async def template() -> str:
        store = await QueueStore.open(db_path)
        try:
            work_order, _ = await store.submit(spec, max_queue_size=count + 1)
        finally:
            await store.close()
        return work_order.id

    first = asyncio.run(template())
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        row = dict(conn.execute("SELECT * FROM work_orders WHERE id = ?", (first,)).fetchone())
        columns = list(row)
        ids = [first]
        values = []
        for i in range(1, count):
            clone = dict(row)
            clone["id"] = f"wo-b{i:011x}"
            clone["run_id"] = f"run-b{i:011x}"
            clone["seq"] = row["seq"] + i
            clone["created_at"] = clone["enqueued_at"] = row["created_at"] + i
            ids.append(clone["id"])
            values.append(tuple(clone[c] for c in columns))
        with conn:
            conn.executemany(
                f"INSERT INTO work_orders ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})", values
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return ids


def time_count_query(db_path: Path) -> float:
    """Milliseconds of the query Submit and GetPosition run on every call (count of the
    waiting work orders), median of 20, straight on the SQLite file."""
    conn = sqlite3.connect(db_path)
    try:
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            conn.execute("SELECT COUNT(*) FROM work_orders WHERE status = 1").fetchone()
            times.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return benchlib.ms(benchlib.summary(times)["median"])


def measure_level(level: int, spec: Any, args: Any, report: benchlib.Report, profiler: benchlib.Profiler) -> dict:
    """Pre-fills `level` work orders, starts the services, measures; returns the figures."""
    warmup, duration = (0.3, 2.0) if args.quick else (1.0, 5.0)
    env = {
        "AGENTGATE_MAX_QUEUE_SIZE": "10000000",
        "AGENTGATE_MAX_CONCURRENT": "10000000",
        "AGENTGATE_LEASE_SECONDS": "600",
    }
    with benchlib.Services(env=env) as services:
        t0 = time.monotonic()
        ids = prefill(services.home / "queue.db", spec, level)
        fill_seconds = time.monotonic() - t0
        count_ms = time_count_query(services.home / "queue.db")
        services.start("persistence", "queue")
        address = services.addresses["queue"]
        pids = {"queue": services.pid("queue")}
        rng = random.Random(level)
        positions = [
            queue_pb2.GetPositionRequest(work_order_id=rng.choice(ids)).SerializeToString() for _ in range(2000)
        ]
        submit = [queue_pb2.SubmitRequest(spec=spec).SerializeToString()]
        lease = [queue_pb2.LeaseRequest(worker_id="bench", wait_seconds=0.05).SerializeToString()]
        figures = {}
        for name, method, payloads, concurrency in (
            ("GetPosition", "GetPosition", positions, 1),
            ("Lease", "Lease", lease, 16),
            ("Submit", "Submit", submit, 16),
        ):
            # Lease comes before Submit and without warm-up: it takes pre-filled work orders,
            # whose events are not in the outbox, so it measures the store and not the
            # wait for event delivery (bench_peer measures that).
            lead = 0.0 if name == "Lease" else warmup
            sampled = profiler.record(pids) if name != "GetPosition" else contextlib.nullcontext()
            with benchlib.cpu_meter(pids) as cpu, sampled:
                (result,) = benchlib.run_in_processes(
                    benchlib.unary_load,
                    [(address, QUEUE + method, payloads, concurrency, lead, duration, name == "Lease")],
                )
            f = benchlib.load_figures(result)
            figures[name] = f
            report.row(pending=level, rpc=name, in_flight=concurrency, **f, **{"queue_cpu%": cpu["queue%"]})
        report.row(
            "pre-fill, and one COUNT(*) of the pending work orders in SQLite",
            pending=level,
            prefill_seconds=fill_seconds,
            count_query_ms=count_ms,
        )
    return figures


def main() -> int:
    parser = benchlib.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    args = parser.parse_args()
    report = benchlib.Report("queue scale: pending work orders")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        spec = benchlib.noop_spec(benchlib.make_project(Path(tmp) / "project"))
        for level in args.levels:
            profiler = benchlib.Profiler(args.profile if level == max(args.levels) else None, f"queue-{level}")
            results[level] = measure_level(level, spec, args, report, profiler)
            profiler.print_top()
    low, high = min(results), max(results)
    for name in ("Submit", "Lease"):
        ratio = results[low][name]["calls/s"] / results[high][name]["calls/s"]
        report.target(
            f"{name} rate at {low:,} pending / rate at {high:,} pending (slowdown)",
            ratio,
            2.0,
            "x",
            higher_is_better=False,
        )
    report.target(
        f"GetPosition p99 at {high:,} pending",
        results[high]["GetPosition"]["p99_ms"],
        5.0,
        "ms",
        higher_is_better=False,
    )
    report.note(
        "Lease takes pre-filled work orders (all 100 at the first level), Submit then adds some: "
        "each level measures around its pending count"
    )
    report.print()
    report.save(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
