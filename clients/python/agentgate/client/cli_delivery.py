"""CLI flags of delivery and retry (SPEC §6, §7) shared by `submit` and `exec`, and the
delivery part of `status --json`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from agentgate.common.messages import to_dict
from agentgate.v1 import common_pb2

GitHubOpt = Annotated[
    str | None, typer.Option("--github", help="GitHub repository owner/name to clone (with AGENTGATE_GITHUB_TOKEN).")
]
GitModeOpt = Annotated[
    str | None, typer.Option("--git-mode", help="Delivery: local (default), push (the run's branch) or pr.")
]
GitHubModeOpt = Annotated[
    str | None,
    typer.Option(
        "--github-mode",
        help="What a failed push/PR does: fail_fast, best_effort or disabled (default: by --git-mode).",
    ),
]
DraftPrOpt = Annotated[bool, typer.Option("--draft-pr", help="Open the pull request as a draft.")]
RetryPresetOpt = Annotated[
    str | None, typer.Option("--retry-preset", help="Retry of transient failures: default, aggressive or none.")
]
MaxAttemptsOpt = Annotated[
    int | None, typer.Option("--max-attempts", help="Tries of a failing step, the first included (1 = no retry).")
]
AgentTimeoutOpt = Annotated[
    int | None, typer.Option("--agent-timeout", help="Seconds one agent execution may take (default 300).")
]


def delivery_flags(
    github: str | None,
    git_mode: str | None,
    github_mode: str | None,
    draft_pr: bool,
    retry_preset: str | None,
    max_attempts: int | None,
    agent_timeout: int | None,
) -> dict[str, Any]:
    """The flags above as build_spec keyword arguments."""
    return {
        "github": github,
        "git_mode": git_mode,
        "github_mode": github_mode,
        "draft_pr": draft_pr,
        "retry_preset": retry_preset,
        "max_attempts": max_attempts,
        "agent_timeout": agent_timeout,
    }


def delivery_json(run: common_pb2.Run) -> dict[str, Any]:
    """`pr_url` and the GitHub summary of a run, for `status --json`."""
    return {
        "pr_url": run.pr_url,
        "github_summary": to_dict(run.github_summary) if run.HasField("github_summary") else None,
    }
