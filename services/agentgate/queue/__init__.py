"""AgentGate queue."""
