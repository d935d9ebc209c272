"""Harness profiles (SPEC §14): named, reusable harness settings, and how a work order's
harness is resolved from them.

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
    git_ops:       {mode, branch_pattern, draft_pr, github_mode}
    limits:        {max_wall_clock_seconds, agent_timeout_seconds, max_total_tokens,
                    max_cost_usd, network_allowed}
    retry:         {preset, max_attempts, initial_backoff, backoff_multiplier,
                    max_backoff, jitter, retryable_errors, retry_on_timeout}

An unknown key or a bad value is an error naming the key; nothing is silently ignored.

Resolution, lowest layer first: the built-in default (`BASE_LAYER`), the profile's
`extends` chain (base first), the work order's inline settings. A layer overrides only the
fields it sets; a list replaces the list below it. A layer that changes the loop strategy's
`mode` starts the strategy's own parameters afresh (a `window_size` inherited from a ralph
parent means nothing to hybrid), and one that changes the retry `preset` starts the retry
numbers afresh. Then each strategy's defaults fill what is still unset, and the result is
checked as a whole (e.g. ralph's `min_iterations` <= `max_iterations`).

Plain Python (files are small and read synchronously): the queue uses it to refuse bad
work orders at submit, the orchestrator to resolve the harness stored with the run, the
CLI for `agentgate profiles`.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message

from agentgate.common.branches import branch_pattern_problem
from agentgate.common.config import agentgate_home
from agentgate.common.errors import FieldViolation
from agentgate.v1 import common_pb2

M = common_pb2.LoopStrategyMode

DEFAULT_PROFILE = "default"
PROFILE_SUFFIX = ".yaml"
#: A profile name is a file name: no separators, no leading dot.
PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_PROFILE_BYTES = 64 * 1024
#: Longer `extends` chains than this are refused (a cycle is reported as such before).
MAX_CHAIN_LENGTH = 16

MAX_ITERATIONS_LIMIT = 100
VERIFICATION_LEVELS = ("L0", "L1", "L2", "L3")
RETRY_PRESETS = ("default", "aggressive", "none")
MAX_COMPLETION_SIGNALS = 20
# The same bounds as the queue's checks of inline retry settings.
MAX_RETRY_ATTEMPTS = 20
MAX_BACKOFF_SECONDS = 3600.0
MAX_BACKOFF_MULTIPLIER = 10.0

#: SPEC §10's defaults of each strategy's parameters.
STRATEGY_DEFAULTS: dict[int, dict[str, int | float]] = {
    M.LOOP_STRATEGY_MODE_FIXED: {"max_iterations": 3},
    M.LOOP_STRATEGY_MODE_HYBRID: {"base_iterations": 3, "max_bonus_iterations": 2, "progress_threshold": 0.1},
    M.LOOP_STRATEGY_MODE_RALPH: {
        "min_iterations": 2,
        "max_iterations": 10,
        "window_size": 3,
        "convergence_threshold": 0.95,
    },
}
#: Loop detection: stop after this many iterations in a row without changes.
DEFAULT_NO_CHANGE_LIMIT = 2
DEFAULT_MAX_WALL_CLOCK_SECONDS = 3600
DEFAULT_AGENT_TIMEOUT_SECONDS = 300

#: Parameters every strategy uses; the others belong to the modes in STRATEGY_DEFAULTS.
COMMON_LOOP_PARAMETERS = ("no_change_limit", "completion_signals")


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
    retry=common_pb2.RetryPolicy(preset="default"),
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


def _positive(value: float) -> str | None:
    return None if value > 0 else f"must be greater than 0, got {value:g}"


def _not_negative(value: float) -> str | None:
    return None if value >= 0 else f"must be 0 or more, got {value:g}"


def _between(low: float, high: float) -> Callable[[float], str | None]:
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"must be between {low:g} and {high:g}, got {value:g}"

    return check


def _fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else f"must be greater than 0 and at most 1, got {value:g}"


def _levels(values: list[str]) -> str | None:
    bad = [v for v in values if v not in VERIFICATION_LEVELS]
    if bad:
        return f"unknown level(s) {', '.join(repr(v) for v in bad)}; expected {', '.join(VERIFICATION_LEVELS)}"
    return None


def _globs(values: list[str]) -> str | None:
    return "a glob must not be blank" if any(not v.strip() for v in values) else None


def _signals(values: list[str]) -> str | None:
    if any(not v.strip() for v in values):
        return "a completion signal must not be blank"
    if len(values) > MAX_COMPLETION_SIGNALS:
        return f"at most {MAX_COMPLETION_SIGNALS} completion signals, got {len(values)}"
    return None


def _branch_pattern(value: str) -> str | None:
    problem = branch_pattern_problem(value)
    return f"{value!r} {problem}" if problem else None


def _preset(value: str) -> str | None:
    return None if value in RETRY_PRESETS else f"unknown preset {value!r} (expected {', '.join(RETRY_PRESETS)})"


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


#: section -> its keys, in the order checks are reported (that of the SPEC).
SECTIONS: dict[str, tuple[Key, ...]] = {
    "loop_strategy": (
        _enum("mode", common_pb2.LoopStrategyMode.DESCRIPTOR, "LOOP_STRATEGY_MODE_"),
        Key("max_iterations", "int", check=_between(1, MAX_ITERATIONS_LIMIT)),
        Key("base_iterations", "int", check=_between(1, MAX_ITERATIONS_LIMIT)),
        Key("max_bonus_iterations", "int", check=_between(0, MAX_ITERATIONS_LIMIT)),
        Key("progress_threshold", "float", check=_fraction),
        Key("min_iterations", "int", check=_between(1, MAX_ITERATIONS_LIMIT)),
        Key("window_size", "int", check=_between(2, MAX_ITERATIONS_LIMIT)),
        Key("convergence_threshold", "float", check=_fraction),
        Key("no_change_limit", "int", check=_between(0, MAX_ITERATIONS_LIMIT)),
        Key("completion_signals", "strs", check=_signals),
    ),
    "limits": (
        Key("max_wall_clock_seconds", "int", check=_positive),
        Key("agent_timeout_seconds", "int", check=_positive),
        Key("max_total_tokens", "int", check=_not_negative),
        Key("max_cost_usd", "float", check=_not_negative),
        Key("network_allowed", "bool"),
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
    ),
    "retry": (
        Key("preset", "str", check=_preset),
        Key("max_attempts", "int", check=_between(1, MAX_RETRY_ATTEMPTS)),
        Key("initial_backoff", "float", "initial_backoff_seconds", check=_between(0, MAX_BACKOFF_SECONDS)),
        Key("backoff_multiplier", "float", check=_between(1, MAX_BACKOFF_MULTIPLIER)),
        Key("max_backoff", "float", "max_backoff_seconds", check=_between(0, MAX_BACKOFF_SECONDS)),
        Key("jitter", "bool"),
        _enum("retryable_errors", common_pb2.BuildErrorType.DESCRIPTOR, "BUILD_ERROR_TYPE_", kind="enums"),
        Key("retry_on_timeout", "bool"),
    ),
}
TOP_LEVEL_KEYS = ("extends", "description", *SECTIONS)

#: Which modes use a mode-specific loop parameter.
MODE_PARAMETERS: dict[int, tuple[str, ...]] = {mode: tuple(defaults) for mode, defaults in STRATEGY_DEFAULTS.items()}


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
        present = _set_fields(message)
        if not present:
            continue
        for key in keys:
            if key.field_name not in present:
                continue
            dotted = f"{section}.{key.name}"
            value = getattr(message, key.field_name)
            if key.kind == "enum":
                if value not in key.enum.values_by_number:  # type: ignore[union-attr]
                    problems.append((dotted, f"unknown value {value}"))
            elif key.kind == "enums":
                bad = [v for v in value if v == 0 or v not in key.enum.values_by_number]  # type: ignore[union-attr]
                if bad:
                    problems.append((dotted, f"unknown value(s) {', '.join(map(str, bad))}"))
            elif key.check is not None:
                found = key.check(list(value) if key.kind == "strs" else value)
                if found:
                    problems.append((dotted, found))
    return problems


def _set_fields(message: Message) -> set[str]:
    """The fields a layer sets: presence for optional fields, non-empty for lists, a
    non-default value for the others (proto3 cannot tell an explicit default) — which is
    what ListFields reports."""
    return {descriptor.name for descriptor, _ in message.ListFields()}


def parse_profile(text: str, name: str, source: str) -> Profile:
    """A profile from its YAML text; raises ProfileError naming every bad key."""
    try:
        raw = yaml.safe_load(text)
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


def fill_strategy_defaults(loop: common_pb2.LoopStrategySettings) -> None:
    """Sets each unset parameter of the loop's mode to its default; hybrid's
    `max_iterations` is derived (base + bonus), as the cap the run loop uses."""
    if not loop.HasField("no_change_limit"):
        loop.no_change_limit = DEFAULT_NO_CHANGE_LIMIT
    for name, value in STRATEGY_DEFAULTS.get(loop.mode, {}).items():
        if not loop.HasField(name):
            setattr(loop, name, value)
    if loop.mode == M.LOOP_STRATEGY_MODE_HYBRID:
        loop.max_iterations = loop.base_iterations + loop.max_bonus_iterations


def _misplaced_loop_parameters(layer: common_pb2.HarnessSettings, mode: int) -> list[tuple[str, str]]:
    """Mode-specific parameters a layer sets that the effective mode does not use."""
    if mode not in MODE_PARAMETERS:
        return []
    problems = []
    used = MODE_PARAMETERS[mode]
    present = _set_fields(layer.loop_strategy) - {"mode", *COMMON_LOOP_PARAMETERS, *used}
    if not present:
        return []
    for key in SECTIONS["loop_strategy"]:
        name = key.name
        if name == "mode" or name in COMMON_LOOP_PARAMETERS or name in used:
            continue
        if name in present:
            users = [mode_name(m) for m, params in MODE_PARAMETERS.items() if name in params]
            problems.append(
                (
                    f"loop_strategy.{name}",
                    f"is a parameter of {' and '.join(users)}, but the loop strategy is {mode_name(mode)}",
                )
            )
    return problems


def _cross_checks(harness: common_pb2.HarnessSettings) -> list[tuple[str, str]]:
    """Checks between fields of the resolved harness."""
    problems: list[tuple[str, str]] = []
    loop = harness.loop_strategy
    if loop.mode == M.LOOP_STRATEGY_MODE_HYBRID:
        total = loop.base_iterations + loop.max_bonus_iterations
        if total > MAX_ITERATIONS_LIMIT:
            problems.append(
                (
                    "loop_strategy.max_bonus_iterations",
                    f"base_iterations + max_bonus_iterations is {total}; at most {MAX_ITERATIONS_LIMIT}",
                )
            )
    if loop.mode == M.LOOP_STRATEGY_MODE_RALPH:
        if loop.min_iterations > loop.max_iterations:
            problems.append(
                (
                    "loop_strategy.min_iterations",
                    f"{loop.min_iterations} is more than max_iterations ({loop.max_iterations})",
                )
            )
        if loop.window_size > loop.max_iterations:
            problems.append(
                (
                    "loop_strategy.window_size",
                    f"{loop.window_size} is more than max_iterations ({loop.max_iterations}): it could never converge",
                )
            )
    verification = harness.verification
    if verification.gate_plan_source == common_pb2.GATE_PLAN_SOURCE_INLINE and not verification.gate_plan_yaml:
        problems.append(
            ("verification.gate_plan_source", "inline needs the work order's inline gate plan (gate_plan_yaml)")
        )
    if verification.gate_plan_source == common_pb2.GATE_PLAN_SOURCE_FILE and verification.gate_plan_yaml:
        problems.append(
            (
                "verification.gate_plan_source",
                "file uses only the workspace's verify.yaml, but an inline gate plan is given",
            )
        )
    retry = harness.retry
    if (
        retry.HasField("initial_backoff_seconds")
        and retry.HasField("max_backoff_seconds")
        and retry.max_backoff_seconds < retry.initial_backoff_seconds
    ):
        problems.append(
            (
                "retry.max_backoff",
                f"{retry.max_backoff_seconds:g} is less than initial_backoff ({retry.initial_backoff_seconds:g})",
            )
        )
    return problems


@dataclass
class Resolution:
    """A resolved harness, the profiles it came from, and what is wrong with it."""

    harness: common_pb2.HarnessSettings
    chain: list[Profile] = field(default_factory=list)
    violations: list[FieldViolation] = field(default_factory=list)


def _set_keys(layer: common_pb2.HarnessSettings) -> set[str]:
    keys = set()
    for section, section_keys in SECTIONS.items():
        present = _set_fields(getattr(layer, section))
        keys.update(f"{section}.{key.name}" for key in section_keys if key.field_name in present)
    if layer.verification.gate_plan_yaml:
        keys.add("verification.gate_plan_source")
    return keys


def resolve(
    inline: common_pb2.HarnessSettings,
    directory: Path | None,
    *,
    prefix: str = "spec.harness",
    top: Profile | None = None,
    inline_sections: Iterable[str] | None = None,
) -> Resolution:
    """Built-in default < profile chain < `inline`, with defaults filled and every problem
    as a FieldViolation: a problem of the inline settings names its field
    (`spec.harness.loop_strategy.window_size`), one of a profile names
    `spec.harness.profile` and says which profile, file and key.

    `top` resolves a given profile (e.g. a file being validated) instead of the one
    `inline.profile` names. `inline_sections` limits the value checks of the inline
    settings to those sections, for a caller that checks the others itself.
    """
    violations: list[FieldViolation] = []
    profile_field = f"{prefix}.profile"

    def inline_problem(key: str, message: str) -> None:
        violations.append(FieldViolation(f"{prefix}.{key}", message))

    name = top.name if top is not None else (inline.profile or DEFAULT_PROFILE)
    try:
        chain = profile_chain(top or find_profile(name, directory), directory)
    except ProfileError as exc:
        violations.append(FieldViolation(profile_field, str(exc)))
        chain = []
    for key, message in check_layer(inline, inline_sections):
        inline_problem(key, message)

    merged = common_pb2.HarnessSettings()
    merged.CopyFrom(BASE_LAYER)
    for profile in chain:
        merged = merge_layers(merged, profile.harness)
        misplaced = _misplaced_loop_parameters(profile.harness, merged.loop_strategy.mode)
        if misplaced:
            violations.append(FieldViolation(profile_field, str(ProfileError(profile.name, profile.source, misplaced))))
    merged = merge_layers(merged, inline)
    for key, message in _misplaced_loop_parameters(inline, merged.loop_strategy.mode):
        inline_problem(key, message)
    fill_strategy_defaults(merged.loop_strategy)
    merged.profile = name

    if chain and not violations:
        inline_keys = _set_keys(inline)
        for key, message in _cross_checks(merged):
            if key in inline_keys:
                inline_problem(key, message)
            else:
                violations.append(FieldViolation(profile_field, f"profile {name!r}: {key}: {message}"))
    return Resolution(merged, chain, violations)


# -- writing a harness back as profile keys -------------------------------------------


def harness_to_dict(harness: common_pb2.HarnessSettings) -> dict[str, Any]:
    """The profile keys a harness sets, as a profile file would spell them (`show`)."""
    out: dict[str, Any] = {}
    for section, keys in SECTIONS.items():
        message = getattr(harness, section)
        body: dict[str, Any] = {}
        present = _set_fields(message)
        for key in keys:
            if key.field_name not in present:
                continue
            value = getattr(message, key.field_name)
            if key.kind == "enum":
                value = _enum_value_name(key.enum, key.enum_prefix, value)  # type: ignore[arg-type]
            elif key.kind == "enums":
                value = [_enum_value_name(key.enum, key.enum_prefix, v) for v in value]  # type: ignore[arg-type]
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
