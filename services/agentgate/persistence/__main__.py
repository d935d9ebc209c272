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
from agentgate.common.server import configure_logging, serve_until_signal, service_arg_parser
from agentgate.persistence.server import SUBSCRIBER_QUEUE_ENV, PersistenceApp

SERVICE = "persistence"


def build_parser() -> argparse.ArgumentParser:
    """The common service flags plus the live-subscriber buffer size."""
    parser = service_arg_parser(SERVICE)
    parser.add_argument(
        "--subscriber-queue",
        type=int,
        help=f"events buffered per live follower before it is dropped (env {SUBSCRIBER_QUEUE_ENV}, default 10000)",
    )
    return parser


def build_app(args: argparse.Namespace) -> PersistenceApp:
    """A PersistenceApp from parsed flags and the environment; ConfigError names a bad key."""
    if args.subscriber_queue is not None and args.subscriber_queue < 1:
        raise ConfigError(f"--subscriber-queue: must be at least 1, got {args.subscriber_queue}")
    settings = ServiceSettings.load(SERVICE, args.address, args.home)
    return PersistenceApp(settings, subscriber_queue_size=args.subscriber_queue)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for a configuration error)."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, SERVICE)
    try:
        app = build_app(args)
    except ConfigError as err:
        print(f"agentgate-{SERVICE}: configuration error: {err}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve_until_signal(app, app.settings))
    except ConfigError as err:  # e.g. the address cannot be bound
        print(f"agentgate-{SERVICE}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
