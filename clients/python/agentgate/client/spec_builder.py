"""Turning CLI flags into a `WorkOrderSpec`."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from agentgate.harness.retry import RETRY_PRESETS
from agentgate.v1 import common_pb2

_Enum = TypeVar("_Enum", bound=int)  # a proto enum's ValueType

GIT_MODES = {"local": common_pb2.GIT_MODE_LOCAL, "push": common_pb2.GIT_MODE_PUSH, "pr": common_pb2.GIT_MODE_PR}
GITHUB_MODES = {
    "fail_fast": common_pb2.GIT_HUB_MODE_FAIL_FAST,
    "best_effort": common_pb2.GIT_HUB_MODE_BEST_EFFORT,
    "disabled": common_pb2.GIT_HUB_MODE_DISABLED,
}
LOOP_STRATEGIES = {
    "fixed": common_pb2.LOOP_STRATEGY_MODE_FIXED,
    "hybrid": common_pb2.LOOP_STRATEGY_MODE_HYBRID,
    "ralph": common_pb2.LOOP_STRATEGY_MODE_RALPH,
}
SANDBOX_MODES = {"on": common_pb2.SANDBOX_MODE_ON, "off": common_pb2.SANDBOX_MODE_OFF}


class UsageError(ValueError):
    """A flag is wrong; the message names it."""


def parse_agent_options(pairs: list[str], agent: str) -> dict[str, str]:
    """KEY=VALUE pairs; for the scripted agent, `script=FILE` sends the file's content, so
    the script works on any machine the services run on."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--agent-option: expected KEY=VALUE, got {pair!r}")
        options[key.strip()] = value
    if agent == "scripted" and "script" in options:
        path = Path(options["script"]).expanduser()
        try:
            options["script"] = path.read_text()
        except OSError as exc:
            raise UsageError(f"--agent-option script: cannot read {path}: {exc.strerror}") from None
    return options


def build_spec(
    *,
    prompt: str | None,
    prompt_file: Path | None,
    path: Path | None,
    git_url: str | None,
    ref: str | None,
    agent: str,
    agent_options: list[str],
    max_iterations: int | None = None,
    priority: int = 0,
    max_wait: int = 0,
    github: str | None = None,
    git_mode: str | None = None,
    github_mode: str | None = None,
    draft_pr: bool = False,
    retry_preset: str | None = None,
    max_attempts: int | None = None,
    agent_timeout: int | None = None,
    profile: str | None = None,
    loop_strategy: str | None = None,
    include_ignored: bool = False,
    sandbox: str | None = None,
    sandbox_read_only: list[str] | None = None,
    base: str | None = None,
    keep_workspace: bool = False,
) -> common_pb2.WorkOrderSpec:
    """The work order the flags describe. The queue validates it again: this only catches
    what only the CLI can know (unreadable files, conflicting flags)."""
    if prompt is not None and prompt_file is not None:
        raise UsageError("--prompt and --prompt-file: give one, not both")
    if prompt_file is not None:
        try:
            prompt = prompt_file.read_text()
        except OSError as exc:
            raise UsageError(f"--prompt-file: cannot read {prompt_file}: {exc.strerror}") from None
    if sum(1 for given in (path is not None, bool(git_url), bool(github)) if given) > 1:
        raise UsageError("--path, --git-url and --github: give one of them")
    if ref and not (git_url or github):
        raise UsageError("--ref: only with --git-url or --github")
    if include_ignored and path is None:
        raise UsageError("--include-ignored: only with --path")
    spec = common_pb2.WorkOrderSpec(
        task_prompt=prompt or "",
        agent=common_pb2.AgentSpec(name=agent, options=parse_agent_options(agent_options, agent)),
        priority=priority,
        max_queue_wait_seconds=max_wait,
    )
    if path is not None:
        # The services may run elsewhere on this machine: send an absolute path.
        spec.source.local_path = str(path.expanduser().resolve())
        spec.source.include_ignored = include_ignored
    elif git_url:
        spec.source.git_url = git_url
        spec.source.ref = ref or ""
    elif github:
        spec.source.github_repo = github
        spec.source.ref = ref or ""
    if max_iterations is not None:
        spec.harness.loop_strategy.max_iterations = max_iterations
    # The queue checks the profile (it reads the profile files); only the name is sent.
    if profile:
        spec.harness.profile = profile.strip()
    if loop_strategy:
        spec.harness.loop_strategy.mode = _choice("--loop-strategy", loop_strategy, LOOP_STRATEGIES)
    _apply_delivery_and_retry(
        spec.harness, git_mode, github_mode, draft_pr, retry_preset, max_attempts, agent_timeout
    )
    if sandbox:
        spec.harness.sandbox.mode = _choice("--sandbox", sandbox, SANDBOX_MODES)
    for read_only in sandbox_read_only or []:
        # Resolved here: the services may run elsewhere on this machine (as for --path).
        spec.harness.sandbox.read_only_paths.append(str(Path(read_only).expanduser().resolve()))
    if base:
        spec.harness.git_ops.base_branch = base
    if keep_workspace:
        spec.harness.retention.workspace = common_pb2.WORKSPACE_RETENTION_KEEP
    return spec


def _choice(flag: str, value: str, choices: dict[str, _Enum]) -> _Enum:
    key = value.strip().lower().replace("-", "_")
    if key not in choices:
        raise UsageError(f"{flag}: {value!r} is not one of {', '.join(choices)}")
    return choices[key]


def _apply_delivery_and_retry(
    harness: common_pb2.HarnessSettings,
    git_mode: str | None,
    github_mode: str | None,
    draft_pr: bool,
    retry_preset: str | None,
    max_attempts: int | None,
    agent_timeout: int | None,
) -> None:
    """--git-mode, --github-mode, --draft-pr, --retry-preset, --max-attempts, --agent-timeout."""
    if git_mode:
        harness.git_ops.mode = _choice("--git-mode", git_mode, GIT_MODES)
    if github_mode:
        harness.git_ops.github_mode = _choice("--github-mode", github_mode, GITHUB_MODES)
    if draft_pr:
        harness.git_ops.draft_pr = True
    if retry_preset:
        if retry_preset not in RETRY_PRESETS:
            raise UsageError(f"--retry-preset: {retry_preset!r} is not one of {', '.join(RETRY_PRESETS)}")
        harness.retry.preset = retry_preset
    if max_attempts is not None:
        if max_attempts < 1:
            raise UsageError(f"--max-attempts: must be at least 1 (1 = no retry), got {max_attempts}")
        harness.retry.max_attempts = max_attempts
    if agent_timeout is not None:
        if agent_timeout < 1:
            raise UsageError(f"--agent-timeout: must be at least 1 second, got {agent_timeout}")
        harness.limits.agent_timeout_seconds = agent_timeout
