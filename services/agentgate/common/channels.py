"""Client channels to the services, with the same limits the servers use.

Channels carry the OpenTelemetry gRPC client instrumentation: a call is a client span and
sends the current trace context as W3C `traceparent` metadata (every call of an asyncio
channel; the unary calls of a blocking one). They also send a bearer credential (the client
token of AGENTGATE_TOKEN or $AGENTGATE_HOME/auth/token unless the caller names another, e.g.
a worker's) and use TLS when AGENTGATE_TLS_CA is set (see `agentgate.common.security`).

An address may name several replicas, `host1:port,host2:port` (or `dns:///name:port`, a
name with several records): one channel then spreads calls over them (round robin), and
a call that fails UNAVAILABLE because its replica died is sent again to another one
(docs/deployment.md, "Several replicas on PostgreSQL"). Calls that are not naturally
idempotent carry idempotency keys (Submit; events' `event_id`), so a retry is safe.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
from collections.abc import Sequence

import grpc

from agentgate.common import security
from agentgate.common.config import MAX_MESSAGE_BYTES, ConfigError

#: The variable that names a tracer provider OpenTelemetry loads on first use.
TRACER_PROVIDER_ENV = "OTEL_PYTHON_TRACER_PROVIDER"

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]

#: For services calling services: gRPC's reconnect backoff grows to two minutes by default;
#: a restarted service must be noticed within a second.
SERVICE_CHANNEL_OPTIONS = [
    *CHANNEL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


#: Several replicas: round robin, and UNAVAILABLE (the replica died or is unreachable)
#: tried again on the next one, a few times over about two seconds.
REPLICA_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)


def channel_target(address: str) -> tuple[str, list[tuple[str, object]]]:
    """The gRPC target for `address` and the options it needs. One `host:port`: itself,
    no options. Several, comma-separated: an `ipv4:`/`ipv6:` list of them (host names
    resolved once, here) with REPLICA_SERVICE_CONFIG. `dns:///name:port`: gRPC's own
    resolver (re-resolved on failure) with REPLICA_SERVICE_CONFIG."""
    address = address.strip()
    replica_options: list[tuple[str, object]] = [("grpc.service_config", REPLICA_SERVICE_CONFIG)]
    if address.startswith("dns:"):
        return address, replica_options
    parts = [part.strip() for part in address.split(",") if part.strip()]
    if len(parts) <= 1:
        return address, []
    families: set[str] = set()
    endpoints = []
    for part in parts:
        host, sep, port = part.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"{part!r} in {address!r} is not host:port")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            # A host name: its first address (a name with several records: use dns:///).
            ip = ipaddress.ip_address(socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0][4][0])
        families.add(f"ipv{ip.version}")
        endpoints.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    if len(families) > 1:
        raise ConfigError(f"{address!r} mixes IPv4 and IPv6 addresses")
    return f"{families.pop()}:{','.join(endpoints)}", replica_options


def aio_channel(
    address: str,
    service: str | None = None,
    options: Sequence[tuple[str, object]] | None = None,
    credential: str | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to `address`; it belongs to the running event loop. `service`
    names the AgentGate service that calls through it (whose tracer makes the client
    spans; the global tracer provider when None). `options` replace CHANNEL_OPTIONS.
    `credential` is the bearer credential to send (None: the client token)."""
    from agentgate.common import telemetry

    options = CHANNEL_OPTIONS if options is None else options
    address, replica_options = channel_target(address)
    options = [*options, *replica_options]
    # Credential and TLS from the environment (agentgate.common.security).
    # The trace context rides with the token when no span is recorded (one interceptor less).
    extra = telemetry.context_metadata if telemetry.carries_context_only(service) else None
    interceptors = [*security.aio_client_interceptors(credential, extra), *telemetry.client_interceptors(service)]
    credentials = security.client_credentials()
    if credentials is not None:
        tls_options = [*options, *security.client_options()]
        return grpc.aio.secure_channel(address, credentials, options=tls_options, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)


def sync_channel(address: str, credential: str | None = None) -> grpc.Channel:
    """A blocking channel to `address` (CLI use). Its unary calls carry the instrumentation
    (see `telemetry.intercept_sync_channel`) once this process may trace. `credential`: as for
    `aio_channel`."""
    credentials = security.client_credentials()
    address, replica_options = channel_target(address)
    options = [*CHANNEL_OPTIONS, *replica_options]
    if credentials is not None:
        channel = grpc.secure_channel(address, credentials, options=options + security.client_options())
    else:
        channel = grpc.insecure_channel(address, options=options)
    channel = security.intercept_sync_channel(channel, credential)
    if not _may_trace():
        return channel
    from agentgate.common import telemetry

    return telemetry.intercept_sync_channel(channel)


def _may_trace() -> bool:
    """Whether a tracer provider may be set in this process: only code that imported
    OpenTelemetry's trace API can set one, or the API itself from TRACER_PROVIDER_ENV. A CLI
    process sets none, and then does not spend its start-up loading OpenTelemetry
    (docs/benchmarks.md, "CLI start-up")."""
    return "opentelemetry.trace" in sys.modules or TRACER_PROVIDER_ENV in os.environ
