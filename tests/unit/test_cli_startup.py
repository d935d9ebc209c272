"""The CLI starts without what its commands load lazily (docs/benchmarks.md, "CLI start-up"),
and `python -m agentgate.client.cli` is the same program as the `agentgate` script."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from agentgate.client.cli import GC_THRESHOLD, GROUPS, app, command_name
from tests.ports import free_port

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


def test_the_groups_table_names_the_commands_each_group_registers() -> None:
    """`main` picks a group by the words GROUPS lists: a command added to a group but not to
    its words would only run through the full app (slower), one listed but not added
    would be "No such command"."""
    for module, sub_app, name, words in GROUPS:
        group = getattr(importlib.import_module(f"agentgate.client.{module}"), sub_app)
        registered = tuple(command_name(info) for info in group.registered_commands)
        assert words == ((name,) if name else registered), module


def test_a_command_loads_its_group_alone_and_no_opentelemetry(tmp_path: Path) -> None:
    """`agentgate list` (here refused: nothing listens on its queue address) builds only the
    work-order commands, its blocking channel skips OpenTelemetry and the redactor, and the
    cyclic collector runs rarely."""
    code = (
        "import json, sys\n"
        "from agentgate.client import cli\n"
        "sys.argv = ['agentgate', 'list', '--limit', '1']\n"
        "try:\n    cli.main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "import gc\n"
        "print(json.dumps([code, sorted(sys.modules), gc.get_threshold()[0]]))"
    )
    env = dict(
        os.environ,
        AGENTGATE_HOME=str(tmp_path),
        AGENTGATE_QUEUE_ADDR=f"127.0.0.1:{free_port()}",
        AGENTGATE_PERSISTENCE_ADDR=f"127.0.0.1:{free_port()}",
        AGENTGATE_TOKEN="t",
    )
    env.pop("OTEL_PYTHON_TRACER_PROVIDER", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    exit_code, loaded, gc_threshold = json.loads(out.splitlines()[-1])
    assert gc_threshold == GC_THRESHOLD  # start-up collects rarely
    assert exit_code == 3  # unreachable: the command ran and called the queue
    groups = {f"agentgate.client.{module}" for module, *_ in GROUPS}
    assert sorted(groups & set(loaded)) == ["agentgate.client.cli_work_orders"]
    assert [name for name in loaded if name.startswith("opentelemetry") or name == "agentgate.common.redaction"] == []
