"""The gate plan (`verify.yaml`, docs/verify-yaml.md): parsing into dataclasses, strictly.

Parsing walks yaml's node tree (not the loaded dict) so every error names the key and
the line: an unknown key or a value of the wrong type is an error, never ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from agentgate.common import yaml_text
from agentgate.harness.verification import VERIFICATION_LEVELS

#: Where a workspace keeps its own plan, in the order they are looked for.
GATE_PLAN_FILES = ("verify.yaml", ".agentgate/verify.yaml")

LEVELS = VERIFICATION_LEVELS
LEVEL_NAMES = {"L0": "contracts", "L1": "tests", "L2": "blackbox", "L3": "sanity"}

DEFAULT_TEST_TIMEOUT_SECONDS = 600.0
#: Values a plan may hold once its aliases are expanded. Anchors and aliases are fine, but
#: nested ones multiply ("billion laughs": 15 lines, 10^9 values) and every consumer of the
#: plan (a JSON Schema validator above all) walks the expanded tree.
MAX_PLAN_VALUES = 100_000
#: Length of a regular expression in a plan: a long pattern is a sign of a crafted one.
MAX_REGEX_CHARS = 1_000
NAMING_RULES = ("kebab-case", "snake_case", "camelCase", "PascalCase")
ASSERTION_TYPES = {
    # type -> (required keys, optional keys)
    "exit_code": ({"expected"}, set()),
    "contains": ({"value"}, {"stream"}),
    "matches_regex": ({"pattern"}, {"stream"}),
    "equals_file": ({"file"}, {"stream"}),
    "json_equals": ({"expected"}, set()),
    "json_schema": ({"schema"}, set()),
}
#: Which output of a blackbox command a text assertion looks at.
ASSERTION_STREAMS = ("stdout", "stderr")
#: Rules of the security scan an allowlist entry may name.
SECURITY_RULES = (
    "forbidden-file",
    "aws-access-key",
    "aws-secret-key",
    "google-api-key",
    "github-token",
    "slack-token",
    "slack-webhook",
    "stripe-key",
    "openai-key",
    "private-key",
    "url-password",
    "high-entropy",
)


class GatePlanError(ValueError):
    """A gate plan that cannot be used; the message names the source, line and key."""

    def __init__(self, message: str, line: int | None = None, source: str = "verify.yaml"):
        self.line = line
        self.source = source
        self.detail = message
        where = f"{source}: line {line}: " if line else f"{source}: "
        super().__init__(where + message)


@dataclass(frozen=True)
class Environment:
    """`environment`: the runtime and the setup commands run in the clean room first."""

    runtime: str = "generic"
    version: str = ""
    setup: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SchemaRule:
    """One rule of a required schema: has_field, field_type, matches_regex or json_schema."""

    kind: str
    field: str = ""
    #: The expected type (field_type), regex (matches_regex) or schema file (json_schema).
    value: str = ""
    #: json_schema given inline in the plan (a mapping) instead of a file.
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class RequiredSchema:
    """`contracts.required_schemas[]`: a json or yaml file and the rules it must satisfy."""

    file: str
    schema: str
    rules: list[SchemaRule] = field(default_factory=list)


@dataclass(frozen=True)
class NamingConvention:
    """`contracts.naming_conventions[]`: files matching `pattern` must be named by `rule`."""

    pattern: str
    rule: str


@dataclass(frozen=True)
class Contracts:
    """`contracts` (L0): cheap static checks."""

    required_files: list[str] = field(default_factory=list)
    forbidden_patterns: list[str] = field(default_factory=list)
    required_schemas: list[RequiredSchema] = field(default_factory=list)
    naming_conventions: list[NamingConvention] = field(default_factory=list)

    def is_empty(self) -> bool:
        """True when there is nothing to check."""
        return not (self.required_files or self.forbidden_patterns or self.required_schemas or self.naming_conventions)


@dataclass(frozen=True)
class TestCommand:
    """`tests[]` (L1): a command that must exit with `expected_exit` within `timeout`."""

    __test__ = False  # not a pytest test class, despite the name

    name: str
    command: str
    kind: str = ""
    timeout: float = DEFAULT_TEST_TIMEOUT_SECONDS
    expected_exit: int = 0


@dataclass(frozen=True)
class Assertion:
    """One assertion of a blackbox test; `params` holds its keys besides `type`."""

    type: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BlackboxTest:
    """`blackbox[]` (L2): run the product and compare its output."""

    name: str
    command: str
    fixture: str = ""
    timeout: float = DEFAULT_TEST_TIMEOUT_SECONDS
    assertions: list[Assertion] = field(default_factory=list)


@dataclass(frozen=True)
class Sanity:
    """`sanity` (L3)."""

    max_file_mb: float | None = None
    forbid_debug_artifacts: bool = False


@dataclass(frozen=True)
class AllowEntry:
    """`security.allowlist[]`: findings matching every given part are ignored.

    `path` is a glob of the file, `secret` a regular expression the whole found secret must
    match, `rule` the name of a scan rule (see SECURITY_RULES).
    """

    path: str = ""
    secret: str = ""
    rule: str = ""


@dataclass(frozen=True)
class Security:
    """`security`: the scan of the change that L0 runs (on by default)."""

    enabled: bool = True
    high_entropy: bool = True
    allowlist: list[AllowEntry] = field(default_factory=list)


@dataclass(frozen=True)
class Policy:
    """`policy`: limits of the gate run."""

    network: bool = False
    max_runtime: float | None = None
    max_disk_mb: float | None = None


@dataclass(frozen=True)
class GatePlan:
    """A parsed gate plan."""

    version: str = "1"
    name: str = ""
    environment: Environment = field(default_factory=Environment)
    contracts: Contracts = field(default_factory=Contracts)
    tests: list[TestCommand] = field(default_factory=list)
    blackbox: list[BlackboxTest] = field(default_factory=list)
    sanity: Sanity | None = None
    policy: Policy = field(default_factory=Policy)
    security: Security = field(default_factory=Security)

    def has_level(self, level: str) -> bool:
        """True when the plan has something to check at `level` (L0..L3)."""
        if level == "L0":
            return not self.contracts.is_empty()
        if level == "L1":
            return bool(self.tests)
        if level == "L2":
            return bool(self.blackbox)
        if level == "L3":
            return self.sanity is not None
        raise ValueError(f"unknown level {level!r}")


def find_gate_plan_file(root: Path) -> Path | None:
    """The workspace's own plan file under `root`, if any (regular files inside `root` only)."""
    base = root.resolve()
    for name in GATE_PLAN_FILES:
        candidate = root / name
        if candidate.is_file() and candidate.resolve().is_relative_to(base):
            return candidate
    return None


