"""The whole gate through the workspace service (docs/verify-yaml.md), with real processes and git.

The matrix: every contract rule, every blackbox assertion type, a test timeout, a wrong
exit code, setup, policy.max_runtime, each sanity rule and a security finding — each first
fails for real on a snapshot that breaks it, then passes for real on one that fixes it.
Also: a file ignored by git does not satisfy required_files, a repository with only a
GitHub workflow is verified by its pytest step, and gate_plan_source is honoured.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from agentgate.common.errors import field_violations
from agentgate.v1 import common_pb2

from .workspace_client import WorkspaceClient, failed_checks, git, level, workspace_service, write_files

APP = textwrap.dedent(
    """\
    import json, sys
    mode = open("mode.txt").read().strip()
    a, b = (int(x) for x in sys.stdin.read().split())
    total = a + b if mode != "wrong" else a - b
    if mode == "crash":
        sys.exit(2)
    if mode == "json-string":
        print(json.dumps({"sum": str(total), "ok": True}))
    elif sys.argv[1:] == ["json"]:
        print(json.dumps({"sum": total, "ok": True}))
    else:
        print(f"result: {total}")
    """
)
CONFIG_SCHEMA = json.dumps(
    {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["name", "port"],
        "properties": {"name": {"type": "string"}, "port": {"type": "integer", "minimum": 1}},
    }
)
AWS_KEY = "AKIA" + "QWERTYUIOPASDFGH"  # split so this file itself holds no key


@pytest.fixture
def base_project(tmp_path: Path) -> Path:
    """What every case starts from: the product, its fixture and expected output, a schema."""
    root = tmp_path / "project"
    write_files(
        root,
        {
            "app.py": APP,
            "mode.txt": "ok\n",
            "fixtures/in.txt": "2 3\n",
            "expected/out.txt": "result: 5\n",
            "schemas/config.schema.json": CONFIG_SCHEMA,
            "config.json": json.dumps({"name": "calc", "port": 8080, "version": "1.2.3"}),
            "src/good_name.py": "X = 1\n",
            "settings.py": "import os\nKEY = os.environ['KEY']\n",
            "README.md": "calc\n",
        },
    )
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    return root


@pytest.fixture
async def client(home: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[WorkspaceClient]:
    # Checks find python3 and pytest where a CI runner would: first on PATH (this
    # virtualenv's, which also spares every check the start-up of a version-manager shim).
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    async with workspace_service(home) as running:
        yield running


@dataclass
class Case:
    """A gate plan, the change that breaks it, the change that fixes it, and the check that
    must fail (level, name, kind, a text its output must hold)."""

    id: str
    plan: str
    broken: dict[str, str | bytes | None]
    fixed: dict[str, str | bytes | None]
    level: str
    check: str
    kind: str
    says: str
    extra: dict[str, str] = field(default_factory=dict)


BLACKBOX = 'blackbox:\n  - {{name: cli, command: "python3 app.py{args}", fixture: fixtures/in.txt, assertions: [{a}]}}\n'

CASES = [
    # --- L0 contracts
    Case("required_files", "contracts: {required_files: [docs/API.md]}", {}, {"docs/API.md": "api\n"},
         "L0", "required_file:docs/API.md", "contract", "required file docs/API.md is missing"),
    Case("forbidden_patterns", 'contracts: {forbidden_patterns: ["**/*.tmp"]}', {"out/cache.tmp": "x"},
         {"out/cache.tmp": None}, "L0", "forbidden_pattern:**/*.tmp", "contract", "out/cache.tmp"),
    Case("has_field", "contracts: {required_schemas: [{file: config.json, schema: json, rules: [{has_field: name}]}]}",
         {"config.json": json.dumps({"nam": "calc"})}, {"config.json": json.dumps({"name": "calc"})},
         "L0", "schema:config.json", "contract", "field 'name' is missing"),
    Case("field_type",
         "contracts: {required_schemas: [{file: config.json, schema: json, rules: "
         "[{field_type: {field: port, type: integer}}]}]}",
         {"config.json": json.dumps({"port": "80"})}, {"config.json": json.dumps({"port": 80})},
         "L0", "schema:config.json", "contract", "'port' is not of type integer"),
    Case("matches_regex",
         "contracts: {required_schemas: [{file: config.json, schema: json, rules: "
         "[{matches_regex: {field: version, pattern: '^[0-9]+[.][0-9]+[.][0-9]+$'}}]}]}",
         {"config.json": json.dumps({"version": "v1"})}, {"config.json": json.dumps({"version": "1.2.4"})},
         "L0", "schema:config.json", "contract", "'version' does not match"),
    Case("json_schema_file",
         "contracts: {required_schemas: [{file: config.json, schema: json, rules: "
         "[{json_schema: schemas/config.schema.json}]}]}",
         {"config.json": json.dumps({"name": "calc", "port": 0})},
         {"config.json": json.dumps({"name": "calc", "port": 1})},
         "L0", "schema:config.json", "contract", "$.port: 0 is less than the minimum of 1"),
    Case("json_schema_inline_yaml",
         "contracts:\n  required_schemas:\n    - file: deploy.yaml\n      schema: yaml\n      rules:\n"
         "        - json_schema: {type: object, required: [replicas], "
         "properties: {replicas: {type: integer, maximum: 10}}}\n",
         {"deploy.yaml": "replicas: 50\n"}, {"deploy.yaml": "replicas: 3\n"},
         "L0", "schema:deploy.yaml", "contract", "$.replicas: 50 is greater than the maximum of 10"),
    Case("naming_conventions", "contracts: {naming_conventions: [{pattern: 'src/*.py', rule: snake_case}]}",
         {"src/BadName.py": "X = 2\n"}, {"src/BadName.py": None, "src/bad_name.py": "X = 2\n"},
         "L0", "naming:src/*.py", "contract", "src/BadName.py"),
    # --- L1 tests
    Case("test_timeout", 'tests: [{name: slow, kind: test, command: "sleep $(cat delay.txt)", timeout: 0.5}]',
         {"delay.txt": "30"}, {"delay.txt": "0"}, "L1", "slow", "test", "[timed out after 0.5s]"),
    Case("wrong_exit_code", 'tests: [{name: exits-3, command: "exit $(cat code.txt)", expected_exit: 3}]',
         {"code.txt": "0"}, {"code.txt": "3"}, "L1", "exits-3", "", ""),
    Case("setup", 'environment: {setup: ["sh build.sh"]}\ntests: [{name: uses-build, command: "test -f built"}]',
         {"build.sh": "exit 7\n"}, {"build.sh": "touch built\n"}, "L1", "setup-1", "setup", ""),
    Case("policy_max_runtime",
         'policy: {max_runtime: 1}\ntests: [{name: long, command: "sleep $(cat delay.txt)", timeout: 60}]',
         {"delay.txt": "30"}, {"delay.txt": "0"}, "L1", "long", "", "[timed out after"),
    # --- L2 blackbox: each assertion type
    Case("exit_code", BLACKBOX.format(args="", a="{type: exit_code, expected: 0}"),
         {"mode.txt": "crash"}, {"mode.txt": "ok"}, "L2", "cli", "blackbox", "FAIL exit_code == 0: got 2"),
    Case("contains", BLACKBOX.format(args="", a='{type: contains, value: "result: 5"}'),
         {"mode.txt": "wrong"}, {"mode.txt": "ok"}, "L2", "cli", "blackbox", "FAIL stdout contains 'result: 5'"),
    Case("matches_regex_assertion", BLACKBOX.format(args="", a="{type: matches_regex, pattern: '^result: [0-9]+$'}"),
         {"mode.txt": "wrong"}, {"mode.txt": "ok"}, "L2", "cli", "blackbox", "FAIL stdout matches /^result: [0-9]+$/"),
    Case("equals_file", BLACKBOX.format(args="", a="{type: equals_file, file: expected/out.txt}"),
         {"mode.txt": "wrong"}, {"mode.txt": "ok"}, "L2", "cli", "blackbox",
         "line 1 differs: expected 'result: 5', got 'result: -1'"),
    Case("json_equals", BLACKBOX.format(args=" json", a="{type: json_equals, expected: {sum: 5, ok: true}}"),
         {"mode.txt": "wrong"}, {"mode.txt": "ok"}, "L2", "cli", "blackbox", "FAIL stdout equals JSON"),
    Case("json_schema_assertion",
         BLACKBOX.format(args=" json", a="{type: json_schema, schema: {type: object, required: [sum], "
                         "properties: {sum: {type: integer}}}}"),
         {"mode.txt": "json-string"}, {"mode.txt": "ok"}, "L2", "cli", "blackbox", "$.sum: '5' is not of type 'integer'"),
    # --- L3 sanity
    Case("max_file_mb", "sanity: {max_file_mb: 0.01}", {"data.bin": b"\0" * 20_000}, {"data.bin": b"\0" * 5_000},
         "L3", "sanity:max_file_mb", "sanity", "data.bin"),
    Case("debug_artifacts", "sanity: {forbid_debug_artifacts: true}",
         {"src/good_name.py": "X = 1\nbreakpoint()\n", "app.py.orig": "old\n"},
         {"src/good_name.py": "X = 1\n", "app.py.orig": None},
         "L3", "sanity:debug_artifacts", "sanity", "src/good_name.py:2: debugger statement"),
    # --- L0 security scan of the change
    Case("security", "tests: [{name: t, command: 'true'}]", {"settings.py": f"KEY = '{AWS_KEY}'\n"},
         {"settings.py": "import os\nKEY = os.environ['KEY']\n"}, "L0", "security-scan", "security",
         "settings.py:1: aws-access-key: AKIA******** (20 chars)"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_each_rule_fails_then_passes_for_real(client: WorkspaceClient, base_project: Path, case: Case) -> None:
    workspace = await client.prepare(base_project)
    path = Path(workspace.path)

    write_files(path, case.broken)
    broken = await client.snapshot(workspace)
    report = await client.verify(workspace, broken, gate_plan_yaml=case.plan)
    assert not report.passed, report
    [check] = failed_checks(report)
    assert (check.name, check.kind) == (case.check, case.kind)
    assert case.says in check.output, check.output
    assert report.summary.startswith(f"{case.level} failed"), report.summary
    failed_level = level(report, case.level)
    assert failed_level.ran and not failed_level.passed
    later = [name for name in ("L0", "L1", "L2", "L3") if name > case.level]
    assert all(level(report, name).skip_reason in ("an earlier level failed", "nothing to check in the gate plan")
               for name in later)

    write_files(path, case.fixed)
    fixed = await client.snapshot(workspace)
    report = await client.verify(workspace, fixed, gate_plan_yaml=case.plan)
    assert report.passed, report
    assert case.level in report.levels_run
    passed = [c for item in report.levels for c in item.checks if c.name == case.check]
    assert passed and all(c.passed for c in passed)


async def test_wrong_exit_code_reports_expected_and_actual(client: WorkspaceClient, base_project: Path) -> None:
    workspace = await client.prepare(base_project)
    plan = 'tests: [{name: exits-3, kind: test, command: "exit 1", expected_exit: 3}]'
    report = await client.verify(workspace, gate_plan_yaml=plan)
    [check] = failed_checks(report)
    assert (check.exit_code, check.expected_exit, check.command) == (1, 3, "exit 1")


async def test_git_ignored_file_made_by_the_agent_does_not_satisfy_required_files(
    client: WorkspaceClient, base_project: Path
) -> None:
    write_files(base_project, {".gitignore": "generated.txt\n"})
    git(base_project, "add", "-A")
    git(base_project, "commit", "-q", "-m", "ignore generated.txt")
    workspace = await client.prepare(base_project)
    script = """\
        default:
          - write: {path: generated.txt, content: "made by the agent\\n"}
          - write: {path: tracked.txt, content: "made by the agent\\n"}
        """
    agent = common_pb2.AgentSpec(name="scripted", options={"script": textwrap.dedent(script)})
    _, result = await client.run_agent(workspace, agent, iteration=1, prompt="make the files")
    assert result.success
    assert (Path(workspace.path) / "generated.txt").is_file()  # it is there, for the agent
    snapshot = await client.snapshot(workspace)

    plan = "contracts: {required_files: [tracked.txt, generated.txt]}"
    report = await client.verify(workspace, snapshot, gate_plan_yaml=plan)
    assert not report.passed
    checks = {c.name: c.passed for c in level(report, "L0").checks}
    assert checks["required_file:tracked.txt"] is True
    assert checks["required_file:generated.txt"] is False


WORKFLOW = textwrap.dedent(
    """\
    name: CI
    on: [push, pull_request]
    jobs:
      test:
        runs-on: ubuntu-latest
        steps:
          - uses: actions/checkout@v4
          - uses: actions/setup-python@v5
            with: {python-version: "${{ matrix.python }}"}
          - name: Show the Python version
            run: python3 --version
          - name: Run tests
            run: pytest -q -p no:cacheprovider
          - name: Upload coverage
            run: curl -s https://codecov.io/bash | bash
    """
)


async def test_repository_with_only_a_github_workflow_is_verified_by_its_pytest_step(
    client: WorkspaceClient, tmp_path: Path
) -> None:
    root = tmp_path / "ci-only"
    write_files(
        root,
        {
            ".github/workflows/ci.yml": WORKFLOW,
            "calc.py": "def add(a, b):\n    return a - b\n",
            "test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
        },
    )
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "ci only")
    workspace = await client.prepare(root)

    report = await client.verify(workspace)
    assert report.gate_plan_source == "detected"
    assert not report.passed
    [check] = failed_checks(report)
    assert (check.name, check.kind, check.command) == ("run-tests", "test", "pytest -q -p no:cacheprovider")
    assert "1 failed" in check.output
    assert "detected from .github/workflows/ci.yml" in report.summary

    write_files(Path(workspace.path), {"calc.py": "def add(a, b):\n    return a + b\n"})
    report = await client.verify(workspace, await client.snapshot(workspace))
    assert report.passed, report
    assert [c.name for c in level(report, "L1").checks] == ["run-tests"]
    assert "1 passed" in level(report, "L1").checks[0].output


async def test_gate_plan_source_file_and_inline(client: WorkspaceClient, base_project: Path) -> None:
    write_files(base_project, {"test_x.py": "def test_x():\n    assert False\n"})
    git(base_project, "add", "-A")
    git(base_project, "commit", "-q", "-m", "a test")
    workspace = await client.prepare(base_project)
    # AUTO without a plan file: detected (pytest, from the test file).
    auto = await client.verify(workspace)
    assert auto.gate_plan_source == "detected" and not auto.passed
    # FILE: only verify.yaml counts; its absence is a failed gate-plan check, not detection.
    only_file = await client.verify(workspace, gate_plan_source=common_pb2.GATE_PLAN_SOURCE_FILE)
    assert not only_file.passed
    [check] = failed_checks(only_file)
    assert check.name == "gate-plan" and "no verify.yaml" in check.output
    # INLINE: the harness's plan.
    inline = await client.verify(
        workspace, gate_plan_source=common_pb2.GATE_PLAN_SOURCE_INLINE, gate_plan_yaml="tests: [{name: t, command: 'true'}]"
    )
    assert inline.passed and inline.gate_plan_source == "inline"
    # Contradictions are refused, naming the field.
    for settings, field_name in [
        ({"gate_plan_source": common_pb2.GATE_PLAN_SOURCE_INLINE}, "settings.gate_plan_yaml"),
        (
            {"gate_plan_source": common_pb2.GATE_PLAN_SOURCE_FILE, "gate_plan_yaml": "tests: []"},
            "settings.gate_plan_yaml",
        ),
        ({"gate_plan_source": 42}, "settings.gate_plan_source"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.verify(workspace, **settings)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in field_violations(caught.value)] == [field_name]


async def test_security_scan_sees_only_the_change_and_honours_the_allowlist(
    client: WorkspaceClient, base_project: Path
) -> None:
    # A key already in the user's history is not the run's doing.
    write_files(base_project, {"legacy.py": f"OLD = '{AWS_KEY}'\n"})
    git(base_project, "add", "-A")
    git(base_project, "commit", "-q", "-m", "legacy key")
    workspace = await client.prepare(base_project)
    plan = "tests: [{name: t, command: 'true'}]"
    report = await client.verify(workspace, await client.snapshot(workspace), gate_plan_yaml=plan)
    assert report.passed
    security = next(c for c in level(report, "L0").checks if c.kind == "security")
    assert "no secrets found in the change (0 changed file(s) scanned)" in security.output

    write_files(Path(workspace.path), {".env": "TOKEN=abc\n", "tests/fixtures/keys.py": f"K = '{AWS_KEY}'\n"})
    snapshot = await client.snapshot(workspace)
    report = await client.verify(workspace, snapshot, gate_plan_yaml=plan)
    [check] = failed_checks(report)
    assert ".env: forbidden-file" in check.output
    assert "tests/fixtures/keys.py:1: aws-access-key: AKIA******** (20 chars)" in check.output
    assert AWS_KEY not in check.output

    allowed = plan + "\nsecurity:\n  allowlist:\n    - {path: 'tests/fixtures/**'}\n    - {path: .env, rule: forbidden-file}\n"
    report = await client.verify(workspace, snapshot, gate_plan_yaml=allowed)
    assert report.passed, report
    security = next(c for c in level(report, "L0").checks if c.kind == "security")
    assert "2 finding(s) allowed by security.allowlist" in security.output

    disabled = plan + "\nsecurity: {enabled: false}\n"
    report = await client.verify(workspace, snapshot, gate_plan_yaml=disabled)
    assert report.passed and not any(c.kind == "security" for c in level(report, "L0").checks)
