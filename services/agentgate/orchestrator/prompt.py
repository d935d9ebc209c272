"""Prompt assembly (docs/agents.md, "What every driver gets"), always in the same order."""

from __future__ import annotations


def assemble_prompt(
    task: str,
    rules: str = "",
    gate_plan_summary: str = "",
    feedback: str = "",
    extra_instructions: str = "",
) -> str:
    """The agent's prompt: task; workspace rules; gate plan summary; last feedback; extra instructions."""
    sections = [task.strip()]
    if rules.strip():
        sections.append("# Workspace rules\n\n" + rules.strip())
    if gate_plan_summary.strip():
        sections.append("# What will be checked\n\n" + gate_plan_summary.strip())
    if feedback.strip():
        sections.append("# Feedback from the previous iteration\n\n" + feedback.strip())
    if extra_instructions.strip():
        sections.append("# Instructions\n\n" + extra_instructions.strip())
    return "\n\n".join(sections) + "\n"
