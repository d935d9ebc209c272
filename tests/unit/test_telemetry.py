"""Telemetry setup: service names, export only with an endpoint, traceparent helpers."""

from __future__ import annotations

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_span_id, format_trace_id

from agentgate.common import telemetry
from agentgate.queue.server import trace_id_from_traceparent

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_endpoints_come_from_the_standard_variables() -> None:
    assert telemetry.traces_endpoint({}) == ""
    assert telemetry.traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}) == "http://c:4317"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4317"}
    assert telemetry.traces_endpoint(env) == "http://t:4317"
    assert telemetry.metrics_endpoint({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://m:4317"}) == "http://m:4317"
    assert telemetry.service_name("queue") == "agentgate-queue"


def test_without_an_endpoint_nothing_is_recorded_but_ids_still_flow() -> None:
    found = telemetry.init_telemetry("workspace", install_global=False, env={})
    try:
        assert not found.exporting_traces and not found.exporting_metrics
        assert telemetry.telemetry_for("workspace") is found
        with telemetry.span_continuing(found.tracer(), "run", PARENT) as span:
            assert not span.is_recording()
            assert telemetry.trace_id_of(span) == "4bf92f3577b34da6a3ce929d0e0e4736"
            assert telemetry.current_traceparent().split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
        with found.tracer().start_as_current_span("root") as root:
            assert len(telemetry.trace_id_of(root)) == 32, "a new trace still has an id"
    finally:
        found.shutdown()
    assert telemetry.telemetry_for("workspace") is None


def test_an_exporter_records_spans_with_the_service_name_and_the_parent() -> None:
    exporter = InMemorySpanExporter()
    found = telemetry.init_telemetry("persistence", install_global=False, span_exporter=exporter, env={})
    try:
        assert found.exporting_traces
        with telemetry.span_continuing(found.tracer(), "run", PARENT, {"agentgate.run_id": "r"}) as span:
            assert span.is_recording()
            inner = telemetry.current_traceparent()
        (finished,) = exporter.get_finished_spans()
        assert finished.resource.attributes["service.name"] == "agentgate-persistence"
        assert format_trace_id(finished.context.trace_id) == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert format_span_id(finished.parent.span_id) == "00f067aa0ba902b7"
        assert finished.attributes["agentgate.run_id"] == "r"
        assert inner == f"00-4bf92f3577b34da6a3ce929d0e0e4736-{format_span_id(finished.context.span_id)}-01"
    finally:
        found.shutdown()


def test_a_missing_or_bad_traceparent_starts_a_new_trace() -> None:
    exporter = InMemorySpanExporter()
    found = telemetry.init_telemetry("queue", install_global=False, span_exporter=exporter, env={})
    try:
        for value in ("", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"):
            with telemetry.span_continuing(found.tracer(), "run", value) as span:
                assert telemetry.trace_id_of(span) not in ("", "0" * 32, "4bf92f3577b34da6a3ce929d0e0e4736")
        assert all(span.parent is None for span in exporter.get_finished_spans())
    finally:
        found.shutdown()


def test_new_traceparent_is_valid_w3c_and_outgoing_prefers_the_current_span() -> None:
    fresh = telemetry.new_traceparent()
    assert trace_id_from_traceparent(fresh) == fresh.split("-")[1]
    assert fresh != telemetry.new_traceparent()
    assert telemetry.outgoing_traceparent() != telemetry.outgoing_traceparent()  # no span: fresh each time
    found = telemetry.init_telemetry("orchestrator", install_global=False, span_exporter=InMemorySpanExporter(),
                                     env={})
    try:
        with telemetry.span_continuing(found.tracer(), "run", PARENT):
            assert telemetry.outgoing_traceparent().split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
    finally:
        found.shutdown()


def test_health_and_reflection_calls_are_not_traced() -> None:
    class Details:
        def __init__(self, method: object):
            self.method = method

    is_traced = telemetry._traced_filter()
    assert is_traced(Details("/agentgate.v1.QueueService/Submit"))
    assert is_traced(Details(b"/agentgate.v1.QueueService/Submit"))
    assert not is_traced(Details("/grpc.health.v1.Health/Check"))
    assert not is_traced(Details(b"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"))


def test_otel_sdk_disabled_removes_the_instrumentation(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert telemetry.server_interceptors("queue") and telemetry.client_interceptors("queue")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert telemetry.instrumentation_disabled()
    assert telemetry.server_interceptors("queue") == [] and telemetry.client_interceptors("queue") == []
    sentinel = object()
    assert telemetry.intercept_sync_channel(sentinel) is sentinel
