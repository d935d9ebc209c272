"""The `codex` driver: OpenAI's Codex CLI in non-interactive mode (docs/agents.md, `codex`).

Runs `codex exec --json --sandbox MODE [options] -` in the workspace (the trailing `-` reads
the prompt from stdin), or `codex exec --json ... resume <id> -` on later iterations, and
parses the JSONL event stream into the AgentResult.

The stream format (codex 0.171.0, checked against the real CLI in
tests/integration/test_codex_real.py):
- `{"type":"thread.started","thread_id"}` — the session id (used to resume);
- `{"type":"turn.started"}`, then `{"type":"turn.completed","usage":{"input_tokens",
  "cached_input_tokens","output_tokens",...}}` or `{"type":"turn.failed","error":{"message"}}`;
  the usage covers the whole *thread*, so a resumed thread reports the earlier executions too;
- `{"type":"item.started"|"item.updated"|"item.completed","item":{"id","type",...}}` with
  item types `agent_message`, `reasoning`, `command_execution` (`command`,
  `aggregated_output`, `exit_code`, `status`), `file_change` (`changes`, `status`),
  `mcp_tool_call`, `web_search`, `todo_list`, `error`;
- `{"type":"error","message"}` — a stream error; codex announces its own retries of the
  model API this way (`Reconnecting... 2/5 (...)`) and ends with `turn.failed`.

Codex prints neither the model nor the usage while a turn runs; both are in its session file
(`$CODEX_HOME/sessions/.../rollout-*-<thread>.jsonl`: a `turn_context` with the model, a
`token_count` after every model response), which `RolloutWatcher` reads as it grows — the
running usage the hard budget (drivers/budget.py) needs.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentgate.harness.drivers import DRIVERS, Prices, args_problem, parse_prices, split_args
from agentgate.v1 import common_pb2
from agentgate.workspace.drivers.api import AgentInvocation, OutputCallback, agent_env, agent_home
from agentgate.workspace.drivers.stream import (
    PROXY_ENV,
    TOOL_OUTPUT_CHARS,
    boolean_option,
    run_stream_cli,
    short,
    to_struct,
)

T = common_pb2.BuildErrorType
SCHEMA = DRIVERS["codex"]
DEFAULT_EXECUTABLE = SCHEMA.executable
AUTO_SANDBOX = SCHEMA.option("sandbox").default
#: Codex's own sandbox inside AgentGate's: codex's Linux sandbox is bubblewrap in a new user
#: namespace, which ours forbids (`--disable-userns`), so every command would fail. Ours
#: already confines the agent (only the workspace writable, egress only to the model API
#: through the allowlist proxy, no secrets mounted: docs/sandbox.md), so codex runs its
#: commands unconfined *inside* it, and the agent can run the project's tests.
SANDBOX_INSIDE_OURS = "danger-full-access"
#: Without AgentGate's sandbox codex's own must protect the machine: writes only to the
#: workspace and the temporary folder, no network; the project's tests still run.
SANDBOX_UNCONFINED = "workspace-write"
#: The options passed on as the CLI's flags (`--sandbox` always).
FLAGS = {"model": "--model", "profile": "--profile"}
ENV_PREFIXES = ("OPENAI_", "CODEX_")
ENV_NAMES = PROXY_ENV
TOOL_ITEMS = ("command_execution", "file_change", "mcp_tool_call", "web_search")
#: The run's own codex home, under its agent home folder (`AgentInvocation.run_dir`).
HOME_NAME = "codex"
#: What we keep between executions of one run in the codex home: the thread's cumulative usage.
USAGE_STATE = "agentgate-usage.json"
#: Configuration copied from the operator's codex home into the run's (never `auth.json`,
#: which is linked: credentials are not copied to disk by us).
CONFIG_FILES = ("config.toml",)
PROFILE_SUFFIX = ".config.toml"
AUTH_FILE = "auth.json"
#: What codex says when the thread to resume is gone.
LOST_THREAD = re.compile(
    r"no rollout found for thread id|thread/resume failed|no (?:conversation|session|thread) found", re.I
)
#: A command that failed because codex's sandbox helper could not start (not the command's fault).
SANDBOX_HELPER_FAILURE = re.compile(
    r"codex-linux-sandbox|bwrap: |Sandbox\(|sandbox (?:error|denied)|setting up .*sandbox|landlock", re.I
)
#: `ERROR codex_core::tools::router: error=...` on stderr: why a tool call (a patch) was rejected.
TOOL_ERROR_LINE = re.compile(r"ERROR codex_core::tools::\S+: error=(.*)")
_STATUS = re.compile(r"(?:unexpected status|last status:?|status) (\d{3})")
_URL_SUFFIX = re.compile(r",? url: \S+$")
#: Messages of transient model API failures (codex hides a 5xx body behind its own text).
_TRANSIENT = re.compile(
    r"stream disconnected|error sending request|connection (?:reset|refused|closed)|timed? ?out|"
    r"high demand|overloaded|temporar|server error|service unavailable|bad gateway|rate limit|Reconnecting",
    re.I,
)
_AUTH = re.compile(r"invalid api key|incorrect api key|unauthorized|not logged in|authentication|401|403", re.I)
_CONTEXT = re.compile(r"context window|context_length|maximum context", re.I)
_QUOTA = re.compile(r"quota|usage limit|insufficient_quota|billing", re.I)


def codex_sandbox_mode(options: Mapping[str, str], inside_our_sandbox: bool) -> str:
    """Codex's `--sandbox` for an execution: the option, or by default (`auto`) whichever
    lets the agent run the project's tests where it runs (see SANDBOX_INSIDE_OURS)."""
    chosen = options.get("sandbox") or AUTO_SANDBOX
    if chosen != AUTO_SANDBOX:
        return chosen
    return SANDBOX_INSIDE_OURS if inside_our_sandbox else SANDBOX_UNCONFINED


