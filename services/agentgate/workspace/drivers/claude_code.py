"""The `claude-code` driver: Anthropic's `claude` CLI in print mode.

Runs `claude -p --output-format stream-json --verbose [options]` in the workspace with the
prompt on stdin, and parses the stream into the AgentResult.

Options (`--agent-option KEY=VALUE`):
- `model`: `--model` (alias or full name).
- `allowed_tools` / `disallowed_tools`: `--allowedTools` / `--disallowedTools`, comma
  separated as the CLI takes them (`Read,Edit,Bash(git diff:*)`).
- `max_turns`: `--max-turns` (1-1000).
- `append_system_prompt`: `--append-system-prompt`.
- `permission_mode`: `--permission-mode` (default `acceptEdits`: the agent must be able to
  edit files without a person to approve).
- `resume` (default true): on iteration 2 and later, `--resume <session id>` of the
  previous iteration, so the agent keeps its context.
- `executable` (default `claude`): the CLI to run, a name on PATH or a path.
- `env.NAME`: adds a variable. The agent's own keys (`ANTHROPIC_*`, `CLAUDE_CODE_*`,
  proxies) pass from the service's environment; nothing else does.

The stream format (one JSON object a line), from Anthropic's documentation of headless
mode and the Agent SDK message types
(https://docs.anthropic.com/en/docs/claude-code/sdk/sdk-headless, SDKMessage:
SDKSystemMessage / SDKAssistantMessage / SDKUserMessage / SDKResultMessage):
- `{"type":"system","subtype":"init","session_id","model","tools",...}` first;
- `{"type":"assistant","message":{"model","content":[{"type":"text"|"tool_use",...}],
  "usage"},"session_id"}` — `tool_use` blocks carry `id`, `name`, `input`;
- `{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id","content",
  "is_error"}]}}` — the results of the tool calls;
- `{"type":"result","subtype":"success"|"error_max_turns"|"error_during_execution"|...,
  "is_error","result","session_id","num_turns","duration_ms","total_cost_usd","usage",
  "modelUsage"}` last. (`total_cost_usd` replaced the older `cost_usd`; both are read.)
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

SCHEMA = DRIVERS["claude-code"]
DEFAULT_EXECUTABLE = SCHEMA.executable
DEFAULT_PERMISSION_MODE = SCHEMA.option("permission_mode").default
#: The options passed on as the CLI's flags, in this order (`--permission-mode` always).
FLAGS = {
    "model": "--model",
    "allowed_tools": "--allowedTools",
    "disallowed_tools": "--disallowedTools",
    "max_turns": "--max-turns",
    "append_system_prompt": "--append-system-prompt",
}
ENV_PREFIXES = ("ANTHROPIC_", "CLAUDE_CODE_")
ENV_NAMES = ("CLAUDE_CONFIG_DIR", *PROXY_ENV)


def claude_argv(options: Mapping[str, str], resume_session_id: str = "") -> list[str]:
    """The command line for the options; the prompt goes on stdin."""
    argv = [options.get("executable") or DEFAULT_EXECUTABLE, "-p", "--output-format", "stream-json", "--verbose"]
    for key, flag in FLAGS.items():
        if options.get(key, "").strip():
            argv += [flag, options[key]]
    argv += ["--permission-mode", options.get("permission_mode") or DEFAULT_PERMISSION_MODE]
    if resume_session_id and boolean_option(options, "resume", True):
        argv += ["--resume", resume_session_id]
    return argv


def _tool_result_text(content: Any) -> str:
    """A tool_result's content: a string, or a list of blocks of which the text ones count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif isinstance(block, dict):
                parts.append(f"[{block.get('type', 'block')}]")
        return "\n".join(parts)
    return "" if content is None else str(content)


@dataclass
class _PendingTool:
    name: str
    input: Any
    started: float
    output: str = ""
    finished: float | None = None
    is_error: bool = False