# --- parsing -------------------------------------------------------------------------------


class _Reader:
    """Walks a composed yaml node tree, converting and checking as it goes."""

    def __init__(self, source: str):
        self.source = source
        self.constructor = SafeConstructor()

    def fail(self, node: Node, message: str) -> GatePlanError:
        return GatePlanError(message, node.start_mark.line + 1, self.source)

    def mapping(self, node: Node, where: str, known: tuple[str, ...]) -> dict[str, Node]:
        """The entries of a mapping node, refusing unknown and duplicate keys."""
        if not isinstance(node, MappingNode):
            raise self.fail(node, f"'{where}' must be a mapping, got {_kind(node)}")
        try:
            # Resolves `<<` merge keys the way yaml.safe_load would.
            self.constructor.flatten_mapping(node)
        except ConstructorError as exc:
            raise self.fail(node, f"'{where}': {exc.problem}") from None
        entries: dict[str, Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise self.fail(key_node, f"keys of '{where}' must be plain names")
            key = str(key_node.value)
            path = f"{where}.{key}" if where else key
            if key not in known:
                raise self.fail(
                    key_node,
                    f"unknown key '{path}'" + (f" (known keys: {', '.join(known)})" if known else ""),
                )
            if key in entries:
                raise self.fail(key_node, f"duplicate key '{path}'")
            entries[key] = value_node
        return entries

    def sequence(self, node: Node, where: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            raise self.fail(node, f"'{where}' must be a list, got {_kind(node)}")
        return list(node.value)

    def scalar(self, node: Node, where: str) -> Any:
        if not isinstance(node, ScalarNode):
            raise self.fail(node, f"'{where}' must be a single value, got {_kind(node)}")
        return self.constructor.construct_object(node, deep=True)

    def string(self, node: Node, where: str, allow_numbers: bool = False, non_empty: bool = True) -> str:
        value = self.scalar(node, where)
        if allow_numbers and isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise self.fail(node, f"'{where}' must be a string, got {_scalar_kind(value)}")
        if non_empty and not value.strip():
            raise self.fail(node, f"'{where}' must not be empty")
        return value

    def integer(self, node: Node, where: str) -> int:
        value = self.scalar(node, where)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(node, f"'{where}' must be an integer, got {_scalar_kind(value)}")
        return value

    def number(self, node: Node, where: str, positive: bool = False) -> float:
        value = self.scalar(node, where)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.fail(node, f"'{where}' must be a number, got {_scalar_kind(value)}")
        if positive and value <= 0:
            raise self.fail(node, f"'{where}' must be positive, got {value}")
        return float(value)

    def boolean(self, node: Node, where: str) -> bool:
        value = self.scalar(node, where)
        if not isinstance(value, bool):
            raise self.fail(node, f"'{where}' must be true or false, got {_scalar_kind(value)}")
        return value

    def strings(self, node: Node, where: str) -> list[str]:
        return [self.string(item, f"{where}[{i}]") for i, item in enumerate(self.sequence(node, where))]

    def any_value(self, node: Node) -> Any:
        return self.constructor.construct_object(node, deep=True)

    def require(self, node: Node, entries: dict[str, Node], where: str, *keys: str) -> None:
        for key in keys:
            if key not in entries:
                raise self.fail(node, f"'{where}' needs '{key}'")

    def items(self, node: Node, where: str, parse: Callable[[Node, str], Any]) -> list[Any]:
        return [parse(item, f"{where}[{i}]") for i, item in enumerate(self.sequence(node, where))]


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return "a single value"


def _scalar_kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    return type(value).__name__


def parse_gate_plan(text: str, source: str = "verify.yaml") -> GatePlan:
    """Parses gate plan text; raises GatePlanError naming the line and key on any problem."""
    try:
        root = yaml_text.compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise GatePlanError(f"not valid YAML: {exc.problem or exc}", line, source) from None
    except yaml.YAMLError as exc:
        raise GatePlanError(f"not valid YAML: {exc}", None, source) from None
    except RecursionError:
        raise GatePlanError("nested too deeply", None, source) from None
    if root is None:
        raise GatePlanError("the gate plan is empty", None, source)
    try:
        values = _expanded_size(root, {})
    except RecursionError:
        raise GatePlanError("nested too deeply", None, source) from None
    if values > MAX_PLAN_VALUES:
        raise GatePlanError(
            f"the plan expands to more than {MAX_PLAN_VALUES} values through its anchors and aliases "
            "(nested aliases multiply); write the values out or nest fewer aliases",
            None,
            source,
        )
    reader = _Reader(source)
    top = reader.mapping(
        root,
        "",
        ("version", "name", "environment", "contracts", "tests", "blackbox", "sanity", "policy", "security"),
    )
    plan: dict[str, Any] = {}
    if "version" in top:
        plan["version"] = reader.string(top["version"], "version", allow_numbers=True)
    if "name" in top:
        plan["name"] = reader.string(top["name"], "name", non_empty=False)
    if "environment" in top:
        plan["environment"] = _environment(reader, top["environment"])
    if "contracts" in top:
        plan["contracts"] = _contracts(reader, top["contracts"])
    if "tests" in top:
        plan["tests"] = reader.items(top["tests"], "tests", lambda n, w: _test(reader, n, w))
        _unique_names(reader, top["tests"], plan["tests"], "tests")
    if "blackbox" in top:
        plan["blackbox"] = reader.items(top["blackbox"], "blackbox", lambda n, w: _blackbox(reader, n, w))
        _unique_names(reader, top["blackbox"], plan["blackbox"], "blackbox")
    if "sanity" in top:
        plan["sanity"] = _sanity(reader, top["sanity"])
    if "policy" in top:
        plan["policy"] = _policy(reader, top["policy"])
    if "security" in top:
        plan["security"] = _security(reader, top["security"])
    return GatePlan(**plan)


def _unique_names(reader: _Reader, node: Node, items: list[Any], where: str) -> None:
    seen: set[str] = set()
    for item_node, item in zip(node.value, items, strict=True):
        if item.name in seen:
            raise reader.fail(item_node, f"'{where}': the name '{item.name}' is used twice")
        seen.add(item.name)


def _environment(reader: _Reader, node: Node) -> Environment:
    entries = reader.mapping(node, "environment", ("runtime", "version", "setup"))
    values: dict[str, Any] = {}
    if "runtime" in entries:
        values["runtime"] = reader.string(entries["runtime"], "environment.runtime")
    if "version" in entries:
        values["version"] = reader.string(entries["version"], "environment.version", allow_numbers=True)
    if "setup" in entries:
        values["setup"] = reader.strings(entries["setup"], "environment.setup")
    return Environment(**values)


def _contracts(reader: _Reader, node: Node) -> Contracts:
    entries = reader.mapping(
        node, "contracts", ("required_files", "forbidden_patterns", "required_schemas", "naming_conventions")
    )
    values: dict[str, Any] = {}
    if "required_files" in entries:
        values["required_files"] = reader.strings(entries["required_files"], "contracts.required_files")
        for i, (item, name) in enumerate(zip(entries["required_files"].value, values["required_files"], strict=True)):
            if not _is_relative_inside(name):
                raise reader.fail(
                    item, f"'contracts.required_files[{i}]': {name!r} must be a relative path inside the workspace"
                )
    if "forbidden_patterns" in entries:
        values["forbidden_patterns"] = reader.strings(entries["forbidden_patterns"], "contracts.forbidden_patterns")
    if "required_schemas" in entries:
        values["required_schemas"] = reader.items(
            entries["required_schemas"], "contracts.required_schemas", lambda n, w: _required_schema(reader, n, w)
        )
    if "naming_conventions" in entries:
        values["naming_conventions"] = reader.items(
            entries["naming_conventions"], "contracts.naming_conventions", lambda n, w: _naming(reader, n, w)
        )
    return Contracts(**values)


def _required_schema(reader: _Reader, node: Node, where: str) -> RequiredSchema:
    entries = reader.mapping(node, where, ("file", "schema", "rules"))
    reader.require(node, entries, where, "file", "schema")
    file = reader.string(entries["file"], f"{where}.file")
    if not _is_relative_inside(file):
        raise reader.fail(entries["file"], f"'{where}.file': {file!r} must be a relative path inside the workspace")
    schema = reader.string(entries["schema"], f"{where}.schema")
    if schema not in ("json", "yaml"):
        raise reader.fail(entries["schema"], f"'{where}.schema' must be json or yaml, got {schema!r}")
    rules: list[SchemaRule] = []
    if "rules" in entries:
        for i, rule_node in enumerate(reader.sequence(entries["rules"], f"{where}.rules")):
            rules.append(_schema_rule(reader, rule_node, f"{where}.rules[{i}]"))
    return RequiredSchema(file=file, schema=schema, rules=rules)


def _schema_rule(reader: _Reader, node: Node, where: str) -> SchemaRule:
    entries = reader.mapping(node, where, ("has_field", "field_type", "matches_regex", "json_schema"))
    if len(entries) != 1:
        raise reader.fail(node, f"'{where}' must hold exactly one rule")
    kind, value_node = next(iter(entries.items()))
    if kind == "has_field":
        return SchemaRule(kind, field=reader.string(value_node, f"{where}.has_field"))
    if kind == "json_schema":
        if isinstance(value_node, MappingNode):
            return SchemaRule(kind, schema=_inline_schema(reader, value_node, f"{where}.json_schema"))
        path = reader.string(value_node, f"{where}.json_schema")
        if not _is_relative_inside(path):
            raise reader.fail(value_node, f"'{where}.json_schema' must be a relative path inside the workspace")
        return SchemaRule(kind, value=path)
    second = "type" if kind == "field_type" else "pattern"
    inner = reader.mapping(value_node, f"{where}.{kind}", ("field", second))
    reader.require(value_node, inner, f"{where}.{kind}", "field", second)
    value = reader.string(inner[second], f"{where}.{kind}.{second}")
    if kind == "matches_regex":
        _check_regex(reader, inner[second], f"{where}.{kind}.{second}", value)
    return SchemaRule(kind, field=reader.string(inner["field"], f"{where}.{kind}.field"), value=value)


def _naming(reader: _Reader, node: Node, where: str) -> NamingConvention:
    entries = reader.mapping(node, where, ("pattern", "rule"))
    reader.require(node, entries, where, "pattern", "rule")
    rule = reader.string(entries["rule"], f"{where}.rule")
    if rule not in NAMING_RULES:
        raise reader.fail(entries["rule"], f"'{where}.rule' must be one of {', '.join(NAMING_RULES)}, got {rule!r}")
    return NamingConvention(pattern=reader.string(entries["pattern"], f"{where}.pattern"), rule=rule)


def _test(reader: _Reader, node: Node, where: str) -> TestCommand:
    entries = reader.mapping(node, where, ("name", "kind", "command", "timeout", "expected_exit"))
    reader.require(node, entries, where, "name", "command")
    values: dict[str, Any] = {
        "name": reader.string(entries["name"], f"{where}.name"),
        "command": reader.string(entries["command"], f"{where}.command"),
    }
    if "kind" in entries:
        values["kind"] = reader.string(entries["kind"], f"{where}.kind")
    if "timeout" in entries:
        values["timeout"] = reader.number(entries["timeout"], f"{where}.timeout", positive=True)
    if "expected_exit" in entries:
        values["expected_exit"] = reader.integer(entries["expected_exit"], f"{where}.expected_exit")
    return TestCommand(**values)


def _blackbox(reader: _Reader, node: Node, where: str) -> BlackboxTest:
    entries = reader.mapping(node, where, ("name", "command", "fixture", "timeout", "assertions"))
    reader.require(node, entries, where, "name", "command")
    values: dict[str, Any] = {
        "name": reader.string(entries["name"], f"{where}.name"),
        "command": reader.string(entries["command"], f"{where}.command"),
    }
    if "fixture" in entries:
        values["fixture"] = reader.string(entries["fixture"], f"{where}.fixture")
        if not _is_relative_inside(values["fixture"]):
            raise reader.fail(entries["fixture"], f"'{where}.fixture' must be a relative path inside the workspace")
    if "timeout" in entries:
        values["timeout"] = reader.number(entries["timeout"], f"{where}.timeout", positive=True)
    if "assertions" in entries:
        values["assertions"] = reader.items(
            entries["assertions"], f"{where}.assertions", lambda n, w: _assertion(reader, n, w)
        )
    return BlackboxTest(**values)


def _assertion(reader: _Reader, node: Node, where: str) -> Assertion:
    if not isinstance(node, MappingNode):
        raise reader.fail(node, f"'{where}' must be a mapping, got {_kind(node)}")
    type_node = next((v for k, v in node.value if isinstance(k, ScalarNode) and k.value == "type"), None)
    if type_node is None:
        raise reader.fail(node, f"'{where}' needs 'type'")
    kind = reader.string(type_node, f"{where}.type")
    if kind not in ASSERTION_TYPES:
        raise reader.fail(type_node, f"'{where}.type' must be one of {', '.join(ASSERTION_TYPES)}, got {kind!r}")
    required, optional = ASSERTION_TYPES[kind]
    entries = reader.mapping(node, where, ("type", *sorted(required), *sorted(optional)))
    reader.require(node, entries, where, *sorted(required))
    params: dict[str, Any] = {}
    for key, value_node in entries.items():
        if key == "type":
            continue
        if kind == "exit_code":
            params[key] = reader.integer(value_node, f"{where}.{key}")
        elif kind == "json_equals":
            params[key] = reader.any_value(value_node)
        elif key == "stream":
            params[key] = reader.string(value_node, f"{where}.stream")
            if params[key] not in ASSERTION_STREAMS:
                raise reader.fail(value_node, f"'{where}.stream' must be stdout or stderr, got {params[key]!r}")
        elif kind == "json_schema" and isinstance(value_node, MappingNode):
            params[key] = _inline_schema(reader, value_node, f"{where}.schema")
        else:
            params[key] = reader.string(value_node, f"{where}.{key}", non_empty=kind != "contains")
            if kind == "matches_regex":
                _check_regex(reader, value_node, f"{where}.{key}", params[key])
            if kind in ("equals_file", "json_schema") and not _is_relative_inside(params[key]):
                raise reader.fail(value_node, f"'{where}.{key}' must be a relative path inside the workspace")
    return Assertion(type=kind, params=params)


def _sanity(reader: _Reader, node: Node) -> Sanity:
    entries = reader.mapping(node, "sanity", ("max_file_mb", "forbid_debug_artifacts"))
    values: dict[str, Any] = {}
    if "max_file_mb" in entries:
        values["max_file_mb"] = reader.number(entries["max_file_mb"], "sanity.max_file_mb", positive=True)
    if "forbid_debug_artifacts" in entries:
        values["forbid_debug_artifacts"] = reader.boolean(
            entries["forbid_debug_artifacts"], "sanity.forbid_debug_artifacts"
        )
    return Sanity(**values)


def _policy(reader: _Reader, node: Node) -> Policy:
    entries = reader.mapping(node, "policy", ("network", "max_runtime", "max_disk_mb", "disallowed_commands"))
    values: dict[str, Any] = {}
    if "network" in entries:
        values["network"] = reader.boolean(entries["network"], "policy.network")
    if "max_runtime" in entries:
        values["max_runtime"] = reader.number(entries["max_runtime"], "policy.max_runtime", positive=True)
    if "max_disk_mb" in entries:
        values["max_disk_mb"] = reader.number(entries["max_disk_mb"], "policy.max_disk_mb", positive=True)
    if "disallowed_commands" in entries:
        # Refused rather than silently ignored: a command denylist is trivially bypassed (a
        # copy or symlink of the binary, `python -c`, `sh -c "$(echo ...)"`), so it would
        # only look like protection. The sandbox confines what a check can reach instead
        # (docs/security.md).
        raise reader.fail(
            entries["disallowed_commands"],
            "policy.disallowed_commands is not supported: a command denylist is easy to bypass; "
            "checks run in the sandbox instead (docs/security.md)",
        )
    return Policy(**values)


def _security(reader: _Reader, node: Node) -> Security:
    entries = reader.mapping(node, "security", ("enabled", "high_entropy", "allowlist"))
    values: dict[str, Any] = {}
    if "enabled" in entries:
        values["enabled"] = reader.boolean(entries["enabled"], "security.enabled")
    if "high_entropy" in entries:
        values["high_entropy"] = reader.boolean(entries["high_entropy"], "security.high_entropy")
    if "allowlist" in entries:
        values["allowlist"] = reader.items(
            entries["allowlist"], "security.allowlist", lambda n, w: _allow_entry(reader, n, w)
        )
    return Security(**values)


def _allow_entry(reader: _Reader, node: Node, where: str) -> AllowEntry:
    entries = reader.mapping(node, where, ("path", "secret", "rule"))
    if not entries:
        raise reader.fail(node, f"'{where}' needs at least one of path, secret, rule")
    values = {key: reader.string(value, f"{where}.{key}") for key, value in entries.items()}
    if "secret" in values:
        _check_regex(reader, entries["secret"], f"{where}.secret", values["secret"])
    if "rule" in values and values["rule"] not in SECURITY_RULES:
        raise reader.fail(
            entries["rule"], f"'{where}.rule' must be one of {', '.join(SECURITY_RULES)}, got {values['rule']!r}"
        )
    return AllowEntry(**values)


def _inline_schema(reader: _Reader, node: Node, where: str) -> dict[str, Any]:
    """A JSON Schema written in the plan; it must itself be a valid schema."""
    # Imported here: jsonschema is only needed by plans that use it.
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    schema = reader.any_value(node)
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise reader.fail(node, f"'{where}' is not a valid JSON Schema: {exc.message}") from None
    return schema


def _expanded_size(node: Node, sizes: dict[int, int]) -> int:
    """Values under `node` with every alias expanded, counted in linear time (an alias is
    the same node object, so each node is sized once)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    size = 1
    if isinstance(node, SequenceNode):
        size += sum(_expanded_size(item, sizes) for item in node.value)
    elif isinstance(node, MappingNode):
        size += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    sizes[id(node)] = size
    return size


def _check_regex(reader: _Reader, node: Node, where: str, pattern: str) -> None:
    if len(pattern) > MAX_REGEX_CHARS:
        raise reader.fail(node, f"'{where}' is longer than {MAX_REGEX_CHARS} characters")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise reader.fail(node, f"'{where}' is not a valid regular expression: {exc}") from None


def _is_relative_inside(path: str) -> bool:
    """True for a relative path that stays inside its root (no absolute path, no `..`)."""
    pure = Path(path)
    return bool(path.strip()) and not pure.is_absolute() and ".." not in pure.parts


# --- summary ---------------------------------------------------------------------------------


def gate_plan_summary(plan: GatePlan, source: str = "") -> str:
    """A short markdown description of what the gate will check, for the agent's prompt."""
    title = f'Gate plan "{plan.name}"' if plan.name else "Gate plan"
    lines = [f"{title}{f' ({source})' if source else ''} — the gate checks, in a clean copy of your commit:"]
    contracts = plan.contracts
    if not contracts.is_empty():
        parts = []
        if contracts.required_files:
            parts.append("required files " + ", ".join(f"`{f}`" for f in contracts.required_files))
        if contracts.forbidden_patterns:
            parts.append("no files matching " + ", ".join(f"`{p}`" for p in contracts.forbidden_patterns))
        if contracts.required_schemas:
            parts.append("valid " + ", ".join(f"`{s.file}`" for s in contracts.required_schemas))
        if contracts.naming_conventions:
            parts.append("naming " + ", ".join(f"`{n.pattern}` {n.rule}" for n in contracts.naming_conventions))
        lines.append("- L0 contracts: " + "; ".join(parts))
    if plan.environment.setup:
        lines.append("- setup: " + ", ".join(f"`{c}`" for c in plan.environment.setup))
    if plan.tests:
        described = []
        for test in plan.tests:
            expect = "" if test.expected_exit == 0 else f", must exit {test.expected_exit}"
            described.append(f"{test.name}: `{test.command}`{expect}")
        lines.append("- L1 tests: " + "; ".join(described))
    if plan.blackbox:
        described = []
        for box in plan.blackbox:
            stdin = f" < {box.fixture}" if box.fixture else ""
            kinds = ", ".join(dict.fromkeys(a.type for a in box.assertions)) or "exit code 0"
            described.append(f"{box.name}: `{box.command}`{stdin} ({kinds})")
        lines.append("- L2 blackbox: " + "; ".join(described))
    if plan.sanity is not None:
        parts = []
        if plan.sanity.max_file_mb is not None:
            parts.append(f"no file over {plan.sanity.max_file_mb:g} MB")
        if plan.sanity.forbid_debug_artifacts:
            parts.append("no debug leftovers (debugger statements, .orig/.swp files, conflict markers)")
        lines.append("- L3 sanity: " + ("; ".join(parts) or "nothing"))
    if plan.policy.max_runtime:
        lines.append(f"- the whole gate must finish within {plan.policy.max_runtime:g}s")
    if len(lines) == 1:
        lines.append("- nothing: the plan has no checks")
    if plan.security.enabled:
        lines.append(
            "- L0 security: your change must not add secrets (keys, tokens, passwords in URLs, "
            "random-looking strings) or files like .env and private keys"
        )
    lines.append(
        "Do not edit the gate plan or its fixtures to make checks pass: the plan is read from the commit "
        "you started from, and a change to verify.yaml, .agentgate/ or CI configuration fails L0."
    )
    return "\n".join(lines)
