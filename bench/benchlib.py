"""Shared helpers of the benchmarks in bench/: statistics, service processes, the suite,
client processes, memory and CPU readings, and the report format.

The scripts are run as `python bench/bench_X.py`, so this folder is on sys.path and child
processes (multiprocessing, spawn) import this module the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SERVICES = ("queue", "orchestrator", "workspace", "persistence")
#: The order `agentgate up` starts them in: what others call first.
START_ORDER = ("persistence", "workspace", "queue", "orchestrator")


# -- statistics ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, median, p99, mean and max of `values` (same unit as given)."""
    if not values:
        return {"n": 0, "median": math.nan, "p99": math.nan, "mean": math.nan, "max": math.nan}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values),
        "max": max(values),
    }


def ms(seconds: float) -> float:
    """Seconds to milliseconds."""
    return seconds * 1000.0


# -- report -------------------------------------------------------------------------------


@dataclass
class Report:
    """What a benchmark prints: rows of figures, verdicts against targets, notes; and the
    same as JSON (for docs/benchmarks.md) when `--json` is given."""

    name: str
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self, table: str = "figures", **values: Any) -> None:
        """One line of a table of figures (tables print in the order first used)."""
        self.tables.setdefault(table, []).append(values)

    def target(self, what: str, measured: float, limit: float, unit: str, higher_is_better: bool) -> bool:
        """Records and returns whether `measured` meets `limit`."""
        met = measured >= limit if higher_is_better else measured <= limit
        self.targets.append(
            {
                "target": what,
                "measured": measured,
                "limit": limit,
                "unit": unit,
                "ratio_to_target": (measured / limit) if limit else math.nan,
                "met": bool(met),
            }
        )
        return bool(met)

    def __post_init__(self) -> None:
        # Other work on the machine skews every figure: say how busy it was at the start.
        self.extra["machine_at_start"] = machine_line()

    def note(self, text: str) -> None:
        """A line printed under the figures."""
        self.notes.append(text)

    def print(self) -> None:
        """Prints the figures, the targets and the notes."""
        print(f"\n=== {self.name} ===")
        print(f"machine at start: {self.extra['machine_at_start']}")
        print(f"machine at end:   {machine_line()}")
        for title, rows in self.tables.items():
            print(f"-- {title}")
            print_table(rows)
        for t in self.targets:
            verdict = "MET" if t["met"] else "NOT MET"
            print(
                f"target: {t['target']}: measured {fmt(t['measured'])} {t['unit']} vs "
                f"{fmt(t['limit'])} {t['unit']} (ratio {fmt(t['ratio_to_target'])}) -> {verdict}"
            )
        for text in self.notes:
            print(f"note: {text}")
        sys.stdout.flush()

    def save(self, path: str | None) -> None:
        """Appends this report as one JSON line to `path` (nothing when None)."""
        if not path:
            return
        record = {
            "bench": self.name,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine_line(),
            "tables": self.tables,
            "targets": self.targets,
            "notes": self.notes,
            "extra": self.extra,
        }
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")


