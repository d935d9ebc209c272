"""7. Sandbox cost: one execution of `true` through `run_process`, bare vs inside the sandbox.

Each round runs every variant once, in turn, so drift in the machine's load touches all of
them alike; the figure is the median over the rounds. Each execution starts after 20 ms of
idle, as executions of a run are apart: some kernel costs (joining a cgroup through
`cgroup.procs` on v1, ~11 ms) are paid in full only after an idle moment, and back-to-back
executions hid them. Variants:

- bare: `run_process(["true"])` as the workspace runs agents and checks today.
- checks: the sandbox of a gate check (network "none", default limits: cgroup, disk watcher).
- agents: the sandbox of an agent (network "proxy": the allowlist proxy is started, and the
  in-sandbox relay, socat, is started before the command).

Figure: median added per execution, sandboxed minus bare (target < 20 ms).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import benchlib

from agentgate.workspace.processes import run_process
from agentgate.workspace.sandbox import Sandbox, SandboxSpec

TARGET_ADDED_MS = 20.0
IDLE_SECONDS = 0.02


async def measure(rounds: int, root: Path) -> dict[str, list[float]]:
    writable = root / "room"
    writable.mkdir()
    variants: dict[str, Sandbox | None] = {
        "bare": None,
        "checks (network none)": Sandbox(SandboxSpec(writable_dir=writable)),
        "agents (network proxy)": Sandbox(
            SandboxSpec(writable_dir=writable, network="proxy", allowed_hosts=("api.anthropic.com",))
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for sandbox in variants.values():  # warm-up: caches, cgroup folders, identity files
        await run_process(["true"], cwd=writable, sandbox=sandbox)
    for _ in range(rounds):
        for name, sandbox in variants.items():
            await asyncio.sleep(IDLE_SECONDS)
            started = time.perf_counter()
            result = await run_process(["true"], cwd=writable, sandbox=sandbox)
            times[name].append(time.perf_counter() - started)
            assert result.exit_code == 0, (name, result)
    return times


def main() -> int:
    parser = benchlib.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=0, help="executions per variant (default 60, quick 15)")
    args = parser.parse_args()
    rounds = args.rounds or (15 if args.quick else 60)
    report = benchlib.Report("sandbox: cost per execution of `true`, bare vs sandboxed")
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as root:
        times = asyncio.run(measure(rounds, Path(root)))
    bare = statistics.median(times["bare"])
    for name, values in times.items():
        median = statistics.median(values)
        report.row(
            variant=name,
            n=len(values),
            median_ms=benchlib.ms(median),
            p99_ms=benchlib.ms(benchlib.percentile(values, 99)),
            added_ms=benchlib.ms(median - bare),
        )
    for name in ("checks (network none)", "agents (network proxy)"):
        added = benchlib.ms(statistics.median(times[name]) - bare)
        report.target(f"added per execution, {name}", added, TARGET_ADDED_MS, "ms", higher_is_better=False)
        report.extra[f"added_ms_{name.split()[0]}"] = added
    report.extra["limits_mechanism"] = Sandbox(SandboxSpec(writable_dir=Path(tempfile.gettempdir()))).limits_mechanism
    report.note(f"pids/memory limits via {report.extra['limits_mechanism']}")
    report.print()
    report.save(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
