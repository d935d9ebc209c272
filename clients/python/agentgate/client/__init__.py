"""AgentGate client library and the `agentgate` CLI.

    from agentgate.client import AgentGateClient
    client = AgentGateClient()          # addresses from AGENTGATE_*_ADDR
    work_order, position = client.submit(spec)
    for event in client.events(work_order.id):
        print(event.seq, event.type)
"""

from agentgate.client.sync_client import AgentGateClient, SubmitError

__all__ = ["AgentGateClient", "SubmitError"]