def fmt(value: Any) -> str:
    """A figure for humans: 3 significant digits, thousands kept whole."""
    if isinstance(value, bool) or not isinstance(value, float | int):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    """Rows of dicts as an aligned text table (columns = keys of the first row)."""
    columns = list(rows[0])
    for row in rows[1:]:
        columns += [key for key in row if key not in columns]
    cells = [[fmt(row.get(col, "")) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    print("  ".join(col.ljust(w) for col, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def machine_line() -> str:
    """CPU count, model and Python of this machine (figures mean nothing without it)."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores {model}, Python {platform.python_version()}, grpcio {grpc.__version__}, "
        f"load average {load}"
    )


def arg_parser(description: str) -> argparse.ArgumentParser:
    """Flags every bench script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", help="append the figures as one JSON line to this file")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="sample the service processes with py-spy during the measurement and write the profiles here",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run, figures less stable)")
    return parser


# -- processes ----------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def use_credential_of(home: Path) -> None:
    """Makes the channels of this process (and of the processes it starts after) send a
    service credential of `home`: auth is on by default, and benchmarks also write run
    records and lease work, which the client token may not (docs/security.md). Set after
    the services started: `agentgate up` would store an AGENTGATE_TOKEN as the client token."""
    from agentgate.common import security

    key = security.load_service_key(home)
    os.environ[security.TOKEN_ENV] = security.service_credential(key, "service", "bench")


def aio_insecure_channel(address: str, **kwargs: Any) -> grpc.aio.Channel:
    """A plaintext asyncio channel that sends the credential (see `use_credential_of`);
    `address` may list several replicas (`agentgate.common.channels.channel_target`)."""
    from agentgate.common import security
    from agentgate.common.channels import channel_target

    target, replica_options = channel_target(address)
    if replica_options:
        kwargs["options"] = [*kwargs.get("options", ()), *replica_options]
    return grpc.aio.insecure_channel(target, interceptors=security.aio_client_interceptors(), **kwargs)


def insecure_channel(address: str) -> grpc.Channel:
    """A plaintext blocking channel that sends the credential (see `use_credential_of`)."""
    from agentgate.common import security

    return security.intercept_sync_channel(grpc.insecure_channel(address))


def wait_serving(address: str, timeout: float = 30.0) -> None:
    """Blocks until the gRPC health check of `address` answers SERVING."""
    deadline = time.monotonic() + timeout
    last = "UNREACHABLE"
    while time.monotonic() < deadline:
        channel = insecure_channel(address)
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            if last == "SERVING":
                return
        except grpc.RpcError:
            pass
        finally:
            channel.close()
        time.sleep(0.05)
    raise RuntimeError(f"{address} not SERVING after {timeout}s (last: {last})")


class Services:
    """Some of the four services as separate processes (`python -m agentgate.<name>`) on
    free ports with a fresh home, each logging to home/logs/<name>.log."""

    def __init__(self, home: Path | None = None, env: dict[str, str] | None = None):
        self._tmp = None if home else tempfile.TemporaryDirectory(prefix="agentgate-bench-")
        self.home = home or Path(self._tmp.name)  # type: ignore[union-attr]
        self.addresses = {name: f"127.0.0.1:{free_port()}" for name in SERVICES}
        self.env = dict(os.environ)
        self.env["AGENTGATE_HOME"] = str(self.home)
        for name, address in self.addresses.items():
            self.env[f"AGENTGATE_{name.upper()}_ADDR"] = address
        self.env["PATH"] = str(BIN) + os.pathsep + self.env.get("PATH", "")
        self.env.update(env or {})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, *names: str, timeout: float = 60.0) -> Services:
        """Starts the named services (in dependency order) and waits until they serve."""
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        use_credential_of(self.home)
        for name in sorted(names, key=START_ORDER.index):
            with open(self.home / "logs" / f"{name}.log", "ab") as log:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", f"agentgate.{name}"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    start_new_session=True,
                )
        for name in names:
            wait_serving(self.addresses[name], timeout)
        return self

    def pid(self, name: str) -> int:
        """Pid of a started service."""
        return self.procs[name].pid

    def pids(self) -> dict[str, int]:
        """Pids of the started services."""
        return {name: proc.pid for name, proc in self.procs.items()}

    def stop(self, *names: str) -> None:
        """SIGTERM (then SIGKILL after 15 s) the named services, or all."""
        for name in names or tuple(self.procs):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        """Stops everything and removes the temporary home."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Suite:
    """The four services started by the real CLI: `agentgate up --detach` with a temporary
    home, free ports and extra environment; `agentgate down` at the end."""

    def __init__(self, env: dict[str, str] | None = None):
        self._tmp = tempfile.TemporaryDirectory(prefix="agentgate-bench-suite-")
        self.home = Path(self._tmp.name) / "home"
        self.work = Path(self._tmp.name) / "work"
        self.work.mkdir()
        self.env = dict(os.environ)
        self.env["AGENTGATE_HOME"] = str(self.home)
        self.addresses = {name: f"127.0.0.1:{free_port()}" for name in SERVICES}
        for name, address in self.addresses.items():
            self.env[f"AGENTGATE_{name.upper()}_ADDR"] = address
        self.env.update(env or {})

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Runs `agentgate ARGS` against this suite."""
        return subprocess.run(
            [str(BIN / "agentgate"), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def up(self) -> Suite:
        """`agentgate up --detach`; raises with the logs when it fails."""
        result = self.cli("up", "--detach", timeout=120)
        if result.returncode != 0:
            logs = self.logs()
            self.cli("down")
            raise RuntimeError(f"agentgate up failed:\n{result.stdout}\n{result.stderr}\n{logs}")
        use_credential_of(self.home)
        return self

    def pids(self) -> dict[str, int]:
        """Pid of each service process, from the pid files `up` wrote (run/<name>.pid; a
        worker may be `orchestrator-1`, reported as `orchestrator`)."""
        pids = {}
        for path in sorted((self.home / "run").glob("*.pid")):
            try:
                info = json.loads(path.read_text())
                pid = int(info["pid"]) if isinstance(info, dict) else int(info)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            name = path.stem
            if name == "orchestrator-1" or (name.startswith("orchestrator") and "orchestrator" not in pids):
                name = "orchestrator"
            pids[name] = pid
        missing = [name for name in SERVICES if name not in pids]
        if missing:
            raise RuntimeError(f"no pid file for {missing} under {self.home / 'run'}")
        return pids

    def logs(self, tail: int = 2000) -> str:
        """The end of every service log."""
        return "\n".join(f"--- {p.name}\n{p.read_text()[-tail:]}" for p in sorted((self.home / "logs").glob("*.log")))

    def down(self) -> None:
        """`agentgate down` and removal of the temporary folders."""
        with contextlib.suppress(Exception):
            self.cli("down", timeout=60)
        self._tmp.cleanup()

    def __enter__(self) -> Suite:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


def run_in_processes(fn: Callable[..., Any], args_list: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Runs fn(*args) for each args in separate spawned processes, at the same time, and
    returns their results in order. Client load runs apart from the server's process."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(args_list), mp_context=context) as pool:
        futures = [pool.submit(fn, *args) for args in args_list]
        return [f.result() for f in futures]


def start_process(fn: Callable[..., Any], *args: Any) -> tuple[Any, Any]:
    """Starts fn(*args) in a spawned process; returns (process, result connection). The
    function receives the sending end of a pipe as its first argument."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=fn, args=(sender, *args), daemon=True)
    process.start()
    sender.close()
    return process, receiver


def unary_load(
    address: str,
    method: str,
    payloads: Sequence[bytes],
    concurrency: int,
    warmup: float,
    duration: float,
    until_no_lease: bool = False,
) -> dict[str, Any]:
    """Client load (run it in its own process): `concurrency` loops calling the unary
    `method` (full path) with raw request bytes, cycling through `payloads`, for
    warmup+duration seconds. Responses are not parsed, so the client stays cheap.

    With `until_no_lease` (Lease calls), a worker stops at the first answer leased=false,
    which is not counted: the rate is then of leases actually handed out.

    Returns the latencies (s) of calls started inside the measured window, the length of
    that window, the errors by status code, and the client's CPU share of one core."""
    import resource

    from agentgate.v1 import queue_pb2

    async def main() -> dict[str, Any]:
        async with aio_insecure_channel(address) as channel:
            call = channel.unary_unary(method)
            loop = asyncio.get_running_loop()
            start = loop.time()
            measure_from = start + warmup
            stop = measure_from + duration
            latencies: list[float] = []
            errors: dict[str, int] = {}
            counter = 0
            last_end = measure_from

            async def worker() -> None:
                nonlocal counter, last_end
                while True:
                    t0 = loop.time()
                    if t0 >= stop:
                        return
                    payload = payloads[counter % len(payloads)]
                    counter += 1
                    try:
                        answer = await call(payload, timeout=60)
                    except grpc.aio.AioRpcError as exc:
                        errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                        continue
                    if until_no_lease and not queue_pb2.LeaseResponse.FromString(answer).leased:
                        return
                    end = loop.time()
                    if t0 >= measure_from:
                        latencies.append(end - t0)
                        last_end = max(last_end, end)

            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            elapsed = loop.time() - start
            cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            return {
                "latencies": latencies,
                "errors": errors,
                "client_cpu_pct": 100 * cpu / elapsed,
                "duration": min(duration, last_end - measure_from) if until_no_lease else duration,
            }

    return asyncio.run(main())


def load_figures(result: dict[str, Any]) -> dict[str, Any]:
    """calls/s, median and p99 (ms) of a `unary_load` result."""
    lat = summary(result["latencies"])
    return {
        "calls/s": len(result["latencies"]) / result["duration"],
        "median_ms": ms(lat["median"]),
        "p99_ms": ms(lat["p99"]),
        "errors": sum(result["errors"].values()),
    }


# -- memory and cpu -----------------------------------------------------------------------


def rss_mib(pid: int, children: bool = False) -> float:
    """Resident memory of a process (optionally plus its descendants) in MiB."""
    try:
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        if children:
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
    except psutil.Error:
        return math.nan
    return total / (1024 * 1024)


def cpu_seconds(pids: dict[str, int], children: bool = False) -> dict[str, float]:
    """User+system CPU seconds used so far by each process; with `children`, plus those of
    its children that ended (agents, checks, git)."""
    out = {}
    for name, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
            out[name] = times.user + times.system
            if children:
                out[name] += times.children_user + times.children_system
        except psutil.Error:
            out[name] = math.nan
    return out


@contextlib.contextmanager
def cpu_meter(pids: dict[str, int], children: bool = False) -> Iterator[dict[str, float]]:
    """Measures each process's CPU use over the block; the dict is filled at the end with
    CPU seconds per process and, under key `<name>%`, the share of one core."""
    result: dict[str, float] = {}
    before = cpu_seconds(pids, children)
    started = time.monotonic()
    yield result
    elapsed = time.monotonic() - started
    after = cpu_seconds(pids, children)
    for name in pids:
        used = after[name] - before[name]
        result[name] = used
        result[f"{name}%"] = 100.0 * used / elapsed if elapsed > 0 else math.nan


# -- profiling ----------------------------------------------------------------------------


class Profiler:
    """py-spy sampling of running service processes (attached by pid, no code change).

    `record` writes py-spy's collapsed-stack ("raw") file per process; `top` reads it back
    into the functions that hold the most samples (self and inclusive shares).
    """

    def __init__(self, out_dir: str | None, label: str, rate: int = 250):
        self.out_dir = Path(out_dir) if out_dir else None
        self.label = label
        self.rate = rate
        self.files: dict[str, Path] = {}

    @contextlib.contextmanager
    def record(self, pids: dict[str, int]) -> Iterator[None]:
        """Samples `pids` while the block runs (nothing when no out_dir was given)."""
        if self.out_dir is None:
            yield
            return
        pyspy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
        if pyspy is None:
            raise RuntimeError("py-spy is not installed: make bench installs it (.[bench])")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        spies = {}
        for name, pid in pids.items():
            path = self.out_dir / f"{self.label}-{name}.txt"
            self.files[name] = path
            spies[name] = subprocess.Popen(
                [
                    pyspy,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(self.rate),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(path),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        time.sleep(0.5)  # attached before the load starts
        try:
            yield
        finally:
            for spy in spies.values():
                with contextlib.suppress(ProcessLookupError):
                    spy.send_signal(signal.SIGINT)
            for name, spy in spies.items():
                try:
                    _, err = spy.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    _, err = spy.communicate()
                if not self.files[name].exists():
                    print(f"py-spy for {name} wrote nothing: {err.decode(errors='replace')[-500:]}", file=sys.stderr)

    def print_top(self, count: int = 12) -> None:
        """Prints, per profiled process: where the samples were (event-loop thread, SQLite
        thread, thread pool), by package, and the functions with most samples."""
        for name, path in self.files.items():
            if not path.exists():
                continue
            profile = read_collapsed(path)
            total = profile.total
            if not total:
                continue
            print(f"\n--- profile {self.label}/{name}: {total} samples of active threads, {path}")
            print("  threads: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in profile.ranked(profile.threads)))
            print(
                "  by package (inclusive): "
                + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in profile.ranked(profile.packages)[:10])
            )
            print("  self%  incl%  function (self time)")
            for frame, samples in profile.ranked(profile.own)[:count]:
                print(f"  {100 * samples / total:5.1f}  {100 * profile.inclusive.get(frame, 0) / total:5.1f}  {frame}")
            print("         incl%  function of agentgate (inclusive time)")
            ours = {f: v for f, v in profile.inclusive.items() if _is_ours(f)}
            for frame, samples in profile.ranked(ours)[:count]:
                print(f"  {'':5}  {100 * samples / total:5.1f}  {frame}")


OUR_PACKAGES = ("queue/", "persistence/", "orchestrator/", "workspace/", "common/", "client/", "agentgate/")


def _is_ours(frame: str) -> bool:
    where = frame.rsplit(" (", 1)[-1]
    return where.startswith(OUR_PACKAGES)


@dataclass
class Collapsed:
    """Samples of a py-spy raw profile, summed several ways."""

    total: int = 0
    own: dict[str, int] = field(default_factory=dict)
    inclusive: dict[str, int] = field(default_factory=dict)
    threads: dict[str, int] = field(default_factory=dict)
    packages: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def ranked(counts: dict[str, int]) -> list[tuple[str, int]]:
        """(key, samples), most first."""
        return sorted(counts.items(), key=lambda kv: kv[1], reverse=True)


def _thread_kind(frames: list[str]) -> str:
    joined = ";".join(frames)
    if "_connection_worker_thread" in joined:
        return "sqlite thread (aiosqlite)"
    if "_run_jobs (common/storage.py" in joined:
        return "sqlite thread (SqliteThread)"
    if "concurrent/futures/thread.py" in joined:
        return "thread pool (to_thread)"
    if "Thread._bootstrap" in joined:
        return "other threads"
    return "event loop thread"


def _package(frame: str) -> str:
    where = frame.rsplit(" (", 1)[-1].rstrip(")")
    if where.startswith(OUR_PACKAGES):
        return "agentgate." + where.split("/", 1)[0]
    return where.split("/", 1)[0].split(".", 1)[0]


def read_collapsed(path: Path) -> Collapsed:
    """Reads a py-spy raw (collapsed stacks) file. A frame is `function (file)`, the line
    number dropped, so a function adds up across lines and threads."""
    out = Collapsed()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        out.total += count
        out.own[frames[-1]] = out.own.get(frames[-1], 0) + count
        for frame in set(frames):
            out.inclusive[frame] = out.inclusive.get(frame, 0) + count
        for package in {_package(f) for f in frames}:
            out.packages[package] = out.packages.get(package, 0) + count
        kind = _thread_kind(frames)
        out.threads[kind] = out.threads.get(kind, 0) + count
    return out


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)".
    name, sep, where = frame.partition(" (")
    if not sep:
        return frame
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/services/", "/clients/python/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


# -- work orders --------------------------------------------------------------------------

#: A gate plan with one check that runs `true`.
TRUE_GATE = 'version: "1"\ntests:\n  - {name: noop, kind: test, command: "true", timeout: 60}\n'
#: A scripted agent that does nothing.
NOOP_SCRIPT = "default: []\n"


def make_project(root: Path, gate: str = TRUE_GATE) -> Path:
    """A tiny project folder with a verify.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("bench project\n")
    (root / "verify.yaml").write_text(gate)
    return root


def noop_spec(project: Path, script: str = NOOP_SCRIPT, max_iterations: int = 1, prompt: str = "bench: do nothing"):
    """A work order that runs the scripted agent on a copy of `project`."""
    from agentgate.v1 import common_pb2

    spec = common_pb2.WorkOrderSpec(
        task_prompt=prompt,
        agent=common_pb2.AgentSpec(name="scripted", options={"script": script}),
    )
    spec.source.local_path = str(project.resolve())
    spec.harness.loop_strategy.max_iterations = max_iterations
    return spec


def run_async(coro: Any) -> Any:
    """asyncio.run, in a child process or the main one."""
    return asyncio.run(coro)
