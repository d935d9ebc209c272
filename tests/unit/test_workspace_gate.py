"""The gate on a prepared directory: levels in order, stop on failure, skips, summaries."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

from agentgate.v1 import common_pb2
from agentgate.workspace.gate.plan import parse_gate_plan
from agentgate.workspace.gate.runner import contract_checks, glob_match, run_gate


def settings(plan: str = "", skip: tuple[str, ...] = ()) -> common_pb2.VerificationSettings:
    return common_pb2.VerificationSettings(gate_plan_yaml=textwrap.dedent(plan), skip_levels=list(skip))


def commit_all(root: Path) -> str:
    """Makes `root` a git repository with one commit of its files: the base a plan is read from."""
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True, text=True
    ).stdout.strip()


def level(report: common_pb2.VerificationReport, name: str) -> common_pb2.LevelResult:
    return next(item for item in report.levels if item.level == name)


async def test_passing_plan_reports_every_check(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("hi\n")
    plan = """\
        contracts: {required_files: [README.md]}
        tests:
          - {name: unit, kind: test, command: "echo running; test -f README.md"}
          - {name: exits-3, command: "exit 3", expected_exit: 3}
        """
    report = await run_gate(tmp_path, settings(plan), run_id="r", iteration=2, snapshot_commit="abc")
    assert report.passed
    assert report.summary == "All 3 checks passed"
    assert list(report.levels_run) == ["L0", "L1"]
    assert list(report.skipped_levels) == ["L2", "L3"]
    unit = level(report, "L1").checks[0]
    assert (unit.name, unit.kind, unit.passed, unit.exit_code) == ("unit", "test", True, 0)
    assert unit.output == "running\n"
    assert level(report, "L1").checks[1].exit_code == 3 and level(report, "L1").checks[1].passed
    assert report.gate_plan_source == "inline"
    assert (report.run_id, report.iteration, report.snapshot_commit) == ("r", 2, "abc")
    assert report.settings.gate_plan_yaml.startswith("contracts")


async def test_failed_level_stops_the_later_ones(tmp_path: Path) -> None:
    plan = """\
        contracts: {required_files: [README.md, missing.txt]}
        tests: [{name: unit, command: "touch ran"}]
        """
    (tmp_path / "README.md").write_text("hi\n")
    report = await run_gate(tmp_path, settings(plan))
    assert not report.passed
    assert report.summary == "L0 failed: 1 of 2 checks failed (required_file:missing.txt)"
    l1 = level(report, "L1")
    assert not l1.ran and l1.skip_reason == "an earlier level failed"
    assert not (tmp_path / "ran").exists()
    assert list(report.levels_run) == ["L0"]


async def test_failing_test_output_and_summary(tmp_path: Path) -> None:
    plan = """\
        tests:
          - {name: lint, kind: lint, command: "true"}
          - {name: unit, kind: test, command: "echo 'FAILED test_add' ; echo trace >&2; exit 1"}
        """
    report = await run_gate(tmp_path, settings(plan))
    assert not report.passed
    assert report.summary == "L1 failed: 1 of 2 checks failed (unit)"
    unit = level(report, "L1").checks[1]
    assert (unit.passed, unit.exit_code, unit.expected_exit) == (False, 1, 0)
    assert unit.output == "FAILED test_add\ntrace\n"
    assert level(report, "L0").skip_reason == "nothing to check in the gate plan"


async def test_checks_see_ci_true_and_not_service_secrets(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SECRET_TOKEN", "s3cr3t")
    plan = """\
        tests: [{name: env, command: 'test "$CI" = true && test -z "$SECRET_TOKEN"'}]
        """
    assert (await run_gate(tmp_path, settings(plan))).passed


async def test_timeout_fails_the_check(tmp_path: Path) -> None:
    report = await run_gate(tmp_path, settings('tests: [{name: slow, command: "sleep 20", timeout: 0.3}]'))
    check = level(report, "L1").checks[0]
    assert not check.passed
    assert "timed out after 0.3s" in check.output
    assert check.duration_seconds < 10


async def test_skip_levels_skips_on_purpose(tmp_path: Path) -> None:
    plan = """\
        contracts: {required_files: [missing.txt]}
        tests: [{name: unit, command: "true"}]
        blackbox: [{name: cli, command: "echo hi", assertions: [{type: contains, value: hi}]}]
        sanity: {max_file_mb: 1}
        """
    report = await run_gate(tmp_path, settings(plan, skip=("l0", "L3")))
    assert report.passed, report.summary
    assert level(report, "L0").skip_reason == "skipped by harness"
    assert level(report, "L3").skip_reason == "skipped by harness"
    assert level(report, "L2").ran and level(report, "L2").passed
    assert list(report.skipped_levels) == ["L0", "L3"]
    assert report.summary == "All 2 checks passed"


async def test_setup_runs_before_blackbox_when_tests_are_skipped(tmp_path: Path) -> None:
    plan = """\
        environment: {setup: ["echo built > artifact.txt"]}
        tests: [{name: unit, command: "true"}]
        blackbox: [{name: cli, command: "cat artifact.txt", assertions: [{type: contains, value: built}]}]
        """
    report = await run_gate(tmp_path, settings(plan, skip=("L1",)))
    assert report.passed, report.summary
    assert [c.name for c in level(report, "L2").checks] == ["setup-1", "cli"]


async def test_max_runtime_stops_later_checks(tmp_path: Path) -> None:
    plan = """\
        policy: {max_runtime: 0.5}
        tests:
          - {name: slow, command: "sleep 5", timeout: 60}
          - {name: after, command: "true"}
        """
    report = await run_gate(tmp_path, settings(plan))
    slow, after = level(report, "L1").checks
    assert not slow.passed and "timed out after" in slow.output
    assert not after.passed and after.output == "not run: the gate plan's policy.max_runtime was used up"


async def test_setup_commands_run_before_tests(tmp_path: Path) -> None:
    plan = """\
        environment: {setup: ["echo built > artifact.txt"]}
        tests: [{name: uses-artifact, command: "grep -q built artifact.txt"}]
        """
    report = await run_gate(tmp_path, settings(plan))
    assert report.passed, report.summary
    assert [c.name for c in level(report, "L1").checks] == ["setup-1", "uses-artifact"]
    failing = await run_gate(
        tmp_path, settings('environment: {setup: ["exit 4"]}\ntests: [{name: t, command: "true"}]')
    )
    assert [c.name for c in level(failing, "L1").checks] == ["setup-1"]
    assert failing.summary.startswith("L1 failed")


async def test_malformed_plan_is_one_failed_gate_plan_check(tmp_path: Path) -> None:
    (tmp_path / "verify.yaml").write_text("tests:\n  - name: unit\n    comand: pytest\n")
    base = commit_all(tmp_path)
    report = await run_gate(tmp_path, settings(), repo=tmp_path / ".git", base_commit=base, snapshot_commit=base)
    assert not report.passed
    assert report.gate_plan_source == "verify.yaml"
    l0 = level(report, "L0")
    assert l0.ran and not l0.passed
    [check] = l0.checks
    assert (check.name, check.kind) == ("gate-plan", "contract")
    assert "tests[0].comand" in check.output and "line 3" in check.output
    assert "read from the base commit" in check.output
    assert "gate plan is invalid" in report.summary


async def test_no_plan_fails_as_nothing_verified(tmp_path: Path) -> None:
    report = await run_gate(tmp_path, settings())
    assert not report.passed
    assert report.gate_plan_source == "none"
    [check] = level(report, "L0").checks
    assert check.name == "nothing-verified" and "allow_unverified" in check.output
    assert report.summary == "L0 failed: 1 of 1 checks failed (nothing-verified)"


async def test_no_plan_passes_when_the_work_order_allows_it(tmp_path: Path) -> None:
    report = await run_gate(tmp_path, common_pb2.VerificationSettings(allow_unverified=True))
    assert report.passed
    assert report.summary == "No gate plan found: nothing was verified (allow_unverified)"
    assert list(report.levels_run) == []


async def test_skipping_l0_does_not_skip_nothing_verified(tmp_path: Path) -> None:
    report = await run_gate(tmp_path, settings(skip=("L0",)))
    assert not report.passed and [c.name for c in level(report, "L0").checks] == ["nothing-verified"]


async def test_workspace_plan_in_agentgate_folder(tmp_path: Path) -> None:
    (tmp_path / ".agentgate").mkdir()
    (tmp_path / ".agentgate" / "verify.yaml").write_text('tests: [{name: t, command: "exit 1"}]\n')
    base = commit_all(tmp_path)
    report = await run_gate(tmp_path, settings(), repo=tmp_path / ".git", base_commit=base, snapshot_commit=base)
    assert report.gate_plan_source == ".agentgate/verify.yaml"
    assert not report.passed


async def test_contract_checks_forbidden_schema_naming(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "server.pem").write_text("-----BEGIN-----\n")
    (tmp_path / "config.json").write_text(json.dumps({"name": "calc", "port": "80", "nested": {"v": "1.2"}}))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "good_name.py").write_text("")
    (tmp_path / "src" / "BadName.py").write_text("")
    plan = parse_gate_plan(
        textwrap.dedent(
            """\
            contracts:
              forbidden_patterns: ["**/*.pem", "**/.env"]
              required_schemas:
                - file: config.json
                  schema: json
                  rules:
                    - has_field: name
                    - field_type: {field: port, type: integer}
                    - matches_regex: {field: nested.v, pattern: "^[0-9.]+$"}
              naming_conventions: [{pattern: "src/*.py", rule: snake_case}]
            """
        )
    )
    checks = {c.name: c for c in await contract_checks(tmp_path, plan.contracts)}
    assert not checks["forbidden_pattern:**/*.pem"].passed
    assert "keys/server.pem" in checks["forbidden_pattern:**/*.pem"].output
    assert checks["forbidden_pattern:**/.env"].passed
    schema = checks["schema:config.json"]
    assert not schema.passed and "'port' is not of type integer" in schema.output
    assert "nested.v" not in schema.output
    naming = checks["naming:src/*.py"]
    assert not naming.passed and "src/BadName.py" in naming.output and "good_name" not in naming.output


def test_glob_match() -> None:
    assert glob_match("a/b/c.pem", "**/*.pem")
    assert glob_match("c.pem", "**/*.pem")
    assert glob_match("deep/dir/.env", ".env")
    assert not glob_match("src/a.py", "tests/*.py")
