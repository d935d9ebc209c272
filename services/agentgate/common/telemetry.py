"""OpenTelemetry for the four services (docs/observability.md): one TracerProvider and MeterProvider per
service, the gRPC instrumentation on every server and channel, and W3C `traceparent` helpers.

- `service.name` is `agentgate-{service}` (`agentgate-queue`, `agentgate-orchestrator`, ...).
- Export is OTLP/gRPC and only happens when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the
  `..._TRACES_ENDPOINT` / `..._METRICS_ENDPOINT` variant) is set; spans then go through a
  BatchSpanProcessor (tuned by the standard `OTEL_BSP_*` variables) and are flushed when the
  process stops.
- Without an endpoint nothing is exported and spans are not recorded: the sampler drops them
  (`ALWAYS_OFF`, unless `OTEL_TRACES_SAMPLER` says otherwise), so a span costs little more
  than generating its ids. The ids still exist and still cross every call, which is what
  gives a work order, its run and its events one trace id even when nobody collects spans.

A process that runs one service calls `init_telemetry(name)` once in its `__main__` (it also
becomes the global provider). Tests may run several services in one process: each can get
its own non-global `Telemetry`, which `start_server` and `aio_channel(..., service=...)`
pick up by name.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
METRICS_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
SAMPLER_ENV = "OTEL_TRACES_SAMPLER"
SDK_DISABLED_ENV = "OTEL_SDK_DISABLED"
SERVICE_NAME_PREFIX = "agentgate-"

#: gRPC services whose calls make no spans: health probes and reflection are frequent,
#: say nothing about a work order, and would bury the traces that do.
UNTRACED_GRPC_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)

_PROPAGATOR = TraceContextTextMapPropagator()


def service_name(service: str) -> str:
    """The OpenTelemetry `service.name` of an AgentGate service, e.g. `agentgate-queue`."""
    return f"{SERVICE_NAME_PREFIX}{service}"


def traces_endpoint(env: Mapping[str, str] | None = None) -> str:
    """The OTLP endpoint spans go to, or '' when spans are not exported."""
    env = os.environ if env is None else env
    return env.get(TRACES_ENDPOINT_ENV, "").strip() or env.get(ENDPOINT_ENV, "").strip()


def metrics_endpoint(env: Mapping[str, str] | None = None) -> str:
    """The OTLP endpoint metrics go to, or '' when metrics are not exported."""
    env = os.environ if env is None else env
    return env.get(METRICS_ENDPOINT_ENV, "").strip() or env.get(ENDPOINT_ENV, "").strip()


@dataclass
class Telemetry:
    """The providers of one service."""

    service: str
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    #: Whether spans are exported (an endpoint or an exporter was given).
    exporting_traces: bool
    #: Whether metrics are read by anyone (an endpoint or a reader was given).
    exporting_metrics: bool
    #: Whether spans may be recorded (exported, or a sampler chosen by OTEL_TRACES_SAMPLER):
    #: when not, calls carry the trace context without the instrumentation.
    records_spans: bool = True
    _closed: bool = field(default=False, repr=False)

    def tracer(self, name: str | None = None) -> trace.Tracer:
        """A tracer of this service (named after it unless `name` is given)."""
        return self.tracer_provider.get_tracer(name or f"agentgate.{self.service}")

    def meter(self, name: str | None = None) -> metrics.Meter:
        """A meter of this service."""
        return self.meter_provider.get_meter(name or f"agentgate.{self.service}")

    def shutdown(self, timeout_millis: int = 5_000) -> None:
        """Flushes what is buffered to the exporters and stops them (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.tracer_provider.force_flush(timeout_millis)
            self.tracer_provider.shutdown()
        except Exception:  # noqa: BLE001 - a failing exporter must not break a shutdown
            log.warning("could not flush the spans of %s", self.service, exc_info=True)
        try:
            self.meter_provider.shutdown(timeout_millis=timeout_millis)
        except Exception:  # noqa: BLE001
            log.warning("could not flush the metrics of %s", self.service, exc_info=True)
        with _registry_lock:
            if _registry.get(self.service) is self:
                del _registry[self.service]


_registry: dict[str, Telemetry] = {}
_registry_lock = threading.Lock()
_global_installed = False


def init_telemetry(
    service: str,
    *,
    install_global: bool = True,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
    env: Mapping[str, str] | None = None,
) -> Telemetry:
    """Creates the providers of `service` and registers them under its name.

    `install_global` also makes them the process's global providers (once per process: the
    first call wins), which is what a service process wants. `span_exporter` and
    `metric_reader` replace the OTLP exporters (tests); they are used with a simple,
    synchronous span processor so a test sees a span as soon as it ends.
    """
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, SERVICE_NAMESPACE, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    env = os.environ if env is None else env
    resource = Resource.create(
        {
            SERVICE_NAME: service_name(service),
            SERVICE_NAMESPACE: "agentgate",
            SERVICE_INSTANCE_ID: f"{socket.gethostname()}-{os.getpid()}",
        }
    )
    endpoint = traces_endpoint(env)
    exporting_traces = bool(endpoint) or span_exporter is not None
    # None = the SDK default (OTEL_TRACES_SAMPLER, else parent-based always-on).
    sampler = None if exporting_traces or env.get(SAMPLER_ENV) else ALWAYS_OFF
    # shutdown_on_exit=False: shutdown() (registered below) owns the order of flushing.
    tracer_provider = TracerProvider(resource=resource, sampler=sampler, shutdown_on_exit=False)
    if span_exporter is not None:
        tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    elif endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))

    readers: list[MetricReader] = []
    if metric_reader is not None:
        readers.append(metric_reader)
    elif metrics_endpoint(env):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers, shutdown_on_exit=False)

    telemetry = Telemetry(
        service=service,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        exporting_traces=exporting_traces,
        exporting_metrics=bool(readers),
        records_spans=sampler is not ALWAYS_OFF,
    )
    with _registry_lock:
        _registry[service] = telemetry
    if install_global:
        _install_global(telemetry)
    if exporting_traces or readers:
        log.info("telemetry of %s: traces to %s, metrics %s", service, endpoint or "a test exporter",
                 "exported" if readers else "not exported")
    return telemetry