@dataclass
class ClaudeStreamParser:
    """Collects tool calls, usage, cost, model and session id from the stream."""

    session_id: str = ""
    model: str = ""
    tools: dict[str, _PendingTool] = field(default_factory=dict)
    #: Usage per assistant message id (a message's blocks arrive as separate events that
    #: repeat the same usage), for when no result event arrives.
    message_usage: dict[str, dict[str, Any]] = field(default_factory=dict)
    result: dict[str, Any] | None = None

    def feed(self, event: dict[str, Any], now: float) -> str | None:
        """Takes one event; returns a readable line for it."""
        kind = event.get("type")
        self.session_id = str(event.get("session_id") or self.session_id)
        if kind == "system":
            if event.get("subtype") == "init":
                self.model = str(event.get("model") or self.model)
                return f"[claude] session {self.session_id} started, model {self.model or '?'}"
            return f"[claude] system: {event.get('subtype', '')}"
        if kind == "assistant":
            return self._assistant(event["message"], now)
        if kind == "user":
            return self._user(event["message"], now)
        if kind == "result":
            self.result = event
            cost = event.get("total_cost_usd", event.get("cost_usd"))
            state = "error" if event.get("is_error") else "done"
            cost_text = f", cost ${float(cost):.4f}" if isinstance(cost, int | float) else ""
            return f"[claude] {state}: {event.get('subtype', '')}, {event.get('num_turns', '?')} turns{cost_text}"
        return None

    def _assistant(self, message: dict[str, Any], now: float) -> str:
        self.model = self.model or str(message.get("model") or "")
        if isinstance(message.get("usage"), dict) and message.get("id"):
            self.message_usage[str(message["id"])] = message["usage"]
        shown = []
        for block in message.get("content") or []:
            if block.get("type") == "text":
                shown.append(str(block.get("text", "")))
            elif block.get("type") == "tool_use":
                tool_id = str(block.get("id") or f"tool-{len(self.tools) + 1}")
                self.tools[tool_id] = _PendingTool(str(block.get("name", "?")), block.get("input"), now)
                shown.append(f"-> {block.get('name')}: {short(block.get('input'))}")
            elif block.get("type") == "thinking":
                shown.append(f"(thinking) {short(block.get('thinking', ''))}")
        return "\n".join(shown) if shown else "[claude] (empty message)"

    def _user(self, message: dict[str, Any], now: float) -> str:
        content = message.get("content")
        if not isinstance(content, list):
            return f"[user] {short(content)}"
        shown = []
        for block in content:
            if block.get("type") != "tool_result":
                continue
            pending = self.tools.get(str(block.get("tool_use_id")))
            text = _tool_result_text(block.get("content"))
            if pending is not None:
                pending.output, pending.finished = text, now
                pending.is_error = bool(block.get("is_error"))
            marker = "error" if block.get("is_error") else "ok"
            shown.append(f"<- {pending.name if pending else '?'} ({marker}): {short(text)}")
        return "\n".join(shown) if shown else "[user]"

    def apply(self, result: common_pb2.AgentResult, now: float) -> str:
        """Fills the result; a failure by the stream's account: an error result, or no result."""
        result.session_id = self.session_id
        for pending in self.tools.values():
            output = pending.output if pending.finished is not None else "[no result: the agent stopped first]"
            if pending.is_error:
                output = "ERROR: " + output
            result.tool_calls.add(
                tool=pending.name,
                input=to_struct(pending.input),
                output=output[:TOOL_OUTPUT_CHARS],
                duration_seconds=max(0.0, (pending.finished or now) - pending.started),
            )
        usage: dict[str, Any] = {}
        if self.result is not None:
            usage = self.result.get("usage") or {}
            cost = self.result.get("total_cost_usd", self.result.get("cost_usd"))
            result.cost_usd = float(cost) if isinstance(cost, int | float) else 0.0
            model_usage = self.result.get("modelUsage")
            if not self.model and isinstance(model_usage, dict) and model_usage:
                self.model = next(iter(model_usage))
            result.structured_output.CopyFrom(to_struct({k: v for k, v in self.result.items() if k != "usage"}))
        else:
            for message_usage in self.message_usage.values():
                for key, value in message_usage.items():
                    if isinstance(value, int):
                        usage[key] = usage.get(key, 0) + value
        result.model = self.model
        tokens_in = sum(
            int(usage.get(key) or 0)
            for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        )
        tokens_out = int(usage.get("output_tokens") or 0)
        result.tokens.CopyFrom(common_pb2.TokenUsage(input=tokens_in, output=tokens_out, total=tokens_in + tokens_out))
        if self.result is None:
            return "the claude stream ended without a result event"
        if self.result.get("is_error") or self.result.get("subtype", "success") != "success":
            errors = self.result.get("errors")
            detail = f": {short(errors)}" if errors else ""
            return f"claude reported {self.result.get('subtype', 'an error')}{detail}"
        return ""


class ClaudeCodeDriver:
    """Runs Claude Code (`claude -p`) as the agent."""

    name = "claude-code"

    async def run(self, invocation: AgentInvocation, on_output: OutputCallback) -> common_pb2.AgentResult:
        """Runs claude with the prompt on stdin and parses its stream."""
        options = invocation.options
        return await run_stream_cli(
            invocation,
            on_output,
            driver=self.name,
            cli="claude",
            argv=claude_argv(options, invocation.resume_session_id),
            env=agent_env(options, ENV_NAMES, ENV_PREFIXES),
            parser=ClaudeStreamParser(),
        )
