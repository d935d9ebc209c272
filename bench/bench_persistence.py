"""5. Persistence and memory: agent results of 1 MiB saved per second; RSS of each service
idle and with 50 concurrent runs.

Saves: the real persistence service as its own process; one run created, then a separate
client process sends SaveAgentResult with 1 MiB of stdout (iterations 1..20, cycling, so
agent-N.json files are replaced as a long run would) at 1 and 4 in flight.

Memory: `agentgate up --detach` with AGENTGATE_MAX_CONCURRENT=50 and
AGENTGATE_MAX_CONCURRENT_RUNS=50. RSS (psutil) of each service: idle after start; the
peak while 50 work orders run a scripted agent that sleeps (so all 50 are in flight at
once); and idle again after they ended. The agents' own processes are reported apart.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import benchlib

from agentgate.v1 import common_pb2, persistence_pb2, persistence_pb2_grpc, queue_pb2, queue_pb2_grpc

MIB = 1024 * 1024
RUNS = 50


def one_mib_stdout() -> str:
    """1 MiB of agent-like text: numbered lines of ASCII."""
    lines = []
    size = 0
    i = 0
    while size < MIB:
        line = f"{i:08d} compiling module_{i % 97}.py ... ok ({i % 13} warnings)\n"
        lines.append(line)
        size += len(line)
        i += 1
    return "".join(lines)[:MIB]


def measure_saves(args: Any, report: benchlib.Report, profiler: benchlib.Profiler) -> None:
    """SaveAgentResult of 1 MiB results at 1 and 4 in flight."""
    warmup, duration = (0.5, 3.0) if args.quick else (1.0, 6.0)
    with benchlib.Services() as services:
        services.start("persistence")
        address = services.addresses["persistence"]
        run_id = "run-savebench01"

        async def create() -> None:
            async with benchlib.aio_insecure_channel(address) as channel:
                stub = persistence_pb2_grpc.PersistenceServiceStub(channel)
                await stub.CreateRun(
                    persistence_pb2.CreateRunRequest(run=common_pb2.Run(id=run_id, work_order_id="wo-savebench01")),
                    timeout=10,
                )

        asyncio.run(create())
        stdout = one_mib_stdout()
        payloads = [
            persistence_pb2.SaveAgentResultRequest(
                result=common_pb2.AgentResult(
                    run_id=run_id,
                    iteration=i,
                    success=True,
                    exit_code=0,
                    stdout=stdout,
                    stderr="",
                    duration_seconds=1.0,
                    stdout_bytes=len(stdout),
                )
            ).SerializeToString()
            for i in range(1, 21)
        ]
        pids = {"persistence": services.pid("persistence")}
        for concurrency in (1, 4):
            sampler = profiler.record(pids) if concurrency == 1 else benchlib.Profiler(None, "").record(pids)
            with benchlib.cpu_meter(pids) as cpu, sampler:
                (result,) = benchlib.run_in_processes(
                    benchlib.unary_load,
                    [
                        (
                            address,
                            "/agentgate.v1.PersistenceService/SaveAgentResult",
                            payloads,
                            concurrency,
                            warmup,
                            duration,
                        )
                    ],
                )
            f = benchlib.load_figures(result)
            report.row(
                "SaveAgentResult, 1 MiB stdout",
                in_flight=concurrency,
                **{"saves/s": f["calls/s"]},
                **{"MiB/s": f["calls/s"] * len(payloads[0]) / MIB},
                median_ms=f["median_ms"],
                p99_ms=f["p99_ms"],
                errors=f["errors"],
                **{"persistence_cpu%": cpu["persistence%"]},
            )
            report.extra[f"saves_per_second_c{concurrency}"] = f["calls/s"]


def rss_all(pids: dict[str, int]) -> dict[str, float]:
    """RSS (MiB) of each service process."""
    return {name: benchlib.rss_mib(pid) for name, pid in pids.items()}


def children_rss(pid: int) -> tuple[int, float]:
    """(count, MiB) of the live descendant processes of `pid` (agents, checks, git)."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return 0, 0.0
    total = 0
    for child in children:
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue
    return len(children), total / MIB


def measure_memory(args: Any, report: benchlib.Report) -> None:
    """RSS idle, at 50 concurrent runs (peak), and idle again."""
    runs = 10 if args.quick else RUNS
    sleep = 6 if args.quick else 20
    env = {"AGENTGATE_MAX_CONCURRENT": str(runs), "AGENTGATE_MAX_CONCURRENT_RUNS": str(runs)}
    with benchlib.Suite(env) as suite:
        pids = suite.pids()
        time.sleep(2.0)
        idle = rss_all(pids)
        project = benchlib.make_project(suite.work / "project")
        spec = benchlib.noop_spec(project, script=f"default: [{{sleep: {sleep}}}]\n")
        peak = dict.fromkeys(pids, 0.0)
        peak_agents = (0, 0.0)
        max_running = 0
        channel = benchlib.insecure_channel(suite.addresses["queue"])
        queue = queue_pb2_grpc.QueueServiceStub(channel)
        try:
            for _ in range(runs):
                queue.Submit(queue_pb2.SubmitRequest(spec=spec), timeout=30)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                for name, value in rss_all(pids).items():
                    peak[name] = max(peak[name], value)
                agents = children_rss(pids["workspace"])
                if agents[0] > peak_agents[0]:
                    peak_agents = agents
                stats = queue.GetQueueStats(queue_pb2.GetQueueStatsRequest(), timeout=10)
                max_running = max(max_running, stats.running)
                if stats.running == 0 and stats.waiting == 0:
                    break
                time.sleep(0.25)
        finally:
            channel.close()
        time.sleep(2.0)
        after = rss_all(pids)
    for name in benchlib.SERVICES:
        report.row(
            f"RSS (MiB), {runs} concurrent runs",
            service=name,
            idle=idle[name],
            peak_under_load=peak[name],
            idle_after=after[name],
            growth_per_run_kib=(peak[name] - idle[name]) * 1024 / runs,
        )
    report.note(
        f"{max_running} work orders were running at once at most; the most live processes under the workspace "
        f"service at once: {peak_agents[0]} (agents, checks, git) using {benchlib.fmt(peak_agents[1])} MiB"
    )
    report.extra["rss"] = {"idle": idle, "peak": peak, "after": after, "max_running": max_running}


def main() -> int:
    parser = benchlib.arg_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    report = benchlib.Report("persistence: 1 MiB agent results; memory of the services")
    profiler = benchlib.Profiler(args.profile, "persist-save")
    measure_saves(args, report, profiler)
    measure_memory(args, report)
    report.print()
    profiler.print_top()
    report.save(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