def _install_global(telemetry: Telemetry) -> None:
    global _global_installed
    if _global_installed:
        return
    _global_installed = True
    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
    # Runs at interpreter exit, after asyncio.run() returned: the last spans of the
    # shutdown (the final UpdateRun, say) are exported too.
    atexit.register(telemetry.shutdown)


def telemetry_for(service: str | None) -> Telemetry | None:
    """The registered providers of `service`, if `init_telemetry` was called for it."""
    if not service:
        return None
    with _registry_lock:
        return _registry.get(service)


def tracer_provider_for(service: str | None) -> trace.TracerProvider | None:
    """The tracer provider of `service`, or None for the global one (resolved lazily)."""
    found = telemetry_for(service)
    return found.tracer_provider if found else None


def meter_provider_for(service: str | None) -> metrics.MeterProvider:
    """The meter provider of `service`, else the global one."""
    found = telemetry_for(service)
    return found.meter_provider if found else metrics.get_meter_provider()


def tracer(service: str) -> trace.Tracer:
    """The tracer named after `service`, from its provider (or the global one)."""
    return trace.get_tracer(f"agentgate.{service}", tracer_provider=tracer_provider_for(service))


_UNTRACED_PREFIXES = tuple(f"/{name}/" for name in UNTRACED_GRPC_SERVICES)


def _is_traced(details: Any) -> bool:
    """The instrumentation's filter: False for health and reflection calls.

    Written out rather than built from `instrumentation.grpc.filters`, whose isinstance
    checks against a runtime Protocol cost ~50 µs per call, on every call."""
    method = getattr(details, "method", None) or getattr(details, "full_method", "") or ""
    if isinstance(method, bytes):
        method = method.decode("ascii", errors="replace")
    return not method.startswith(_UNTRACED_PREFIXES)


def _traced_filter() -> Any:
    return _is_traced


def instrumentation_disabled(env: Mapping[str, str] | None = None) -> bool:
    """`OTEL_SDK_DISABLED=true`: no instrumentation at all (no spans, no trace context sent
    on; a work order then has a trace id only when its client sends one)."""
    env = os.environ if env is None else env
    return env.get(SDK_DISABLED_ENV, "").strip().lower() == "true"


def carries_context_only(service: str | None) -> bool:
    """Whether the calls of `service` carry the trace context without the instrumentation:
    its spans are never recorded, so the instrumentation's span per call (~0.1 ms of
    processor time for a client and a server span) would only carry the ids on
    (docs/observability.md). False for a provider this module did not make."""
    found = telemetry_for(service)
    return found is not None and not found.records_spans and not instrumentation_disabled()


