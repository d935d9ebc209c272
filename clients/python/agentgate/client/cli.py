"""The `agentgate` command line: one root app and a typer sub-app per command group.

`agentgate` (the console script) and `python -m agentgate.client.cli` both run `main`, so
they are the same program with the same groups. The command modules import only typer at
start-up; what a command needs loads when it runs (docs/benchmarks.md, "CLI start-up").

`main` builds only the command it is asked to run (`agentgate list` imports `cli_work_orders`
alone and builds `list` alone); anything else (`--help`, no command, a word no group names)
gets every group, so help and "No such command" read as before. `app` is the root with every
group, for tests and for whoever embeds the CLI.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import sys
from typing import TYPE_CHECKING, Any

import typer
from typer.main import get_command_name

if TYPE_CHECKING:
    from typer.models import CommandInfo

HELP = "AgentGate: run AI coding agents safely."

#: Every group in the order of `--help`: its module, the sub-app in it, the name it is added
#: under (None: its commands are top-level commands) and the top-level words that run it.
#: tests/unit/test_cli_startup.py checks the words against what each sub-app registers.
GROUPS: tuple[tuple[str, str, str | None, tuple[str, ...]], ...] = (
    ("cli_suite", "app", None, ("up", "down", "health", "ps", "dashboard")),
    ("cli_submit", "app", None, ("submit", "exec")),
    ("cli_work_orders", "app", None, ("watch", "status", "list", "cancel")),
    ("cli_submit", "demo_app", None, ("demo",)),
    ("cli_agents", "app", None, ("agents",)),
    ("cli_runs", "logs_app", None, ("logs",)),
    ("cli_results", "app", None, ("diff", "apply")),
    ("cli_gc", "app", None, ("gc",)),
    ("cli_profiles", "app", "profiles", ("profiles",)),
    ("cli_queue", "app", "queue", ("queue",)),
    ("cli_runs", "app", "runs", ("runs",)),
)


def command_name(info: CommandInfo) -> str:
    """The word that runs a registered command (typer's own naming)."""
    return info.name or get_command_name(info.callback.__name__ if info.callback else "")


def build_app(command: str | None = None) -> typer.Typer:
    """The root app with what runs the top-level word `command` (that command alone, or the
    named group it is), or with every group when `command` is None or names none of them."""
    root = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False)
    chosen = [group for group in GROUPS if command in group[3]]
    for module, sub_app, name, _words in chosen or GROUPS:
        group = getattr(importlib.import_module(f"agentgate.client.{module}"), sub_app)
        if chosen and name is None:
            # typer builds every command it is given when the app runs (~1 ms for each
            # 10 options: submit and exec have 25); the others would never run.
            alone = typer.Typer()
            alone.registered_commands = [info for info in group.registered_commands if command_name(info) == command]
            group = alone
        root.add_typer(group, name=name)
    return root


#: The cyclic collector's first threshold in a CLI process (Python's default: 700 allocations).
GC_THRESHOLD = 100_000


def main() -> None:
    """Entry point of the `agentgate` command."""
    # A command spends most of its start-up importing (typer, grpc, protobuf, rich): objects
    # that live until the process ends, which the cyclic collector would walk again and
    # again for nothing, and once more at exit. So it collects rarely, and at exit it leaves
    # out what is still alive (the process hands the memory back anyway): ~25 ms of CPU of a
    # `list` (docs/benchmarks.md, "CLI start-up"). A long `watch` still collects.
    gc.set_threshold(GC_THRESHOLD)
    atexit.register(gc.freeze)
    build_app(sys.argv[1] if len(sys.argv) > 1 else None)()


def __getattr__(name: str) -> Any:
    """`app`, the root with every group, built on first use (`main` builds its own)."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    app = globals()["app"] = build_app()
    return app


if __name__ == "__main__":
    main()
