"""1. RPC overhead: queue `Submit` against a bare `grpc.aio` unary echo server, same run.

Each server is its own process; the load comes from a separate client process (spawned),
so the client does not eat the server's core. The client keeps `concurrency` calls in
flight for `duration` seconds (after a warm-up) and records every call's latency.

- echo: a generic unary handler returning the request bytes unchanged (no deserialization),
  sent the same serialized SubmitRequest the queue gets.
- Submit: the real queue service (`python -m agentgate.queue`, INFO logging as `agentgate up`
  runs it) with the real persistence service behind its outbox, fresh home per level.

Figure: Submit throughput / echo throughput (target >= 50%), with latencies.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import benchlib
import grpc

from agentgate.v1 import queue_pb2

ECHO_METHOD = "/bench.Echo/Echo"
SUBMIT_METHOD = "/agentgate.v1.QueueService/Submit"


def serve_echo(conn: Any, port: int) -> None:
    """Child process: a bare grpc.aio server with one unary echo method."""

    async def main() -> None:
        async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return request

        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        conn.send("ready")
        await server.wait_for_termination()

    asyncio.run(main())


def measure(
    method: str,
    address: str,
    pids: dict[str, int],
    payload: bytes,
    concurrency: int,
    args: Any,
    profiler: benchlib.Profiler,
) -> dict:
    """Runs the client process against one server and returns its figures."""
    warmup, duration = (0.5, 3.0) if args.quick else (1.0, 8.0)
    with benchlib.cpu_meter(pids) as cpu, profiler.record(pids):
        (result,) = benchlib.run_in_processes(
            benchlib.unary_load, [(address, method, [payload], concurrency, warmup, duration)]
        )
    return {
        "server": "echo" if method == ECHO_METHOD else "Submit",
        "in_flight": concurrency,
        **benchlib.load_figures(result),
        "server_cpu%": sum(v for k, v in cpu.items() if k.endswith("%") and not k.startswith("persistence")),
        "persist_cpu%": cpu.get("persistence%", 0.0),
        "client_cpu%": result["client_cpu_pct"],
    }


def main() -> int:
    parser = benchlib.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    report = benchlib.Report("rpc: Submit vs bare grpc.aio echo")
    with tempfile.TemporaryDirectory() as tmp:
        project = benchlib.make_project(Path(tmp) / "project")
        payload = queue_pb2.SubmitRequest(spec=benchlib.noop_spec(project)).SerializeToString()
        report.note(f"request: a SubmitRequest of {len(payload)} bytes (scripted no-op agent, local_path source)")
        for concurrency in args.concurrency:
            port = benchlib.free_port()
            proc, conn = benchlib.start_process(serve_echo, port)
            try:
                conn.recv()
                echo = measure(
                    ECHO_METHOD,
                    f"127.0.0.1:{port}",
                    {"echo": proc.pid},
                    payload,
                    concurrency,
                    args,
                    benchlib.Profiler(None, ""),
                )
            finally:
                proc.terminate()
                proc.join(10)
            # A fresh queue per level: pending work orders pile up during the run.
            with benchlib.Services(env={"AGENTGATE_MAX_QUEUE_SIZE": "10000000"}) as services:
                services.start("persistence", "queue")
                profiler = benchlib.Profiler(args.profile, f"rpc-c{concurrency}")
                submit = measure(
                    SUBMIT_METHOD, services.addresses["queue"], services.pids(), payload, concurrency, args, profiler
                )
            profiler.print_top()
            report.row(**echo)
            report.row(**submit)
            ratio = submit["calls/s"] / echo["calls/s"]
            report.extra[f"ratio_c{concurrency}"] = ratio
            report.target(
                f"Submit throughput / echo throughput at {concurrency} in flight",
                100 * ratio,
                50.0,
                "%",
                higher_is_better=True,
            )
    report.note("server_cpu% = CPU of the server process(es) answering the calls (100 = one core busy)")
    report.note("persist_cpu% = the persistence service receiving the queue's outbox events")
    report.print()
    report.save(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
