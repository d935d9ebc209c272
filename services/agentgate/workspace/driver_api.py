"""What every agent driver shares: the invocation it receives, the protocol it implements,
and the conversion of a finished process into an `AgentResult`.

Kept apart from the registry (`agent_drivers`) so drivers can import it without cycles.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agentgate.common.errors import FieldViolation
from agentgate.common.timeutil import now_timestamp
from agentgate.v1 import common_pb2
from agentgate.workspace.processes import DEFAULT_KILL_GRACE_SECONDS, ProcessResult
from agentgate.workspace.sandbox import Sandbox

#: Called with ("stdout" | "stderr", line) for each line of output while the agent runs.
OutputCallback = Callable[[str, str], "Awaitable[None] | None"]

#: Where option violations point, as the queue sees a work order (`spec.agent...`).
OPTIONS_FIELD = "spec.agent.options"

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
    """An agent driver: checks its options, runs the agent.

    Drivers may also define `description: str` (one line for `agentgate agents`) and
    `availability(options) -> str` (what is missing on this machine, '' when it can run);
    the registry treats a driver without them as always available.
    """

    #: Registry name (AgentSpec.name).
    name: str

    def validate_options(self, options: Mapping[str, str]) -> list[FieldViolation]:
        """Problems with the options, as violations on `spec.agent.options.<key>`.

        Must be cheap: the queue calls it at submit.
        """
        ...

    async def run(self, invocation: AgentInvocation, on_output: OutputCallback) -> common_pb2.AgentResult:
        """Runs the agent in `invocation.workspace`, streaming output lines to `on_output`."""
        ...


def option_field(key: str) -> str:
    """The field path of an option, e.g. spec.agent.options.command."""
    return f"{OPTIONS_FIELD}.{key}"


def env_options(options: Mapping[str, str]) -> tuple[dict[str, str], list[FieldViolation]]:
    """`env.NAME=value` options as variables, with violations for bad names."""
    env: dict[str, str] = {}
    violations: list[FieldViolation] = []
    for key, value in options.items():
        if not key.startswith("env."):
            continue
        name = key[len("env.") :]
        if not ENV_NAME.match(name):
            violations.append(FieldViolation(option_field(key), f"{name!r} is not a valid variable name"))
        else:
            env[name] = value
    return env, violations


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
    env.update(env_options(options)[0])
    return env


def executable_problem(executable: str, what: str) -> str:
    """'' when `executable` (a name on PATH or a path) can be run here, else what is missing."""
    if shutil.which(executable) is not None:
        return ""
    if "/" in executable:
        return f"{executable} (the {what} executable) does not exist or is not executable"
    return f"the {executable} executable is not on PATH"


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
