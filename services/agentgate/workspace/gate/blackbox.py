"""L2 blackbox checks: run the product in the clean room and compare what it prints.

Each `blackbox[]` entry is one check of kind `blackbox`: its command runs with `sh -c`, the
fixture file (if any) piped to stdin, within its timeout; then every assertion is
evaluated and reported, passed or not, so one run shows every difference at once.

Without an `exit_code` assertion the command must exit 0: a crash is never a pass.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agentgate.v1 import common_pb2
from agentgate.workspace.gate.json_schema import SchemaLoadError, load_schema_file, schema_errors
from agentgate.workspace.gate.plan import Assertion, BlackboxTest
from agentgate.workspace.gate.static_checks import StaticCheckError, ask_child
from agentgate.workspace.processes import DEFAULT_KILL_GRACE_SECONDS, ProcessResult, run_process
from agentgate.workspace.sandbox import Sandbox

CHECK_KIND = "blackbox"
#: Output kept per stream (comparisons see at most this much).
OUTPUT_BYTES = 4 * 1024 * 1024
#: Lines of each stream shown in the check's output.
SHOWN_LINES = 30
#: Environment of the product: the scrubbed one plus CI=true, like every check.
CHECK_ENV = {"CI": "true"}
#: Characters of a value quoted in an assertion's description.
QUOTE_CHARS = 200
#: Assertions that run a plan's regex or JSON Schema: evaluated in a child process that the
#: gate's time limit can kill (see static_checks); the others are linear in the output.
UNBOUNDED_ASSERTIONS = ("matches_regex", "json_schema")


@dataclass(frozen=True)
class AssertionOutcome:
    """One evaluated assertion."""

    passed: bool
    description: str


def _quote(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return repr(text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "...")


def _normalize(text: str) -> str:
    """Line endings unified and trailing newlines dropped: `echo` and `print` add one."""
    return text.replace("\r\n", "\n").rstrip("\n")


def _parse_json(stdout: str) -> tuple[Any, str]:
    try:
        return json.loads(stdout), ""
    except ValueError as exc:
        return None, f"stdout is not JSON ({exc})"


def evaluate(assertion: Assertion, result: ProcessResult, room: Path) -> AssertionOutcome:
    """Evaluates one assertion against the finished process (blocking file reads; off-loop)."""
    params = assertion.params
    stream = params.get("stream", "stdout")
    text = result.stderr if stream == "stderr" else result.stdout
    kind = assertion.type
    if kind == "exit_code":
        expected = params["expected"]
        ok = result.exit_code == expected and not result.timed_out
        return AssertionOutcome(ok, f"exit_code == {expected}" + ("" if ok else f": got {result.exit_code}"))
    if kind == "contains":
        ok = params["value"] in text
        return AssertionOutcome(ok, f"{stream} contains {_quote(params['value'])}" + ("" if ok else ": not found"))
    if kind == "matches_regex":
        ok = re.search(params["pattern"], text, re.MULTILINE) is not None
        return AssertionOutcome(
            ok, f"{stream} matches /{params['pattern']}/" + ("" if ok else ": no match")
        )
    if kind == "equals_file":
        return _equals_file(params["file"], text, stream, room)
    if kind == "json_equals":
        data, problem = _parse_json(result.stdout)
        if problem:
            return AssertionOutcome(False, f"stdout equals JSON {_quote(params['expected'])}: {problem}")
        ok = data == params["expected"]
        detail = "" if ok else f": got {_quote(data)}"
        return AssertionOutcome(ok, f"stdout equals JSON {_quote(params['expected'])}{detail}")
    if kind == "json_schema":
        return _json_schema(params["schema"], result.stdout, room)
    raise ValueError(f"unknown assertion type {kind!r}")


def _equals_file(relative: str, text: str, stream: str, room: Path) -> AssertionOutcome:
    what = f"{stream} equals {relative}"
    target = (room / relative).resolve()
    if not target.is_relative_to(room.resolve()) or not target.is_file():
        return AssertionOutcome(False, f"{what}: {relative} is missing")
    expected = target.read_text(encoding="utf-8", errors="replace")
    if _normalize(expected) == _normalize(text):
        return AssertionOutcome(True, what)
    want, got = _normalize(expected).split("\n"), _normalize(text).split("\n")
    for number, (a, b) in enumerate(zip(want, got, strict=False), start=1):
        if a != b:
            return AssertionOutcome(False, f"{what}: line {number} differs: expected {_quote(a)}, got {_quote(b)}")
    return AssertionOutcome(False, f"{what}: expected {len(want)} line(s), got {len(got)}")


def _json_schema(schema: Any, stdout: str, room: Path) -> AssertionOutcome:
    label = f"stdout matches schema {schema}" if isinstance(schema, str) else "stdout matches the inline schema"
    try:
        loaded = load_schema_file(room, schema) if isinstance(schema, str) else schema
    except SchemaLoadError as exc:
        return AssertionOutcome(False, f"{label}: {exc}")
    data, problem = _parse_json(stdout)
    if problem:
        return AssertionOutcome(False, f"{label}: {problem}")
    errors = schema_errors(data, loaded)
    if errors:
        return AssertionOutcome(False, f"{label}:\n    " + "\n    ".join(errors))
    return AssertionOutcome(True, label)


def _tail(text: str, lines: int = SHOWN_LINES) -> str:
    kept = text.rstrip("\n").split("\n")
    shown = "\n".join(kept[-lines:])
    return shown if len(kept) <= lines else f"[... {len(kept) - lines} earlier lines]\n{shown}"


def _read_fixture(room: Path, relative: str) -> bytes | None:
    target = (room / relative).resolve()
    if not target.is_relative_to(room.resolve()) or not target.is_file():
        return None
    return target.read_bytes()


async def _outcomes(
    room: Path, test: BlackboxTest, result: ProcessResult, timeout: float | None, kill_grace: float
) -> list[AssertionOutcome]:
    if not any(a.type in UNBOUNDED_ASSERTIONS for a in test.assertions):
        return await asyncio.to_thread(lambda: [evaluate(a, result, room) for a in test.assertions])
    request = {
        "task": "assertions",
        "room": str(room),
        "assertions": [asdict(a) for a in test.assertions],
        "result": asdict(result),
    }
    try:
        answer = await ask_child(room, request, f"{test.name}: assertions", timeout, kill_grace)
    except StaticCheckError as exc:
        return [AssertionOutcome(False, str(exc))]
    return [AssertionOutcome(bool(item["passed"]), str(item["description"])) for item in answer]


async def run_blackbox(
    room: Path,
    test: BlackboxTest,
    timeout: float | None = None,
    kill_grace: float = DEFAULT_KILL_GRACE_SECONDS,
    sandbox: Sandbox | None = None,
) -> common_pb2.CheckResult:
    """Runs one blackbox test in `room` (inside `sandbox` when given); `timeout` (if given)
    caps the test's own timeout."""
    limit = test.timeout if timeout is None else min(test.timeout, timeout)
    expected_exit = next((a.params["expected"] for a in test.assertions if a.type == "exit_code"), 0)
    check = common_pb2.CheckResult(name=test.name, kind=CHECK_KIND, command=test.command, expected_exit=expected_exit)
    stdin = b""
    if test.fixture:
        fixture = await asyncio.to_thread(_read_fixture, room, test.fixture)
        if fixture is None:
            check.passed, check.exit_code = False, -1
            check.output = f"not run: the fixture {test.fixture} is missing from the snapshot"
            return check
        stdin = fixture
    result = await run_process(
        ["/bin/sh", "-c", test.command],
        cwd=room,
        env=CHECK_ENV,
        # No fixture: an empty stdin, so a product that reads stdin does not wait forever.
        stdin=stdin,
        timeout=limit,
        kill_grace=kill_grace,
        capture_limit=OUTPUT_BYTES,
        sandbox=sandbox,
    )
    left = None if timeout is None else timeout - result.duration_seconds
    outcomes = await _outcomes(room, test, result, left, kill_grace)
    if not any(a.type == "exit_code" for a in test.assertions):
        ok = result.exit_code == 0 and not result.timed_out
        implicit = "exit_code == 0 (implicit)" + ("" if ok else f": got {result.exit_code}")
        outcomes.insert(0, AssertionOutcome(ok, implicit))
    lines = []
    if result.timed_out:
        lines.append(f"[timed out after {limit:g}s]")
    lines += [f"{'PASS' if o.passed else 'FAIL'} {o.description}" for o in outcomes]
    lines += ["--- stdout ---", _tail(result.stdout)]
    if result.stderr.strip():
        lines += ["--- stderr ---", _tail(result.stderr)]
    check.passed = not result.timed_out and all(o.passed for o in outcomes)
    check.exit_code = result.exit_code
    check.output = "\n".join(lines)
    check.duration_seconds = result.duration_seconds
    return check
