"""A gate plan for a project that has none (docs/verify-yaml.md): what its own CI or tooling runs.

In order of preference:
1. The `run:` steps of `.github/workflows/*.yml` jobs — the project's own CI, the most
   faithful description of "passing". Install steps become `environment.setup`; lint,
   typecheck, test and build steps become `tests` (kind from what they run). Steps that use
   `${{ ... }}` expressions, another shell, `sudo`, or publish/deploy are skipped: they
   cannot mean the same thing in a clean room.
2. The project's markers: `make test` (a Makefile with a `test` target stands for the
   project's own entry point and replaces the others), else each of `npm test`
   (package.json test script), `go test ./...` (go.mod), `cargo test` (Cargo.toml) and
   pytest (pytest configuration, conftest.py, or test files).
Nothing found → no plan.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentgate.common import yaml_text
from agentgate.workspace.gate.plan import Environment, GatePlan, TestCommand

WORKFLOW_DIR = ".github/workflows"
#: Files larger than this are not read (a workflow or manifest is small).
MAX_MANIFEST_BYTES = 1024 * 1024
NPM_DEFAULT_TEST = "no test specified"
#: Top-level files detection reads (for what they say), and those it only looks for.
CONTENT_INPUTS = frozenset(
    {"GNUmakefile", "makefile", "Makefile", "package.json", "pyproject.toml", "pytest.ini", "setup.cfg", "tox.ini"}
)
PRESENCE_INPUTS = frozenset({"package-lock.json", "go.mod", "Cargo.toml", "conftest.py"})
_TEST_FILE = re.compile(r"(?:^|/)(?:test_[^/]*|[^/]*_test)\.py$")

_INSTALL = re.compile(
    r"^\s*(?:pip3? install|python3? -m pip install|npm (?:ci|install|i)\b|yarn(?: install)?\s*$|pnpm install|"
    r"poetry install|uv sync|uv pip install|pipenv install|bundle install|go mod download|cargo fetch|"
    r"composer install)"
)
_SKIP = re.compile(
    r"(\bsudo\b|\bapt(?:-get)?\b|\bbrew\b|\bdocker (?:push|login)\b|\btwine upload\b|\bnpm publish\b|"
    r"\bcargo publish\b|\bgit push\b|\bgh \w|\bcurl\b[^\n|]*\|\s*(?:ba)?sh|codecov|coveralls|GITHUB_)"
)
_KINDS = (
    ("typecheck", re.compile(r"\b(mypy|pyright|tsc\b|typecheck|type-check|vue-tsc)")),
    ("lint", re.compile(r"\b(ruff|flake8|pylint|black --check|isort --check|eslint|prettier --check|"
                        r"golangci-lint|go vet|gofmt|clippy|cargo fmt|rubocop|lint)\b")),
    ("test", re.compile(r"\b(pytest|unittest|tox|nox|jest|vitest|mocha|go test|cargo test|npm test|"
                        r"npm run test|yarn test|pnpm test|make test|rspec|phpunit|test)\b")),
    ("build", re.compile(r"\b(build|compile|make\b|cargo build|go build|tsc -b|webpack|vite build)\b")),
)


@dataclass
class DetectedPlan:
    """A plan made from the project's files, and what it was made from."""

    plan: GatePlan
    sources: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line: where the checks came from."""
        text = "detected from " + ", ".join(self.sources)
        if self.skipped:
            text += f" ({len(self.skipped)} workflow step(s) skipped: {'; '.join(self.skipped[:5])})"
        return text


def _python() -> str:
    return "python3" if shutil.which("python3") else "python"


def _read(path: Path) -> str:
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_MANIFEST_BYTES:
            return ""
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def classify_step(script: str) -> str:
    """`setup`, `typecheck`, `lint`, `test`, `build`, or '' (not a check) for a run: script.

    A step whose every line installs something is setup; otherwise its other lines decide
    (a step that installs and then tests is a test).
    """
    lines = [line for line in script.splitlines() if line.strip() and not line.strip().startswith("#")]
    rest = [line for line in lines if not _INSTALL.match(line)]
    if lines and not rest:
        return "setup"
    text = "\n".join(rest)
    for kind, pattern in _KINDS:
        if pattern.search(text):
            return kind
    return ""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def _step_command(script: str, working_directory: str) -> str:
    script = script.strip()
    if "\n" in script:
        # GitHub runs a step with `bash -e`: stop at the first failing line too.
        script = "set -e\n" + script
    if working_directory and working_directory not in (".", "./"):
        script = f"cd {json.dumps(working_directory)} && {script}" if "\n" not in script else (
            f"cd {json.dumps(working_directory)}\n{script}"
        )
    return script


def _workflow_steps(room: Path, detected: DetectedPlan, setup: list[str], tests: list[TestCommand]) -> None:
    folder = room / WORKFLOW_DIR
    if not folder.is_dir():
        return
    names: set[str] = set()
    for path in sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")]):
        relative = path.relative_to(room).as_posix()
        try:
            document = yaml_text.safe_load(_read(path))
        except yaml.YAMLError:
            detected.skipped.append(f"{relative}: not valid YAML")
            continue
        jobs = document.get("jobs") if isinstance(document, dict) else None
        if not isinstance(jobs, dict):
            continue
        used = False
        for job_id, job in jobs.items():
            if not isinstance(job, dict) or not isinstance(job.get("steps"), list):
                continue
            runs_on = json.dumps(job.get("runs-on", ""))
            if "windows" in runs_on or "macos" in runs_on:
                detected.skipped.append(f"{relative} job {job_id}: not a Linux job")
                continue
            job_dir = _working_directory(job.get("defaults"))
            for index, step in enumerate(job["steps"], start=1):
                if not isinstance(step, dict) or not isinstance(step.get("run"), str):
                    continue
                label = str(step.get("name") or f"{job_id}-{index}")
                script: str = step["run"]
                shell = str(step.get("shell") or "bash")
                if "${{" in script or shell.split()[0] not in ("bash", "sh"):
                    detected.skipped.append(f"{label}: uses expressions or another shell")
                    continue
                if _SKIP.search(script):
                    detected.skipped.append(f"{label}: not runnable in a clean room")
                    continue
                kind = classify_step(script)
                if not kind:
                    continue
                command = _step_command(script, str(step.get("working-directory") or job_dir))
                used = True
                if kind == "setup":
                    if command not in setup:
                        setup.append(command)
                    continue
                name = _slug(label) or f"{job_id}-{index}"
                base, n = name, 2
                while name in names:
                    name, n = f"{base}-{n}", n + 1
                names.add(name)
                tests.append(TestCommand(name=name, kind=kind, command=command))
        if used:
            detected.sources.append(relative)


def _working_directory(defaults: Any) -> str:
    if isinstance(defaults, dict) and isinstance(defaults.get("run"), dict):
        return str(defaults["run"].get("working-directory") or "")
    return ""


def _has_make_test(room: Path) -> str:
    for name in ("GNUmakefile", "makefile", "Makefile"):
        if re.search(r"^test\s*:(?!=)", _read(room / name), re.MULTILINE):
            return name
    return ""


def _npm_test(room: Path) -> bool:
    try:
        package = json.loads(_read(room / "package.json") or "null")
    except ValueError:
        return False
    script = package.get("scripts", {}).get("test") if isinstance(package, dict) else None
    return isinstance(script, str) and bool(script.strip()) and NPM_DEFAULT_TEST not in script


def _pytest_marker(room: Path) -> str:
    if "[tool.pytest.ini_options]" in _read(room / "pyproject.toml"):
        return "pyproject.toml"
    for name, section in (("pytest.ini", ""), ("setup.cfg", "[tool:pytest]"), ("tox.ini", "[pytest]")):
        text = _read(room / name)
        if text and (not section or section in text):
            return name
    if (room / "conftest.py").is_file():
        return "conftest.py"
    tests = room / "tests"
    if tests.is_dir() and (any(tests.rglob("test_*.py")) or any(tests.rglob("*_test.py"))):
        return "tests/"
    if any(room.glob("test_*.py")):
        return "test_*.py"
    return ""


def _markers(room: Path, detected: DetectedPlan, setup: list[str], tests: list[TestCommand]) -> None:
    makefile = _has_make_test(room)
    if makefile:
        tests.append(TestCommand(name="make-test", kind="test", command="make test"))
        detected.sources.append(f"{makefile} (test target)")
        return
    if _npm_test(room):
        setup.append("npm ci" if (room / "package-lock.json").is_file() else "npm install")
        tests.append(TestCommand(name="npm-test", kind="test", command="npm test"))
        detected.sources.append("package.json (test script)")
    if (room / "go.mod").is_file():
        tests.append(TestCommand(name="go-test", kind="test", command="go test ./..."))
        detected.sources.append("go.mod")
    if (room / "Cargo.toml").is_file():
        tests.append(TestCommand(name="cargo-test", kind="test", command="cargo test"))
        detected.sources.append("Cargo.toml")
    marker = _pytest_marker(room)
    if marker:
        tests.append(TestCommand(name="pytest", kind="test", command=f"{_python()} -m pytest -q"))
        detected.sources.append(f"{marker} (pytest)")


def detection_inputs(path: str) -> str | None:
    """How detection uses the file at `path` (relative, posix): "content" (it reads it),
    "presence" (only that it exists), or None (not at all)."""
    folder, _, name = path.rpartition("/")
    if folder == WORKFLOW_DIR and name.endswith((".yml", ".yaml")):
        return "content"
    if not folder:
        if name in CONTENT_INPUTS:
            return "content"
        if name in PRESENCE_INPUTS or _TEST_FILE.search(name):
            return "presence"
        return None
    return "presence" if (folder == "tests" or folder.startswith("tests/")) and _TEST_FILE.search(path) else None


def detect_gate_plan(room: Path) -> DetectedPlan | None:
    """The plan detected in `room` (blocking file reads; call off-loop), or None."""
    detected = DetectedPlan(plan=GatePlan())
    setup: list[str] = []
    tests: list[TestCommand] = []
    _workflow_steps(room, detected, setup, tests)
    if not tests:
        setup.clear()
        detected.sources.clear()
        _markers(room, detected, setup, tests)
    if not tests:
        return None
    detected.plan = GatePlan(name="detected", environment=Environment(setup=setup), tests=tests)
    return detected
