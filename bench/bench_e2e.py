"""2. End to end: trivial work orders through the four service processes, 4 runs at once.

`agentgate up --detach` (temporary home, free ports, AGENTGATE_MAX_CONCURRENT=4,
AGENTGATE_MAX_CONCURRENT_RUNS=4). Work order: the scripted agent with an empty script
(does nothing), one iteration, a gate plan with one check running `true`.

Load: a closed loop of 4 clients; each submits a work order, follows its events
(StreamEvents) to the terminal event, and submits the next. So 4 runs are in flight and no
backlog builds up: the queue phase is dispatch time, not waiting behind others.

Overhead per work order = queue finished_at - work_order:queued - the agent process's
own duration (AgentResult.duration_seconds) - the check processes' own durations
(CheckResult.duration_seconds), split by phase from the run's event timestamps:

  queue     work_order:queued -> run:started: Submit commit, Lease wake-up, outbox flush, run start
  prepare   run:started -> workspace:acquired: PrepareForRun (copy, git init/add/commit);
            CreateRun and UpdateRun run behind the run (background, in order)
  agent     workspace:acquired -> agent:complete, minus the agent's own time: RunAgent
            spawn and output streaming, SaveAgentResult
  snapshot  agent:complete -> snapshot:created: git add + commit (which finds nothing to commit)
  verify    snapshot:created -> verification:complete, minus the checks' own time: clean room
            (one read-tree), gate plan, SaveVerificationReport
  finish    verification:complete -> the work order's finished_at: ReleaseLease overlapping the
            remaining run saves (SaveIteration, final UpdateRun), event flush, Complete
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib
import grpc

from agentgate.common import events as ev
from agentgate.common.messages import from_json
from agentgate.v1 import (
    common_pb2,
    persistence_pb2,
    persistence_pb2_grpc,
    queue_pb2,
    queue_pb2_grpc,
)

PHASES = ("queue", "prepare", "agent", "snapshot", "verify", "finish")
CONCURRENT = 4


def _ts(timestamp: Any) -> float:
    return timestamp.seconds + timestamp.nanos / 1e9


async def _follow(persistence: Any, work_order_id: str) -> list[Any]:
    """Every event of the work order, until its terminal event."""
    events = []
    call = persistence.StreamEvents(
        persistence_pb2.StreamEventsRequest(work_order_id=work_order_id, follow=True), timeout=300
    )
    async for item in call:
        events.append(item.event)
        if item.event.type in ev.TERMINAL_EVENT_TYPES:
            break
    call.cancel()
    return events


async def run_load(suite: benchlib.Suite, total: int, warmup: int, profiler: benchlib.Profiler) -> dict[str, Any]:
    """Runs warmup then `total` work orders through 4 closed-loop clients."""
    project = benchlib.make_project(suite.work / "project")
    spec = benchlib.noop_spec(project)
    async with (
        benchlib.aio_insecure_channel(suite.addresses["queue"]) as qch,
        benchlib.aio_insecure_channel(suite.addresses["persistence"]) as pch,
    ):
        queue = queue_pb2_grpc.QueueServiceStub(qch)
        persistence = persistence_pb2_grpc.PersistenceServiceStub(pch)
        done: list[dict[str, Any]] = []

        async def one() -> dict[str, Any]:
            t0 = time.time()
            response = await queue.Submit(queue_pb2.SubmitRequest(spec=spec), timeout=30)
            events = await _follow(persistence, response.work_order.id)
            return {
                "id": response.work_order.id,
                "run_id": response.work_order.run_id,
                "submitted": t0,
                "seen": time.time(),
                "events": events,
            }

        async def client(count: int) -> None:
            for _ in range(count):
                done.append(await one())

        await asyncio.gather(*(client(1) for _ in range(CONCURRENT)))  # warm-up: imports, caches, first git
        if warmup > CONCURRENT:
            await asyncio.gather(*(client((warmup - CONCURRENT) // CONCURRENT) for _ in range(CONCURRENT)))
        done.clear()
        pids = suite.pids()
        with benchlib.cpu_meter(pids, children=True) as cpu, profiler.record(pids):
            started = time.monotonic()
            share = [total // CONCURRENT + (1 if i < total % CONCURRENT else 0) for i in range(CONCURRENT)]
            await asyncio.gather(*(client(n) for n in share))
            elapsed = time.monotonic() - started

        rows = []
        for item in done:
            wo = await queue.GetWorkOrder(queue_pb2.GetWorkOrderRequest(work_order_id=item["id"]), timeout=10)
            wo = wo.work_order
            agent, report = await _records(suite, persistence, item["run_id"])
            rows.append(phases(item, wo, agent, report))
    return {"rows": rows, "elapsed": elapsed, "cpu": cpu}


async def _records(suite: benchlib.Suite, persistence: Any, run_id: str) -> tuple[Any, Any]:
    """Iteration 1's agent result and verification report: through the persistence read
    API, or from the run's files where that API is not served yet."""
    try:
        agent = (
            await persistence.GetAgentResult(
                persistence_pb2.GetAgentResultRequest(run_id=run_id, iteration=1), timeout=10
            )
        ).result
        report = (
            await persistence.GetVerificationReport(
                persistence_pb2.GetVerificationReportRequest(run_id=run_id, iteration=1), timeout=10
            )
        ).report
        return agent, report
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
    run_dir = suite.home / "runs" / run_id
    agent = from_json((run_dir / "agent-1.json").read_text(), common_pb2.AgentResult())
    report = from_json((run_dir / "verification-1.json").read_text(), common_pb2.VerificationReport())
    return agent, report


