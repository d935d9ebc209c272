"""The `claude-code` driver: Anthropic's `claude` CLI in print mode.

Runs `claude -p --output-format stream-json --verbose [options]` in the workspace with the
prompt on stdin, and parses the stream into the AgentResult.

Options (`--agent-option KEY=VALUE`):
- `model`: `--model` (alias or full name).
- `allowed_tools` / `disallowed_tools`: `--allowedTools` / `--disallowedTools`, comma
  separated as the CLI takes them (`Read,Edit,Bash(git diff:*)`).
- `max_turns`: `--max-turns` (1-1000).
- `append_system_prompt`: `--append-system-prompt`.
- `permission_mode`: `--permission-mode`, any mode the pinned CLI accepts (default
  `acceptEdits`: the agent edits files without a person to approve; with the default
  `allowed_tools=Bash` it also runs commands, the project's tests among them).
- `extra_args`: more flags, shell-quoted, each in the schema's allowlist
  (`--max-budget-usd 2 --add-dir ../lib`).
- `resume` (default true): on iteration 2 and later, `--resume <session id>` of the
  previous iteration, so the agent keeps its context.
- `executable` (default `claude`): the CLI to run, a name on PATH or a path.
- `env.NAME`: adds a variable. The agent's own keys (`ANTHROPIC_*`, `CLAUDE_CODE_*`,
  proxies) pass from the service's environment; nothing else does.

Each run has its own agent home, `CLAUDE_CONFIG_DIR` = `<run_dir>/claude` (under the
workspace service's home, outside the workspace and the temporary directory): sessions of
one run resume across iterations and never mix with another run's or the user's. The API
key is never written there by us: it reaches the process through its environment only.

API errors: `claude -p` ends an API failure with a `result` event that says
`"subtype": "success", "is_error": true, "api_error_status": 401, "result": "<the API's
message>"`; the driver types it from the status (401/403 -> agent_auth_error, never
retried; 429, 5xx, 529 and statusless connection errors -> agent_api_error, retried with
backoff) and quotes the message.

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

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentgate.harness.drivers import DRIVERS, split_args
from agentgate.v1 import common_pb2
from agentgate.workspace.drivers.api import AgentInvocation, OutputCallback, agent_env, agent_home, env_options
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
DEFAULT_ALLOWED_TOOLS = SCHEMA.option("allowed_tools").default
T = common_pb2.BuildErrorType
#: What claude prints when `--resume` names a session its home does not hold.
LOST_SESSION = re.compile(r"No conversation found with session ID", re.I)
#: A context-window suffix some events add to the model name (`claude-opus-4-8[1m]`).
_MODEL_SUFFIX = re.compile(r"\[[^\]]*\]$")
#: Keeps claude from any connection but the model API (updates, telemetry, error reports);
#: a work order's env.NAME options may override them.
QUIET_ENV = {
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}
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
#: Variables naming the model endpoint claude talks to (allowed through the sandbox's proxy).
ENDPOINT_ENV = ("ANTHROPIC_BASE_URL",)


def claude_argv(
    options: Mapping[str, str], resume_session_id: str = "", max_budget_usd: float = 0.0
) -> list[str]:
    """The command line for the options; the prompt goes on stdin. `--include-partial-messages`
    makes the stream carry each message's final usage as it ends (the budget meter's input);
    `max_budget_usd` (what is left of the run's cost cap) becomes `--max-budget-usd`, or
    the lower of it and the one `extra_args` gives."""
    argv = [
        options.get("executable") or DEFAULT_EXECUTABLE,
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
    ]
    defaults = {"allowed_tools": DEFAULT_ALLOWED_TOOLS}
    for key, flag in FLAGS.items():
        value = options.get(key, defaults.get(key, "")).strip()
        if value:
            argv += [flag, value]
    argv += ["--permission-mode", options.get("permission_mode") or DEFAULT_PERMISSION_MODE]
    extra = split_args(options["extra_args"]) if options.get("extra_args", "").strip() else []
    given = _flag_value(extra, "--max-budget-usd")
    if max_budget_usd > 0 and (given is None or max_budget_usd < given):
        # The CLI takes the last value of a repeated flag.
        extra += ["--max-budget-usd", f"{max_budget_usd:.6f}"]
    argv += extra
    if resume_session_id and boolean_option(options, "resume", True):
        argv += ["--resume", resume_session_id]
    return argv


def _flag_value(args: list[str], flag: str) -> float | None:
    """The number after `flag` (or in `flag=N`) in `args`, None when absent or not a number."""
    for index, arg in enumerate(args):
        text = arg.split("=", 1)[1] if arg.startswith(flag + "=") else None
        if arg == flag and index + 1 < len(args):
            text = args[index + 1]
        if text is not None:
            try:
                return float(text)
            except ValueError:
                return None
    return None


def model_name(model: str) -> str:
    """One name for a model across a run: without the context-window suffix."""
    return _MODEL_SUFFIX.sub("", model.strip())


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


def _total(usage: Mapping[str, Any]) -> int:
    return sum(
        int(usage.get(key) or 0)
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
    )


def _result_text(event: Mapping[str, Any]) -> str:
    """The text of a result event, or of an API-error assistant message."""
    if isinstance(event.get("result"), str):
        return short(event["result"], 400)
    content = (event.get("message") or {}).get("content") or []
    return short(" ".join(str(b.get("text", "")) for b in content if isinstance(b, dict)), 400)


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
    #: Final usage of each model response, by message id, from the partial-message stream
    #: (`message_start` then `message_delta`): what the budget meter counts while it runs.
    stream_usage: dict[str, dict[str, int]] = field(default_factory=dict)
    #: The last API error the stream reported (an assistant message marked
    #: `is_api_error_message`), for when no result event follows.
    api_error: dict[str, Any] | None = None

    def feed(self, event: dict[str, Any], now: float) -> str | None:
        """Takes one event; returns a readable line for it ('' = nothing to show)."""
        kind = event.get("type")
        self.session_id = str(event.get("session_id") or self.session_id)
        if kind == "stream_event":
            return self._stream_event(event)
        if kind == "system":
            if event.get("subtype") == "init":
                self.model = model_name(str(event.get("model") or self.model))
                return f"[claude] session {self.session_id} started, model {self.model or '?'}"
            if event.get("subtype") == "api_retry":
                return (
                    f"[claude] API error {event.get('error_status') or ''} ({event.get('error', '')}): "
                    f"retry {event.get('attempt', '?')} of {event.get('max_retries', '?')}"
                )
            return f"[claude] system: {event.get('subtype', '')}"
        if kind == "assistant":
            return self._assistant_event(event, now)
        if kind == "user":
            return self._user(event["message"], now)
        if kind == "result":
            self.result = event
            cost = event.get("total_cost_usd", event.get("cost_usd"))
            state = "error" if event.get("is_error") else "done"
            cost_text = f", cost ${float(cost):.4f}" if isinstance(cost, int | float) else ""
            return f"[claude] {state}: {event.get('subtype', '')}, {event.get('num_turns', '?')} turns{cost_text}"
        return None

    def _stream_event(self, event: dict[str, Any]) -> str:
        """A raw API event (`--include-partial-messages`): only its usage counts; the
        assembled message follows as an `assistant` event, which is what is shown."""
        raw = event.get("event") or {}
        if raw.get("type") == "message_start":
            message = raw.get("message") or {}
            usage = {k: int(v) for k, v in (message.get("usage") or {}).items() if isinstance(v, int)}
            self.stream_usage[str(message.get("id") or event.get("uuid"))] = usage
        elif raw.get("type") == "message_delta":
            usage = self.stream_usage.setdefault(str(event.get("api_message_id") or ""), {})
            # message_delta's usage is cumulative for the message: it replaces, not adds.
            usage.update({k: int(v) for k, v in (raw.get("usage") or {}).items() if isinstance(v, int)})
        return ""

    def running_usage(self) -> tuple[int, float]:
        """Tokens so far (input incl. cache + output, every response), and the cost so far
        (known only once the result arrives): the budget meter's figures."""
        tokens = sum(_total(usage) for usage in self.stream_usage.values())
        cost = 0.0
        if self.result is not None:
            value = self.result.get("total_cost_usd", self.result.get("cost_usd"))
            cost = float(value) if isinstance(value, int | float) else 0.0
        return tokens, cost

    def _assistant_event(self, event: dict[str, Any], now: float) -> str:
        if event.get("message", {}).get("is_api_error_message") or event.get("is_api_error_message"):
            self.api_error = event
        return self._assistant(event["message"], now)

    def _assistant(self, message: dict[str, Any], now: float) -> str:
        model = str(message.get("model") or "")
        if model and not model.startswith("<"):  # "<synthetic>": a message the CLI made up
            self.model = self.model or model_name(model)
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
            # The assistant events repeat the usage of each message's *start* (1 output
            # token); the partial-message stream has each message's final figures.
            for message_usage in (self.stream_usage or self.message_usage).values():
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
        failure = self._failure()
        if failure:
            error_type, message = failure
            result.error_type = error_type  # type: ignore[assignment]
            if error_type == T.BUILD_ERROR_TYPE_AGENT_TASK_FAILURE:
                result.error_message = f"Agent reported task failure: {message}"
            elif error_type:
                result.error_message = message
            return message
        return ""

    def _failure(self) -> tuple[int, str] | None:
        """(BuildErrorType, message) of a run that failed by the stream's account, or None.
        An API error is typed by its status and quotes the API's message; a result that
        says `subtype: success` with `is_error` is never called a success."""
        event = self.result if self.result is not None else self.api_error
        if event is None:
            # Crash or timeout: the exit code and the timeout flag say which (build_errors).
            return T.BUILD_ERROR_TYPE_UNSPECIFIED, "the claude stream ended without a result event"
        status = event.get("api_error_status") or (event.get("message") or {}).get("api_error_status")
        text = _result_text(event)
        subtype = str(event.get("subtype") or "")
        if status or event.get("terminal_reason") == "api_error" or event is self.api_error:
            where = f"HTTP {status}" if status else "no answer"
            if status in (401, 403):
                return T.BUILD_ERROR_TYPE_AGENT_AUTH_ERROR, f"the model API refused the credentials ({where}): {text}"
            return T.BUILD_ERROR_TYPE_AGENT_API_ERROR, f"the model API failed ({where}): {text}"
        if subtype == "error_max_turns":
            turns = event.get("num_turns", "?")
            return T.BUILD_ERROR_TYPE_AGENT_TASK_FAILURE, f"claude stopped at its turn limit ({turns} turns, max_turns)"
        if subtype == "error_max_budget_usd":
            return T.BUILD_ERROR_TYPE_BUDGET_EXCEEDED, (
                f"Cost budget exceeded: claude stopped at --max-budget-usd (${event.get('total_cost_usd', 0)})"
            )
        if event.get("is_error") or subtype not in ("", "success"):
            errors = event.get("errors")
            detail = short(errors) if errors else text
            suffix = f": {detail}" if detail else ""
            return T.BUILD_ERROR_TYPE_AGENT_TASK_FAILURE, f"claude failed ({subtype or 'error'}){suffix}"
        return None


class ClaudeCodeDriver:
    """Runs Claude Code (`claude -p`) as the agent."""

    name = "claude-code"

    async def run(self, invocation: AgentInvocation, on_output: OutputCallback) -> common_pb2.AgentResult:
        """Runs claude with the prompt on stdin and parses its stream. A session to resume
        that claude no longer has is replaced by a fresh one: the prompt carries the whole
        task and the feedback, so nothing is lost but the earlier context; the result's
        `session_note` says so."""
        result = await self._run_once(invocation, on_output, invocation.resume_session_id)
        lost = LOST_SESSION.search(f"{result.stderr}\n{result.stdout}")
        if invocation.resume_session_id and not result.success and lost:
            note = (
                f"session {invocation.resume_session_id} could not be resumed (claude: no conversation found "
                "with that session ID); started a fresh session with the full prompt and feedback"
            )
            await _deliver_line(on_output, f"[agentgate] {note}")
            result = await self._run_once(invocation, on_output, "")
            result.session_note = note
        return result

    async def _run_once(
        self, invocation: AgentInvocation, on_output: OutputCallback, resume_session_id: str
    ) -> common_pb2.AgentResult:
        options = invocation.options
        env = {**QUIET_ENV, **agent_env(options, ENV_NAMES, ENV_PREFIXES)}
        # A home of its own per run (docs/agents.md): set by us unless the work order names one.
        if "CLAUDE_CONFIG_DIR" not in env_options(options):
            home = agent_home(invocation, "claude")
            env["CLAUDE_CONFIG_DIR"] = str(home)
        return await run_stream_cli(
            invocation,
            on_output,
            driver=self.name,
            cli="claude",
            argv=claude_argv(options, resume_session_id, invocation.budget.max_cost_usd),
            env=env,
            parser=ClaudeStreamParser(),
            # A custom endpoint (a gateway, a local model server) is allowed through the
            # sandbox's proxy for this execution: the driver was configured with it.
            endpoints=[url for name in ENDPOINT_ENV if (url := env.get(name, ""))],
        )


async def _deliver_line(on_output: OutputCallback, line: str) -> None:
    outcome = on_output("stderr", line)
    if outcome is not None:
        await outcome
