"""The verification gate: runs a gate plan in a clean room and reports per level and check.

Levels run in order L0 → L3; a failed level stops the later ones. This version runs
L0 (contracts) and L1 (environment setup + tests). L2 (blackbox) and L3 (sanity) are
reported as not run ("not supported yet") when the plan has them — never as passed.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentgate.common.timeutil import now_timestamp
from agentgate.v1 import common_pb2
from agentgate.workspace.gate_plan import (
    LEVEL_NAMES,
    LEVELS,
    Contracts,
    GatePlan,
    GatePlanError,
    RequiredSchema,
    TestCommand,
    find_gate_plan_file,
    parse_gate_plan,
)
from agentgate.workspace.processes import DEFAULT_KILL_GRACE_SECONDS, run_process

#: Output kept per check: its tail, where the failure usually is.
CHECK_OUTPUT_BYTES = 64 * 1024
SKIP_BY_HARNESS = "skipped by harness"
SKIP_EARLIER_FAILED = "an earlier level failed"
SKIP_NOT_SUPPORTED = "not supported yet"
SKIP_NOTHING = "nothing to check in the gate plan"
SKIP_NO_PLAN = "no gate plan"
UNSUPPORTED_LEVELS = ("L2", "L3")
#: Environment of every check: the scrubbed one plus CI=true, as tools expect in CI.
CHECK_ENV = {"CI": "true"}

NAMING_PATTERNS = {
    "kebab-case": re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$"),
    "snake_case": re.compile(r"^_*[a-z0-9]+(_[a-z0-9]+)*_*$"),
    "camelCase": re.compile(r"^[a-z][a-zA-Z0-9]*$"),
    "PascalCase": re.compile(r"^[A-Z][a-zA-Z0-9]*$"),
}
FIELD_TYPES = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


@dataclass
class LoadedPlan:
    """The plan a verification uses and where it came from (inline, a file path, none)."""

    source: str
    plan: GatePlan | None = None
    error: GatePlanError | None = None


def load_plan(room: Path, inline_yaml: str) -> LoadedPlan:
    """The inline plan if given, else the clean room's own verify.yaml, else none."""
    if inline_yaml.strip():
        text, source = inline_yaml, "inline"
    else:
        found = find_gate_plan_file(room)
        if found is None:
            return LoadedPlan(source="none")
        source = found.relative_to(room).as_posix()
        text = found.read_text(encoding="utf-8", errors="replace")
    try:
        return LoadedPlan(source=source, plan=parse_gate_plan(text, source))
    except GatePlanError as exc:
        return LoadedPlan(source=source, error=exc)


# --- L0: contracts ------------------------------------------------------------------------


def _files(room: Path) -> list[str]:
    """Every file (and symlink) of the clean room, as relative posix paths."""
    found = []
    for directory, dirs, names in os.walk(room):
        base = Path(directory)
        for name in names + [d for d in dirs if (base / d).is_symlink()]:
            found.append((base / name).relative_to(room).as_posix())
    return sorted(found)


def glob_match(path: str, pattern: str) -> bool:
    """gitignore-like matching: a pattern without '/' matches the file name at any depth;
    a leading '**/' also matches at the top."""
    if "/" not in pattern.rstrip("/"):
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    if fnmatch.fnmatchcase(path, pattern):
        return True
    return pattern.startswith("**/") and glob_match(path, pattern[3:])


def _contract_check(name: str, passed: bool, output: str, duration: float) -> common_pb2.CheckResult:
    return common_pb2.CheckResult(
        name=name,
        kind="contract",
        passed=passed,
        exit_code=0 if passed else 1,
        expected_exit=0,
        output=output,
        duration_seconds=duration,
    )


def _inside(room: Path, relative: str) -> Path | None:
    target = (room / relative).resolve()
    return target if target.is_relative_to(room.resolve()) else None


def _lookup(data: Any, dotted: str) -> tuple[bool, Any]:
    current = data
    for part in dotted.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return False, None
    return True, current


def _schema_problems(room: Path, schema: RequiredSchema) -> list[str]:
    target = _inside(room, schema.file)
    if target is None or not target.is_file():
        return [f"{schema.file} is missing"]
    try:
        text = target.read_text(encoding="utf-8")
        data = json.loads(text) if schema.schema == "json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return [f"{schema.file} is not valid {schema.schema}: {exc}"]
    problems = []
    for rule in schema.rules:
        if rule.kind == "json_schema":
            problems.append(f"json_schema rules are not supported yet ({rule.value})")
            continue
        present, value = _lookup(data, rule.field)
        if not present:
            problems.append(f"field {rule.field!r} is missing")
        elif rule.kind == "field_type":
            types = FIELD_TYPES.get(rule.value)
            is_bool = isinstance(value, bool)
            if types is None:
                problems.append(f"unknown type {rule.value!r} (known: {', '.join(FIELD_TYPES)})")
            elif not isinstance(value, types) or (is_bool and rule.value in ("number", "integer")):
                problems.append(f"field {rule.field!r} is not of type {rule.value}")
        elif rule.kind == "matches_regex":
            if not isinstance(value, str) or re.search(rule.value, value) is None:
                problems.append(f"field {rule.field!r} does not match /{rule.value}/")
    return problems


