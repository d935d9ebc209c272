"""`python -m agentgate.workspace [--address HOST:PORT] [--home DIR]`: the workspace service."""

from __future__ import annotations

import asyncio
import os
import sys

from agentgate.common.config import ConfigError, ServiceSettings
from agentgate.common.server import configure_logging, serve_until_signal, service_arg_parser
from agentgate.common.telemetry import init_telemetry
from agentgate.workspace.server import WorkspaceApp


def _wait_for_children_by_pidfd() -> None:
    """Python 3.11 waits for each child process (git, bubblewrap: ~20 a work order) from a
    thread of its own; a pidfd on the event loop does it without one (what 3.12 does by
    itself). Kept as it is where the kernel has no pidfd."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return
    asyncio.set_child_watcher(asyncio.PidfdChildWatcher())


def main(argv: list[str] | None = None) -> int:
    """Runs the workspace service until SIGTERM or SIGINT."""
    args = service_arg_parser("workspace").parse_args(argv)
    configure_logging(args.log_level, "workspace")
    init_telemetry("workspace")  # traces and metrics; OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
    try:
        settings = ServiceSettings.load("workspace", args.address, args.home)
        app = WorkspaceApp(settings)
        _wait_for_children_by_pidfd()
        asyncio.run(serve_until_signal(app, settings, args))
    except ConfigError as exc:
        print(f"agentgate-workspace: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