def phases(item: dict[str, Any], wo: Any, agent: Any, report: Any) -> dict[str, Any]:
    """The overhead of one work order by phase (seconds)."""
    at: dict[str, float] = {}
    for event in item["events"]:
        at.setdefault(event.type, _ts(event.timestamp))
    checks = sum(c.duration_seconds for level in report.levels for c in level.checks)
    finished = _ts(wo.finished_at)
    queued = at[ev.WORK_ORDER_QUEUED]
    out = {
        "status": wo.status,
        "terminal": item["events"][-1].type,
        "agent_own": agent.duration_seconds,
        "checks_own": checks,
        "queue": at[ev.RUN_STARTED] - queued,
        "prepare": at[ev.WORKSPACE_ACQUIRED] - at[ev.RUN_STARTED],
        "agent": at[ev.AGENT_COMPLETE] - at[ev.WORKSPACE_ACQUIRED] - agent.duration_seconds,
        "snapshot": at[ev.SNAPSHOT_CREATED] - at[ev.AGENT_COMPLETE],
        "verify": at[ev.VERIFICATION_COMPLETE] - at[ev.SNAPSHOT_CREATED] - checks,
        "finish": finished - at[ev.VERIFICATION_COMPLETE],
        "total": finished - queued - agent.duration_seconds - checks,
        "wall": finished - queued,
        "client": item["seen"] - item["submitted"],
        "verify_gate": report.duration_seconds,
    }
    return out


def git_floor(root: Path, repeats: int = 10) -> dict[str, float]:
    """Replays, without the services, the git commands one trivial work order costs today
    (workspaces.prepare_for_run, create_snapshot with no change, cleanroom + resolve for
    Verify), as plain subprocesses: the floor that process spawning alone puts under the
    prepare, snapshot and verify phases. Returns the command count and median ms."""
    from agentgate.workspace.git import GIT_CONFIG

    base = ["git", *(arg for item in GIT_CONFIG for arg in ("-c", item))]
    project = benchlib.make_project(root / "floor-project")
    times = []
    count = 0
    for i in range(repeats):
        ws = root / f"floor-ws-{i}"
        room = root / f"floor-room-{i}"
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        index_env = {**env, "GIT_INDEX_FILE": str(root / f".floor-index-{i}")}
        # prepare: init on the run's branch + the initial snapshot; snapshot without change:
        # add + a commit that finds nothing (HEAD then read from the ref file); verify: the
        # clean room by one read-tree into it (the snapshot id is the one just recorded).
        commands = [
            (["init", "-q", "--template=", "--initial-branch", "agentgate/run-floor"], env),
            (["add", "-A"], env),
            (["commit", "-q", "--no-verify", "--allow-empty", "-m", "agentgate: initial snapshot"], env),
            (["add", "-A"], env),
            (["commit", "-q", "--no-verify", "-m", "agentgate: iteration 1"], env),
            ([f"--work-tree={room}", "read-tree", "-u", "--reset", "HEAD"], index_env),
        ]
        t0 = time.perf_counter()
        shutil.copytree(project, ws)
        room.mkdir()
        for args, cmd_env in commands:
            # The no-change commit exits 1 ("nothing to commit"): that is its answer.
            no_change_commit = args[0] == "commit" and "--allow-empty" not in args
            subprocess.run([*base, *args], cwd=ws, env=cmd_env, capture_output=True, check=not no_change_commit)
        shutil.rmtree(room)
        times.append(time.perf_counter() - t0)
        count = len(commands)
    return {"git_commands": count, "median_ms": benchlib.ms(benchlib.summary(times)["median"])}


def main() -> int:
    parser = benchlib.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--work-orders", type=int, default=60)
    args = parser.parse_args()
    total = 16 if args.quick else args.work_orders
    report = benchlib.Report("e2e: trivial work orders, 4 concurrent runs")
    env = {"AGENTGATE_MAX_CONCURRENT": str(CONCURRENT), "AGENTGATE_MAX_CONCURRENT_RUNS": str(CONCURRENT)}
    profiler = benchlib.Profiler(args.profile, "e2e")
    with benchlib.Suite(env) as suite:
        result = asyncio.run(run_load(suite, total, warmup=8, profiler=profiler))
    rows = result["rows"]
    bad = [r for r in rows if r["terminal"] != ev.RUN_COMPLETE]
    if bad:
        report.note(f"{len(bad)} of {len(rows)} work orders did not succeed: {bad[0]['terminal']}")
    report.row(work_orders=len(rows), seconds=result["elapsed"], **{"work_orders/s": len(rows) / result["elapsed"]})
    for phase in (*PHASES, "total", "agent_own", "checks_own", "wall", "client"):
        s = benchlib.summary([r[phase] for r in rows])
        report.row(
            "overhead by phase (ms)",
            phase=phase,
            median_ms=benchlib.ms(s["median"]),
            p99_ms=benchlib.ms(s["p99"]),
            mean_ms=benchlib.ms(s["mean"]),
        )
    cpu = result["cpu"]
    report.note(
        "CPU during the run, % of one core (service + its finished children): "
        + ", ".join(f"{name} {benchlib.fmt(cpu[name + '%'])}" for name in benchlib.SERVICES)
    )
    report.note(
        "total = overhead beyond the agent and check processes; wall = queued -> finished; "
        "client = Submit -> terminal event seen by the client"
    )
    with tempfile.TemporaryDirectory() as tmp:
        floor = git_floor(Path(tmp))
    report.row("floor: the same git commands as plain subprocesses, no services", **floor)
    median_total = benchlib.ms(benchlib.summary([r["total"] for r in rows])["median"])
    report.target("suite overhead per trivial work order (median)", median_total, 100.0, "ms", higher_is_better=False)
    report.extra["phases"] = {p: benchlib.summary([r[p] for r in rows]) for p in (*PHASES, "total")}
    report.print()
    profiler.print_top()
    report.save(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
