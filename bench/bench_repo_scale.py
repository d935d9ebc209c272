"""9. Repository scale: what a work order costs on a repository of 100 to 100,000 files.

`agentgate up --detach` (temporary home, free ports, AGENTGATE_MAX_CONCURRENT=4,
AGENTGATE_MAX_CONCURRENT_RUNS=4). Each repository is generated (N small files, 100 a
folder, one commit, packed as real repositories are) and submitted as a `local_path`
source. The scripted agent writes one file per iteration (`d0/f0.txt`: "iteration N"); the
inline gate plan has one check, `grep -qx 'iteration K' d0/f0.txt`, so a work order of K
iterations fails its gate K-1 times and passes at iteration K.

Each work order is timed from the client (Submit -> terminal event) and split by the
run's event timestamps: prepare (run:started -> workspace:acquired), and per iteration the
agent, snapshot and verify phases. "ours" = the work order's wall time (queued ->
terminal event) minus the agent process's own time (AgentResult.duration_seconds: the agent's
time belongs to the user), against the floor measured in the same run on the same
repository with nothing around it:

  cp -a of the repository (work tree and .git), then per iteration: the agent's change
  written, `git add -A` + `git commit` of it in the copy, a checkout of the snapshot into
  a fresh folder (`read-tree -u --reset` through a temporary index), and `true` run there.
  Its folders are placed as the services place theirs (under a spread root, each with a
  name of its own: common/folder_spread.py).

"one more iteration" = the last iteration of the 3-iteration work orders, from the previous
iteration's verification:complete to its own, minus its agent's own time (beside it, half
the difference between the 3- and 1-iteration work orders, which carries the noise of
their first iteration's tree writes). The RSS of the workspace
service process is sampled every 20 ms during the largest repository's work orders (peak
reported). The trivial work order (1 iteration, 100 files) is also run 4 at a time. Before
it, a note gives the machine's speed at that moment (the median time to start and reap one
`git --version`): on a shared 2-core machine it varies, and the trivial work order, a chain
of ~20 such processes, with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import benchlib

from agentgate.common import events as ev
from agentgate.common.folder_spread import spread_root
from agentgate.v1 import common_pb2, persistence_pb2, persistence_pb2_grpc, queue_pb2, queue_pb2_grpc

SIZES = (100, 5_000, 20_000, 100_000)
QUICK_SIZES = (100, 2_000, 5_000)
FILES_PER_FOLDER = 100
#: From this size on, one round only.
LARGE = 50_000
CHANGED = "d0/f0.txt"
CONCURRENT = 4
#: Plain git for the floor: no system or global configuration, like the services' git.
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"}
IDENTITY = ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "gc.auto=0"]


def _git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(
        ["git", *IDENTITY, *args], cwd=cwd, env={**os.environ, **GIT_ENV, **(env or {})}, check=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def make_repository(root: Path, files: int) -> Path:
    """A git repository of `files` small files, 100 a folder, in one commit, packed."""
    root.mkdir(parents=True)
    for i in range(files):
        folder = root / f"d{i // FILES_PER_FOLDER}"
        if i % FILES_PER_FOLDER == 0:
            folder.mkdir()
        (folder / f"f{i}.txt").write_text(f"file {i}\n" + "x" * 64 + "\n")
    (root / ".gitignore").write_text("build/\n")
    _git(root, "init", "-q", "--initial-branch=main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "generated")
    _git(root, "gc", "-q")
    return root


def floor_once(repo: Path, scratch: Path, iterations: int) -> tuple[float, float]:
    """Seconds of the floor of a work order of `iterations` (see the module docstring), and
    of its `cp -a` alone."""
    # Names of their own, as the services' trees have: ext4 places a new folder under a
    # spread root by a hash of its name (common/folder_spread.py).
    tag = secrets.token_hex(4)
    work = scratch / f"floor-copy-{tag}"
    t0 = time.perf_counter()
    subprocess.run(["cp", "-a", str(repo), str(work)], check=True)
    copied = time.perf_counter() - t0
    for iteration in range(1, iterations + 1):
        (work / CHANGED).write_text(f"iteration {iteration}\n")
        _git(work, "add", "-A")
        _git(work, "commit", "-q", "-m", f"iteration {iteration}")
        room = scratch / f"floor-room-{iteration}-{tag}"
        room.mkdir()
        _git(work, f"--work-tree={room}", "read-tree", "-u", "--reset", "HEAD",
             env={"GIT_INDEX_FILE": str(scratch / f"floor-index-{iteration}-{tag}")})
        subprocess.run(["true"], cwd=room, check=True)
    elapsed = time.perf_counter() - t0
    for path in scratch.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return elapsed, copied


def process_ms(samples: int = 20) -> float:
    """How fast this machine starts a process right now: the median time of `git --version`,
    started and reaped (the figures below are mostly chains of such processes)."""
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        subprocess.run(["git", "--version"], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return benchlib.ms(statistics.median(times))


def spec_for(repo: Path, iterations: int) -> common_pb2.WorkOrderSpec:
    """A work order whose agent writes one file per iteration and whose gate passes at
    iteration `iterations`."""
    script = "iterations:\n" + "".join(
        f"  {i}: [{{write: {{path: {CHANGED}, content: \"iteration {i}\\n\"}}}}]\n" for i in range(1, iterations + 1)
    )
    spec = benchlib.noop_spec(repo, script=script, max_iterations=iterations, prompt="bench: change one file")
    spec.harness.verification.gate_plan_yaml = (
        'version: "1"\ntests:\n'
        f"  - {{name: changed, kind: test, command: \"grep -qx 'iteration {iterations}' {CHANGED}\", timeout: 60}}\n"
    )
    return spec


def _ts(timestamp: Any) -> float:
    return timestamp.seconds + timestamp.nanos / 1e9


async def run_work_order(queue: Any, persistence: Any, spec: common_pb2.WorkOrderSpec) -> dict[str, Any]:
    """Submits one work order, follows it to its end; its timings (seconds)."""
    t0 = time.perf_counter()
    response = await queue.Submit(queue_pb2.SubmitRequest(spec=spec), timeout=60)
    events = []
    call = persistence.StreamEvents(
        persistence_pb2.StreamEventsRequest(work_order_id=response.work_order.id, follow=True), timeout=1800
    )
    async for item in call:
        events.append(item.event)
        if item.event.type in ev.TERMINAL_EVENT_TYPES:
            break
    call.cancel()
    client = time.perf_counter() - t0
    run_id = response.work_order.run_id
    iterations = sum(1 for event in events if event.type == ev.SNAPSHOT_CREATED)
    own = []
    for iteration in range(1, iterations + 1):
        result = await persistence.GetAgentResult(
            persistence_pb2.GetAgentResultRequest(run_id=run_id, iteration=iteration), timeout=10
        )
        own.append(result.result.duration_seconds)
    agent_own = sum(own)
    first: dict[str, float] = {}
    every: dict[str, list[float]] = {}
    for event in events:
        first.setdefault(event.type, _ts(event.timestamp))
        every.setdefault(event.type, []).append(_ts(event.timestamp))
    # The phases of the last iteration (after the first: the kept clean room is reset).
    agents, snapshots, verified = (every.get(t, []) for t in (ev.AGENT_COMPLETE, ev.SNAPSHOT_CREATED,
                                                              ev.VERIFICATION_COMPLETE))
    last: dict[str, float] = {}
    if iterations > 1 and len(agents) == len(snapshots) == len(verified) == iterations:
        last = {
            # verification:complete of the iteration before -> of the last, less its agent.
            "last_iteration": verified[-1] - verified[-2] - own[-1],
            "agent_last": agents[-1] - verified[-2] - own[-1],
            "snapshot_last": snapshots[-1] - agents[-1],
            "verify_last": verified[-1] - snapshots[-1],
        }
    queued = first[ev.WORK_ORDER_QUEUED]
    wall = _ts(events[-1].timestamp) - queued
    return {
        "terminal": events[-1].type,
        "iterations": iterations,
        "client": client,
        "wall": wall,
        "agent_own": agent_own,
        "ours": wall - agent_own,
        "start": first[ev.RUN_STARTED] - queued,
        "prepare": first[ev.WORKSPACE_ACQUIRED] - first[ev.RUN_STARTED],
        "agent_1": first[ev.AGENT_COMPLETE] - first[ev.AGENT_STARTED] - own[0],
        "finish": _ts(events[-1].timestamp) - every[ev.VERIFICATION_COMPLETE][-1],
        "verify_1": first[ev.VERIFICATION_COMPLETE] - first[ev.SNAPSHOT_CREATED],
        "snapshot_1": first[ev.SNAPSHOT_CREATED] - first[ev.AGENT_COMPLETE],
        **last,
    }


def settled(suite: benchlib.Suite) -> None:
    """Waits until the clean rooms the last work order released are deleted (they go in
    the background, behind the run): their disk work would otherwise land on the next
    measurement."""
    trash = suite.home / "trash"
    while trash.is_dir() and any(trash.iterdir()):
        time.sleep(0.05)  # the bench's own loop has nothing else to do meanwhile


class RssPeak:
    """Samples the RSS of one process (and, separately, of its children) in a thread."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid, self.interval = pid, interval
        self.peak = 0.0
        self.peak_children = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            own = benchlib.rss_mib(self.pid)
            self.peak = max(self.peak, own)
            self.peak_children = max(self.peak_children, benchlib.rss_mib(self.pid, children=True) - own)
            time.sleep(self.interval)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def median_of(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


async def measure(suite: benchlib.Suite, sizes: tuple[int, ...], rounds: int, report: benchlib.Report,
                  profiler: benchlib.Profiler, trivial_profiler: benchlib.Profiler) -> None:
    """Every figure: the sizes in turn (the largest profiled), then the trivial work order
    (profiled one at a time)."""
    scratch = suite.work / "scratch"
    # The floor's trees are placed as the services place theirs (common/folder_spread.py):
    # otherwise, on ext4 without a journal, each floor pays for the inodes the floor before
    # it freed (docs/benchmarks.md, "Repository scale").
    spread_root(scratch)
    async with (
        benchlib.aio_insecure_channel(suite.addresses["queue"]) as qch,
        benchlib.aio_insecure_channel(suite.addresses["persistence"]) as pch,
    ):
        queue = queue_pb2_grpc.QueueServiceStub(qch)
        persistence = persistence_pb2_grpc.PersistenceServiceStub(pch)
        per_iteration: dict[int, float] = {}
        ours_1: dict[int, float] = {}
        floors_1: dict[int, float] = {}
        for files in sizes:
            started = time.perf_counter()
            repo = make_repository(suite.work / f"repo-{files}", files)
            report.note(f"{files:,} files: repository generated in {time.perf_counter() - started:.1f} s")
            # One warm-up (first git of this size, page cache), not counted.
            await run_work_order(queue, persistence, spec_for(repo, 1))
            settled(suite)
            largest = files == sizes[-1]
            workspace_pid = suite.pids()["workspace"]
            results: dict[int, list[dict[str, Any]]] = {1: [], 3: []}
            floors: dict[int, list[float]] = {1: [], 3: []}
            copies: list[float] = []
            rss = RssPeak(workspace_pid) if largest else None
            recording = profiler.record({"workspace": workspace_pid}) if largest else contextlib.nullcontext()
            with rss or contextlib.nullcontext(), recording:
                # 100,000 files: each work order writes the tree twice (workspace, clean room).
                for _ in range(1 if files >= LARGE else rounds):
                    for iterations in (1, 3):
                        # Interleaved, so a burst of load elsewhere hits both alike.
                        results[iterations].append(await run_work_order(queue, persistence, spec_for(repo, iterations)))
                        settled(suite)
                        floor, copied = floor_once(repo, scratch, iterations)
                        floors[iterations].append(floor)
                        copies.append(copied)
            for iterations in (1, 3):
                rows = results[iterations]
                bad = [r for r in rows if r["terminal"] != ev.RUN_COMPLETE or r["iterations"] != iterations]
                if bad:
                    report.note(f"{files} files, {iterations} it.: {len(bad)} work orders ended {bad[0]['terminal']}"
                                f" after {bad[0]['iterations']} iteration(s)")
                floor = statistics.median(floors[iterations])
                ours = median_of(rows, "ours")
                report.row(
                    "work orders (median ms)",
                    files=files,
                    iterations=iterations,
                    n=len(rows),
                    client_ms=benchlib.ms(median_of(rows, "client")),
                    wall_ms=benchlib.ms(median_of(rows, "wall")),
                    agent_own_ms=benchlib.ms(median_of(rows, "agent_own")),
                    ours_ms=benchlib.ms(ours),
                    floor_ms=benchlib.ms(floor),
                    ratio=ours / floor,
                    prepare_ms=benchlib.ms(median_of(rows, "prepare")),
                    cp_a_ms=benchlib.ms(statistics.median(copies)),
                    snapshot1_ms=benchlib.ms(median_of(rows, "snapshot_1")),
                    verify1_ms=benchlib.ms(median_of(rows, "verify_1")),
                )
            ours_1[files] = median_of(results[1], "ours")
            floors_1[files] = statistics.median(floors[1])
            # The last iteration's own span: the difference of whole work orders would carry
            # the noise of their first iteration's tree writes (seconds at 100,000 files).
            per_iteration[files] = median_of(results[3], "last_iteration")
            difference = (median_of(results[3], "ours") - ours_1[files]) / 2
            floor_more = (statistics.median(floors[3]) - floors_1[files]) / 2
            phases = {f"{key}_ms": benchlib.ms(median_of(results[3], key)) for key in
                      ("agent_last", "snapshot_last", "verify_last")}
            report.row("one more iteration (median ms)", files=files, ours_ms=benchlib.ms(per_iteration[files]),
                       floor_ms=benchlib.ms(floor_more), half_3it_minus_1it_ms=benchlib.ms(difference), **phases)
            if rss is not None:
                report.row("workspace service memory, largest repository (MiB)", files=files,
                           rss_peak_mib=rss.peak, git_children_peak_mib=rss.peak_children)
            shutil.rmtree(repo)

        small, mid, large = sizes[0], sizes[-2] if len(sizes) > 2 else sizes[-1], sizes[-1]
        report.target(f"one more iteration at {mid:,} files vs at {small} (ratio)",
                      per_iteration[mid] / per_iteration[small], 2.0, "x", higher_is_better=False)
        report.target(f"one-iteration work order at {mid:,} files vs floor (ratio)",
                      ours_1[mid] / floors_1[mid], 1.2, "x", higher_is_better=False)
        report.target(f"one-iteration work order at {large:,} files vs floor (ratio)",
                      ours_1[large] / floors_1[large], 1.2, "x", higher_is_better=False)

        # The trivial work order on the smallest repository: one at a time and 4 at a time.
        repo = make_repository(suite.work / "repo-trivial", small)
        await run_work_order(queue, persistence, spec_for(repo, 1))
        floor = statistics.median(floor_once(repo, scratch, 1)[0] for _ in range(5))
        report.note(f"machine speed before the trivial work orders: one git process {process_ms():.2f} ms "
                    "(`git --version` started and reaped, median of 20; a work order runs ~20 such in a row)")
        with trivial_profiler.record(suite.pids()):
            alone = [await run_work_order(queue, persistence, spec_for(repo, 1)) for _ in range(rounds * 2)]
        together: list[dict[str, Any]] = []
        for _ in range(rounds):
            together += await asyncio.gather(*(run_work_order(queue, persistence, spec_for(repo, 1))
                                               for _ in range(CONCURRENT)))
        for label, rows in (("1 at a time", alone), (f"{CONCURRENT} at a time", together)):
            ours = median_of(rows, "ours")
            report.row("trivial work order, 100 files (median ms)", load=label, n=len(rows),
                       ours_ms=benchlib.ms(ours), floor_ms=benchlib.ms(floor),
                       overhead_ms=benchlib.ms(ours - floor), p99_ms=benchlib.ms(
                           benchlib.percentile([r["ours"] for r in rows], 99)),
                       **{f"{key}_ms": benchlib.ms(median_of(rows, key)) for key in
                          ("start", "prepare", "agent_1", "snapshot_1", "verify_1", "finish")})
        report.target(f"trivial work order overhead above the floor, {small} files, one at a time",
                      benchlib.ms(median_of(alone, "ours") - floor), 100.0, "ms", higher_is_better=False)


def main() -> int:
    parser = benchlib.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="work orders of each kind per repository size")
    parser.add_argument("--sizes", help="repository sizes, comma-separated (default 100,5000,20000,100000)")
    args = parser.parse_args()
    sizes = tuple(int(x) for x in args.sizes.split(",")) if args.sizes else QUICK_SIZES if args.quick else SIZES
    rounds = 2 if args.quick else args.rounds
    report = benchlib.Report("repo scale: work orders on repositories of 100 to 100,000 files")
    env = {"AGENTGATE_MAX_CONCURRENT": str(CONCURRENT), "AGENTGATE_MAX_CONCURRENT_RUNS": str(CONCURRENT)}
    profiler = benchlib.Profiler(args.profile, "repo-scale-largest")
    trivial_profiler = benchlib.Profiler(args.profile, "repo-scale-trivial")
    with benchlib.Suite(env) as suite:
        asyncio.run(measure(suite, sizes, rounds, report, profiler, trivial_profiler))
    report.note("ours = wall (queued -> terminal event) minus the agent process's own time; floor: see the docstring")
    report.print()
    profiler.print_top()
    trivial_profiler.print_top()
    report.save(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
