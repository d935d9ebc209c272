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

from agentgate.client.async_client import AsyncAgentGateClient
from agentgate.client.shared import SubmitError, WorkOrderStatus
from agentgate.client.sync_client import AgentGateClient
from agentgate.harness.statuses import TERMINAL_STATUSES

__all__ = ["AgentGateClient", "AsyncAgentGateClient", "SubmitError", "TERMINAL_STATUSES", "WorkOrderStatus"]
