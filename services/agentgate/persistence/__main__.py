"""`python -m agentgate.persistence [--address A] [--home H]`: runs the persistence service
until SIGTERM/SIGINT.

Flags win over environment variables, which win over defaults; a bad value stops the
process at start with a message naming the flag or variable.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from agentgate.common.config import ConfigError, ServiceSettings
from agentgate.common.server import add_database_flag, configure_logging, serve_until_signal, service_arg_parser
from agentgate.common.telemetry import init_telemetry
from agentgate.persistence.server import SUBSCRIBER_QUEUE_ENV, PersistenceApp
from agentgate.persistence.settings import MAX_OUTPUT_BYTES_ENV, MAX_OUTPUT_BYTES_FLAG

SERVICE = "persistence"


def build_parser() -> argparse.ArgumentParser:
    """The common service flags plus the live-subscriber buffer size and the output limit."""
    parser = service_arg_parser(SERVICE)
    parser.add_argument(
        "--subscriber-queue",
        type=int,
        help=f"events buffered per live follower before it is dropped (env {SUBSCRIBER_QUEUE_ENV}, default 10000)",
    )
    parser.add_argument(
        MAX_OUTPUT_BYTES_FLAG,
        type=int,
        help=(
            "bytes of an agent's stdout (and of its stderr) kept in agent-N.json; the rest is cut "
            f"with a [TRUNCATED ...] marker (env {MAX_OUTPUT_BYTES_ENV}, default 1048576)"
        ),
    )
    add_database_flag(parser)
    return parser


def build_app(args: argparse.Namespace) -> PersistenceApp:
    """A PersistenceApp from parsed flags and the environment; ConfigError names a bad key."""
    if args.subscriber_queue is not None and args.subscriber_queue < 1:
        raise ConfigError(f"--subscriber-queue: must be at least 1, got {args.subscriber_queue}")
    settings = ServiceSettings.load(SERVICE, args.address, args.home)
    return PersistenceApp(
        settings,
        subscriber_queue_size=args.subscriber_queue,
        max_output_bytes=args.max_output_bytes,
        database_url=args.database_url,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for a configuration error)."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, SERVICE)
    init_telemetry("persistence")  # traces and metrics; OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
    try:
        app = build_app(args)
    except ConfigError as err:
        print(f"agentgate-{SERVICE}: configuration error: {err}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve_until_signal(app, app.settings, args))
    except ConfigError as err:  # e.g. the address cannot be bound
        print(f"agentgate-{SERVICE}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