def codex_argv(options: Mapping[str, str], resume_session_id: str = "", inside_our_sandbox: bool = False) -> list[str]:
    """The command line for the options; `-` makes codex read the prompt from stdin."""
    argv = [options.get("executable") or DEFAULT_EXECUTABLE, "exec", "--json"]
    argv += ["--sandbox", codex_sandbox_mode(options, inside_our_sandbox)]
    for key, flag in FLAGS.items():
        if options.get(key, "").strip():
            argv += [flag, options[key]]
    for key in sorted(options):
        if key.startswith("config."):
            argv += ["-c", f"{key[len('config.'):]}={options[key]}"]
    extra = options.get("extra_args", "")
    if extra.strip() and not args_problem(extra, SCHEMA.option("extra_args").choices):
        argv += split_args(extra)
    if resume_session_id and boolean_option(options, "resume", True):
        argv += ["resume", resume_session_id]
    argv.append("-")
    return argv


def classify_api_error(message: str) -> tuple[int, str]:
    """What a failed turn's error says, as (BuildErrorType, message quoting the API):
    refused credentials -> AGENT_AUTH_ERROR (asking again will not help); rate limit,
    5xx, a dropped connection -> AGENT_API_ERROR (retryable); the context window or the
    quota -> AGENT_TASK_FAILURE with the API's words; anything else a task failure."""
    text = _URL_SUFFIX.sub("", message.strip())
    status_match = _STATUS.search(text)
    status = int(status_match.group(1)) if status_match else 0
    if status in (401, 403) or (not status and _AUTH.search(text) and not _TRANSIENT.search(text)):
        return T.BUILD_ERROR_TYPE_AGENT_AUTH_ERROR, f"Model API refused the credentials: {text}"
    if _CONTEXT.search(text):
        return T.BUILD_ERROR_TYPE_AGENT_TASK_FAILURE, f"Model context window exceeded: {text}"
    if _QUOTA.search(text):
        return T.BUILD_ERROR_TYPE_AGENT_TASK_FAILURE, f"Model API quota exhausted: {text}"
    if status in (408, 409, 429) or status >= 500 or (not status and _TRANSIENT.search(text)):
        return T.BUILD_ERROR_TYPE_AGENT_API_ERROR, f"Model API error (codex gave up after its retries): {text}"
    if status:
        return T.BUILD_ERROR_TYPE_AGENT_TASK_FAILURE, f"Model API refused the request: {text}"
    return T.BUILD_ERROR_TYPE_AGENT_TASK_FAILURE, f"codex reported a failed turn: {text}"


