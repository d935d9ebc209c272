"""Resolving a work order's harness to the settings a run uses (built-in defaults filled in)."""

from __future__ import annotations

from pathlib import Path

from agentgate.common import profiles
from agentgate.common.branches import DEFAULT_BRANCH_PATTERN
from agentgate.orchestrator.retry import resolve_policy
from agentgate.v1 import common_pb2

DEFAULT_MAX_ITERATIONS = profiles.STRATEGY_DEFAULTS[common_pb2.LOOP_STRATEGY_MODE_FIXED]["max_iterations"]
DEFAULT_MAX_WALL_CLOCK_SECONDS = profiles.DEFAULT_MAX_WALL_CLOCK_SECONDS
DEFAULT_AGENT_TIMEOUT_SECONDS = profiles.DEFAULT_AGENT_TIMEOUT_SECONDS


class HarnessError(ValueError):
    """The harness cannot be resolved (e.g. its profile file changed after submit); the
    message names every field and profile key at fault."""


def resolve_harness(
    requested: common_pb2.HarnessSettings, profiles_dir: Path | None = None, *, read_files: bool = True
) -> common_pb2.HarnessSettings:
    """The harness with every unset field at its default; stored with the run.

    Built-in default < the profile's `extends` chain (files in `profiles_dir`, default
    $AGENTGATE_HOME/profiles, and the built-ins; only the built-ins without `read_files`)
    < the work order's inline settings (SPEC §14). Raises HarnessError when that fails.
    """
    directory = (profiles_dir or profiles.profiles_dir()) if read_files else None
    resolution = profiles.resolve(requested, directory, prefix="harness")
    if resolution.violations:
        raise HarnessError("; ".join(f"{v.field}: {v.description}" for v in resolution.violations))
    resolved = resolution.harness
    resolve_git_ops(resolved.git_ops)
    resolved.retry.CopyFrom(resolve_policy(resolved.retry))
    return resolved


#: SPEC §7: the GitHub mode a git mode gets unless one is given.
DEFAULT_GITHUB_MODES = {
    common_pb2.GIT_MODE_LOCAL: common_pb2.GIT_HUB_MODE_DISABLED,
    common_pb2.GIT_MODE_PUSH: common_pb2.GIT_HUB_MODE_BEST_EFFORT,
    common_pb2.GIT_MODE_PR: common_pb2.GIT_HUB_MODE_FAIL_FAST,
}


def resolve_git_ops(git_ops: common_pb2.GitOpsSettings) -> None:
    """Fills delivery defaults in place: mode local, branch agentgate/{run_id}, no draft,
    and the GitHub mode of the git mode (pr → fail_fast, push → best_effort, local →
    disabled) unless one was given."""
    if git_ops.mode == common_pb2.GIT_MODE_UNSPECIFIED:
        git_ops.mode = common_pb2.GIT_MODE_LOCAL
    if not git_ops.branch_pattern:
        git_ops.branch_pattern = DEFAULT_BRANCH_PATTERN
    if not git_ops.HasField("draft_pr"):
        git_ops.draft_pr = False
    if git_ops.github_mode == common_pb2.GIT_HUB_MODE_UNSPECIFIED:
        git_ops.github_mode = DEFAULT_GITHUB_MODES.get(git_ops.mode, common_pb2.GIT_HUB_MODE_DISABLED)
