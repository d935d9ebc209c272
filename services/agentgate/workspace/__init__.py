"""AgentGate workspace."""
