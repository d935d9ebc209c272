"""The `command` driver: any CLI, from a command template.

Options:
- `command` (required): run through `sh -c` in the workspace. Placeholders
  `{prompt_file}`, `{workspace}` and `{iteration}` are replaced (paths shell-quoted);
  other braces are left alone, so `awk '{print $1}'` works.
- `prompt_via`: `stdin` or `file`. Default: `file` when the template has `{prompt_file}`,
  else the prompt goes on stdin.
- `env.NAME`: adds variable NAME to the agent's (otherwise scrubbed) environment.

The prompt is always written to `$AGENTGATE_HOME/prompts/{workspace_id}/prompt-{N}.md`,
outside the workspace so it is never committed; `AGENTGATE_PROMPT_FILE` names it.
Success = exit 0 within the timeout.
"""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

from agentgate.v1 import common_pb2
from agentgate.workspace.drivers.api import (
    AgentInvocation,
    OutputCallback,
    env_options,
    result_from_process,
)
from agentgate.workspace.processes import run_process


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def render_command(template: str, prompt_file: Path, workspace: Path, iteration: int) -> str:
    """The template with its placeholders replaced (shell-quoted values)."""
    return (
        template.replace("{prompt_file}", shlex.quote(str(prompt_file)))
        .replace("{workspace}", shlex.quote(str(workspace)))
        .replace("{iteration}", str(iteration))
    )


class CommandDriver:
    """Runs a command template as the agent."""

    name = "command"

    async def run(self, invocation: AgentInvocation, on_output: OutputCallback) -> common_pb2.AgentResult:
        """Writes the prompt file, runs the command, returns its result."""
        options = invocation.options
        template = options["command"]
        via = options.get("prompt_via") or ("file" if "{prompt_file}" in template else "stdin")
        prompt_file = invocation.prompt_dir / f"prompt-{invocation.iteration}.md"
        await asyncio.to_thread(_write_text, prompt_file, invocation.prompt)
        env = invocation.base_env()
        env["AGENTGATE_PROMPT_FILE"] = str(prompt_file)
        env.update(env_options(options))
        command = render_command(template, prompt_file, invocation.workspace, invocation.iteration)
        process = await run_process(
            ["/bin/sh", "-c", command],
            cwd=invocation.workspace,
            env=env,
            stdin=invocation.prompt.encode("utf-8") if via == "stdin" else None,
            on_output=on_output,
            timeout=invocation.timeout_seconds,
            kill_grace=invocation.kill_grace_seconds,
            sandbox=invocation.sandbox,
        )
        return result_from_process(invocation, self.name, process)
