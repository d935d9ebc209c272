"""A gate plan detected from a project without one: workflows first, then markers."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from agentgate.workspace.gate.detection import classify_step, detect_gate_plan


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


WORKFLOW = """\
    name: CI
    on: push
    jobs:
      lint:
        runs-on: ubuntu-latest
        steps:
          - uses: actions/checkout@v4
          - run: pip install ruff
          - run: ruff check .
      test:
        runs-on: ${{ matrix.os }}
        defaults: {run: {working-directory: backend}}
        steps:
          - uses: actions/setup-python@v5
          - name: Install
            run: |
              python -m pip install --upgrade pip
              pip install -e .[dev]
          - name: Type check
            run: mypy src
          - name: Unit tests
            run: |
              pytest -q
              pytest -q tests/slow
          - name: Matrix only
            run: echo ${{ matrix.python }}
          - name: Build
            run: python -m build
            working-directory: dist
          - name: Publish
            run: twine upload dist/*
          - name: Say hi
            run: echo hi
          - name: PowerShell
            shell: pwsh
            run: Write-Host test
      windows:
        runs-on: windows-latest
        steps:
          - run: pytest
"""


def test_workflow_run_steps_become_setup_and_tests(tmp_path: Path) -> None:
    write(tmp_path, {".github/workflows/ci.yml": WORKFLOW, "pyproject.toml": "[tool.pytest.ini_options]\n"})
    detected = detect_gate_plan(tmp_path)
    assert detected is not None
    plan = detected.plan
    assert plan.environment.setup == [
        "pip install ruff",
        'cd "backend"\nset -e\npython -m pip install --upgrade pip\npip install -e .[dev]',
    ]
    assert [(t.name, t.kind, t.command) for t in plan.tests] == [
        ("lint-3", "lint", "ruff check ."),
        ("type-check", "typecheck", 'cd "backend" && mypy src'),
        ("unit-tests", "test", 'cd "backend"\nset -e\npytest -q\npytest -q tests/slow'),
        ("build", "build", 'cd "dist" && python -m build'),
    ]
    assert detected.sources == [".github/workflows/ci.yml"]
    description = detected.describe()
    assert description.startswith("detected from .github/workflows/ci.yml (4 workflow step(s) skipped: ")
    assert "Matrix only: uses expressions or another shell" in description
    assert "Publish: not runnable in a clean room" in description


def test_makefile_test_target_wins_over_language_markers(tmp_path: Path) -> None:
    write(tmp_path, {"Makefile": "build:\n\tcc x.c\n\ntest: build\n\t./run-tests\n", "go.mod": "module x\n"})
    detected = detect_gate_plan(tmp_path)
    assert detected is not None
    assert [(t.name, t.command) for t in detected.plan.tests] == [("make-test", "make test")]
    assert detected.sources == ["Makefile (test target)"]


def test_each_marker(tmp_path: Path) -> None:
    package = {"name": "x", "scripts": {"test": "jest"}}
    write(
        tmp_path,
        {
            "package.json": json.dumps(package),
            "package-lock.json": "{}",
            "go.mod": "module x\n",
            "Cargo.toml": "[package]\nname = 'x'\n",
            "tests/unit/test_a.py": "def test_a(): pass\n",
            "Makefile": "TEST := 1\nlint:\n\ttrue\n",  # no test target
        },
    )
    detected = detect_gate_plan(tmp_path)
    assert detected is not None
    assert detected.plan.environment.setup == ["npm ci"]
    assert [t.command for t in detected.plan.tests] == [
        "npm test", "go test ./...", "cargo test", detected.plan.tests[3].command
    ]
    assert detected.plan.tests[3].command.endswith(" -m pytest -q")
    assert detected.sources == ["package.json (test script)", "go.mod", "Cargo.toml", "tests/ (pytest)"]


def test_npm_default_test_script_and_nothing_found(tmp_path: Path) -> None:
    write(tmp_path, {"package.json": json.dumps({"scripts": {"test": 'echo "Error: no test specified" && exit 1'}})})
    assert detect_gate_plan(tmp_path) is None


def test_pytest_markers(tmp_path: Path) -> None:
    for files, source in [
        ({"pytest.ini": "[pytest]\n"}, "pytest.ini"),
        ({"setup.cfg": "[tool:pytest]\n"}, "setup.cfg"),
        ({"tox.ini": "[pytest]\n"}, "tox.ini"),
        ({"conftest.py": ""}, "conftest.py"),
        ({"test_top.py": ""}, "test_*.py"),
    ]:
        root = write(tmp_path / source.replace("*", "x"), files)
        detected = detect_gate_plan(root)
        assert detected is not None and detected.sources == [f"{source} (pytest)"]
    assert detect_gate_plan(write(tmp_path / "cfg-only", {"setup.cfg": "[metadata]\n"})) is None


def test_broken_workflow_falls_back_to_markers(tmp_path: Path) -> None:
    write(tmp_path, {".github/workflows/ci.yml": "jobs: [unclosed\n", "go.mod": "module x\n"})
    detected = detect_gate_plan(tmp_path)
    assert detected is not None and detected.sources == ["go.mod"]


def test_classify_step() -> None:
    assert classify_step("pip install -r requirements-test.txt") == "setup"
    assert classify_step("npm ci") == "setup"
    assert classify_step("pip install x\npytest") == "test"
    assert classify_step("npm run lint") == "lint"
    assert classify_step("npx tsc --noEmit") == "typecheck"
    assert classify_step("cargo build --release") == "build"
    assert classify_step("echo done") == ""
