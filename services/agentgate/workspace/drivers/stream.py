"""What the drivers of model CLIs that print a JSON-lines event stream share
(`claude-code`, `codex`): start the CLI with the prompt on stdin, parse its stdout line by
line while it runs, stream a readable line per event, and fill the AgentResult from what
the stream said (tool calls, tokens, cost, model, session id).

A line that is not JSON, or an event of an unexpected shape, is counted and passed on as
it is: it never fails the run by itself. A CLI that dies mid-stream keeps what it had
printed (the session id, the tool calls so far) and fails as a crash.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from google.protobuf import struct_pb2

from agentgate.harness.drivers import BOOLEAN_VALUES
from agentgate.v1 import common_pb2
from agentgate.workspace.drivers.api import AgentInvocation, OutputCallback, result_from_process
from agentgate.workspace.drivers.budget import BudgetMeter
from agentgate.workspace.processes import MAX_LINE_CHARS, STDOUT, run_process

#: Characters of a tool's input or output shown in a streamed output line.
SHOWN_CHARS = 160
#: Characters of a tool's output kept in its ToolCall.
TOOL_OUTPUT_CHARS = 64 * 1024
#: Variables every model CLI needs to reach its API through a proxy.
PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
EXIT_NOT_FOUND = 127
#: An event longer than this is not reassembled (it is counted as malformed).
MAX_EVENT_CHARS = 16 * 1024 * 1024


def short(value: Any, limit: int = SHOWN_CHARS) -> str:
    """`value` on one line, cut to `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def to_struct(value: Any) -> struct_pb2.Struct:
    """A JSON object as a Struct (anything else is wrapped as {"value": ...})."""
    struct = struct_pb2.Struct()
    data = value if isinstance(value, dict) else {"value": value}
    try:
        struct.update(json.loads(json.dumps(data, default=str)))
    except (TypeError, ValueError):
        struct.update({"value": short(data, TOOL_OUTPUT_CHARS)})
    return struct


class StreamParser(Protocol):
    """Turns the events of one CLI's stream into AgentResult fields."""

    def feed(self, event: dict[str, Any], now: float) -> str | None:
        """Takes one event; returns the line to stream for it (None = the raw line)."""
        ...

    def apply(self, result: common_pb2.AgentResult, now: float) -> str:
        """Fills `result` from everything seen; returns why the run failed by the stream's
        own account ('' when it did not)."""
        ...


def running_usage(parser: StreamParser) -> tuple[int, float] | None:
    """(tokens, cost in dollars) the agent has used so far by its stream, for the budget
    meter; None for a parser that cannot tell. A parser opts in with a method
    `running_usage(self) -> tuple[int, float]` returning running totals of the execution."""
    method = getattr(parser, "running_usage", None)
    return method() if callable(method) else None


class StreamReader:
    """Feeds a parser line by line and counts what it could not use."""

    def __init__(self, parser: StreamParser, cli: str):
        self.parser = parser
        self.cli = cli
        self.lines = 0
        self.malformed: list[int] = []
        self.first_problem = ""
        self._partial: list[str] = []
        self._partial_chars = 0

    def piece(self, text: str) -> str | None:
        """One piece of stdout as the process reader delivers it: a whole line, or a piece of
        exactly MAX_LINE_CHARS of a longer one (an event with a big tool result). Pieces are
        joined back into their line; returns the line to stream, or None while incomplete."""
        if len(text) == MAX_LINE_CHARS and self._partial_chars < MAX_EVENT_CHARS:
            self._partial.append(text)
            self._partial_chars += len(text)
            return None
        if self._partial:
            text = "".join(self._partial) + text
            self._partial, self._partial_chars = [], 0
        return self.line(text)

    def flush(self) -> None:
        """Parses what is left of an unfinished line (the CLI died in the middle of it)."""
        if self._partial:
            self.line("".join(self._partial))
            self._partial, self._partial_chars = [], 0

    def line(self, text: str) -> str:
        """One stdout line; returns the line to stream."""
        self.lines += 1
        if not text.strip():
            return text
        try:
            event = json.loads(text)
            if not isinstance(event, dict):
                raise ValueError("not a JSON object")
            shown = self.parser.feed(event, time.monotonic())
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # A CLI may print a warning on stdout, or be killed in the middle of a line.
            self.malformed.append(self.lines)
            self.first_problem = self.first_problem or f"line {self.lines}: {type(exc).__name__}: {exc}"
            return text
        return text if shown is None else shown

    def note(self) -> str:
        """A line for stderr about the malformed lines, or ''."""
        if not self.malformed:
            return ""
        where = ", ".join(map(str, self.malformed[:10])) + (" ..." if len(self.malformed) > 10 else "")
        return (
            f"[agentgate] {len(self.malformed)} line(s) of the {self.cli} stream could not be used "
            f"(line {where}); first: {self.first_problem}"
        )


def _append(text: str, line: str) -> str:
    if not line:
        return text
    return (text if not text or text.endswith("\n") else text + "\n") + line + "\n"


async def run_stream_cli(
    invocation: AgentInvocation,
    on_output: OutputCallback,
    *,
    driver: str,
    cli: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    parser: StreamParser,
    endpoints: Sequence[str] = (),
    login_files: Sequence[Path] = (),
) -> common_pb2.AgentResult:
    """Runs a stream-printing CLI in the workspace with the prompt on stdin and returns the
    AgentResult: success = exit 0 within the timeout and a stream that says it succeeded.

    In AgentGate's sandbox the CLI's own install folder is shown read-only and the model
    endpoints it was configured with (`endpoints`: base URLs) are allowed through the proxy,
    and its login (`login_files`) is shown read-only (docs/sandbox.md, "Model CLIs in the
    sandbox")."""
    prompt_file = invocation.prompt_dir / f"prompt-{invocation.iteration}.md"
    await asyncio.to_thread(_write_text, prompt_file, invocation.prompt)
    full_env = invocation.base_env()
    full_env["AGENTGATE_PROMPT_FILE"] = str(prompt_file)
    full_env.update(env)
    executable = shutil.which(argv[0], path=full_env.get("PATH") or os.environ.get("PATH", os.defpath))
    if executable is None:
        # Not a crash of the agent: nothing ran. Said plainly, with the usual "not found" code.
        result = common_pb2.AgentResult(
            run_id=invocation.run_id,
            iteration=invocation.iteration,
            attempt=invocation.attempt,
            driver=driver,
            success=False,
            exit_code=EXIT_NOT_FOUND,
            stderr=f"the {argv[0]} executable is not on PATH: the {driver} driver cannot run here\n",
        )
        await _deliver(on_output, "stderr", result.stderr.rstrip("\n"))
        return result
    sandbox = invocation.sandbox
    if sandbox is not None:
        sandbox = sandbox.widened(
            read_only=cli_install_paths(executable),
            endpoints=[e for url in endpoints if (e := endpoint_of(url)) is not None],
            login_files=login_files,
        )
    reader = StreamReader(parser, cli)
    meter = BudgetMeter(invocation.budget)

    async def forward(stream: str, line: str) -> None:
        shown = reader.piece(line) if stream == STDOUT else line
        # '' from a parser: an event with nothing to show (a partial-message chunk).
        if shown is not None and (shown or stream != STDOUT):
            await _deliver(on_output, stream, shown)
        if stream == STDOUT and invocation.budget.capped() and (usage := running_usage(parser)) is not None:
            if meter.update(tokens=usage[0], cost_usd=usage[1]):
                await _deliver(on_output, "stderr", f"[agentgate] {meter.reason}: stopping the agent")

    process = await run_process(
        [executable, *argv[1:]],
        cwd=invocation.workspace,
        env=full_env,
        stdin=invocation.prompt.encode("utf-8"),
        on_output=forward,
        timeout=invocation.timeout_seconds,
        kill_grace=invocation.kill_grace_seconds,
        sandbox=sandbox,
        stop=meter.stop,
    )
    reader.flush()
    result = result_from_process(invocation, driver, process)
    failure = parser.apply(result, time.monotonic())
    result.stderr = _append(result.stderr, reader.note())
    if meter.exceeded:
        failure = meter.reason
        meter.apply(result)
    if failure:
        result.success = False
        result.error_message = result.error_message or failure
        result.stderr = _append(result.stderr, f"[agentgate] {failure}")
    return result


def cli_install_paths(executable: str, home: Path | None = None) -> list[Path]:
    """What must be readable in the sandbox for `executable` to start: the folder of the
    path we call (its symlink must resolve) and the CLI's install folder — for an npm
    install the outermost `node_modules` above the resolved file (the package and its
    platform packages, e.g. `@openai/codex-linux-x64`, are siblings there), else the resolved
    file's folder (a native install such as `~/.local/share/claude/versions/X`). Never the
    home itself or the root (a CLI lying loose in the home shows only itself)."""
    home = (home or Path.home()).resolve()
    called = Path(os.path.abspath(executable))
    resolved = Path(os.path.realpath(executable))
    paths: list[Path] = []
    for path in (called, resolved):
        modules = [parent for parent in path.parents if parent.name == "node_modules"]
        paths.append(modules[-1] if modules else path.parent)
    shown: list[Path] = []
    for path, file in zip(paths, (called, resolved), strict=True):
        if path == Path(path.anchor) or path == home or path in home.parents:
            path = file  # the file alone
        if path not in shown:
            shown.append(path)
    return shown


def endpoint_of(url: str) -> tuple[str, int] | None:
    """(host, port) of a configured model base URL (None for anything that is not an
    http(s) URL with a host): what the proxy must let the CLI reach."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


async def _deliver(callback: OutputCallback, stream: str, line: str) -> None:
    outcome = callback(stream, line)
    if asyncio.iscoroutine(outcome) or isinstance(outcome, asyncio.Future):
        await outcome


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# --- options shared by the CLI drivers ------------------------------------------------------


def boolean_option(options: Mapping[str, str], key: str, default: bool) -> bool:
    """A true/false option (checked with the options, `agentgate.harness.drivers`)."""
    return BOOLEAN_VALUES.get(options.get(key, "").strip().lower(), default)
