"""What every `agentgate` command group shares: exit codes, the `--json` flag, the consoles,
failing with a message, and opening a client.

Every command module imports this one at start-up, so it imports only typer: grpc, rich and
the stubs load inside the helpers that use them (see docs/benchmarks.md, "CLI start-up").
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    import grpc
    from rich.console import Console

    from agentgate.client.sync_client import AgentGateClient

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def piped() -> bool:
    """Whether standard output is not a terminal (a pipe, a file). `list` and `status` then
    print plain lines, as `gh` does: no table, no colour, nothing wrapped, and rich is not
    loaded (README.md, "Commands")."""
    return not sys.stdout.isatty()


@functools.cache
def console() -> Console:
    """The console of standard output (made on first use: `--json` output needs none)."""
    from rich.console import Console

    return Console()


@functools.cache
def err_console() -> Console:
    """The console of standard error."""
    from rich.console import Console

    return Console(stderr=True)


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Prints `error: message` on standard error; returns the exit to raise."""
    err_console().print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def unreachable(exc: grpc.RpcError) -> typer.Exit:
    """The exit (3) for a call that could not reach a service or was refused its token."""
    import grpc

    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
        return fail(f"UNAUTHENTICATED: {exc.details()} — set AGENTGATE_TOKEN to the suite's token", EXIT_UNREACHABLE)
    return fail(
        f"{exc.code().name}: {exc.details()} — is the suite running? (agentgate up --detach)",
        EXIT_UNREACHABLE,
    )


def open_client() -> AgentGateClient:
    """A blocking client on the addresses of the environment; exits 2 when one is wrong."""
    from agentgate.client.sync_client import AgentGateClient
    from agentgate.common.config import ConfigError

    try:
        return AgentGateClient()
    except ConfigError as exc:
        raise fail(str(exc), EXIT_USAGE) from None


def resolve_work_order_id(client: AgentGateClient, ident: str) -> str:
    """A work order id, or the work order of a run id."""
    from agentgate.client.shared import is_run_id

    if is_run_id(ident):
        run = client.run(ident)
        if run is None:
            raise fail(f"no run {ident}", EXIT_FAILED)
        return run.work_order_id
    return ident
