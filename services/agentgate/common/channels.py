"""Client channels to the services, with the same limits the servers use.

Channels carry the OpenTelemetry gRPC client instrumentation: a call is a client span and
sends the current trace context as W3C `traceparent` metadata (every call of an asyncio
channel; the unary calls of a blocking one). They also send a bearer credential (the client
token of AGENTGATE_TOKEN or $AGENTGATE_HOME/auth/token unless the caller names another, e.g.
a worker's) and use TLS when AGENTGATE_TLS_CA is set (see `agentgate.common.security`).
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from agentgate.common import security, telemetry
from agentgate.common.config import MAX_MESSAGE_BYTES

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
    options = CHANNEL_OPTIONS if options is None else options
    # Credential and TLS from the environment (agentgate.common.security).
    interceptors = [*security.aio_client_interceptors(credential), *telemetry.client_interceptors(service)]
    credentials = security.client_credentials()
    if credentials is not None:
        tls_options = [*options, *security.client_options()]
        return grpc.aio.secure_channel(address, credentials, options=tls_options, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)


def sync_channel(address: str, credential: str | None = None) -> grpc.Channel:
    """A blocking channel to `address` (CLI use). Its unary calls carry the instrumentation
    (see `telemetry.sync_client_interceptor`). `credential`: as for `aio_channel`."""
    credentials = security.client_credentials()
    if credentials is not None:
        channel = grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS + security.client_options())
    else:
        channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return telemetry.intercept_sync_channel(security.intercept_sync_channel(channel, credential))