# --- the run's codex home ---------------------------------------------------------------------


def source_home(env: Mapping[str, str]) -> Path:
    """The operator's codex home: `CODEX_HOME` of the service, else `~/.codex`."""
    configured = env.get("CODEX_HOME") or os.environ.get("CODEX_HOME")
    return Path(configured) if configured else Path.home() / ".codex"


def under_temp_dir(path: Path, env: Mapping[str, str]) -> bool:
    """Whether codex would take `path` for a temporary folder (it refuses to install its
    sandbox helpers there, and then every sandboxed command fails)."""
    temp = Path(env.get("TMPDIR") or tempfile.gettempdir()).resolve()
    try:
        return path.resolve().is_relative_to(temp)
    except OSError:
        return False


def prepare_home(home: Path, source: Path) -> list[str]:
    """Makes the run's codex home: the operator's configuration copied in (config.toml and
    profiles, no secrets), the login (`auth.json`) linked, not copied. Returns notes."""
    notes: list[str] = []
    home.mkdir(parents=True, exist_ok=True)
    if source.resolve() == home.resolve() or not source.is_dir():
        return notes
    for item in sorted(source.iterdir()):
        if item.name in CONFIG_FILES or item.name.endswith(PROFILE_SUFFIX):
            target = home / item.name
            if item.is_file():
                target.write_bytes(item.read_bytes())
    auth = source / AUTH_FILE
    link = home / AUTH_FILE
    if auth.is_file() and not link.exists() and not link.is_symlink():
        # A link keeps a subscription login working (and refreshed in one place) without a
        # second copy of the credentials on disk.
        link.symlink_to(auth.absolute())
        notes.append(f"codex login: {AUTH_FILE} linked from {source}")
    return notes


def login_files(home: Path) -> list[Path]:
    """The operator's login the run's home links to (`auth.json`), which the sandbox must
    show for the link to resolve inside it (docs/agents.md, "Subscription login")."""
    link = home / AUTH_FILE
    return [Path(os.readlink(link))] if link.is_symlink() else []


