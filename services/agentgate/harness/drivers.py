"""The agent drivers' names and option schemas, as data (docs/agents.md).

The queue checks a work order's agent against these schemas at submit without loading a
driver; the workspace service runs the drivers and checks a RunAgent request against the
same schemas. A new driver, or a new option of one, is described here first.

Whether a driver can run on a machine is a fact of that machine: a model CLI driver needs
its executable on PATH (or at the path its `executable` option gives), which
`driver_availability` looks up.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from agentgate.common.errors import FieldViolation
from agentgate.harness.scripted_script import ScriptError, parse_script
from agentgate.v1 import common_pb2

#: Where option violations point, as the queue sees a work order (`spec.agent...`).
AGENT_FIELD = "spec.agent"
ENV_PREFIX = "env."
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
BOOLEAN_VALUES = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


@dataclass(frozen=True)
class AgentOption:
    """One option of a driver (`--agent-option NAME=VALUE`)."""

    name: str
    #: text (not empty), choice (one of `choices`), integer (`low`-`high`), boolean, script
    #: (a scripted agent's script), args (shell-quoted CLI arguments whose flags are all in
    #: `choices`), prices (`INPUT,CACHED_INPUT,OUTPUT` in US dollars per million tokens).
    kind: str = "text"
    required: bool = False
    choices: tuple[str, ...] = ()
    low: int = 0
    high: int = 0
    #: What the driver uses when the option is not given ('' = nothing).
    default: str = ""


@dataclass(frozen=True)
class DriverSchema:
    """A driver as the contract sees it: its name, its options, what it needs to run."""

    name: str
    description: str
    options: tuple[AgentOption, ...]
    #: Prefixes of option families (`env.NAME`: a variable for the agent).
    prefixes: tuple[str, ...] = (ENV_PREFIX,)
    #: The CLI the driver runs unless the `executable` option names another ('' = the
    #: driver needs nothing beyond AgentGate), and the CLI's name in messages.
    executable: str = ""
    product: str = ""
    #: The variable that names the CLI's model endpoint, and its default ('' = none):
    #: `agentgate agents` says whether it can be reached.
    endpoint_env: str = ""
    default_endpoint: str = ""
    #: The CLI reports tokens but no cost: a run's cost (and `limits.max_cost_usd`) comes
    #: from its `pricing` option (docs/agents.md, "Budgets").
    priced: bool = False

    def option(self, name: str) -> AgentOption:
        """The option called `name` (a KeyError for an unknown one is a bug)."""
        return {option.name: option for option in self.options}[name]


#: `--permission-mode` values of the pinned claude CLI.
CLAUDE_PERMISSION_MODES = ("acceptEdits", "auto", "bypassPermissions", "manual", "dontAsk", "plan")
#: Flags of `claude` a work order may add with `extra_args`; every other flag is refused,
#: because the driver owns the output format, session handling and permission bypasses.
CLAUDE_EXTRA_FLAGS = (
    "--max-budget-usd",
    "--mcp-config",
    "--strict-mcp-config",
    "--add-dir",
    "--model",
    "--fallback-model",
    "--effort",
    "--settings",
    "--setting-sources",
    "--tools",
    "--betas",
    "--system-prompt",
    "--append-system-prompt",
    "--agents",
    "--json-schema",
    "--disable-slash-commands",
    "--exclude-dynamic-system-prompt-sections",
    "--bare",
)

#: Flags of `codex exec` a work order may add with `extra_args`: none that changes what the
#: driver relies on (`--json`, `--sandbox`, the bypass of approvals and sandbox, the working
#: folder, the session, the model and profile, which are options of their own).
CODEX_EXTRA_FLAGS = (
    "--add-dir",
    "--enable",
    "--disable",
    "--image",
    "--output-schema",
    "--skip-git-repo-check",
    "--ignore-rules",
    "--strict-config",
    "--oss",
    "--local-provider",
)

_MODEL_CLI_COMMON = (
    AgentOption("resume", "boolean"),
    AgentOption("executable"),
)

#: Every driver, by name.
DRIVERS: dict[str, DriverSchema] = {
    schema.name: schema
    for schema in (
        DriverSchema(
            "command",
            "Any CLI from a command template ({prompt_file}, {workspace}, {iteration}) or prompt on stdin",
            (AgentOption("command", required=True), AgentOption("prompt_via", "choice", choices=("stdin", "file"))),
        ),
        DriverSchema(
            "scripted",
            "Deterministic YAML script of per-iteration steps, for demos and tests",
            (AgentOption("script", "script", required=True),),
            prefixes=(),
        ),
        DriverSchema(
            "claude-code",
            "Claude Code CLI (claude -p, stream-json): tool calls, tokens, cost, session resume",
            (
                AgentOption("model"),
                # The agent runs the project's tests: Bash is allowed unless the work order
                # names its own list (safe inside the sandbox, docs/agents.md "Permissions").
                AgentOption("allowed_tools", default="Bash"),
                AgentOption("disallowed_tools"),
                AgentOption("max_turns", "integer", low=1, high=1000),
                AgentOption("append_system_prompt"),
                AgentOption(
                    "permission_mode",
                    "choice",
                    # What `claude --help` of the pinned CLI (tools/agents/package.json) accepts.
                    choices=CLAUDE_PERMISSION_MODES,
                    # The agent must edit files with nobody to approve; Bash comes from the
                    # default allowed_tools (docs/agents.md, "Permissions").
                    default="acceptEdits",
                ),
                AgentOption("extra_args", "args", choices=CLAUDE_EXTRA_FLAGS),
                *_MODEL_CLI_COMMON,
            ),
            executable="claude",
            product="Claude Code",
            endpoint_env="ANTHROPIC_BASE_URL",
            default_endpoint="https://api.anthropic.com",
        ),
        DriverSchema(
            "codex",
            "OpenAI Codex CLI (codex exec --json): tool calls, tokens, session resume",
            (
                AgentOption("model"),
                AgentOption(
                    "sandbox",
                    "choice",
                    choices=("auto", "read-only", "workspace-write", "danger-full-access"),
                    # auto: danger-full-access inside AgentGate's sandbox (which confines the
                    # agent; codex's own cannot start there), workspace-write outside it. Either
                    # way the agent can edit the workspace and run its tests (docs/agents.md).
                    default="auto",
                ),
                AgentOption("profile"),
                AgentOption("extra_args", "args", choices=CODEX_EXTRA_FLAGS),
                AgentOption("pricing", "prices"),
                *_MODEL_CLI_COMMON,
            ),
            prefixes=(ENV_PREFIX, "config."),
            executable="codex",
            product="Codex",
            # Codex reads its endpoint from its config.toml, not from a variable (docs/agents.md).
            default_endpoint="https://api.openai.com",
            priced=True,
        ),
    )
}


def driver_names() -> list[str]:
    """Names of the drivers, sorted."""
    return sorted(DRIVERS)


def _value_problem(schema: DriverSchema, option: AgentOption, value: str) -> str:
    if option.kind == "script":
        if not value.strip():
            return f"the {schema.name} driver needs a {option.name}"
        try:
            parse_script(value)
        except ScriptError as exc:
            return f"invalid script: {exc}"
        return ""
    if option.required and not value.strip():
        return f"the {schema.name} driver needs a {option.name}"
    if option.kind == "args":
        return args_problem(value, option.choices)
    if option.kind == "prices":
        try:
            parse_prices(value)
        except ValueError as exc:
            return str(exc)
        return ""
    if option.kind == "integer":
        if not value.strip().isdigit() or not option.low <= int(value) <= option.high:
            return f"must be a whole number {option.low}-{option.high}"
    elif option.kind == "choice":
        if value not in option.choices:
            return f"must be one of {', '.join(option.choices)}, got {value!r}"
    elif option.kind == "boolean":
        if value.strip().lower() not in BOOLEAN_VALUES:
            return f"must be true or false, got {value!r}"
    elif not value.strip():
        return "must not be empty"
    return ""


@dataclass(frozen=True)
class Prices:
    """What a model charges, in US dollars per million tokens."""

    input: float
    cached_input: float
    output: float

    def cost(self, input_tokens: int, cached_tokens: int, output_tokens: int) -> float:
        """The dollars of a usage whose `input_tokens` include `cached_tokens`."""
        fresh = max(input_tokens - cached_tokens, 0)
        return (fresh * self.input + cached_tokens * self.cached_input + output_tokens * self.output) / 1_000_000


def parse_prices(value: str) -> Prices:
    """A `prices` option (`INPUT,CACHED_INPUT,OUTPUT`); ValueError saying what is wrong."""
    parts = [part.strip() for part in value.split(",")]
    try:
        figures = [float(part) for part in parts]
    except ValueError:
        figures = []
    if len(figures) != 3 or not all(0 <= figure < 1e6 for figure in figures):
        raise ValueError(
            f"must be INPUT,CACHED_INPUT,OUTPUT in US dollars per million tokens (e.g. 1.25,0.125,10), got {value!r}"
        )
    return Prices(*figures)


def cost_cap_problem(agent: common_pb2.AgentSpec, max_cost_usd: float) -> FieldViolation | None:
    """A cost cap the agent's driver could not enforce: its CLI reports no cost and the work
    order gives no `pricing` to compute one from (a setting that silently does nothing is
    refused, docs/agents.md "Budgets")."""
    schema = DRIVERS.get(agent.name)
    if schema is None or not schema.priced or max_cost_usd <= 0 or agent.options.get("pricing"):
        return None
    return FieldViolation(
        f"{AGENT_FIELD}.options.pricing",
        f"{schema.product} reports no cost, so limits.max_cost_usd ({max_cost_usd:g}) needs the model's prices: "
        "--agent-option pricing=INPUT,CACHED_INPUT,OUTPUT (US dollars per million tokens)",
    )


def split_args(value: str) -> list[str]:
    """The arguments of an `args` option (shell quoting); ValueError for unbalanced quotes."""
    return shlex.split(value)


def args_problem(value: str, allowed: tuple[str, ...]) -> str:
    """'' when every flag in `value` (`--flag value` or `--flag=value`) is in `allowed`."""
    try:
        args = split_args(value)
    except ValueError as exc:
        return f"cannot be split into arguments: {exc}"
    if not args:
        return "must not be empty"
    if not args[0].startswith("-"):
        return f"must start with a flag, got {args[0]!r}"
    refused = [arg for arg in args if arg.startswith("-") and arg.split("=", 1)[0] not in allowed]
    if refused:
        return f"flag {refused[0].split('=', 1)[0]!r} is not allowed (allowed: {', '.join(allowed)})"
    return ""


def option_problems(schema: DriverSchema, options: Mapping[str, str]) -> list[tuple[str, str]]:
    """What is wrong with a driver's options, as (option, message): required options
    missing, unknown keys (the message lists the known ones), values out of their kind,
    bad variable names."""
    known = {option.name: option for option in schema.options}
    problems = [
        (option.name, f"the {schema.name} driver needs a {option.name}")
        for option in schema.options
        if option.required and option.name not in options
    ]
    listing = ", ".join([*known, *(f"{prefix}NAME" for prefix in schema.prefixes)])
    for key, value in options.items():
        option = known.get(key)
        if option is not None:
            if problem := _value_problem(schema, option, value):
                problems.append((key, problem))
        elif not any(key.startswith(prefix) and len(key) > len(prefix) for prefix in schema.prefixes):
            problems.append((key, f"unknown option (known: {listing})"))
        elif key.startswith(ENV_PREFIX) and not ENV_NAME.match(key[len(ENV_PREFIX) :]):
            problems.append((key, f"{key[len(ENV_PREFIX) :]!r} is not a valid variable name"))
    return problems


def validate_agent(agent: common_pb2.AgentSpec, field_prefix: str = AGENT_FIELD) -> list[FieldViolation]:
    """Problems with an AgentSpec: unknown or empty driver name, or bad options.

    Field paths start with `field_prefix` (`spec.agent` for a work order, `agent` for a
    RunAgent request).
    """
    known = ", ".join(driver_names())
    if not agent.name:
        return [FieldViolation(f"{field_prefix}.name", f"an agent driver is required (known drivers: {known})")]
    schema = DRIVERS.get(agent.name)
    if schema is None:
        return [FieldViolation(f"{field_prefix}.name", f"unknown agent driver {agent.name!r} (known drivers: {known})")]
    return [
        FieldViolation(f"{field_prefix}.options.{key}", message)
        for key, message in option_problems(schema, dict(agent.options))
    ]


def executable_problem(executable: str, what: str) -> str:
    """'' when `executable` (a name on PATH or a path) can be run here, else what is missing."""
    if shutil.which(executable) is not None:
        return ""
    if "/" in executable:
        return f"{executable} (the {what} executable) does not exist or is not executable"
    return f"the {executable} executable is not on PATH"


def driver_availability(schema: DriverSchema, options: Mapping[str, str] | None = None) -> str:
    """What the driver is missing on this machine ('' = it can run; looks at PATH)."""
    if not schema.executable:
        return ""
    return executable_problem((options or {}).get("executable") or schema.executable, schema.product)


def agent_unavailable(agent: common_pb2.AgentSpec) -> str:
    """Why the agent of a valid AgentSpec cannot run here ('' = it can; unknown drivers are
    `validate_agent`'s business)."""
    schema = DRIVERS.get(agent.name)
    if schema is None:
        return ""
    missing = driver_availability(schema, agent.options)
    return f"agent driver {agent.name!r} is not available here: {missing}" if missing else ""
