"""AgentGate common."""
