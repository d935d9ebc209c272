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


def test_a_command_with_options_does_not_load_pydantic() -> None:
    """typer 0.29 coerces every non-bool option through a pydantic TypeAdapter (~70 ms at
    every command); the pin is 0.28. `--help` of a command parses its options' types."""
    code = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from agentgate.client.cli import app\n"
        "result = CliRunner().invoke(app, ['list', '--limit', 'x'])\n"
        "print(json.dumps([result.exit_code, sorted(sys.modules)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    exit_code, loaded = json.loads(out.splitlines()[-1])
    assert exit_code == 2  # --limit x: a usage error, found by typer's own int conversion
    assert [name for name in loaded if name == "pydantic" or name.startswith("pydantic.")] == []
