"""Observability end to end, on the four services as real processes started by the CLI:

- tracing: the services export OTLP/gRPC to a real receiver this test runs, and spans from
  all four service names carry the work order's trace id (which `agentgate status` shows);
- metrics: the orchestrator's run metrics reach the same receiver;
- the audit log: one line per event under $AGENTGATE_HOME/audit;
- StreamEvents for many: 20 concurrent `agentgate watch` clients of one run each receive
  the identical, complete sequence.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from .conftest import AGENTGATE, Suite, running_suite, suite_env
from .helpers import make_project

pytestmark = pytest.mark.slow

SERVICE_NAMES = {"agentgate-queue", "agentgate-orchestrator", "agentgate-workspace", "agentgate-persistence"}
WATCHERS = 20


def _service_name(resource) -> str:  # type: ignore[no-untyped-def]
    for attribute in resource.attributes:
        if attribute.key == "service.name":
            return attribute.value.string_value
    return ""


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A tiny OTLP/gRPC trace receiver: remembers (service.name, trace id, span name)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[str, str, str]] = []

    def Export(self, request, context):  # noqa: N802 - gRPC method name
        with self.lock:
            for resource_spans in request.resource_spans:
                service = _service_name(resource_spans.resource)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append((service, span.trace_id.hex(), span.name))
        return trace_service_pb2.ExportTraceServiceResponse()

    def services_in(self, trace_id: str) -> set[str]:
        with self.lock:
            return {service for service, tid, _ in self.spans if tid == trace_id}


class MetricsCollector(metrics_service_pb2_grpc.MetricsServiceServicer):
    """A tiny OTLP/gRPC metrics receiver: remembers (service.name, metric name)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.names: set[tuple[str, str]] = set()

    def Export(self, request, context):  # noqa: N802
        with self.lock:
            for resource_metrics in request.resource_metrics:
                service = _service_name(resource_metrics.resource)
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        self.names.add((service, metric.name))
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture(scope="module")
def collectors() -> Iterator[tuple[Collector, MetricsCollector, int]]:
    traces, metrics = Collector(), MetricsCollector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(traces, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(metrics, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield traces, metrics, port
    server.stop(0)


@pytest.fixture(scope="module")
def traced_suite(tmp_path_factory: pytest.TempPathFactory, collectors) -> Iterator[Suite]:  # type: ignore[no-untyped-def]
    """The suite with OTLP export to the test's receiver, spans sent every 200 ms."""
    home = tmp_path_factory.mktemp("traced-home")
    env = suite_env(home)
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collectors[2]}",
        OTEL_BSP_SCHEDULE_DELAY="200",
        OTEL_METRIC_EXPORT_INTERVAL="500",
    )
    with running_suite(home, env) as running:
        yield running


def wait_for(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def submit(suite: Suite, project: Path, script: Path) -> dict:
    code, out = suite.cli_json(
        "submit", "--path", str(project), "--prompt", "Fix add()", "--agent", "scripted",
        "--agent-option", f"script={script}",
    )
    assert code == 0, out
    return out


def test_spans_from_all_four_services_carry_the_work_orders_trace_id(traced_suite: Suite, collectors, tmp_path: Path):  # type: ignore[no-untyped-def]
    traces, metrics, _ = collectors
    project = make_project(tmp_path / "project")
    script = tmp_path / "fix.yaml"
    script.write_text(
        "iterations:\n  1:\n    - write: {path: calc.py, content: \"def add(a, b):\\n    return a + b\\n\"}\n"
    )
    submitted = submit(traced_suite, project, script)
    wait_for(
        lambda: traced_suite.cli_json("status", submitted["work_order_id"])[1]["status"] == "SUCCEEDED",
        120, "the work order to succeed",
    )
    _, status = traced_suite.cli_json("status", submitted["work_order_id"])
    trace_id = status["trace_id"]
    assert len(trace_id) == 32
    human = traced_suite.cli("status", submitted["work_order_id"], check=True)
    assert trace_id in human.stdout, "agentgate status shows the trace id"

    wait_for(lambda: traces.services_in(trace_id) >= SERVICE_NAMES, 30,
             f"spans of all four services in trace {trace_id}; got {traces.services_in(trace_id)}")
    with traces.lock:
        names = {name for service, tid, name in traces.spans if tid == trace_id and service == "agentgate-orchestrator"}
    assert "run" in names

    # Every event of the run carries the trace id; the audit log has them too.
    events = [json.loads(line) for line in (traced_suite.home / "runs" / status["run_id"] / "events.jsonl").open()]
    assert events and {e.get("trace_id", e.get("traceId")) for e in events} == {trace_id}
    audit = [json.loads(line) for line in (traced_suite.home / "audit" / "audit.jsonl").open()]
    mine = [record for record in audit if record["run_id"] == status["run_id"]]
    assert mine and {record["trace_id"] for record in mine} == {trace_id}
    assert mine[0]["type"] == "run:started" and mine[-1]["type"] == "run:complete"

    wait_for(lambda: ("agentgate-orchestrator", "agentgate.runs.completed") in metrics.names, 30,
             "the run metrics to be exported")


def test_twenty_concurrent_watchers_get_the_identical_complete_sequence(traced_suite: Suite, tmp_path: Path):
    project = make_project(tmp_path / "project")
    script = tmp_path / "slow.yaml"
    # A pause first, so every watcher is following before most events exist; then output.
    script.write_text(
        "iterations:\n  1:\n    - sleep: 4\n"
        + "".join(f"    - print: line {n}\n" for n in range(50))
        + "    - write: {path: calc.py, content: \"def add(a, b):\\n    return a + b\\n\"}\n"
    )
    submitted = submit(traced_suite, project, script)
    watchers = [
        subprocess.Popen(
            [AGENTGATE, "watch", submitted["work_order_id"], "--json"],
            env=traced_suite.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(WATCHERS)
    ]
    outputs = []
    for watcher in watchers:
        stdout, stderr = watcher.communicate(timeout=180)
        assert watcher.returncode == 0, stderr
        outputs.append([json.loads(line) for line in stdout.splitlines() if line.strip()])

    replay = traced_suite.cli("watch", submitted["work_order_id"], "--json", check=True)
    reference = [json.loads(line) for line in replay.stdout.splitlines() if line.strip()]
    seqs = [int(event["seq"]) for event in reference]
    assert seqs == list(range(1, len(reference) + 1))
    assert reference[-1]["type"] == "run:complete"
    assert sum(event["type"] == "agent:output" for event in reference) >= 50
    for output in outputs:
        assert output == reference, "a watcher did not receive the identical, complete sequence"
