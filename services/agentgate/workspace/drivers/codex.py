"""The `codex` driver: OpenAI's Codex CLI in non-interactive mode.

Runs `codex exec --json --sandbox workspace-write [options] -` in the workspace (the
trailing `-` reads the prompt from stdin), or `codex exec --json ... resume <id> -` on
later iterations, and parses the JSONL event stream into the AgentResult.

Options (`--agent-option KEY=VALUE`):
- `model`: `--model`.
- `sandbox`: `--sandbox` (`read-only`, `workspace-write` — the default: the agent must
  edit the workspace —, `danger-full-access`).
- `profile`: `--profile` (a profile of the user's Codex config).
- `config.KEY`: `-c KEY=VALUE` (any Codex config override).
- `resume` (default true): resume the previous iteration's session (`exec resume <id>`).
- `executable` (default `codex`).
- `env.NAME`: adds a variable. The agent's own keys (`OPENAI_*`, `CODEX_*`, proxies) pass
  from the service's environment; nothing else does.

The stream format, from the Codex documentation (`docs/exec.md`, "JSON output mode") and
the event types of `codex-rs/exec/src/exec_events.rs` in github.com/openai/codex:
- `{"type":"thread.started","thread_id"}` — the session id (used to resume);
- `{"type":"turn.started"}`, then `{"type":"turn.completed","usage":{"input_tokens",
  "cached_input_tokens","output_tokens"}}` or `{"type":"turn.failed","error":{"message"}}`;
- `{"type":"item.started"|"item.updated"|"item.completed","item":{"id","type",...}}` with
  item types `agent_message` (`text`), `reasoning` (`text`), `command_execution`
  (`command`, `aggregated_output`, `exit_code`, `status`), `file_change` (`changes`:
  [{`path`, `kind`}], `status`), `mcp_tool_call` (`server`, `tool`, `arguments`,
  `result`, `error`, `status`), `web_search` (`query`), `todo_list`, `error`;
- `{"type":"error","message"}` — a stream error (retries are announced this way too).
Codex prints neither the model nor a cost: the model is the `model` option when given,
and the cost stays 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentgate.harness.drivers import DRIVERS
from agentgate.v1 import common_pb2
from agentgate.workspace.drivers.api import AgentInvocation, OutputCallback, agent_env
from agentgate.workspace.drivers.stream import (
    PROXY_ENV,
    TOOL_OUTPUT_CHARS,
    boolean_option,
    run_stream_cli,
    short,
    to_struct,
)

SCHEMA = DRIVERS["codex"]
DEFAULT_EXECUTABLE = SCHEMA.executable
DEFAULT_SANDBOX = SCHEMA.option("sandbox").default
#: The options passed on as the CLI's flags (`--sandbox` always).
FLAGS = {"model": "--model", "profile": "--profile"}
ENV_PREFIXES = ("OPENAI_", "CODEX_")
ENV_NAMES = PROXY_ENV
TOOL_ITEMS = ("command_execution", "file_change", "mcp_tool_call", "web_search")


def codex_argv(options: Mapping[str, str], resume_session_id: str = "") -> list[str]:
    """The command line for the options; `-` makes codex read the prompt from stdin."""
    argv = [options.get("executable") or DEFAULT_EXECUTABLE, "exec", "--json"]
    argv += ["--sandbox", options.get("sandbox") or DEFAULT_SANDBOX]
    for key, flag in FLAGS.items():
        if options.get(key, "").strip():
            argv += [flag, options[key]]
    for key in sorted(options):
        if key.startswith("config."):
            argv += ["-c", f"{key[len('config.'):]}={options[key]}"]
    if resume_session_id and boolean_option(options, "resume", True):
        argv += ["resume", resume_session_id]
    argv.append("-")
    return argv


@dataclass
class _Item:
    tool: str
    input: dict[str, Any]
    started: float
    output: str = ""
    finished: float | None = None


def _mcp_output(item: dict[str, Any]) -> str:
    if isinstance(item.get("error"), dict):
        return "ERROR: " + str(item["error"].get("message", ""))
    result = item.get("result")
    if not isinstance(result, dict):
        return ""
    parts = [str(block.get("text", "")) for block in result.get("content") or [] if isinstance(block, dict)]
    if result.get("structured_content") is not None:
        parts.append(short(result["structured_content"], TOOL_OUTPUT_CHARS))
    return "\n".join(parts)


@dataclass
class CodexStreamParser:
    """Collects tool calls, usage and the thread id from the stream."""

    model: str = ""
    thread_id: str = ""
    items: dict[str, _Item] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    turns_completed: int = 0
    failure: str = ""
    last_message: str = ""
    errors: list[str] = field(default_factory=list)

    def feed(self, event: dict[str, Any], now: float) -> str | None:
        """Takes one event; returns a readable line for it."""
        kind = event["type"]
        if kind == "thread.started":
            self.thread_id = str(event["thread_id"])
            return f"[codex] session {self.thread_id} started"
        if kind == "turn.started":
            return "[codex] turn started"
        if kind == "turn.completed":
            usage = event.get("usage") or {}
            self.input_tokens += int(usage.get("input_tokens") or 0)
            self.output_tokens += int(usage.get("output_tokens") or 0)
            self.turns_completed += 1
            return f"[codex] turn completed ({usage.get('input_tokens', 0)} in, {usage.get('output_tokens', 0)} out)"
        if kind == "turn.failed":
            self.failure = str((event.get("error") or {}).get("message") or "turn failed")
            return f"[codex] turn failed: {self.failure}"
        if kind == "error":
            self.errors.append(str(event.get("message", "")))
            return f"[codex] error: {event.get('message', '')}"
        if kind in ("item.started", "item.updated", "item.completed"):
            return self._item(kind, event["item"], now)
        return None

    def _item(self, kind: str, item: dict[str, Any], now: float) -> str:
        item_type = item["type"]
        item_id = str(item.get("id") or f"item-{len(self.items)}")
        if item_type in TOOL_ITEMS:
            tracked = self.items.get(item_id)
            if tracked is None:
                tracked = self.items[item_id] = _Item(item_type, self._input(item), now)
            if kind == "item.completed":
                tracked.input = self._input(item) or tracked.input
                tracked.output, tracked.finished = self._output(item), now
                return f"<- {item_type}: {short(tracked.output) or item.get('status', '')}"
            return f"-> {item_type}: {short(tracked.input)}" if kind == "item.started" else f"[codex] {item_type}"
        if item_type == "agent_message":
            if kind == "item.completed":
                self.last_message = str(item.get("text", ""))
            return str(item.get("text", ""))
        if item_type == "reasoning":
            return f"(thinking) {short(item.get('text', ''))}"
        if item_type == "error":
            self.errors.append(str(item.get("message", "")))
            return f"[codex] error: {item.get('message', '')}"
        return f"[codex] {item_type}"

    @staticmethod
    def _input(item: dict[str, Any]) -> dict[str, Any]:
        item_type = item["type"]
        if item_type == "command_execution":
            return {"command": item.get("command", "")}
        if item_type == "file_change":
            return {"changes": item.get("changes") or []}
        if item_type == "mcp_tool_call":
            return {"server": item.get("server", ""), "tool": item.get("tool", ""), "arguments": item.get("arguments")}
        return {"query": item.get("query", "")}

    @staticmethod
    def _output(item: dict[str, Any]) -> str:
        item_type = item["type"]
        if item_type == "command_execution":
            output = str(item.get("aggregated_output") or "")
            code = item.get("exit_code")
            status = item.get("status", "")
            return output + (f"\n[exit code {code}]" if code is not None else f"\n[{status}]")
        if item_type == "file_change":
            changes = ", ".join(f"{c.get('kind')} {c.get('path')}" for c in item.get("changes") or [])
            return f"{item.get('status', '')}: {changes}"
        if item_type == "mcp_tool_call":
            return _mcp_output(item)
        return str(item.get("status", ""))

    def apply(self, result: common_pb2.AgentResult, now: float) -> str:
        """Fills the result; a failure by the stream's account: a failed turn, or none completed."""
        result.session_id = self.thread_id
        result.model = self.model
        for item in self.items.values():
            name = item.tool
            if item.tool == "mcp_tool_call":
                name = f"mcp:{item.input.get('server')}/{item.input.get('tool')}"
            output = item.output if item.finished is not None else "[no result: the agent stopped first]"
            result.tool_calls.add(
                tool=name,
                input=to_struct(item.input),
                output=output[:TOOL_OUTPUT_CHARS],
                duration_seconds=max(0.0, (item.finished or now) - item.started),
            )
        total = self.input_tokens + self.output_tokens
        result.tokens.CopyFrom(common_pb2.TokenUsage(input=self.input_tokens, output=self.output_tokens, total=total))
        if self.turns_completed or self.failure:
            summary = {
                "thread_id": self.thread_id,
                "turns_completed": self.turns_completed,
                "last_message": self.last_message,
                "is_error": bool(self.failure),
                "error": self.failure,
            }
            result.structured_output.CopyFrom(to_struct(summary))
        if self.failure:
            return f"codex reported a failed turn: {self.failure}"
        if not self.turns_completed:
            return "the codex stream ended without a completed turn"
        return ""


class CodexDriver:
    """Runs the Codex CLI (`codex exec --json`) as the agent."""

    name = "codex"

    async def run(self, invocation: AgentInvocation, on_output: OutputCallback) -> common_pb2.AgentResult:
        """Runs codex with the prompt on stdin and parses its stream."""
        options = invocation.options
        return await run_stream_cli(
            invocation,
            on_output,
            driver=self.name,
            cli="codex",
            argv=codex_argv(options, invocation.resume_session_id),
            env=agent_env(options, ENV_NAMES, ENV_PREFIXES),
            parser=CodexStreamParser(model=options.get("model", "")),
        )
