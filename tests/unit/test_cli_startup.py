"""The CLI starts without what its commands load lazily (docs/benchmarks.md, "CLI start-up"),
and `python -m agentgate.client.cli` is the same program as the `agentgate` script."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from agentgate.client.cli import app

#: Loaded by a command when it runs, never by building the CLI.
LAZY = (
    "grpc",
    "rich.table",
    "rich.console",
    "opentelemetry",
    "yaml",
    "agentgate.v1.persistence_pb2",
    "agentgate.v1.workspace_pb2",
    "agentgate.client.async_client",
    "agentgate.client.supervisor",
    "agentgate.common.profiles",
    "agentgate.orchestrator",
)


def test_building_the_cli_loads_none_of_what_commands_load_lazily() -> None:
    code = (
        "import json, sys, typer.main, agentgate.client.cli as cli; typer.main.get_command(cli.app); "
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert [name for name in LAZY if name in loaded] == []


def test_python_m_has_the_same_commands_as_the_script() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agentgate.client.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    ).stdout
    script = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    for group in ("profiles", "queue", "runs", "logs", "agents", "submit", "list"):
        assert f" {group} " in out and f" {group} " in script
