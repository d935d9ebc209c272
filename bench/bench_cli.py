"""7. CLI start-up: the wall time of `agentgate` commands against a running suite, next to
`python -c pass` measured in the same run.

The suite starts with `agentgate up --detach` (temporary home, free ports) and runs one
trivial work order, so `list --limit 1` prints a row and `status` finds a run. Each command
is then run as a whole process, in turn with the others (A B C ... A B C ...) so a change in
the machine's speed touches all of them alike, after warm-up runs that are not counted.
Per command: median and p99 wall time, and the median CPU time (user + sys of the child,
less noisy than wall on a busy machine). At the end, `python -X importtime` of
`list --limit 1` shows which imports its start-up still spends the most on.

A bare typer command with one int option is timed alongside: the floor any command of this
CLI pays for typer before doing anything (typer 0.29 added pydantic to it: the pin is 0.28).

The commands run with Python's bytecode cache on, in a private folder (PYTHONPYCACHEPREFIX,
filled by the warm-up rounds), as an installed CLI runs from its second use on, whatever the
caller's environment says: with PYTHONDONTWRITEBYTECODE=1 (which the sessions on the project's
machine set) every run would compile the project's sources again. One more row times `list`
that way, for comparison. The output of every command is discarded, so it is not a terminal:
`list` and `status` print plain lines then; one row times `list` on a pty, where it prints
rich's table.

Figure: median wall time of `agentgate list --limit 1` (target <= 150 ms).
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchlib

TARGET_MS = 150.0

#: The row of `list --limit 1` without a bytecode cache: every run compiles the sources.
NO_CACHE = "agentgate list --limit 1, no bytecode cache"
#: The row of `list --limit 1` printing to a terminal (a pty): rich's table, where the other
#: rows' output, discarded, is not a terminal and gets plain lines (README.md, "Commands").
TERMINAL = "agentgate list --limit 1, on a terminal"

#: The least a typer command costs: one command with one int option, nothing else imported.
#: Under typer 0.29 this loaded pydantic (its options are coerced through a TypeAdapter).
TYPER_FLOOR = """
import typer
app = typer.Typer(add_completion=False)
@app.command()
def one(limit: int = 50) -> None:
    pass
app()
"""


def drain(fd: int) -> None:
    """Reads a terminal's output until its writer closes it (EIO), then closes `fd`."""
    with contextlib.suppress(OSError):
        while os.read(fd, 65536):
            pass
    os.close(fd)


def timed(argv: list[str], env: dict[str, str], terminal: bool = False) -> tuple[float, float]:
    """Runs `argv` to its end, its standard output on a pty when `terminal` (else discarded);
    (wall seconds, CPU seconds of the child). Fails on exit != 0."""
    parent, child = pty.openpty() if terminal else (-1, subprocess.DEVNULL)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=child, stderr=subprocess.PIPE)
    reader = None
    if terminal:  # read what it prints, or it blocks once the terminal's buffer is full
        os.close(child)
        reader = threading.Thread(target=drain, args=(parent,))
        reader.start()
    _, stderr = process.communicate()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if reader is not None:
        reader.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {process.returncode}: {stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def heaviest_imports(argv: list[str], env: dict[str, str], count: int = 8) -> list[tuple[str, float]]:
    """The top-level imports of one run of `argv` under `-X importtime`, costliest first (ms)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], env=env, capture_output=True, text=True, check=False
    )
    found: list[tuple[str, float]] = []
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
        if match:  # no indentation before the name: imported by the program itself
            found.append((match.group(2), int(match.group(1)) / 1000.0))
    return sorted(found, key=lambda item: item[1], reverse=True)[:count]


def main() -> int:
    parser = benchlib.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="counted runs of each command")
    args = parser.parse_args()
    runs, warmup = (10, 2) if args.quick else (args.runs, 3)
    report = benchlib.Report("cli: start-up of agentgate commands")
    agentgate = str(benchlib.BIN / "agentgate")
    with benchlib.Suite() as suite, tempfile.TemporaryDirectory() as tmp:
        project = benchlib.make_project(Path(tmp) / "project")
        script = Path(tmp) / "agent.yaml"
        script.write_text(benchlib.NOOP_SCRIPT)
        done = suite.cli(
            "exec", "--path", str(project), "--prompt", "bench: do nothing", "--agent", "scripted",
            "--agent-option", f"script={script}", "--max-iterations", "1", "--json",
        )
        if done.returncode != 0:
            raise RuntimeError(f"the work order failed: {done.stdout[-500:]} {done.stderr[-500:]}")
        work_order_id = json.loads(done.stdout)["work_order_id"]
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "typer floor (one int option)": [sys.executable, "-c", TYPER_FLOOR, "--limit", "1"],
            "agentgate list --limit 1": [agentgate, "list", "--limit", "1"],
            "agentgate list --limit 1 --json": [agentgate, "list", "--limit", "1", "--json"],
            "agentgate status ID": [agentgate, "status", work_order_id],
            "agentgate --help": [agentgate, "--help"],
            NO_CACHE: [agentgate, "list", "--limit", "1"],
            TERMINAL: [agentgate, "list", "--limit", "1"],
        }
        pycache = Path(tmp) / "pycache"
        env = dict(suite.env, COLUMNS="120", PYTHONPYCACHEPREFIX=str(pycache))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        uncached = dict(env, PYTHONDONTWRITEBYTECODE="1")
        uncached.pop("PYTHONPYCACHEPREFIX")
        walls: dict[str, list[float]] = {name: [] for name in commands}
        cpus: dict[str, list[float]] = {name: [] for name in commands}
        for turn in range(warmup + runs):
            for name, argv in commands.items():
                wall, cpu = timed(argv, uncached if name == NO_CACHE else env, terminal=name == TERMINAL)
                if turn >= warmup:
                    walls[name].append(wall)
                    cpus[name].append(cpu)
        imports = heaviest_imports(["-m", "agentgate.client.cli", "list", "--limit", "1"], env)
    for name in commands:
        wall = benchlib.summary(walls[name])
        report.row(
            command=name,
            runs=wall["n"],
            median_ms=benchlib.ms(wall["median"]),
            p99_ms=benchlib.ms(wall["p99"]),
            min_ms=benchlib.ms(min(walls[name])),
            cpu_median_ms=benchlib.ms(benchlib.summary(cpus[name])["median"]),
        )
    floor = benchlib.ms(benchlib.summary(walls["python -c pass"])["median"])
    listed = benchlib.ms(benchlib.summary(walls["agentgate list --limit 1"])["median"])
    report.extra.update(python_pass_ms=floor, list_ms=listed)
    report.target("agentgate list --limit 1, median wall", listed, TARGET_MS, "ms", higher_is_better=False)
    report.note(f"python -c pass, same interpreter, same run: median {benchlib.fmt(floor)} ms")
    report.note(
        "heaviest imports of `list --limit 1` (cumulative ms, one run): "
        + ", ".join(f"{name} {benchlib.fmt(ms)}" for name, ms in imports)
    )
    report.note(f"commands run in turn, {warmup} warm-up rounds not counted; CPU = user + sys of the child")
    report.print()
    report.save(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
