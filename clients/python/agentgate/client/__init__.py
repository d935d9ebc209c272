"""AgentGate client library and CLI."""
