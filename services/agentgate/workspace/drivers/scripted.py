"""The `scripted` driver: a deterministic agent from a YAML script (see `scripted_agent`).

Option `script` holds the script's YAML text (the CLI reads the user's file and sends its
content). Running it starts a real process,
`python -m agentgate.workspace.drivers.scripted_agent`, in the workspace; the script and the report
file live outside the workspace.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from agentgate.v1 import common_pb2
from agentgate.workspace.drivers.api import AgentInvocation, OutputCallback, result_from_process
from agentgate.workspace.processes import run_process


def _prepare_files(script_file: Path, report_file: Path, script: str) -> None:
    script_file.parent.mkdir(parents=True, exist_ok=True)
    script_file.write_text(script, encoding="utf-8")
    report_file.unlink(missing_ok=True)


def _read_report(report_file: Path) -> dict[str, Any]:
    try:
        data = json.loads(report_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        # No report (the agent died before writing one): no tool calls, no tokens.
        return {}
    return data if isinstance(data, dict) else {}


class ScriptedDriver:
    """Plays a YAML script as the agent."""

    name = "scripted"

    async def run(self, invocation: AgentInvocation, on_output: OutputCallback) -> common_pb2.AgentResult:
        """Runs the scripted agent process and reads its report into the result."""
        stem = f"{invocation.iteration}-{invocation.attempt}"
        script_file = invocation.files_dir / f"script-{stem}.yaml"
        report_file = invocation.files_dir / f"report-{stem}.json"
        await asyncio.to_thread(_prepare_files, script_file, report_file, invocation.options["script"])
        argv = [
            sys.executable,
            "-m",
            "agentgate.workspace.drivers.scripted_agent",
            "--script",
            str(script_file),
            "--iteration",
            str(invocation.iteration),
            "--attempt",
            str(invocation.attempt),
            "--report",
            str(report_file),
        ]
        process = await run_process(
            argv,
            cwd=invocation.workspace,
            env=invocation.base_env(),
            on_output=on_output,
            timeout=invocation.timeout_seconds,
            kill_grace=invocation.kill_grace_seconds,
            sandbox=invocation.sandbox,
        )
        result = result_from_process(invocation, self.name, process)
        report = await asyncio.to_thread(_read_report, report_file)
        for call in report.get("tool_calls") or []:
            tool_call = result.tool_calls.add(
                tool=str(call.get("tool", "")),
                output=str(call.get("output", "")),
                duration_seconds=float(call.get("duration_seconds") or 0.0),
            )
            if isinstance(call.get("input"), dict):
                tool_call.input.update(call["input"])
        tokens = report.get("tokens") or {}
        tokens_in, tokens_out = int(tokens.get("input") or 0), int(tokens.get("output") or 0)
        result.tokens.CopyFrom(common_pb2.TokenUsage(input=tokens_in, output=tokens_out, total=tokens_in + tokens_out))
        return result
