"""`python -m agentgate.queue`: runs the queue service until SIGTERM/SIGINT.

Flags win over environment variables, which win over defaults; a bad value stops the
process at start with a message naming the flag or variable.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from agentgate.common.config import ConfigError, ServiceSettings, env_int
from agentgate.common.server import add_database_flag, configure_logging, serve_until_signal, service_arg_parser
from agentgate.common.telemetry import init_telemetry
from agentgate.queue.server import QueueApp


def build_parser() -> argparse.ArgumentParser:
    """The queue's flags: the common ones plus its limits and persistence address."""
    parser = service_arg_parser("queue")
    parser.add_argument(
        "--persistence-address", help="host:port of the persistence service (env AGENTGATE_PERSISTENCE_ADDR)"
    )
    parser.add_argument(
        "--max-concurrent", type=int, help="runs at once across all workers (env AGENTGATE_MAX_CONCURRENT, default 2)"
    )
    parser.add_argument(
        "--max-queue-size", type=int, help="waiting work orders at most (env AGENTGATE_MAX_QUEUE_SIZE, default 1000)"
    )
    parser.add_argument(
        "--lease-seconds", type=int, help="lease lifetime without heartbeat (env AGENTGATE_LEASE_SECONDS, default 30)"
    )
    parser.add_argument(
        "--max-lease-attempts",
        type=int,
        help="expired leases before a work order fails (env AGENTGATE_MAX_LEASE_ATTEMPTS, default 3)",
    )
    add_database_flag(parser)
    return parser


def _setting(flag_value: int | None, flag: str, env_key: str, default: int) -> int:
    if flag_value is None:
        return env_int(env_key, default, minimum=1)
    if flag_value < 1:
        raise ConfigError(f"{flag}: must be at least 1, got {flag_value}")
    return flag_value


def build_app(args: argparse.Namespace) -> QueueApp:
    """A QueueApp from parsed flags and the environment; ConfigError names a bad key."""
    settings = ServiceSettings.load("queue", args.address, args.home)
    return QueueApp(
        settings,
        persistence_address=args.persistence_address,
        max_concurrent=_setting(args.max_concurrent, "--max-concurrent", "AGENTGATE_MAX_CONCURRENT", 2),
        max_queue_size=_setting(args.max_queue_size, "--max-queue-size", "AGENTGATE_MAX_QUEUE_SIZE", 1000),
        lease_seconds=_setting(args.lease_seconds, "--lease-seconds", "AGENTGATE_LEASE_SECONDS", 30),
        max_lease_attempts=_setting(args.max_lease_attempts, "--max-lease-attempts", "AGENTGATE_MAX_LEASE_ATTEMPTS", 3),
        database_url=args.database_url,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for a configuration error)."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, "queue")
    init_telemetry("queue")  # traces and metrics; OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
    try:
        app = build_app(args)
    except ConfigError as err:
        print(f"agentgate-queue: configuration error: {err}", file=sys.stderr)
        return 2
    asyncio.run(serve_until_signal(app, app.settings, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
