"""AgentGate orchestrator."""
