"""The `agentgate` command line: one root app and a typer sub-app per command group.

`agentgate` (the console script) and `python -m agentgate.client.cli` both run `main`, so
they are the same program with the same groups. The command modules import only typer at
start-up; what a command needs loads when it runs (docs/benchmarks.md, "CLI start-up").
"""

from __future__ import annotations

import typer

from agentgate.client import (
    cli_agents,
    cli_gc,
    cli_profiles,
    cli_queue,
    cli_results,
    cli_runs,
    cli_suite,
    cli_work_orders,
)

app = typer.Typer(help="AgentGate: run AI coding agents safely.", no_args_is_help=True, add_completion=False)

# Sub-apps without a name add their commands at the top level; the order is that of `--help`.
app.add_typer(cli_suite.app)  # up, down, health, ps, dashboard
app.add_typer(cli_work_orders.app)  # submit, exec, watch, status, list, cancel, demo
app.add_typer(cli_agents.app)  # agents
app.add_typer(cli_runs.logs_app)  # logs
app.add_typer(cli_results.app)  # diff, apply
app.add_typer(cli_gc.app)  # gc
app.add_typer(cli_profiles.app, name="profiles")
app.add_typer(cli_queue.app, name="queue")
app.add_typer(cli_runs.app, name="runs")


def main() -> None:
    """Entry point of the `agentgate` command."""
    app()


if __name__ == "__main__":
    main()
