"""Agent drivers: how each agent CLI is run in a workspace and its output read
(docs/agents.md)."""
