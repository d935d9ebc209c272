"""`agentgate agents [--json]`: the agent drivers and whether each can run where the
workspace service runs (asked of the workspace service, whose PATH is the one that counts).

grpc and the workspace stubs load inside the command, so other commands do not pay for them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer

from agentgate.client.cli_shared import JsonFlag, console, unreachable

if TYPE_CHECKING:
    from agentgate.v1 import workspace_pb2

#: The service runs each CLI's `--version` and probes its model endpoint from a sandbox.
RPC_TIMEOUT_SECONDS = 60.0

app = typer.Typer()


def drivers_json(drivers: list[workspace_pb2.AgentDriverInfo]) -> list[dict[str, object]]:
    """`agents --json`: one object per driver."""
    return [
        {
            "name": d.name,
            "description": d.description,
            "available": d.available,
            "missing": d.missing,
            "version": d.version,
            "endpoint": d.endpoint,
        }
        for d in drivers
    ]


def list_drivers(address: str | None = None) -> list[workspace_pb2.AgentDriverInfo]:
    """The drivers as the workspace service reports them."""
    from agentgate.common.channels import sync_channel
    from agentgate.common.config import service_address
    from agentgate.v1 import workspace_pb2, workspace_pb2_grpc

    channel = sync_channel(service_address("workspace", address))
    try:
        stub = workspace_pb2_grpc.WorkspaceServiceStub(channel)
        response = stub.ListAgentDrivers(workspace_pb2.ListAgentDriversRequest(), timeout=RPC_TIMEOUT_SECONDS)
        return list(response.drivers)
    finally:
        channel.close()


@app.command()
def agents(json_output: JsonFlag = False) -> None:
    """List the agent drivers and whether each is available where the services run."""
    import grpc

    try:
        drivers = list_drivers()
    except grpc.RpcError as exc:
        raise unreachable(exc) from None
    if json_output:
        print(json.dumps(drivers_json(drivers)))
        return
    from rich.table import Table

    table = Table("driver", "available", "version", "model endpoint", "description")
    for driver in drivers:
        state = "[green]yes[/green]" if driver.available else f"[red]no[/red]: {driver.missing}"
        table.add_row(driver.name, state, driver.version, driver.endpoint, driver.description)
    console().print(table)
