"""L3 sanity rules and L2 blackbox assertions on plain data (the gate matrix runs them
through the service)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentgate.workspace.gate.blackbox import evaluate, run_blackbox
from agentgate.workspace.gate.plan import Assertion, BlackboxTest, Sanity
from agentgate.workspace.gate.sanity import debug_statement, is_debug_file, sanity_checks
from agentgate.workspace.processes import ProcessResult


def test_max_file_mb_lists_the_big_files_biggest_first() -> None:
    [check] = sanity_checks(Sanity(max_file_mb=1), {"a.bin": 3 * 1024 * 1024, "b.bin": 2 * 1024 * 1024, "c": 10})
    assert (check.name, check.kind, check.passed) == ("sanity:max_file_mb", "sanity", False)
    assert check.output == "files larger than 1 MB:\na.bin (3.0 MB)\nb.bin (2.0 MB)"
    [ok] = sanity_checks(Sanity(max_file_mb=1), {"c": 10})
    assert ok.passed and ok.output == "no file is larger than 1 MB (1 files)"


def test_debug_artifacts_files_and_added_lines() -> None:
    files = {"src/app.py": 1, "src/app.py.orig": 1, "pkg/__pycache__/m.cpython-311.pyc": 1, ".DS_Store": 1, "core": 1}
    lines = [
        ("src/app.py", 4, "    breakpoint()"),
        ("src/app.py", 5, "import pdb; pdb.set_trace()"),
        ("web/app.ts", 9, "  debugger;"),
        ("web/app.ts", 10, "  const debuggerMode = true;"),
        ("notes.md", 1, "<<<<<<< HEAD"),
        ("src/app.py", 6, "print('ok')"),
    ]
    [check] = sanity_checks(Sanity(forbid_debug_artifacts=True), files, lines)
    assert not check.passed
    assert check.output.splitlines() == [
        "debug artifacts:",
        ".DS_Store: debug artifact file",
        "core: debug artifact file",
        "pkg/__pycache__/m.cpython-311.pyc: debug artifact file",
        "src/app.py.orig: debug artifact file",
        "src/app.py:4: debugger statement: breakpoint()",
        "src/app.py:5: debugger statement: import pdb; pdb.set_trace()",
        "web/app.ts:9: debugger statement: debugger;",
        "notes.md:1: merge conflict marker: <<<<<<< HEAD",
    ]
    assert sanity_checks(Sanity(forbid_debug_artifacts=True), {"src/app.py": 1}, [])[0].passed


def test_debug_helpers() -> None:
    assert is_debug_file("a/b.swp") and not is_debug_file("a/b.py")
    assert debug_statement("x.rb", "  binding.pry") == "debugger statement"
    assert debug_statement("x.go", "runtime.Breakpoint()") == "debugger statement"
    assert debug_statement("x.py", "# call breakpoint() when debugging") == ""


def result(stdout: str = "", stderr: str = "", code: int = 0) -> ProcessResult:
    return ProcessResult(exit_code=code, stdout=stdout, stderr=stderr, duration_seconds=0.1, timed_out=False)


@pytest.mark.parametrize(
    ("assertion", "process", "passed", "description"),
    [
        (Assertion("exit_code", {"expected": 3}), result(code=3), True, "exit_code == 3"),
        (Assertion("exit_code", {"expected": 0}), result(code=1), False, "exit_code == 0: got 1"),
        (Assertion("contains", {"value": "err", "stream": "stderr"}), result(stderr="an err"), True,
         "stderr contains 'err'"),
        (Assertion("contains", {"value": "5"}), result("4\n"), False, "stdout contains '5': not found"),
        (Assertion("matches_regex", {"pattern": "^b$"}), result("a\nb\n"), True, "stdout matches /^b$/"),
        (Assertion("json_equals", {"expected": {"a": [1, 2]}}), result('{"a": [1, 2.0]}'), True,
         'stdout equals JSON \'{"a": [1, 2]}\''),
        (Assertion("json_equals", {"expected": 1}), result("nope"), False,
         "stdout equals JSON '1': stdout is not JSON (Expecting value: line 1 column 1 (char 0))"),
        (Assertion("json_schema", {"schema": {"type": "array", "items": {"type": "string"}}}), result('["a", 2]'),
         False, "stdout matches the inline schema:\n    $[1]: 2 is not of type 'string'"),
        (Assertion("json_schema", {"schema": "missing.json"}), result("{}"), False,
         "stdout matches schema missing.json: schema file missing.json is missing"),
    ],
)
def test_assertions(tmp_path: Path, assertion: Assertion, process: ProcessResult, passed: bool, description: str) -> None:
    outcome = evaluate(assertion, process, tmp_path)
    assert (outcome.passed, outcome.description) == (passed, description)


def test_equals_file_normalizes_line_endings_and_final_newline(tmp_path: Path) -> None:
    (tmp_path / "want.txt").write_text("a\nb\n")
    equals = Assertion("equals_file", {"file": "want.txt"})
    assert evaluate(equals, result("a\r\nb"), tmp_path).passed
    assert evaluate(equals, result("a\nb\nc\n"), tmp_path).description == "stdout equals want.txt: expected 2 line(s), got 3"
    missing = Assertion("equals_file", {"file": "nope.txt"})
    assert evaluate(missing, result(""), tmp_path).description == "stdout equals nope.txt: nope.txt is missing"


def test_schema_file_may_be_yaml(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("type: object\nrequired: [a]\n")
    outcome = evaluate(Assertion("json_schema", {"schema": "s.yaml"}), result(json.dumps({"b": 1})), tmp_path)
    assert not outcome.passed and "$: 'a' is a required property" in outcome.description
    (tmp_path / "bad.json").write_text('{"type": 12}')
    outcome = evaluate(Assertion("json_schema", {"schema": "bad.json"}), result("{}"), tmp_path)
    assert "bad.json is not a valid JSON Schema" in outcome.description


async def test_run_blackbox_implicit_exit_code_fixture_and_timeout(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("hello\n")
    echo = BlackboxTest(name="echo", command="cat; exit 4", fixture="in.txt",
                        assertions=[Assertion("contains", {"value": "hello"})])
    check = await run_blackbox(tmp_path, echo)
    assert not check.passed and (check.exit_code, check.expected_exit) == (4, 0)
    assert check.output.splitlines()[:4] == [
        "FAIL exit_code == 0 (implicit): got 4", "PASS stdout contains 'hello'", "--- stdout ---", "hello"
    ]
    missing = await run_blackbox(tmp_path, BlackboxTest(name="m", command="true", fixture="nope.txt"))
    assert not missing.passed and missing.output == "not run: the fixture nope.txt is missing from the snapshot"
    slow = await run_blackbox(tmp_path, BlackboxTest(name="s", command="sleep 5", timeout=0.2), kill_grace=0.5)
    assert not slow.passed and slow.output.startswith("[timed out after 0.2s]")
    # No fixture: stdin is empty, a product reading it does not hang.
    reader = await run_blackbox(tmp_path, BlackboxTest(name="r", command="cat", timeout=5))
    assert reader.passed