def server_interceptors(service: str | None) -> list[Any]:
    """The OpenTelemetry aio server interceptor for a server of `service` (one that only
    continues the caller's trace context when its spans are not recorded)."""
    if instrumentation_disabled():
        return []
    if carries_context_only(service):
        from agentgate.common.grpc_tracing import TraceContextServerInterceptor

        return [TraceContextServerInterceptor(_is_traced)]
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=tracer_provider_for(service), filter_=_traced_filter())]


def context_metadata(method: str) -> list[tuple[str, str]]:
    """The `traceparent` a call of `method` carries without the instrumentation: the
    current span's (none for health and reflection calls, or outside any trace)."""
    if method.startswith(_UNTRACED_PREFIXES):
        return []
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return list(carrier.items())


def client_interceptors(service: str | None = None) -> list[Any]:
    """The OpenTelemetry aio client interceptors for a channel opened by `service` (see
    `grpc_tracing` for why not the instrumentation's own unary ones); none when the calls
    carry the context only (`context_metadata`, sent by the token's interceptor)."""
    if instrumentation_disabled() or carries_context_only(service):
        return []
    from opentelemetry.instrumentation.grpc import __version__ as instrumentation_version

    from agentgate.common.grpc_tracing import aio_client_interceptors

    grpc_tracer = trace.get_tracer(
        "opentelemetry.instrumentation.grpc",
        instrumentation_version,
        tracer_provider_for(service),
        schema_url="https://opentelemetry.io/schemas/1.11.0",
    )
    return aio_client_interceptors(grpc_tracer, filter_=_traced_filter())


def intercept_sync_channel(channel: Any, service: str | None = None) -> Any:
    """`channel` with the instrumentation on its unary calls.

    Streaming calls pass through untouched: the instrumentation would hand back a plain
    generator instead of the call, and followers need the call's `cancel()` and `code()`.
    With no tracer provider set yet (a CLI process sets none) a span could neither record
    nor carry a trace context: the channel stays as it is, and the CLI does not spend its
    start-up loading the instrumentation (docs/benchmarks.md, "CLI start-up").
    """
    untraced = tracer_provider_for(service) is None and isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider
    )
    if instrumentation_disabled() or untraced:
        return channel
    from opentelemetry.instrumentation.grpc import client_interceptor, grpcext

    instrumented = client_interceptor(tracer_provider=tracer_provider_for(service), filter_=_traced_filter())

    class UnaryOnly(grpcext.UnaryClientInterceptor):
        def intercept_unary(self, request: Any, metadata: Any, client_info: Any, invoker: Any) -> Any:
            return instrumented.intercept_unary(request, metadata, client_info, invoker)

    return grpcext.intercept_channel(channel, UnaryOnly())


# --- W3C trace context ------------------------------------------------------------------


def current_traceparent() -> str:
    """The `traceparent` of the current span, or '' when there is no valid one."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", "")


def trace_id_of(span: trace.Span | None = None) -> str:
    """The 32-hex trace id of `span` (default: the current one), or '' when invalid."""
    context = (span or trace.get_current_span()).get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else ""


def context_from_traceparent(traceparent: str) -> otel_context.Context:
    """A context whose parent is the span `traceparent` names (an empty context when the
    value is missing or invalid, so a new trace starts)."""
    if not traceparent:
        return otel_context.Context()
    return _PROPAGATOR.extract({"traceparent": traceparent}, context=otel_context.Context())


def new_traceparent() -> str:
    """A fresh sampled `traceparent` for a client that has no tracing of its own: it starts
    the trace of what it submits, so the work order's spans share one trace id."""
    # What the SDK's RandomIdGenerator does, without importing the SDK into every client.
    trace_id = random.getrandbits(128) or 1
    span_id = random.getrandbits(64) or 1
    return f"00-{trace_id:032x}-{span_id:016x}-01"


def outgoing_traceparent() -> str:
    """The `traceparent` a client should send: the current span's when the caller traces,
    else a fresh one."""
    return current_traceparent() or new_traceparent()


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """gRPC metadata that carries `outgoing_traceparent()` (what clients send with Submit)."""
    return (("traceparent", outgoing_traceparent()),)


@contextmanager
def span_continuing(
    tracer_: trace.Tracer, name: str, traceparent: str, attributes: Mapping[str, Any] | None = None
) -> Iterator[trace.Span]:
    """A current span named `name` whose parent is the span of `traceparent` (stored with a
    work order, say); a new trace when there is none."""
    with tracer_.start_as_current_span(
        name, context=context_from_traceparent(traceparent), attributes=dict(attributes or {})
    ) as span:
        yield span
