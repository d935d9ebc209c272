"""What every agent driver shares: the invocation it receives, the protocol it implements,
and the conversion of a finished process into an `AgentResult`.

Kept apart from the registry (`agent_drivers`) so drivers can import it without cycles.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agentgate.common.timeutil import now_timestamp
from agentgate.harness.drivers import ENV_NAME, ENV_PREFIX
from agentgate.v1 import common_pb2
from agentgate.workspace.drivers.budget import AgentBudget
from agentgate.workspace.processes import DEFAULT_KILL_GRACE_SECONDS, ProcessResult
from agentgate.workspace.sandbox import Sandbox

#: Called with ("stdout" | "stderr", line) for each line of output while the agent runs.
OutputCallback = Callable[[str, str], "Awaitable[None] | None"]


@dataclass(frozen=True)
class AgentInvocation:
    """One execution of an agent: where, with what, for how long.

    `files_dir` and `prompt_dir` are outside the workspace: what a driver writes there
    (prompt, script, report) can never end up in a snapshot.
    """

    run_id: str
    workspace_id: str
    workspace: Path
    iteration: int
    attempt: int
    prompt: str
    options: Mapping[str, str]
    timeout_seconds: float
    files_dir: Path
    prompt_dir: Path
    kill_grace_seconds: float = DEFAULT_KILL_GRACE_SECONDS
    extra_env: Mapping[str, str] = field(default_factory=dict)
    #: Session of the previous iteration, for drivers that can resume one ('' = new session).
    resume_session_id: str = ""
    #: Where the agent's process runs (docs/sandbox.md); None = unconfined (`sandbox: off`).
    sandbox: Sandbox | None = None
    #: What this execution may spend of the run's budget (drivers/budget.py).
    budget: AgentBudget = field(default_factory=AgentBudget)
    #: The run's own folder for the agent's files that must outlive the execution but stay
    #: out of the workspace and the temporary directory (an agent home); None = files_dir.
    run_dir: Path | None = None

    def base_env(self) -> dict[str, str]:
        """Variables every agent gets, describing the run (no secrets)."""
        env = {
            "AGENTGATE_RUN_ID": self.run_id,
            "AGENTGATE_WORKSPACE": str(self.workspace),
            "AGENTGATE_ITERATION": str(self.iteration),
            "AGENTGATE_ATTEMPT": str(self.attempt),
        }
        env.update(self.extra_env)
        return env


class AgentDriver(Protocol):
    """An agent driver: runs the agent. Its name, description, options and what it needs
    to run are its schema in `agentgate.harness.drivers`, which checks the options."""

    #: Registry name (AgentSpec.name), that of its schema.
    name: str

    async def run(self, invocation: AgentInvocation, on_output: OutputCallback) -> common_pb2.AgentResult:
        """Runs the agent in `invocation.workspace`, streaming output lines to `on_output`."""
        ...


def env_options(options: Mapping[str, str]) -> dict[str, str]:
    """`env.NAME=value` options as variables (a bad name was refused with the options)."""
    return {
        key[len(ENV_PREFIX) :]: value
        for key, value in options.items()
        if key.startswith(ENV_PREFIX) and ENV_NAME.match(key[len(ENV_PREFIX) :])
    }


def passthrough_env(names: tuple[str, ...], prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """The agent's own keys from the service's environment: variables named in `names` or
    starting with one of `prefixes` (a model CLI needs its API key; nothing else leaks)."""
    return {
        key: value
        for key, value in os.environ.items()
        if key in names or any(key.startswith(prefix) for prefix in prefixes)
    }


def agent_env(options: Mapping[str, str], names: tuple[str, ...], prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """A model CLI's environment: the service's variables it needs plus the `env.NAME` options."""
    env = passthrough_env(names, prefixes)
    env.update(env_options(options))
    return env


def agent_home(invocation: AgentInvocation, cli: str) -> Path:
    """The run's own home for a CLI's configuration and sessions (`CLAUDE_CONFIG_DIR`,
    `CODEX_HOME`): `<run_dir>/<cli>`, created private (0700). It outlives the execution (the
    next iteration resumes its session) and lies outside the workspace and the temporary
    directory. Nothing secret is written there by AgentGate: keys reach the CLI through its
    environment only."""
    base = invocation.run_dir or invocation.files_dir
    home = base / cli
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return home


def result_from_process(invocation: AgentInvocation, driver: str, process: ProcessResult) -> common_pb2.AgentResult:
    """The AgentResult of a finished agent process (success = exit 0 and not timed out)."""
    return common_pb2.AgentResult(
        run_id=invocation.run_id,
        iteration=invocation.iteration,
        attempt=invocation.attempt,
        driver=driver,
        captured_at=now_timestamp(),
        success=process.exit_code == 0 and not process.timed_out,
        exit_code=process.exit_code,
        stdout=process.stdout,
        stderr=process.stderr,
        duration_seconds=process.duration_seconds,
        timed_out=process.timed_out,
        stdout_bytes=process.stdout_bytes,
        stderr_bytes=process.stderr_bytes,
        stdout_truncated=process.stdout_truncated,
        stderr_truncated=process.stderr_truncated,
    )
