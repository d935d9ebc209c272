"""Turning CLI flags into a `WorkOrderSpec`."""

from __future__ import annotations

from pathlib import Path

from agentgate.v1 import common_pb2


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
    if path is not None and git_url:
        raise UsageError("--path and --git-url: give one, not both")
    if ref and not git_url:
        raise UsageError("--ref: only with --git-url")
    spec = common_pb2.WorkOrderSpec(
        task_prompt=prompt or "",
        agent=common_pb2.AgentSpec(name=agent, options=parse_agent_options(agent_options, agent)),
        priority=priority,
        max_queue_wait_seconds=max_wait,
    )
    if path is not None:
        # The services may run elsewhere on this machine: send an absolute path.
        spec.source.local_path = str(path.expanduser().resolve())
    elif git_url:
        spec.source.git_url = git_url
        spec.source.ref = ref or ""
    if max_iterations is not None:
        spec.harness.loop_strategy.max_iterations = max_iterations
    return spec