def configured_model(home: Path) -> str:
    """The `model` of the run's config.toml ('' when none)."""
    try:
        data = tomllib.loads((home / "config.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return ""
    model = data.get("model")
    return model if isinstance(model, str) else ""


def configured_endpoints(home: Path, options: Mapping[str, str], env: Mapping[str, str]) -> list[str]:
    """The base URLs codex was configured with (allowed through the sandbox's proxy): the
    `base_url` of the run's model provider (`config.model_provider` option, else config.toml's
    `model_provider`; its table from a `config.model_providers.P.base_url` option or the
    config.toml), the built-in provider's `openai_base_url` (option or config.toml) and
    `OPENAI_BASE_URL`."""
    try:
        data = tomllib.loads((home / "config.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        data = {}
    urls: list[str] = []
    provider = _toml_string(options.get("config.model_provider", "")) or data.get("model_provider")
    if isinstance(provider, str) and provider:
        url = _toml_string(options.get(f"config.model_providers.{provider}.base_url", ""))
        if not url:
            table = data.get("model_providers", {})
            entry = table.get(provider, {}) if isinstance(table, dict) else {}
            url = entry.get("base_url", "") if isinstance(entry, dict) else ""
        if isinstance(url, str) and url:
            urls.append(url)
    builtin = _toml_string(options.get("config.openai_base_url", "")) or data.get("openai_base_url")
    if isinstance(builtin, str) and builtin:
        urls.append(builtin)
    if env.get("OPENAI_BASE_URL"):
        urls.append(env["OPENAI_BASE_URL"])
    return urls


def _toml_string(value: str) -> str:
    """A `-c key=value` value as codex reads it: TOML when it parses, else the raw text."""
    value = value.strip()
    try:
        parsed = tomllib.loads(f"v = {value}").get("v")
    except tomllib.TOMLDecodeError:
        return value
    return parsed if isinstance(parsed, str) else ""


@dataclass(frozen=True)
class Usage:
    """Token counts as codex reports them (cumulative over a thread)."""

    input: int = 0
    cached: int = 0
    output: int = 0

    @classmethod
    def of(cls, usage: Mapping[str, Any] | None) -> Usage:
        """From codex's `usage` / `total_token_usage` object."""
        usage = usage or {}
        return cls(
            int(usage.get("input_tokens") or 0),
            int(usage.get("cached_input_tokens") or 0),
            int(usage.get("output_tokens") or 0),
        )

    def minus(self, earlier: Usage) -> Usage:
        """This figure less an earlier one of the same thread (never negative)."""
        return Usage(
            max(self.input - earlier.input, 0),
            max(self.cached - earlier.cached, 0),
            max(self.output - earlier.output, 0),
        )

    def later(self, other: Usage) -> Usage:
        """The later of two cumulative figures of a thread (the larger)."""
        return self if self.total >= other.total else other

    @property
    def total(self) -> int:
        """Input + output (codex's input already includes the cached part)."""
        return self.input + self.output

    def cost(self, prices: Prices | None) -> float:
        """Dollars at `prices` (codex reports none: 0 without the `pricing` option)."""
        return prices.cost(self.input, self.cached, self.output) if prices is not None else 0.0


def load_usage_state(home: Path) -> dict[str, Usage]:
    """Each thread's cumulative usage at the end of the run's last execution on it."""
    try:
        data = json.loads((home / USAGE_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {thread: Usage(**value) for thread, value in data.items() if isinstance(value, dict)}


def save_usage_state(home: Path, state: Mapping[str, Usage]) -> None:
    """Writes the state back (small; the driver's own file in the run's codex home)."""
    data = {thread: {"input": u.input, "cached": u.cached, "output": u.output} for thread, u in state.items()}
    (home / USAGE_STATE).write_text(json.dumps(data, sort_keys=True), encoding="utf-8")


class RolloutWatcher:
    """Reads codex's session file of a thread as it grows: the model it used and the
    thread's cumulative usage after each model response."""

    def __init__(self, home: Path):
        self.home = home
        self.thread_id = ""
        self.path: Path | None = None
        self._offset = 0
        self._partial = b""
        self.model = ""
        self.usage = Usage()

    def poll(self) -> None:
        """Reads what was appended since the last poll (small reads, by offset)."""
        if not self.thread_id:
            return
        if self.path is None:
            found = sorted((self.home / "sessions").glob(f"**/rollout-*{self.thread_id}.jsonl"))
            if not found:
                return
            self.path = found[-1]
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except OSError:
            return
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line)

    def _line(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict) or not isinstance(event.get("payload"), dict):
            return
        payload = event["payload"]
        if event.get("type") == "turn_context" and isinstance(payload.get("model"), str):
            self.model = payload["model"]
        elif payload.get("type") == "token_count" and isinstance(payload.get("info"), dict):
            self.usage = self.usage.later(Usage.of(payload["info"].get("total_token_usage")))


# --- the stream -------------------------------------------------------------------------------


@dataclass
class _Item:
    tool: str
    input: dict[str, Any]
    started: float
    output: str = ""
    finished: float | None = None
    status: str = ""


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
    """Collects tool calls, usage, the thread id and the failure from the stream.

    `baseline` is the thread's cumulative usage before this execution (a resumed thread):
    the execution's own tokens are what codex reports less that. `prices` (the `pricing`
    option) turns tokens into a cost.
    """

    model: str = ""
    thread_id: str = ""
    baseline: Usage = field(default_factory=Usage)
    prices: Prices | None = None
    rollout: RolloutWatcher | None = None
    items: dict[str, _Item] = field(default_factory=dict)
    cumulative: Usage = field(default_factory=Usage)
    turns_completed: int = 0
    failure: str = ""
    last_message: str = ""
    errors: list[str] = field(default_factory=list)
    #: Why codex rejected tool calls, from its stderr (`ERROR codex_core::tools::router`).
    tool_errors: list[str] = field(default_factory=list)
    _stderr_error: list[str] = field(default_factory=list)

    def feed(self, event: dict[str, Any], now: float) -> str | None:
        """Takes one event; returns a readable line for it."""
        kind = event["type"]
        if kind == "thread.started":
            self.thread_id = str(event["thread_id"])
            if self.rollout is not None:
                self.rollout.thread_id = self.thread_id
            return f"[codex] session {self.thread_id} started"
        if kind == "turn.started":
            return "[codex] turn started"
        if kind == "turn.completed":
            self.cumulative = self.cumulative.later(Usage.of(event.get("usage")))
            self.turns_completed += 1
            own = self.cumulative.minus(self.baseline)
            return f"[codex] turn completed ({own.input} in, {own.output} out)"
        if kind == "turn.failed":
            self.failure = str((event.get("error") or {}).get("message") or "turn failed")
            return f"[codex] turn failed: {self.failure}"
        if kind == "error":
            self.errors.append(str(event.get("message", "")))
            return f"[codex] error: {event.get('message', '')}"
        if kind in ("item.started", "item.updated", "item.completed"):
            return self._item(kind, event["item"], now)
        return None

    def stderr_line(self, line: str) -> None:
        """A line of codex's stderr: keeps the reasons it logs for rejected tool calls (a
        multi-line error ends at the next blank line)."""
        match = TOOL_ERROR_LINE.search(line)
        if match:
            self._flush_stderr_error()
            self._stderr_error = [match.group(1)]
        elif self._stderr_error:
            if line.strip():
                self._stderr_error.append(line.strip())
            else:
                self._flush_stderr_error()

    def _flush_stderr_error(self) -> None:
        if self._stderr_error:
            self.tool_errors.append(" | ".join(part for part in self._stderr_error if part))
            self._stderr_error = []

    def running_usage(self) -> tuple[int, float]:
        """Tokens this execution has used so far (from the session file; codex prints no
        usage before its turn ends) and their cost at the `pricing` option's prices."""
        if self.rollout is not None:
            self.rollout.poll()
            self.cumulative = self.cumulative.later(self.rollout.usage)
        own = self.cumulative.minus(self.baseline)
        return own.total, own.cost(self.prices)

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
                tracked.status = str(item.get("status") or "")
                return f"<- {item_type}: {short(tracked.output) or tracked.status}"
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

    def _tool_outputs(self) -> list[tuple[_Item, str, bool]]:
        """Each tracked tool call with its output and whether codex's sandbox refused it.
        A failed patch gets the reason codex logged on stderr, in order."""
        self._flush_stderr_error()
        reasons = iter(self.tool_errors)
        outputs = []
        for item in self.items.values():
            output = item.output if item.finished is not None else "[no result: the agent stopped first]"
            refused = False
            if item.tool == "file_change" and item.status == "failed":
                reason = next(reasons, "codex gave no reason")
                output = f"ERROR: patch rejected: {reason}\n{output}"
                refused = bool(SANDBOX_HELPER_FAILURE.search(reason)) or "Failed to write" in reason
            elif item.tool == "command_execution" and item.status == "failed":
                refused = bool(SANDBOX_HELPER_FAILURE.search(item.output))
                if refused:
                    output = f"ERROR: codex's sandbox could not run the command\n{output}"
            outputs.append((item, output, refused))
        return outputs

    def apply(self, result: common_pb2.AgentResult, now: float) -> str:
        """Fills the result; a failure by the stream's account: a failed turn (classified by
        the error it carries), every tool call refused by codex's sandbox, or no completed turn."""
        if self.rollout is not None:
            self.rollout.poll()
            self.cumulative = self.cumulative.later(self.rollout.usage)
            self.model = self.rollout.model or self.model
        result.session_id = self.thread_id
        result.model = self.model
        outputs = self._tool_outputs()
        for item, output, _ in outputs:
            name = item.tool
            if item.tool == "mcp_tool_call":
                name = f"mcp:{item.input.get('server')}/{item.input.get('tool')}"
            result.tool_calls.add(
                tool=name,
                input=to_struct(item.input),
                output=output[:TOOL_OUTPUT_CHARS],
                duration_seconds=max(0.0, (item.finished or now) - item.started),
            )
        own = self.cumulative.minus(self.baseline)
        result.tokens.CopyFrom(common_pb2.TokenUsage(input=own.input, output=own.output, total=own.total))
        result.cost_usd = own.cost(self.prices)
        refused = [entry for entry in outputs if entry[2]]
        if self.turns_completed or self.failure:
            summary = {
                "thread_id": self.thread_id,
                "turns_completed": self.turns_completed,
                "last_message": self.last_message,
                "is_error": bool(self.failure),
                "error": self.failure,
                "cumulative_tokens": {"input": self.cumulative.input, "output": self.cumulative.output},
                "tool_calls_refused": len(refused),
            }
            result.structured_output.CopyFrom(to_struct(summary))
        if self.failure:
            error_type, message = classify_api_error(self.failure)
            result.error_type = error_type  # type: ignore[assignment]
            result.error_message = message
            return message
        if outputs and len(refused) == len(outputs):
            result.error_type = T.BUILD_ERROR_TYPE_AGENT_CRASH
            result.error_message = (
                f"every tool call codex made ({len(outputs)}) was refused by its own sandbox, so nothing "
                f"was run or changed: {short(outputs[0][1], 300)} (codex needs its home outside the "
                "temporary folder and user namespaces; see docs/agents.md)"
            )
            return result.error_message
        if not self.turns_completed:
            return "the codex stream ended without a completed turn"
        return ""


class CodexDriver:
    """Runs the Codex CLI (`codex exec --json`) as the agent."""

    name = "codex"

    async def run(self, invocation: AgentInvocation, on_output: OutputCallback) -> common_pb2.AgentResult:
        """Runs codex with the prompt on stdin in the run's own codex home; a thread that
        cannot be resumed is replaced by a fresh one carrying the full prompt."""
        options = invocation.options
        env = agent_env(options, ENV_NAMES, ENV_PREFIXES)
        home = agent_home(invocation, HOME_NAME)
        notes = prepare_home(home, source_home(env))
        # The run's home, whatever CODEX_HOME the service had: sessions, the usage state
        # and codex's helper binaries live there, outside the workspace.
        env["CODEX_HOME"] = str(home)
        if under_temp_dir(home, {**os.environ, **env}):
            notes.append(
                f"the codex home {home} is under the temporary folder: codex will not install its "
                "sandbox helpers there (set AGENTGATE_HOME elsewhere)"
            )
        resume = invocation.resume_session_id if boolean_option(options, "resume", True) else ""
        result = await self._execute(invocation, on_output, env, home, resume)
        if resume and not result.success and not result.session_id and LOST_THREAD.search(result.stderr):
            reason = _first_matching_line(result.stderr, LOST_THREAD)
            note = (
                f"codex could not resume thread {resume} ({reason}); started a fresh session "
                "with the full prompt and feedback"
            )
            await _say(on_output, f"[agentgate] {note}")
            lost = result
            result = await self._execute(invocation, on_output, env, home, "")
            result.session_note = note
            result.stderr = f"[agentgate] {note}\n{lost.stderr}{result.stderr}"
            result.duration_seconds += lost.duration_seconds
        if notes:
            result.stderr += "".join(f"[agentgate] {note}\n" for note in notes)
        return result

    async def _execute(
        self,
        invocation: AgentInvocation,
        on_output: OutputCallback,
        env: dict[str, str],
        home: Path,
        resume: str,
    ) -> common_pb2.AgentResult:
        options = invocation.options
        state = load_usage_state(home)
        parser = CodexStreamParser(
            model=options.get("model", "") or configured_model(home),
            baseline=state.get(resume, Usage()) if resume else Usage(),
            rollout=RolloutWatcher(home),
            prices=parse_prices(options["pricing"]) if options.get("pricing") else None,
        )

        def on_line(stream: str, line: str) -> Any:
            if stream == "stderr":
                parser.stderr_line(line)
            return on_output(stream, line)

        result = await run_stream_cli(
            invocation,
            on_line,
            driver=self.name,
            cli="codex",
            argv=codex_argv(options, resume, inside_our_sandbox=invocation.sandbox is not None),
            env=env,
            parser=parser,
            endpoints=configured_endpoints(home, options, env),
            login_files=login_files(home),
        )
        if parser.thread_id:
            # The next execution on this thread subtracts what the thread had reached here.
            state[parser.thread_id] = parser.cumulative.later(state.get(parser.thread_id, Usage()))
            save_usage_state(home, state)
        return result


def _first_matching_line(text: str, pattern: re.Pattern[str]) -> str:
    for line in text.splitlines():
        if pattern.search(line):
            return line.strip()
    return ""


async def _say(on_output: OutputCallback, line: str) -> None:
    outcome = on_output("stderr", line)
    if outcome is not None and hasattr(outcome, "__await__"):
        await outcome
