"""`python -m agentgate.client.gateway`: the dashboard gateway as a process (docs/dashboard.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from agentgate.client.gateway.auth import Sessions
from agentgate.client.gateway.server import make_app
from agentgate.common import security
from agentgate.common.config import DEFAULT_GATEWAY_ADDRESS, GATEWAY_ADDRESS_ENV, ConfigError, gateway_address
from agentgate.common.server import configure_logging

log = logging.getLogger("agentgate.client.gateway")

DASHBOARD_DIR_ENV = "AGENTGATE_DASHBOARD_DIR"
#: The dashboard `make dashboard` builds (clients/web/dist), beside this package in the repository.
BUILT_DASHBOARD = Path(__file__).resolve().parents[4] / "web" / "dist"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The gateway's flags."""
    parser = argparse.ArgumentParser(prog="agentgate-gateway", description="AgentGate dashboard gateway")
    parser.add_argument(
        "--address", help=f"host:port to listen on (env {GATEWAY_ADDRESS_ENV}, default {DEFAULT_GATEWAY_ADDRESS})"
    )
    parser.add_argument(
        "--dashboard-dir", help=f"the built dashboard (env {DASHBOARD_DIR_ENV}, default {BUILT_DASHBOARD})"
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def serve(address: str, sessions: Sessions, dashboard_dir: Path) -> None:
    """Serves until SIGTERM or SIGINT."""
    host, _, port = address.rpartition(":")
    # Open event streams would hold a graceful shutdown for a minute: they are cut after a
    # second instead, and the browsers reconnect from their last seq (docs/dashboard.md).
    runner = web.AppRunner(
        make_app(sessions, dashboard_dir), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    await web.TCPSite(runner, host.strip("[]"), int(port)).start()
    log.info("gateway serving on http://%s (dashboard %s)", address, dashboard_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("gateway shutting down")
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Runs the gateway; a bad setting exits with 2."""
    args = parse_args(argv)
    configure_logging(args.log_level, "gateway")
    try:
        address = gateway_address(args.address)
        token = security.client_token()
        if not token:
            raise ConfigError(f"no token: set {security.TOKEN_ENV} or run `agentgate up`, which makes one")
    except ConfigError as exc:
        print(f"agentgate-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    if not security.is_loopback(address):
        log.warning("listening on %s without TLS: the session cookie travels in clear text", address)
    dashboard_dir = Path(args.dashboard_dir or os.environ.get(DASHBOARD_DIR_ENV) or BUILT_DASHBOARD)
    asyncio.run(serve(address, Sessions(token), dashboard_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
