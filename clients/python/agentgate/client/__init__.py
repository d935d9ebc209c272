"""AgentGate client library and the `agentgate` CLI.

Blocking:

    from agentgate.client import AgentGateClient
    with AgentGateClient() as client:          # addresses from AGENTGATE_*_ADDR
        work_order, position = client.submit(spec)
        for event in client.events(work_order.id):
            print(event.seq, event.type)

asyncio:

    from agentgate.client import AsyncAgentGateClient
    async with AsyncAgentGateClient() as client:
        work_order, position = await client.submit(spec)
        async for event in client.events(work_order.id):
            print(event.seq, event.type)

`build_spec` (from `agentgate.client.spec_builder`) makes a `WorkOrderSpec` from the same
arguments the CLI takes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentgate.client.async_client import AsyncAgentGateClient
    from agentgate.client.shared import SubmitError, WorkOrderStatus
    from agentgate.client.sync_client import AgentGateClient
    from agentgate.harness.statuses import TERMINAL_STATUSES

__all__ = ["AgentGateClient", "AsyncAgentGateClient", "SubmitError", "TERMINAL_STATUSES", "WorkOrderStatus"]

# Each name loads its module on first use: the CLI imports this package too, and a command
# that never opens a client must not pay for grpc and both clients at start-up.
_MODULE_OF = {
    "AgentGateClient": "agentgate.client.sync_client",
    "AsyncAgentGateClient": "agentgate.client.async_client",
    "SubmitError": "agentgate.client.shared",
    "TERMINAL_STATUSES": "agentgate.harness.statuses",
    "WorkOrderStatus": "agentgate.client.shared",
}


def __getattr__(name: str) -> Any:
    """The public names above, imported when first asked for."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