def contract_checks(room: Path, contracts: Contracts) -> list[common_pb2.CheckResult]:
    """L0 checks (blocking file-system work; call off-loop)."""
    checks = []
    files: list[str] | None = None
    for required in contracts.required_files:
        started = time.monotonic()
        target = _inside(room, required)
        present = target is not None and target.exists()
        output = f"{required} is present" if present else f"required file {required} is missing"
        checks.append(_contract_check(f"required_file:{required}", present, output, time.monotonic() - started))
    for pattern in contracts.forbidden_patterns:
        started = time.monotonic()
        files = files if files is not None else _files(room)
        matches = [path for path in files if glob_match(path, pattern)]
        if matches:
            shown = "\n".join(matches[:20]) + (f"\n... and {len(matches) - 20} more" if len(matches) > 20 else "")
            output = f"files matching forbidden pattern {pattern}:\n{shown}"
        else:
            output = f"no file matches {pattern}"
        checks.append(_contract_check(f"forbidden_pattern:{pattern}", not matches, output, time.monotonic() - started))
    for schema in contracts.required_schemas:
        started = time.monotonic()
        problems = _schema_problems(room, schema)
        output = "\n".join(problems) if problems else f"{schema.file} satisfies its {len(schema.rules)} rule(s)"
        checks.append(_contract_check(f"schema:{schema.file}", not problems, output, time.monotonic() - started))
    for convention in contracts.naming_conventions:
        started = time.monotonic()
        files = files if files is not None else _files(room)
        regex = NAMING_PATTERNS[convention.rule]
        wrong = [
            path
            for path in files
            if glob_match(path, convention.pattern) and not regex.match(path.rsplit("/", 1)[-1].split(".", 1)[0])
        ]
        output = (
            f"not {convention.rule}:\n" + "\n".join(wrong[:20])
            if wrong
            else f"files matching {convention.pattern} are {convention.rule}"
        )
        checks.append(_contract_check(f"naming:{convention.pattern}", not wrong, output, time.monotonic() - started))
    return checks


# --- L1: commands -------------------------------------------------------------------------


@dataclass
class CommandSpec:
    """One command check to run."""

    name: str
    kind: str
    command: str
    timeout: float
    expected_exit: int = 0


async def run_command_check(
    room: Path, spec: CommandSpec, kill_grace: float = DEFAULT_KILL_GRACE_SECONDS
) -> common_pb2.CheckResult:
    """Runs one command via `sh -c` in the clean room; passed iff it exits as expected in time."""
    result = await run_process(
        ["/bin/sh", "-c", spec.command],
        cwd=room,
        env=CHECK_ENV,
        timeout=spec.timeout,
        kill_grace=kill_grace,
        merge_stderr=True,
        capture_limit=CHECK_OUTPUT_BYTES,
        capture_keep="tail",
    )
    output = result.stdout
    if result.timed_out:
        output += f"\n[timed out after {spec.timeout:g}s]"
    return common_pb2.CheckResult(
        name=spec.name,
        kind=spec.kind,
        command=spec.command,
        passed=not result.timed_out and result.exit_code == spec.expected_exit,
        exit_code=result.exit_code,
        expected_exit=spec.expected_exit,
        output=output,
        duration_seconds=result.duration_seconds,
    )


def _command_specs(plan: GatePlan) -> list[CommandSpec]:
    specs = [
        CommandSpec(name=f"setup-{i}", kind="setup", command=command, timeout=plan.policy.max_runtime or 600.0)
        for i, command in enumerate(plan.environment.setup, start=1)
    ]
    specs += [_spec_of(test) for test in plan.tests]
    return specs


def _spec_of(test: TestCommand) -> CommandSpec:
    return CommandSpec(
        name=test.name, kind=test.kind, command=test.command, timeout=test.timeout, expected_exit=test.expected_exit
    )


# --- the gate -----------------------------------------------------------------------------


@dataclass
class _Level:
    level: str
    ran: bool = False
    passed: bool = False
    checks: list[common_pb2.CheckResult] = field(default_factory=list)
    duration: float = 0.0
    skip_reason: str = ""

    def to_proto(self) -> common_pb2.LevelResult:
        return common_pb2.LevelResult(
            level=self.level,
            name=LEVEL_NAMES[self.level],
            ran=self.ran,
            passed=self.passed,
            checks=self.checks,
            duration_seconds=self.duration,
            skip_reason=self.skip_reason,
        )


def normalize_skip_levels(values: Iterable[str]) -> tuple[set[str], list[str]]:
    """The levels to skip (upper-cased) and the values that are not levels."""
    levels, bad = set(), []
    for value in values:
        upper = value.strip().upper()
        if upper in LEVELS:
            levels.add(upper)
        else:
            bad.append(value)
    return levels, bad


def _failed_names(checks: list[common_pb2.CheckResult], limit: int = 5) -> str:
    names = [c.name for c in checks if not c.passed]
    shown = ", ".join(names[:limit])
    return shown + (f", +{len(names) - limit} more" if len(names) > limit else "")


async def run_gate(
    room: Path,
    settings: common_pb2.VerificationSettings,
    *,
    run_id: str = "",
    iteration: int = 0,
    snapshot_commit: str = "",
    kill_grace: float = DEFAULT_KILL_GRACE_SECONDS,
) -> common_pb2.VerificationReport:
    """Runs the gate plan (inline or the room's own) in the clean room `room`."""
    started = time.monotonic()
    skip, _ = normalize_skip_levels(settings.skip_levels)
    loaded = await asyncio.to_thread(load_plan, room, settings.gate_plan_yaml)
    levels = {level: _Level(level) for level in LEVELS}
    notes: list[str] = []

    if loaded.error is not None:
        # The agent must see why: the plan error is the one failed L0 check.
        check = _contract_check("gate-plan", False, str(loaded.error), 0.0)
        levels["L0"] = _Level("L0", ran=True, passed=False, checks=[check])
        for level in LEVELS[1:]:
            levels[level].skip_reason = SKIP_EARLIER_FAILED
        summary = f"L0 failed: the gate plan is invalid: {loaded.error}"
    elif loaded.plan is None:
        for level in LEVELS:
            levels[level].skip_reason = SKIP_NO_PLAN
        summary = "No gate plan found: nothing was verified"
    else:
        plan = loaded.plan
        failed: str | None = None
        deadline = time.monotonic() + plan.policy.max_runtime if plan.policy.max_runtime else None
        for level in LEVELS:
            state = levels[level]
            if level in skip:
                state.skip_reason = SKIP_BY_HARNESS
            elif failed is not None:
                state.skip_reason = SKIP_EARLIER_FAILED
            elif not plan.has_level(level) and not (level == "L1" and plan.environment.setup):
                state.skip_reason = SKIP_NOTHING
            elif level in UNSUPPORTED_LEVELS:
                state.skip_reason = SKIP_NOT_SUPPORTED
                notes.append(f"{level} {LEVEL_NAMES[level]} not supported yet")
            else:
                level_started = time.monotonic()
                if level == "L0":
                    state.checks = await asyncio.to_thread(contract_checks, room, plan.contracts)
                else:
                    state.checks = await _run_commands(room, _command_specs(plan), deadline, kill_grace)
                state.ran = True
                state.passed = all(c.passed for c in state.checks)
                state.duration = time.monotonic() - level_started
                if not state.passed:
                    failed = level
        if failed is not None:
            checks = levels[failed].checks
            count = sum(not c.passed for c in checks)
            summary = f"{failed} failed: {count} of {len(checks)} checks failed ({_failed_names(checks)})"
        else:
            total = sum(len(state.checks) for state in levels.values())
            if total:
                summary = f"All {total} checks passed"
            elif any(state.skip_reason == SKIP_BY_HARNESS for state in levels.values()):
                summary = "No checks ran: the levels with checks were skipped by the harness"
            else:
                summary = "Nothing to verify: the gate plan has no checks"
            if notes:
                summary += f" ({'; '.join(notes)})"

    ran = [level for level in LEVELS if levels[level].ran]
    passed = all(levels[level].passed for level in ran) and loaded.error is None
    report = common_pb2.VerificationReport(
        run_id=run_id,
        iteration=iteration,
        passed=passed,
        summary=summary,
        levels=[levels[level].to_proto() for level in LEVELS],
        duration_seconds=time.monotonic() - started,
        captured_at=now_timestamp(),
        levels_run=ran,
        skipped_levels=[level for level in LEVELS if not levels[level].ran],
        snapshot_commit=snapshot_commit,
        gate_plan_source=loaded.source,
    )
    report.settings.CopyFrom(settings)
    return report


async def _run_commands(
    room: Path, specs: list[CommandSpec], deadline: float | None, kill_grace: float
) -> list[common_pb2.CheckResult]:
    """Runs command checks in order; a failed setup command stops the rest (they would only
    fail for the same reason)."""
    checks = []
    for spec in specs:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                checks.append(
                    common_pb2.CheckResult(
                        name=spec.name,
                        kind=spec.kind,
                        command=spec.command,
                        passed=False,
                        exit_code=-1,
                        expected_exit=spec.expected_exit,
                        output="not run: the gate plan's policy.max_runtime was used up",
                    )
                )
                continue
            spec = CommandSpec(spec.name, spec.kind, spec.command, min(spec.timeout, remaining), spec.expected_exit)
        check = await run_command_check(room, spec, kill_grace)
        checks.append(check)
        if spec.kind == "setup" and not check.passed:
            break
    return checks
