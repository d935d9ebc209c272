"""AgentGate persistence."""
