"""`python -m agentgate.orchestrator`: run one orchestrator worker process."""

from __future__ import annotations

import asyncio
import sys

from agentgate.common.config import ConfigError, ServiceSettings, env_int
from agentgate.common.server import configure_logging, serve_until_signal, service_arg_parser
from agentgate.common.telemetry import init_telemetry
from agentgate.orchestrator.server import OrchestratorApp


def main(argv: list[str] | None = None) -> int:
    """Parses flags (> env > defaults) and serves until SIGTERM."""
    parser = service_arg_parser("orchestrator")
    parser.add_argument("--queue-address")
    parser.add_argument("--workspace-address")
    parser.add_argument("--persistence-address")
    parser.add_argument("--max-concurrent-runs", type=int, help="runs at once on this worker (default 2)")
    parser.add_argument("--worker-id")
    args = parser.parse_args(argv)
    configure_logging(args.log_level, "orchestrator")
    init_telemetry("orchestrator")  # traces and metrics; OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
    try:
        settings = ServiceSettings.load("orchestrator", args.address, args.home)
        max_runs = args.max_concurrent_runs or env_int("AGENTGATE_MAX_CONCURRENT_RUNS", 2, minimum=1)
        if max_runs < 1:
            raise ConfigError("--max-concurrent-runs: must be at least 1")
        app = OrchestratorApp(
            settings,
            queue_address=args.queue_address,
            workspace_address=args.workspace_address,
            persistence_address=args.persistence_address,
            max_concurrent_runs=max_runs,
            worker_id=args.worker_id,
        )
    except ConfigError as exc:
        print(f"agentgate-orchestrator: configuration error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve_until_signal(app, settings, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
