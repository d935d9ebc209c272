"""`python -m agentgate.workspace [--address HOST:PORT] [--home DIR]`: the workspace service."""

from __future__ import annotations

import asyncio
import sys

from agentgate.common.config import ConfigError, ServiceSettings
from agentgate.common.server import configure_logging, serve_until_signal, service_arg_parser
from agentgate.common.telemetry import init_telemetry
from agentgate.workspace.server import WorkspaceApp


def main(argv: list[str] | None = None) -> int:
    """Runs the workspace service until SIGTERM or SIGINT."""
    args = service_arg_parser("workspace").parse_args(argv)
    configure_logging(args.log_level, "workspace")
    init_telemetry("workspace")  # traces and metrics; OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
    try:
        settings = ServiceSettings.load("workspace", args.address, args.home)
        app = WorkspaceApp(settings)
        asyncio.run(serve_until_signal(app, settings, args))
    except ConfigError as exc:
        print(f"agentgate-workspace: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
