"""The scripted agent: a real process that follows a YAML script, for demos and tests.

    python -m agentgate.workspace.drivers.scripted_agent --script FILE --iteration N --attempt A --report FILE

It runs in the workspace (its working directory) and plays the steps of iteration N
(attempt A) from the script: print, write files, run commands, record tool calls and
tokens, sleep, exit or crash. The report file (outside the workspace) receives the tool
calls and tokens; it is rewritten after every step so a crash or a timeout keeps what
happened until then.

The script format is `agentgate.harness.scripted_script`'s.

This module imports only the standard library, yaml and the script format: the agent
process starts quickly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agentgate.harness.scripted_script import ScriptError, Step, parse_script


class _Report:
    """Tool calls and tokens, written atomically to the report file after each change."""

    def __init__(self, path: Path):
        self.path = path
        self.tool_calls: list[dict[str, Any]] = []
        self.tokens = {"input": 0, "output": 0}
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"tool_calls": self.tool_calls, "tokens": self.tokens}), encoding="utf-8")
        os.replace(tmp, self.path)


def _target(workspace: Path, relative: str) -> Path:
    """The file a step names, refusing one that resolves outside the workspace (symlinks)."""
    target = (workspace / relative).resolve()
    if not target.is_relative_to(workspace):
        raise ScriptError(f"path {relative!r} resolves outside the workspace")
    return target


def play(steps: list[Step], workspace: Path, report: _Report) -> int:
    """Plays the steps in `workspace`; returns the exit code."""
    for step in steps:
        kind, value = step.kind, step.value
        if kind == "print":
            print(value, flush=True)
        elif kind == "stderr":
            print(value, file=sys.stderr, flush=True)
        elif kind in ("write", "append"):
            target = _target(workspace, value["path"])
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("w" if kind == "write" else "a", encoding="utf-8", newline="") as handle:
                handle.write(value["content"])
        elif kind == "delete":
            target = _target(workspace, value["path"])
            if target.is_dir():
                raise ScriptError(f"delete: {value['path']!r} is a directory")
            target.unlink(missing_ok=True)
        elif kind == "run":
            sys.stdout.flush()
            sys.stderr.flush()
            # Inherits our stdout/stderr: its output is the agent's output.
            subprocess.run(value, shell=True, cwd=workspace, check=False)
        elif kind == "tool_call":
            report.tool_calls.append(
                {
                    "tool": value["tool"],
                    "input": value["input"],
                    "output": value["output"],
                    "duration_seconds": value["duration"],
                }
            )
            report.save()
        elif kind == "tokens":
            report.tokens["input"] += value["input"]
            report.tokens["output"] += value["output"]
            report.save()
        elif kind == "sleep":
            time.sleep(value)
        elif kind == "exit":
            return int(value)
        elif kind == "crash":
            print(value, file=sys.stderr, flush=True)
            sys.stdout.flush()
            _crash()
    return 0


def _crash() -> None:
    """Dies abnormally, by a signal, like a crashed program.

    SIGABRT rather than SIGKILL: exit 137 (SIGKILL) reads as "killed by the timeout" in the
    error classification (docs/troubleshooting.md), and a crash must be told apart from a timeout. Core
    dumps are turned off first so nothing lands in the workspace.
    """
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass
    signal.signal(signal.SIGABRT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGABRT)
    os.kill(os.getpid(), signal.SIGKILL)  # not reached


def main(argv: list[str] | None = None) -> int:
    """Entry point of the agent process."""
    parser = argparse.ArgumentParser(prog="scripted_agent", description="AgentGate scripted agent")
    parser.add_argument("--script", required=True, type=Path)
    parser.add_argument("--iteration", required=True, type=int)
    parser.add_argument("--attempt", type=int, default=1)
    parser.add_argument("--report", required=True, type=Path)
    args = parser.parse_args(argv)
    report = _Report(args.report)
    try:
        script = parse_script(args.script.read_text(encoding="utf-8"))
        return play(script.steps_for(args.iteration, args.attempt), Path.cwd().resolve(), report)
    except (ScriptError, OSError) as exc:
        print(f"scripted agent: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
