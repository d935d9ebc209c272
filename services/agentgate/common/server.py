"""Server bootstrap shared by the four services.

A service is a `ServiceApp`: it opens its resources, registers its servicer on a
`grpc.aio` server, and closes its resources on shutdown. This module adds health
(`grpc.health.v1`), server reflection, message size limits, and graceful shutdown on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agentgate.common import telemetry
from agentgate.common.config import MAX_MESSAGE_BYTES, ConfigError, ServiceSettings
from agentgate.common.request_guard import RequestGuard
from agentgate.common.security import ServerSecurity, add_server_flags

log = logging.getLogger(__name__)

SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]

SHUTDOWN_GRACE_SECONDS = 5.0


class ServiceApp(Protocol):
    """What a service provides to the bootstrap."""

    #: Full gRPC service names it serves (for health and reflection); read-only, so an app
    #: may declare a one-name tuple.
    @property
    def service_names(self) -> tuple[str, ...]: ...

    async def start(self, server: grpc.aio.Server) -> None:
        """Opens resources and registers servicers on `server`."""

    async def stop(self) -> None:
        """Stops background work and closes resources (after in-flight calls finished).

        An app may also define `async def closing()`, called before the server stops
        taking calls, to end long-lived calls (streams, long polls) at once."""


@dataclass
class RunningServer:
    """A started server: its port and a way to stop it."""

    server: grpc.aio.Server
    port: int
    app: ServiceApp
    health: health.aio.HealthServicer
    guard: RequestGuard

    async def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Reports NOT_SERVING, ends long-lived calls, lets in-flight calls finish (up to
        `grace`; from now on an unexpected failure answers UNAVAILABLE), then closes the app."""
        for name in (*self.app.service_names, ""):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.guard.shutting_down = True
        closing = getattr(self.app, "closing", None)
        if closing is not None:
            await closing()
        await self.server.stop(grace)
        await self.app.stop()


async def start_server(app: ServiceApp, address: str, security: ServerSecurity | None = None) -> RunningServer:
    """Starts `app` on `address` (port 0 picks a free port) and marks it SERVING.

    Every call gets an OpenTelemetry server span (the gRPC instrumentation), from the
    providers of the app's service when `telemetry.init_telemetry` registered them."""
    service = getattr(getattr(app, "settings", None), "name", None)
    # `security` (credentials, TLS, the loopback rule; by default the credentials of the
    # app's $AGENTGATE_HOME, so auth is on unless a caller says otherwise) is checked before
    # anything starts. The token check comes first, so a refused call is never even decoded; then the
    # request guard, the one mapping of errors to statuses: whatever fails inside it
    # (decoding, instrumentation, the servicer) still ends with a proper status, never UNKNOWN.
    if security is None:
        home = getattr(getattr(app, "settings", None), "home", None)
        security = ServerSecurity.load(home=home)
    security.check_bind(address)
    credentials = security.credentials()
    guard = RequestGuard(service)
    server = grpc.aio.server(
        options=SERVER_OPTIONS,
        interceptors=[*security.interceptors(), guard, *telemetry.server_interceptors(service)],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await app.start(server)
    reflection.enable_server_reflection(
        (*app.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        await app.stop()
        raise ConfigError(f"cannot bind {address}")
    await server.start()
    for name in (*app.service_names, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server=server, port=port, app=app, health=health_servicer, guard=guard)


async def serve_until_signal(
    app: ServiceApp, settings: ServiceSettings, args: argparse.Namespace | None = None
) -> None:
    """Runs `app` until SIGTERM or SIGINT, then shuts down gracefully. Security comes from
    the flags of `service_arg_parser` in `args` > environment; a bad setting exits with 2."""
    try:
        running = await start_server(app, settings.address, ServerSecurity.load(args, home=settings.home))
    except ConfigError as exc:
        print(f"agentgate-{settings.name}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("%s serving on %s (home %s)", settings.name, settings.address, settings.home)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("%s shutting down", settings.name)
    await running.stop()


def add_database_flag(parser: argparse.ArgumentParser) -> None:
    """`--database-url` of the services that keep state (queue, persistence)."""
    parser.add_argument(
        "--database-url",
        help="postgresql://... to keep state in PostgreSQL, shared by replicas (env AGENTGATE_DATABASE_URL;"
        " default: a SQLite file under the home folder)",
    )


def service_arg_parser(name: str) -> argparse.ArgumentParser:
    """The flags every service process takes; services add their own."""
    parser = argparse.ArgumentParser(prog=f"agentgate-{name}", description=f"AgentGate {name} service")
    parser.add_argument("--address", help=f"host:port to listen on (env AGENTGATE_{name.upper()}_ADDR)")
    parser.add_argument("--home", help="data folder (env AGENTGATE_HOME, default ~/.agentgate)")
    parser.add_argument("--log-level", default="INFO")
    add_server_flags(parser)
    return parser


def configure_logging(level: str, name: str) -> None:
    """One log line format for every service process (stderr)."""
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )
