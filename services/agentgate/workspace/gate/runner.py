"""The verification gate: runs a gate plan in a clean room and reports per level and check.

Levels run in order L0 → L3 and a failed level stops the later ones (reported as not
run); `skip_levels` skips levels on purpose:
- L0 contracts (static, `contract_checks`) plus the security scan of the change
  (`security_scan`, kind `security`);
- L1 tests: `environment.setup` first, then the plan's commands;
- L2 blackbox (`blackbox`): run the product, compare its output;
- L3 sanity (`sanity`): file sizes and debug leftovers.

The plan is the inline one, the base commit's verify.yaml, or one detected from the base
commit's files (`plan_detection`), as `VerificationSettings.gate_plan_source` says; never
the snapshot's own, which the agent wrote (`base_plan`, docs/verify-yaml.md). L0 also fails
when the change touches a protected path, and the gate fails when there is no plan and
none is detected, unless the work order allows it (`allow_unverified`).
`policy.max_runtime` bounds every command and schema check of the gate together.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agentgate.common.errors import FieldViolation
from agentgate.common.timeutil import now_timestamp
from agentgate.harness.verification import gate_plan_source_problem, uses_inline_plan
from agentgate.v1 import common_pb2
from agentgate.workspace import git as gitops
from agentgate.workspace.gate.base_plan import (
    committed_plan_file,
    detect_at_commit,
    protected_changes,
    snapshot_file_sizes,
)
from agentgate.workspace.gate.blackbox import run_blackbox
from agentgate.workspace.gate.plan import (
    LEVEL_NAMES,
    LEVELS,
    BlackboxTest,
    Contracts,
    GatePlan,
    GatePlanError,
    Policy,
    TestCommand,
    parse_gate_plan,
)
from agentgate.workspace.gate.sanity import sanity_checks
from agentgate.workspace.gate.security_scan import Change, load_change, scan_change
from agentgate.workspace.gate.static_checks import bounded_schema_problems
from agentgate.workspace.processes import DEFAULT_KILL_GRACE_SECONDS, run_process
from agentgate.workspace.sandbox import Sandbox

#: Output kept per check: its tail, where the failure usually is.
CHECK_OUTPUT_BYTES = 64 * 1024
SKIP_BY_HARNESS = "skipped by harness"
SKIP_EARLIER_FAILED = "an earlier level failed"
SKIP_NOTHING = "nothing to check in the gate plan"
SKIP_NO_PLAN = "no gate plan"
#: Environment of every check: the scrubbed one plus CI=true, as tools expect in CI.
CHECK_ENV = {"CI": "true"}
#: Timeout of one setup command when the plan sets no policy.max_runtime.
DEFAULT_SETUP_TIMEOUT_SECONDS = 600.0
MAX_RUNTIME_USED_UP = "not run: the gate plan's policy.max_runtime was used up"

NAMING_PATTERNS = {
    "kebab-case": re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$"),
    "snake_case": re.compile(r"^_*[a-z0-9]+(_[a-z0-9]+)*_*$"),
    "camelCase": re.compile(r"^[a-z][a-zA-Z0-9]*$"),
    "PascalCase": re.compile(r"^[A-Z][a-zA-Z0-9]*$"),
}
NOTHING_VERIFIED = "nothing-verified"
UNVERIFIED = (
    "nothing was verified: the harness gives no inline plan, the base commit has no verify.yaml or "
    ".agentgate/verify.yaml, and no plan was detected from its CI or tooling; add a plan, or set "
    "verification.allow_unverified to accept an unverified change"
)


@dataclass
class LoadedPlan:
    """The plan a verification uses and where it came from (inline, a file path,
    detected, none), or why there is none usable."""

    source: str
    plan: GatePlan | None = None
    error: GatePlanError | None = None
    #: For a detected plan: what it was detected from.
    note: str = ""


def plan_source_violations(
    settings: common_pb2.VerificationSettings, prefix: str = "settings"
) -> list[FieldViolation]:
    """Settings whose gate plan source contradicts the plan they give (never silently ignored)."""
    source = settings.gate_plan_source
    if source not in common_pb2.GatePlanSource.DESCRIPTOR.values_by_number:
        return [FieldViolation(f"{prefix}.gate_plan_source", f"unknown value {source}")]
    if problem := gate_plan_source_problem(settings):
        return [FieldViolation(f"{prefix}.gate_plan_yaml", problem)]
    return []


def _parse(text: str, source: str) -> LoadedPlan:
    try:
        return LoadedPlan(source=source, plan=parse_gate_plan(text, source))
    except GatePlanError as exc:
        return LoadedPlan(source=source, error=exc)


async def load_plan(settings: common_pb2.VerificationSettings, repo: Path | None, base_commit: str) -> LoadedPlan:
    """The plan of a verification, from the harness or the base commit (never the snapshot).

    `gate_plan_source` AUTO (the default): the inline plan if given, else the base commit's
    verify.yaml, else a plan detected from the base commit's files, else none. FILE: the
    base commit's verify.yaml only (missing is an error). INLINE: the inline plan only
    (empty is an error). Without `repo` and `base_commit` only an inline plan exists.
    """
    mode, inline = settings.gate_plan_source, settings.gate_plan_yaml
    if uses_inline_plan(settings):
        if not inline.strip():
            problem = "gate_plan_source is inline but the harness gives no gate_plan_yaml"
            return LoadedPlan(source="inline", error=GatePlanError(problem, None, "harness"))
        return _parse(inline, "inline")
    found, detected = None, None
    if repo is not None and base_commit:
        try:
            found = await committed_plan_file(repo, base_commit)
            if found is None and mode != common_pb2.GATE_PLAN_SOURCE_FILE:
                detected = await detect_at_commit(repo, base_commit)
        except gitops.GitError as exc:
            # Fail closed: with the base commit unreadable there is no trusted plan to run.
            problem = f"the base commit's plan could not be read: {exc}"
            return LoadedPlan(source="none", error=GatePlanError(problem, None, "harness"))
    if found is not None:
        source, text = found
        return _parse(text, source)
    if mode == common_pb2.GATE_PLAN_SOURCE_FILE:
        problem = "gate_plan_source is file but the base commit has no verify.yaml or .agentgate/verify.yaml"
        return LoadedPlan(source="none", error=GatePlanError(problem, None, "harness"))
    if detected is None:
        return LoadedPlan(source="none")
    return LoadedPlan(source="detected", plan=detected.plan, note=detected.describe())


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


async def contract_checks(
    room: Path,
    contracts: Contracts,
    deadline: float | None = None,
    kill_grace: float = DEFAULT_KILL_GRACE_SECONDS,
) -> list[common_pb2.CheckResult]:
    """The plan's L0 checks; schema rules run in a child process stopped at `deadline`
    (a time.monotonic() value) or after STATIC_CHECK_TIMEOUT_SECONDS each."""
    checks = await asyncio.to_thread(_file_checks, room, contracts)
    for schema in contracts.required_schemas:
        started = time.monotonic()
        remaining = None if deadline is None else deadline - started
        problems = await bounded_schema_problems(room, schema, remaining, kill_grace)
        output = "\n".join(problems) if problems else f"{schema.file} satisfies its {len(schema.rules)} rule(s)"
        checks.append(_contract_check(f"schema:{schema.file}", not problems, output, time.monotonic() - started))
    return checks


def _file_checks(room: Path, contracts: Contracts) -> list[common_pb2.CheckResult]:
    """Required files, forbidden patterns and naming (blocking file-system work)."""
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
    room: Path, spec: CommandSpec, kill_grace: float = DEFAULT_KILL_GRACE_SECONDS, sandbox: Sandbox | None = None
) -> common_pb2.CheckResult:
    """Runs one command via `sh -c` in the clean room (inside `sandbox` when given); passed
    iff it exits as expected in time."""
    result = await run_process(
        ["/bin/sh", "-c", spec.command],
        cwd=room,
        env=CHECK_ENV,
        timeout=spec.timeout,
        kill_grace=kill_grace,
        merge_stderr=True,
        capture_limit=CHECK_OUTPUT_BYTES,
        capture_keep="tail",
        sandbox=sandbox,
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


def _setup_specs(plan: GatePlan) -> list[CommandSpec]:
    timeout = plan.policy.max_runtime or DEFAULT_SETUP_TIMEOUT_SECONDS
    return [
        CommandSpec(name=f"setup-{i}", kind="setup", command=command, timeout=timeout)
        for i, command in enumerate(plan.environment.setup, start=1)
    ]


def _spec_of(test: TestCommand) -> CommandSpec:
    return CommandSpec(
        name=test.name, kind=test.kind, command=test.command, timeout=test.timeout, expected_exit=test.expected_exit
    )


def _not_run(name: str, kind: str, command: str, expected_exit: int, why: str) -> common_pb2.CheckResult:
    return common_pb2.CheckResult(
        name=name, kind=kind, command=command, passed=False, exit_code=-1, expected_exit=expected_exit, output=why
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


def _file_sizes(room: Path) -> dict[str, int]:
    """Size of every file of the clean room as the snapshot made it (before any command)."""
    sizes = {}
    for relative in _files(room):
        try:
            sizes[relative] = (room / relative).lstat().st_size
        except OSError:
            continue
    return sizes


@dataclass
class _GateRun:
    """One run of a plan in a clean room: the state the levels share."""

    room: Path
    plan: GatePlan
    kill_grace: float
    deadline: float | None
    files: dict[str, int]
    change: Change | None
    change_error: str = ""
    #: Failed L0 checks that no plan or skip_levels can remove: protected paths changed,
    #: nothing verified.
    guard: list[common_pb2.CheckResult] = field(default_factory=list)
    #: L0 is in skip_levels: it runs only when `guard` has checks, and only those.
    skip_l0: bool = False
    setup_done: bool = False
    sandbox: Sandbox | None = None

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def security_applies(self) -> bool:
        return self.plan.security.enabled and (self.change is not None or bool(self.change_error))

    def has_checks(self, level: str) -> bool:
        if level == "L0":
            return bool(self.guard) or (not self.skip_l0 and (self.plan.has_level("L0") or self.security_applies()))
        if level == "L1":
            return self.plan.has_level("L1") or bool(self.plan.environment.setup)
        return self.plan.has_level(level)

    async def run_level(self, level: str) -> list[common_pb2.CheckResult]:
        if level == "L0":
            checks = list(self.guard)
            if not self.skip_l0:
                checks += await contract_checks(self.room, self.plan.contracts, self.deadline, self.kill_grace)
                if self.security_applies():
                    checks.append(await self._security())
            return checks
        if level == "L1":
            setup = await self._setup()
            if setup and not setup[-1].passed:
                return setup
            return setup + await self._commands([_spec_of(test) for test in self.plan.tests])
        if level == "L2":
            setup = await self._setup()
            if setup and not setup[-1].passed:
                return setup
            return setup + await self._blackbox(self.plan.blackbox)
        assert self.plan.sanity is not None
        lines = list(self.change.added_lines()) if self.change is not None else []
        return sanity_checks(self.plan.sanity, self.files, lines)

    async def _security(self) -> common_pb2.CheckResult:
        if self.change is None:
            return _not_run("security-scan", "security", "", 0, f"the change could not be read: {self.change_error}")
        return await asyncio.to_thread(scan_change, self.change, self.plan.security)

    async def _setup(self) -> list[common_pb2.CheckResult]:
        """environment.setup, once, before the first level that runs commands; a failed
        setup command stops the rest (they would only fail for the same reason)."""
        if self.setup_done:
            return []
        self.setup_done = True
        checks = []
        for spec in _setup_specs(self.plan):
            checks.extend(await self._commands([spec]))
            if not checks[-1].passed:
                break
        return checks

    async def _commands(self, specs: list[CommandSpec]) -> list[common_pb2.CheckResult]:
        checks = []
        for spec in specs:
            remaining = self.remaining()
            if remaining is not None and remaining <= 0:
                checks.append(_not_run(spec.name, spec.kind, spec.command, spec.expected_exit, MAX_RUNTIME_USED_UP))
                continue
            if remaining is not None:
                spec = CommandSpec(spec.name, spec.kind, spec.command, min(spec.timeout, remaining), spec.expected_exit)
            checks.append(await run_command_check(self.room, spec, self.kill_grace, self.sandbox))
        return checks

    async def _blackbox(self, tests: list[BlackboxTest]) -> list[common_pb2.CheckResult]:
        checks = []
        for test in tests:
            remaining = self.remaining()
            if remaining is not None and remaining <= 0:
                checks.append(_not_run(test.name, "blackbox", test.command, 0, MAX_RUNTIME_USED_UP))
                continue
            checks.append(await run_blackbox(self.room, test, remaining, self.kill_grace, self.sandbox))
        return checks


@dataclass
class GateInputs:
    """What a gate run reads from git before any command runs, none of it from the room:
    the plan, the change and the protected paths it touches, the snapshot's file sizes."""

    loaded: LoadedPlan
    change: Change | None = None
    change_error: str = ""
    #: The snapshot's file sizes for L3 (None: not needed, or git could not say them).
    files: dict[str, int] | None = None
    guard: list[common_pb2.CheckResult] = field(default_factory=list)


async def read_gate_inputs(
    settings: common_pb2.VerificationSettings,
    *,
    snapshot_commit: str = "",
    repo: Path | None = None,
    base_commit: str = "",
) -> GateInputs:
    """The git reads of a gate run (see `run_gate` for `repo` and `base_commit`): they
    need no clean room, so the caller may start them while the room is being made."""
    skip, _ = normalize_skip_levels(settings.skip_levels)
    inputs = GateInputs(await load_plan(settings, repo, base_commit))
    if inputs.loaded.error is not None:
        return inputs
    plan = inputs.loaded.plan or GatePlan()
    # The change feeds the security scan (L0) and the debugger-statement check (L3).
    wants_change = (plan.security.enabled and "L0" not in skip) or (
        plan.sanity is not None and plan.sanity.forbid_debug_artifacts and "L3" not in skip
    )

    async def changed() -> None:
        if repo is not None and base_commit and snapshot_commit and wants_change:
            try:
                inputs.change = await load_change(repo, base_commit, snapshot_commit)
            except gitops.GitError as exc:
                inputs.change_error = str(exc)

    async def sizes() -> None:
        # Only L3 reads the sizes; the snapshot's tree has them without a walk of the room.
        if plan.sanity is not None and "L3" not in skip and repo is not None and snapshot_commit:
            with contextlib.suppress(gitops.GitError):
                inputs.files = await snapshot_file_sizes(repo, snapshot_commit)

    # Three independent reads of git, side by side.
    _, _, inputs.guard = await asyncio.gather(
        changed(), sizes(), _protected_checks(settings, repo, base_commit, snapshot_commit)
    )
    return inputs


async def run_gate(
    room: Path,
    settings: common_pb2.VerificationSettings,
    *,
    run_id: str = "",
    iteration: int = 0,
    snapshot_commit: str = "",
    kill_grace: float = DEFAULT_KILL_GRACE_SECONDS,
    repo: Path | None = None,
    base_commit: str = "",
    sandbox: Callable[[Policy], Sandbox | None] | None = None,
    inputs: GateInputs | None = None,
) -> common_pb2.VerificationReport:
    """Runs the gate plan in the clean room `room`.

    `repo` and `base_commit` (the workspace's git repository and the commit the work order
    started from) give the plan when the harness has none, and let L0 check the change
    `base_commit..snapshot_commit` for protected paths and secrets (and L3 look for
    debugger statements in its added lines); without them only an inline plan is used and
    the change is not checked. `inputs`: what `read_gate_inputs` read for these arguments
    (read here when not given).
    `sandbox(policy)` makes the sandbox every command check runs in, from the plan's policy
    (docs/sandbox.md).
    """
    started = time.monotonic()
    skip, _ = normalize_skip_levels(settings.skip_levels)
    if inputs is None:
        inputs = await read_gate_inputs(
            settings, snapshot_commit=snapshot_commit, repo=repo, base_commit=base_commit
        )
    loaded = inputs.loaded
    levels = {level: _Level(level) for level in LEVELS}

    if loaded.error is not None:
        # The agent must see why: the plan error is the one failed L0 check.
        output = str(loaded.error)
        if loaded.source not in ("inline", "none"):
            # Otherwise the agent would try to fix the file, which changes nothing.
            output += f"\n({loaded.source} is read from the base commit: editing it in the workspace has no effect)"
        check = _contract_check("gate-plan", False, output, 0.0)
        levels["L0"] = _Level("L0", ran=True, passed=False, checks=[check])
        for level in LEVELS[1:]:
            levels[level].skip_reason = SKIP_EARLIER_FAILED
        summary = f"L0 failed: the gate plan is invalid: {loaded.error}"
    else:
        plan = loaded.plan or GatePlan()
        guard = list(inputs.guard)
        files = inputs.files
        if files is None and plan.sanity is not None and "L3" not in skip:
            # No sizes from git (no repository, or it could not say): the room's, before any command ran.
            files = await asyncio.to_thread(_file_sizes, room)
        files = files or {}
        deadline = time.monotonic() + plan.policy.max_runtime if plan.policy.max_runtime else None
        if loaded.plan is None and not settings.allow_unverified:
            guard.append(_contract_check(NOTHING_VERIFIED, False, UNVERIFIED, 0.0))
        gate = _GateRun(
            room, plan, kill_grace, deadline, files, inputs.change, inputs.change_error, guard=guard,
            skip_l0="L0" in skip,
        )
        gate.sandbox = sandbox(plan.policy) if sandbox is not None else None
        failed: str | None = None
        for level in LEVELS:
            state = levels[level]
            if level in skip and not (level == "L0" and guard):
                state.skip_reason = SKIP_BY_HARNESS
            elif failed is not None:
                state.skip_reason = SKIP_EARLIER_FAILED
            elif not gate.has_checks(level):
                state.skip_reason = SKIP_NOTHING if loaded.plan is not None else SKIP_NO_PLAN
            else:
                level_started = time.monotonic()
                state.checks = await gate.run_level(level)
                state.ran = True
                state.passed = all(c.passed for c in state.checks)
                state.duration = time.monotonic() - level_started
                if not state.passed:
                    failed = level
        summary = _summary(levels, failed, loaded)

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


async def _protected_checks(
    settings: common_pb2.VerificationSettings, repo: Path | None, base_commit: str, snapshot_commit: str
) -> list[common_pb2.CheckResult]:
    """One failed check per protected path the change touches (none when it touches none)."""
    if repo is None or not base_commit or not snapshot_commit:
        return []
    started = time.monotonic()
    try:
        changed = await gitops.changed_files(repo, base_commit, snapshot_commit)
    except gitops.GitError as exc:
        # Fail closed: an unreadable change may hide a rewritten plan.
        return [_contract_check("protected-paths", False, f"the change could not be read: {exc}", 0.0)]
    found = protected_changes(changed, settings.protected_paths, settings.allow_protected_changes)
    duration = time.monotonic() - started
    return [
        _contract_check(
            f"protected:{path}",
            False,
            f"the change touches the protected path {path} (protected by {guard}): the gate's plan and the "
            "project's CI come from the base commit, not from the agent; a profile can allow this with "
            "verification.allow_protected_changes",
            duration,
        )
        for path, guard in found
    ]


def _summary(levels: dict[str, _Level], failed: str | None, loaded: LoadedPlan) -> str:
    suffix = f" (plan {loaded.note})" if loaded.note else ""
    if failed is not None:
        checks = levels[failed].checks
        count = sum(not c.passed for c in checks)
        return f"{failed} failed: {count} of {len(checks)} checks failed ({_failed_names(checks)}){suffix}"
    total = sum(len(state.checks) for state in levels.values())
    if loaded.plan is None:
        # Only reached when the work order allows an unverified change.
        if total:
            return "No gate plan found: only the security scan of the change ran, and it passed (allow_unverified)"
        return "No gate plan found: nothing was verified (allow_unverified)"
    if total:
        return f"All {total} checks passed{suffix}"
    if any(state.skip_reason == SKIP_BY_HARNESS for state in levels.values()):
        return "No checks ran: the levels with checks were skipped by the harness"
    return "Nothing to verify: the gate plan has no checks"
