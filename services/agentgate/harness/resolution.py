"""The one full resolution of a work order's harness (docs/harness.md): what the queue
checks at submit, the orchestrator stores with the run, and `agentgate profiles` shows.

Built-in default < the profile's `extends` chain < the work order's inline settings
(docs/profiles.md), then every default filled: the loop strategy's parameters, the retry
policy's preset values, the delivery settings. Every problem comes back at once as a
FieldViolation naming its field (`spec.harness.retry.max_attempts`) or, for a problem of a
profile, `spec.harness.profile` with the profile, file and key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agentgate.common.branches import DEFAULT_BRANCH_PATTERN
from agentgate.common.errors import FieldViolation
from agentgate.harness import loop_parameters, profiles
from agentgate.harness.loop_parameters import COMMON_LOOP_PARAMETERS, MODE_PARAMETERS
from agentgate.harness.profiles import Profile, ProfileError, mode_name, set_fields
from agentgate.harness.retry import resolve_policy
from agentgate.harness.verification import gate_plan_source_problem
from agentgate.v1 import common_pb2

M = common_pb2.LoopStrategyMode


class HarnessError(ValueError):
    """The harness cannot be resolved (e.g. its profile file changed after submit); the
    message names every field and profile key at fault."""


@dataclass
class Resolution:
    """A resolved harness, the profiles it came from, and what is wrong with it."""

    harness: common_pb2.HarnessSettings
    chain: list[Profile] = field(default_factory=list)
    violations: list[FieldViolation] = field(default_factory=list)


def fill_strategy_defaults(loop: common_pb2.LoopStrategySettings) -> None:
    """Sets each unset parameter of the loop's mode to its default; hybrid's
    `max_iterations` is derived (base + bonus), as the cap the run loop uses."""
    if not loop.HasField("no_change_limit"):
        loop.no_change_limit = loop_parameters.DEFAULT_NO_CHANGE_LIMIT
    for name, value in loop_parameters.STRATEGY_DEFAULTS.get(loop.mode, {}).items():
        if not loop.HasField(name):  # type: ignore[arg-type]  # a run-time name; mypy-protobuf types a Literal
            setattr(loop, name, value)
    if loop.mode == M.LOOP_STRATEGY_MODE_HYBRID:
        loop.max_iterations = loop.base_iterations + loop.max_bonus_iterations


#: The GitHub mode a git mode gets unless one is given (docs/delivery.md).
DEFAULT_GITHUB_MODES = {
    common_pb2.GIT_MODE_LOCAL: common_pb2.GIT_HUB_MODE_DISABLED,
    common_pb2.GIT_MODE_PUSH: common_pb2.GIT_HUB_MODE_BEST_EFFORT,
    common_pb2.GIT_MODE_PR: common_pb2.GIT_HUB_MODE_FAIL_FAST,
}


def resolve_git_ops(git_ops: common_pb2.GitOpsSettings) -> None:
    """Fills delivery defaults in place: mode local, branch agentgate/{run_id}, no draft,
    and the GitHub mode of the git mode (pr → fail_fast, push → best_effort, local →
    disabled) unless one was given."""
    if git_ops.mode == common_pb2.GIT_MODE_UNSPECIFIED:
        git_ops.mode = common_pb2.GIT_MODE_LOCAL
    if not git_ops.branch_pattern:
        git_ops.branch_pattern = DEFAULT_BRANCH_PATTERN
    if not git_ops.HasField("draft_pr"):
        git_ops.draft_pr = False
    if git_ops.github_mode == common_pb2.GIT_HUB_MODE_UNSPECIFIED:
        git_ops.github_mode = DEFAULT_GITHUB_MODES.get(git_ops.mode, common_pb2.GIT_HUB_MODE_DISABLED)


def _misplaced_loop_parameters(layer: common_pb2.HarnessSettings, mode: int) -> list[tuple[str, str]]:
    """Mode-specific parameters a layer sets that the effective mode does not use."""
    if mode not in MODE_PARAMETERS:
        return []
    used = MODE_PARAMETERS[mode]
    present = set_fields(layer.loop_strategy) - {"mode", *COMMON_LOOP_PARAMETERS, *used}
    problems = []
    for parameter in loop_parameters.PARAMETERS:
        if parameter.name in present:
            users = [mode_name(m) for m, params in MODE_PARAMETERS.items() if parameter.name in params]
            problems.append(
                (
                    f"loop_strategy.{parameter.name}",
                    f"is a parameter of {' and '.join(users)}, but the loop strategy is {mode_name(mode)}",
                )
            )
    return problems


def _cross_checks(harness: common_pb2.HarnessSettings) -> list[tuple[str, str]]:
    """Checks between fields of the resolved harness."""
    loop = harness.loop_strategy
    values = {name: getattr(loop, name) for name in MODE_PARAMETERS.get(loop.mode, ())}
    problems = [
        (f"loop_strategy.{name}", message) for name, message in loop_parameters.cross_problems(loop.mode, values)
    ]
    if problem := gate_plan_source_problem(harness.verification):
        problems.append(("verification.gate_plan_source", problem))
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


def _set_keys(layer: common_pb2.HarnessSettings) -> set[str]:
    keys: set[str] = set()
    for section, section_keys in profiles.SECTIONS.items():
        present = set_fields(getattr(layer, section))
        keys.update(f"{section}.{key.name}" for key in section_keys if key.field_name in present)
    if layer.verification.gate_plan_yaml:
        keys.add("verification.gate_plan_source")
    return keys


#: Profile keys whose proto field has another name: an inline setting is named by its field.
_FIELD_NAMES = {
    f"{section}.{key.name}": f"{section}.{key.field_name}"
    for section, keys in profiles.SECTIONS.items()
    for key in keys
    if key.field_name != key.name
}


def resolve(
    inline: common_pb2.HarnessSettings,
    directory: Path | None,
    *,
    prefix: str = "spec.harness",
    top: Profile | None = None,
) -> Resolution:
    """Built-in default < profile chain < `inline`, with every default filled and every
    problem as a FieldViolation: a problem of the inline settings names its field
    (`spec.harness.loop_strategy.window_size`), one of a profile names
    `spec.harness.profile` and says which profile, file and key.

    `top` resolves a given profile (e.g. a file being validated) instead of the one
    `inline.profile` names; `directory` holds the profile files (None: the built-ins only).
    """
    violations: list[FieldViolation] = []
    profile_field = f"{prefix}.profile"

    def inline_problem(key: str, message: str) -> None:
        violations.append(FieldViolation(f"{prefix}.{_FIELD_NAMES.get(key, key)}", message))

    name = top.name if top is not None else (inline.profile or profiles.DEFAULT_PROFILE)
    try:
        chain = profiles.profile_chain(top or profiles.find_profile(name, directory), directory)
    except ProfileError as exc:
        violations.append(FieldViolation(profile_field, str(exc)))
        chain = []
    for key, message in profiles.check_layer(inline):
        inline_problem(key, message)

    merged = common_pb2.HarnessSettings()
    merged.CopyFrom(profiles.BASE_LAYER)
    for profile in chain:
        merged = profiles.merge_layers(merged, profile.harness)
        misplaced = _misplaced_loop_parameters(profile.harness, merged.loop_strategy.mode)
        if misplaced:
            violations.append(FieldViolation(profile_field, str(ProfileError(profile.name, profile.source, misplaced))))
    merged = profiles.merge_layers(merged, inline)
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
    resolve_git_ops(merged.git_ops)
    merged.retry.CopyFrom(resolve_policy(merged.retry))
    return Resolution(merged, chain, violations)


def resolve_harness(
    requested: common_pb2.HarnessSettings, profiles_dir: Path | None = None, *, read_files: bool = True
) -> common_pb2.HarnessSettings:
    """The harness with every unset field at its default; stored with the run.

    Profile files are read from `profiles_dir` (default $AGENTGATE_HOME/profiles); without
    `read_files`, only the built-in profiles count. Raises HarnessError naming every
    problem.
    """
    directory = (profiles_dir or profiles.profiles_dir()) if read_files else None
    resolution = resolve(requested, directory, prefix="harness")
    if resolution.violations:
        raise HarnessError("; ".join(f"{v.field}: {v.description}" for v in resolution.violations))
    return resolution.harness
