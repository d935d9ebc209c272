"""Harness profiles (docs/profiles.md): named, reusable harness settings, the keys they
hold, and how layers of settings merge.

A profile is one of the built-ins (`default`, `fast`, `reliable`) or a YAML file
`$AGENTGATE_HOME/profiles/{name}.yaml`; a file with a built-in's name takes its place.
A file may `extends` one other profile (single inheritance; cycles are refused). The keys
a file may hold are those of `HarnessSettings` that a profile is about::

    extends: reliable
    description: free text, shown by `agentgate profiles list`
    loop_strategy: {mode, max_iterations, base_iterations, max_bonus_iterations,
                    progress_threshold, min_iterations, window_size,
                    convergence_threshold, no_change_limit, completion_signals}
    verification:  {gate_plan_source, skip_levels, wait_for_ci, protected_paths,
                    allow_protected_changes, allow_unverified}
    git_ops:       {mode, branch_pattern, draft_pr, github_mode, base_branch}
    limits:        {max_wall_clock_seconds, agent_timeout_seconds, max_total_tokens,
                    max_cost_usd, network_allowed}
    retry:         {preset, max_attempts, initial_backoff, backoff_multiplier,
                    max_backoff, jitter, retryable_errors, retry_on_timeout}
    sandbox:       {mode, read_only_paths, allowed_hosts, memory_mb, max_processes}
                   (or the short form `sandbox: off`)
    retention:     {workspace}  (delete | keep | on_failure; docs/workspaces.md)

An unknown key or a bad value is an error naming the key; nothing is silently ignored.

Resolution, lowest layer first: the built-in default (`BASE_LAYER`), the profile's
`extends` chain (base first), the work order's inline settings. A layer overrides only the
fields it sets; a list replaces the list below it. A layer that changes the loop strategy's
`mode` starts the strategy's own parameters afresh (a `window_size` inherited from a ralph
parent means nothing to hybrid), and one that changes the retry `preset` starts the retry
numbers afresh. Then each strategy's defaults fill what is still unset, and the result is
checked as a whole (e.g. ralph's `min_iterations` <= `max_iterations`).

Plain Python (files are small and read synchronously); `agentgate.harness.resolution`
resolves a work order's harness from them, for the queue at submit, the orchestrator for
the run, and the CLI for `agentgate profiles`.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message

from agentgate.common import yaml_text
from agentgate.common.branches import branch_pattern_problem, branch_problem
from agentgate.common.config import agentgate_home
from agentgate.harness import loop_parameters, retry
from agentgate.harness.checks import between, not_negative, positive
from agentgate.harness.retention import DEFAULT_WORKSPACE_RETENTION
from agentgate.harness.verification import VERIFICATION_LEVELS
from agentgate.v1 import common_pb2

M = common_pb2.LoopStrategyMode

DEFAULT_PROFILE = "default"
PROFILE_SUFFIX = ".yaml"
#: A profile name is a file name: no separators, no leading dot.
PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_PROFILE_BYTES = 64 * 1024
#: Longer `extends` chains than this are refused (a cycle is reported as such before).
MAX_CHAIN_LENGTH = 16

DEFAULT_MAX_WALL_CLOCK_SECONDS = 3600
DEFAULT_AGENT_TIMEOUT_SECONDS = 300


class ProfileError(ValueError):
    """A profile that cannot be used. `problems` are (key, message) pairs, the key dotted
    (`loop_strategy.mode`; empty for the file as a whole)."""

    def __init__(self, profile: str, source: str, problems: list[tuple[str, str]], text: str = ""):
        self.profile = profile
        self.source = source
        self.problems = problems
        where = f"profile {profile!r}" + (f" ({source})" if source else "")
        super().__init__(text or f"{where}: " + "; ".join(f"{k}: {m}" if k else m for k, m in problems))


@dataclass(frozen=True)
class Profile:
    """One profile: its own layer of settings, before inheritance."""

    name: str
    #: "built-in" or the file's path.
    source: str
    harness: common_pb2.HarnessSettings
    extends: str = ""
    description: str = ""

    @property
    def builtin(self) -> bool:
        """Whether this is one of the built-in profiles (not a file)."""
        return self.source == BUILTIN_SOURCE


BUILTIN_SOURCE = "built-in"


def _layer(**sections: Any) -> common_pb2.HarnessSettings:
    return common_pb2.HarnessSettings(**sections)


#: The lowest layer of every resolution: what a work order gets when nothing says otherwise.
BASE_LAYER = _layer(
    loop_strategy=common_pb2.LoopStrategySettings(mode=M.LOOP_STRATEGY_MODE_FIXED),
    limits=common_pb2.LimitsSettings(
        max_wall_clock_seconds=DEFAULT_MAX_WALL_CLOCK_SECONDS,
        agent_timeout_seconds=DEFAULT_AGENT_TIMEOUT_SECONDS,
    ),
    retry=common_pb2.RetryPolicy(preset=retry.DEFAULT_PRESET),
    # On unless a profile or the work order opts out explicitly (docs/sandbox.md).
    sandbox=common_pb2.SandboxSettings(mode=common_pb2.SANDBOX_MODE_ON),
    # Nothing is left on disk unless asked (docs/workspaces.md, "Retention"): the change
    # itself is delivered (branch, pull request) before the workspace goes.
    retention=common_pb2.RetentionSettings(workspace=DEFAULT_WORKSPACE_RETENTION),
)

BUILTIN_PROFILES: dict[str, Profile] = {
    "default": Profile(
        "default",
        BUILTIN_SOURCE,
        _layer(),
        description="fixed strategy, 3 iterations, default retry (3 attempts)",
    ),
    "fast": Profile(
        "fast",
        BUILTIN_SOURCE,
        _layer(
            loop_strategy=common_pb2.LoopStrategySettings(mode=M.LOOP_STRATEGY_MODE_FIXED, max_iterations=1),
            retry=common_pb2.RetryPolicy(preset="none"),
        ),
        description="one iteration, no retry: quick feedback",
    ),
    "reliable": Profile(
        "reliable",
        BUILTIN_SOURCE,
        _layer(
            loop_strategy=common_pb2.LoopStrategySettings(mode=M.LOOP_STRATEGY_MODE_HYBRID),
            retry=common_pb2.RetryPolicy(preset="aggressive"),
        ),
        description="hybrid strategy (3 base + up to 2 bonus iterations), aggressive retry (6 attempts)",
    ),
}


# -- the keys a profile may hold ------------------------------------------------------


def _levels(values: list[str]) -> str | None:
    bad = [v for v in values if v not in VERIFICATION_LEVELS]
    if bad:
        return f"unknown level(s) {', '.join(repr(v) for v in bad)}; expected {', '.join(VERIFICATION_LEVELS)}"
    return None


def _globs(values: list[str]) -> str | None:
    return "a glob must not be blank" if any(not v.strip() for v in values) else None


def _branch_pattern(value: str) -> str | None:
    problem = branch_pattern_problem(value)
    return f"{value!r} {problem}" if problem else None


#: A host an agent may reach through the sandbox's proxy: a DNS name, or `*.` and one.
_HOST = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*")


def _absolute_paths(values: list[str]) -> str | None:
    bad = [v for v in values if not v.startswith("/") or "\0" in v]
    return f"must be absolute paths, got {', '.join(repr(v) for v in bad)}" if bad else None


def _base_branch(value: str) -> str | None:
    problem = branch_problem(value)
    return f"{value!r} {problem}" if problem else None


def _hosts(values: list[str]) -> str | None:
    bad = [v for v in values if len(v) > 253 or not _HOST.fullmatch(v)]
    return f"must be host names (or *.domain), got {', '.join(repr(v) for v in bad)}" if bad else None


def _network_allowed(value: bool) -> str | None:
    # Agents reach the network only through the sandbox's allowlist proxy; an unfiltered
    # switch would be a setting that silently does nothing (or everything). Hosts are named.
    if value:
        return "true is not supported: agents reach only the hosts of sandbox.allowed_hosts (docs/sandbox.md)"
    return None


def _preset(value: str) -> str | None:
    presets = retry.RETRY_PRESETS
    return None if value in presets else f"unknown preset {value!r} (expected {', '.join(presets)})"


@dataclass(frozen=True)
class Key:
    """One key of a profile section and the proto field it fills."""

    name: str
    #: int, float, bool, str, strs, enum, enums
    kind: str
    proto_field: str = ""
    check: Callable[[Any], str | None] | None = None
    enum: EnumDescriptor | None = None
    #: Prefix of the enum's value names (LOOP_STRATEGY_MODE_).
    enum_prefix: str = ""

    @functools.cached_property
    def field_name(self) -> str:
        """The proto field."""
        return self.proto_field or self.name


def _enum(name: str, descriptor: EnumDescriptor, prefix: str, kind: str = "enum") -> Key:
    return Key(name, kind, enum=descriptor, enum_prefix=prefix)


#: section -> its keys, in the order checks are reported (that of docs/profiles.md).
SECTIONS: dict[str, tuple[Key, ...]] = {
    "loop_strategy": (
        _enum("mode", common_pb2.LoopStrategyMode.DESCRIPTOR, "LOOP_STRATEGY_MODE_"),
        *(Key(p.name, p.kind, check=p.check) for p in loop_parameters.PARAMETERS),
    ),
    "limits": (
        Key("max_wall_clock_seconds", "int", check=positive),
        Key("agent_timeout_seconds", "int", check=positive),
        Key("max_total_tokens", "int", check=not_negative),
        Key("max_cost_usd", "float", check=not_negative),
        Key("network_allowed", "bool", check=_network_allowed),
    ),
    "verification": (
        _enum("gate_plan_source", common_pb2.GatePlanSource.DESCRIPTOR, "GATE_PLAN_SOURCE_"),
        Key("skip_levels", "strs", check=_levels),
        Key("wait_for_ci", "bool"),
        Key("protected_paths", "strs", check=_globs),
        Key("allow_protected_changes", "strs", check=_globs),
        Key("allow_unverified", "bool"),
    ),
    "git_ops": (
        _enum("mode", common_pb2.GitMode.DESCRIPTOR, "GIT_MODE_"),
        Key("branch_pattern", "str", check=_branch_pattern),
        Key("draft_pr", "bool"),
        _enum("github_mode", common_pb2.GitHubMode.DESCRIPTOR, "GIT_HUB_MODE_"),
        Key("base_branch", "str", check=_base_branch),
    ),
    "retry": (
        Key("preset", "str", check=_preset),
        Key("max_attempts", "int", check=between(1, retry.MAX_RETRY_ATTEMPTS)),
        Key("initial_backoff", "float", "initial_backoff_seconds", check=between(0, retry.MAX_BACKOFF_SECONDS)),
        Key("backoff_multiplier", "float", check=between(1, retry.MAX_BACKOFF_MULTIPLIER)),
        Key("max_backoff", "float", "max_backoff_seconds", check=between(0, retry.MAX_BACKOFF_SECONDS)),
        Key("jitter", "bool"),
        _enum("retryable_errors", common_pb2.BuildErrorType.DESCRIPTOR, "BUILD_ERROR_TYPE_", kind="enums"),
        Key("retry_on_timeout", "bool"),
    ),
    "sandbox": (
        _enum("mode", common_pb2.SandboxMode.DESCRIPTOR, "SANDBOX_MODE_"),
        Key("read_only_paths", "strs", check=_absolute_paths),
        Key("allowed_hosts", "strs", check=_hosts),
        Key("memory_mb", "int", check=positive),
        Key("max_processes", "int", check=positive),
    ),
    "retention": (_enum("workspace", common_pb2.WorkspaceRetention.DESCRIPTOR, "WORKSPACE_RETENTION_"),),
}
#: Sections that may also be written as a scalar, short for `{section: {mode: value}}`
#: (`sandbox: off`).
SHORT_FORM_SECTIONS = ("sandbox",)
TOP_LEVEL_KEYS = ("extends", "description", *SECTIONS)


def mode_name(mode: int) -> str:
    """fixed, hybrid, ralph (or the number when unknown)."""
    return _enum_value_name(common_pb2.LoopStrategyMode.DESCRIPTOR, "LOOP_STRATEGY_MODE_", mode)


def _enum_value_name(descriptor: EnumDescriptor, prefix: str, number: int) -> str:
    value = descriptor.values_by_number.get(number)
    return value.name.removeprefix(prefix).lower() if value is not None else str(number)


def _enum_choices(key: Key) -> list[str]:
    assert key.enum is not None
    return [v.name.removeprefix(key.enum_prefix).lower() for v in key.enum.values if v.number != 0]


def parse_enum(key: Key, raw: Any) -> int:
    """The number of an enum value written as its short name (`hybrid`, `fail_fast`;
    case and `-`/`_` do not matter). Raises ValueError listing the choices."""
    assert key.enum is not None
    choices = _enum_choices(key)
    if isinstance(raw, bool):
        # YAML 1.1 reads a bare `on`/`off` as a boolean (`sandbox: off`).
        raw = "on" if raw else "off"
    if isinstance(raw, str):
        wanted = key.enum_prefix + raw.strip().upper().replace("-", "_")
        value = key.enum.values_by_name.get(wanted)
        if value is not None and value.number != 0:
            return value.number
    raise ValueError(f"unknown value {raw!r} (expected one of {', '.join(choices)})")


# -- reading a layer from YAML --------------------------------------------------------


def _typed(key: Key, raw: Any) -> Any:
    """The YAML value converted for the proto field; ValueError says what was expected."""
    kind = key.kind
    if kind == "int":
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"must be an integer, got {raw!r}")
        if not -(2**62) <= raw <= 2**62:
            raise ValueError(f"is out of range, got {raw!r}")
        return raw
    if kind == "float":
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            raise ValueError(f"must be a number, got {raw!r}")
        return float(raw)
    if kind == "bool":
        if not isinstance(raw, bool):
            raise ValueError(f"must be true or false, got {raw!r}")
        return raw
    if kind == "str":
        if not isinstance(raw, str):
            raise ValueError(f"must be text, got {raw!r}")
        return raw
    if kind == "enum":
        return parse_enum(key, raw)
    if not isinstance(raw, list):
        raise ValueError(f"must be a list, got {raw!r}")
    if kind == "strs":
        if any(isinstance(item, bool) or not isinstance(item, str | int | float) for item in raw):
            raise ValueError(f"must be a list of texts, got {raw!r}")
        return [str(item) for item in raw]
    # enums
    return [parse_enum(key, item) for item in raw]


def _set_field(message: Message, key: Key, value: Any) -> None:
    if key.kind in ("strs", "enums"):
        container = getattr(message, key.field_name)
        del container[:]
        container.extend(value)
    else:
        setattr(message, key.field_name, value)


def parse_layer(raw: dict[Any, Any]) -> tuple[common_pb2.HarnessSettings, list[tuple[str, str]]]:
    """The harness a profile document's sections describe, and every problem found
    (unknown keys, wrong types, bad values), each named by its dotted key."""
    harness = common_pb2.HarnessSettings()
    problems: list[tuple[str, str]] = []
    for section, keys in SECTIONS.items():
        if section not in raw:
            continue
        body = raw[section]
        if body is None:
            continue
        if section in SHORT_FORM_SECTIONS and isinstance(body, str | bool):
            body = {"mode": body}
        if not isinstance(body, dict):
            problems.append((section, f"must be a mapping of {', '.join(k.name for k in keys)}"))
            continue
        known = {k.name: k for k in keys}
        for name, value in body.items():
            dotted = f"{section}.{name}"
            key = known.get(str(name))
            if key is None:
                problems.append((dotted, f"unknown key (known keys: {', '.join(known)})"))
                continue
            if value is None:
                continue
            try:
                _set_field(getattr(harness, section), key, _typed(key, value))
            except ValueError as exc:
                problems.append((dotted, str(exc)))
    problems += check_layer(harness)
    return harness, problems


def check_layer(harness: common_pb2.HarnessSettings, sections: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """Value checks of every field a layer sets (inline settings or one profile's own),
    as (dotted key, message); an enum number outside the contract is `unknown value N`.
    `sections` limits the checks to some sections (default: all)."""
    problems: list[tuple[str, str]] = []
    wanted = set(SECTIONS if sections is None else sections)
    for section, keys in SECTIONS.items():
        if section not in wanted:
            continue
        message = getattr(harness, section)
        present = set_fields(message)
        if not present:
            continue
        for key in keys:
            if key.field_name not in present:
                continue
            dotted = f"{section}.{key.name}"
            value = getattr(message, key.field_name)
            if key.kind == "enum":
                assert key.enum is not None  # every enum key names its enum
                if value not in key.enum.values_by_number:
                    problems.append((dotted, f"unknown value {value}"))
            elif key.kind == "enums":
                assert key.enum is not None
                bad = [v for v in value if v == 0 or v not in key.enum.values_by_number]
                if bad:
                    problems.append((dotted, f"unknown value(s) {', '.join(map(str, bad))}"))
            elif key.check is not None:
                found = key.check(list(value) if key.kind == "strs" else value)
                if found:
                    problems.append((dotted, found))
    return problems


def set_fields(message: Message) -> set[str]:
    """The fields a layer sets: presence for optional fields, non-empty for lists, a
    non-default value for the others (proto3 cannot tell an explicit default) — which is
    what ListFields reports."""
    return {descriptor.name for descriptor, _ in message.ListFields()}


def parse_profile(text: str, name: str, source: str) -> Profile:
    """A profile from its YAML text; raises ProfileError naming every bad key."""
    try:
        raw = yaml_text.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ProfileError(
            name, source, [("", f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}")]
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ProfileError(name, source, [("", f"must be a mapping with the keys {', '.join(TOP_LEVEL_KEYS)}")])
    problems: list[tuple[str, str]] = []
    for key in raw:
        if str(key) not in TOP_LEVEL_KEYS:
            problems.append((str(key), f"unknown key (known keys: {', '.join(TOP_LEVEL_KEYS)})"))
    extends = raw.get("extends")
    if extends is None:
        extends = ""
    elif not isinstance(extends, str) or not PROFILE_NAME.fullmatch(extends):
        problems.append(("extends", f"must be a profile name, got {extends!r}"))
        extends = ""
    elif extends == name:
        problems.append(("extends", f"cycle: {name} -> {name}"))
    description = raw.get("description") or ""
    if not isinstance(description, str):
        problems.append(("description", f"must be text, got {description!r}"))
        description = ""
    harness, layer_problems = parse_layer(raw)
    problems += layer_problems
    if problems:
        raise ProfileError(name, source, problems)
    harness.profile = name
    return Profile(name, source, harness, extends=extends, description=description)


#: Parsed files by (path, name, mtime, size): the queue resolves a profile on every submit.
_PARSED: dict[tuple[str, str, int, int], Profile] = {}
_PARSED_MAX = 256


def load_profile_file(path: Path, name: str | None = None) -> Profile:
    """A profile from a file (its name is the file's stem unless given). A file unchanged
    since it was last read (same modification time and size) is not parsed again."""
    name = name or path.name.removesuffix(PROFILE_SUFFIX)
    try:
        stat = path.stat()
        if stat.st_size > MAX_PROFILE_BYTES:
            raise ProfileError(name, str(path), [("", f"is larger than {MAX_PROFILE_BYTES} bytes")])
        key = (str(path), name, stat.st_mtime_ns, stat.st_size)
        if key in _PARSED:
            return _PARSED[key]
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ProfileError(name, str(path), [("", f"cannot be read: {reason}")]) from None
    profile = parse_profile(text, name, str(path))
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[key] = profile
    return profile


# -- finding profiles -----------------------------------------------------------------


def profiles_dir(home: Path | str | None = None) -> Path:
    """Where profile files live: $AGENTGATE_HOME/profiles."""
    return (Path(home) if home is not None else agentgate_home()) / "profiles"


def _file_names(directory: Path | None) -> list[str]:
    if directory is None or not directory.is_dir():
        return []
    return sorted(
        p.name.removesuffix(PROFILE_SUFFIX)
        for p in directory.glob(f"*{PROFILE_SUFFIX}")
        if p.is_file() and PROFILE_NAME.fullmatch(p.name.removesuffix(PROFILE_SUFFIX))
    )


def known_profile_names(directory: Path | None) -> list[str]:
    """Built-ins first, then the files' names (a file with a built-in's name is listed once)."""
    names = list(BUILTIN_PROFILES)
    names += [n for n in _file_names(directory) if n not in BUILTIN_PROFILES]
    return names


def find_profile(name: str, directory: Path | None) -> Profile:
    """The profile called `name`: its file if there is one, else the built-in. Raises
    ProfileError for an unknown name, a name that is no file name, or a bad file."""
    if not PROFILE_NAME.fullmatch(name):
        raise ProfileError(name, "", [("", "is not a valid profile name (letters, digits, '.', '_', '-')")])
    if directory is not None:
        path = directory / f"{name}{PROFILE_SUFFIX}"
        if path.is_file():
            return load_profile_file(path, name)
    if name in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[name]
    known = ", ".join(known_profile_names(directory))
    where = f"; files are looked for in {directory}" if directory is not None else ""
    raise ProfileError(
        name, "", [("", f"unknown profile (known: {known})")], text=f"unknown profile {name!r} (known: {known}{where})"
    )


def profile_chain(top: Profile, directory: Path | None) -> list[Profile]:
    """`top` and the profiles it extends, base first. A cycle, an unknown parent or a bad
    parent file raises ProfileError (a parent's error says which profile led to it)."""
    chain = [top]
    names = [top.name]
    current = top
    while current.extends:
        parent_name = current.extends
        if parent_name in names:
            raise ProfileError(top.name, top.source, [("extends", f"cycle: {' -> '.join([*names, parent_name])}")])
        if len(chain) >= MAX_CHAIN_LENGTH:
            raise ProfileError(top.name, top.source, [("extends", f"chain longer than {MAX_CHAIN_LENGTH} profiles")])
        try:
            current = find_profile(parent_name, directory)
        except ProfileError as exc:
            via = " -> ".join([*names, parent_name])
            raise ProfileError(top.name, top.source, [("extends", f"{via}: {exc}")]) from None
        chain.append(current)
        names.append(parent_name)
    chain.reverse()
    return chain


# -- merging and resolving ------------------------------------------------------------


def merge_message(target: Message, overlay: Message) -> None:
    """Copies into `target` every field `overlay` sets (see `_set_fields`); lists replace."""
    for descriptor, value in overlay.ListFields():
        name = descriptor.name
        if descriptor.is_repeated:
            container = getattr(target, name)
            del container[:]
            container.extend(value)
        elif descriptor.message_type is not None:
            merge_message(getattr(target, name), value)
        else:
            setattr(target, name, value)


def merge_layers(base: common_pb2.HarnessSettings, overlay: common_pb2.HarnessSettings) -> common_pb2.HarnessSettings:
    """`overlay` on top of `base` (see the module docstring for the two resets)."""
    merged = common_pb2.HarnessSettings()
    merged.CopyFrom(base)
    loop, new_loop = merged.loop_strategy, overlay.loop_strategy
    if new_loop.mode and new_loop.mode != loop.mode:
        kept = common_pb2.LoopStrategySettings(mode=new_loop.mode)
        if loop.HasField("no_change_limit"):
            kept.no_change_limit = loop.no_change_limit
        kept.completion_signals.extend(loop.completion_signals)
        loop.CopyFrom(kept)
    if overlay.retry.preset and overlay.retry.preset != merged.retry.preset:
        merged.retry.CopyFrom(common_pb2.RetryPolicy(preset=overlay.retry.preset))
    merge_message(merged, overlay)
    return merged


# -- writing a harness back as profile keys -------------------------------------------


def harness_to_dict(harness: common_pb2.HarnessSettings) -> dict[str, Any]:
    """The profile keys a harness sets, as a profile file would spell them (`show`)."""
    out: dict[str, Any] = {}
    for section, keys in SECTIONS.items():
        message = getattr(harness, section)
        body: dict[str, Any] = {}
        present = set_fields(message)
        for key in keys:
            if key.field_name not in present:
                continue
            value = getattr(message, key.field_name)
            if key.kind == "enum":
                assert key.enum is not None  # every enum key names its enum
                value = _enum_value_name(key.enum, key.enum_prefix, value)
            elif key.kind == "enums":
                assert key.enum is not None
                value = [_enum_value_name(key.enum, key.enum_prefix, v) for v in value]
            elif key.kind == "strs":
                value = list(value)
            elif key.kind == "float":
                value = round(value, 6)
            body[key.name] = value
        if body:
            out[section] = body
    return out


def describe_chain(chain: Iterable[Profile]) -> str:
    """`default <- mine` style: base first."""
    return " <- ".join(p.name for p in chain)
