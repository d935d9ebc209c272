"""Gate plan parsing (verify.yaml): the shape of docs/verify-yaml.md, strict errors naming key and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agentgate.workspace.gate.plan import (
    GatePlanError,
    find_gate_plan_file,
    gate_plan_summary,
    parse_gate_plan,
)

FULL_PLAN = textwrap.dedent(
    """\
    version: "1"
    name: calculator
    environment: {runtime: python, setup: ["pip install -e ."]}
    contracts:
      required_files: [README.md, src/calc/__init__.py]
      forbidden_patterns: ["**/*.pem", "**/.env"]
      required_schemas: [{file: config.json, schema: json, rules: [{has_field: name}]}]
      naming_conventions: [{pattern: "src/**/*.py", rule: snake_case}]
    tests:
      - {name: lint, kind: lint, command: "ruff check .", timeout: 120}
      - {name: unit, kind: test, command: "pytest -q", timeout: 600, expected_exit: 0}
      - {name: smoke, command: "true"}
    blackbox:
      - name: cli-add
        command: "python -m calc add 2 3"
        fixture: fixtures/in.txt
        assertions: [{type: exit_code, expected: 0}, {type: contains, value: "5"}]
    sanity: {max_file_mb: 5, forbid_debug_artifacts: true}
    policy: {network: false, max_runtime: 900}
    """
)


def test_full_plan_parses_into_every_section() -> None:
    plan = parse_gate_plan(FULL_PLAN)
    assert plan.version == "1"
    assert plan.name == "calculator"
    assert plan.environment.runtime == "python"
    assert plan.environment.setup == ["pip install -e ."]
    assert plan.contracts.required_files == ["README.md", "src/calc/__init__.py"]
    assert plan.contracts.forbidden_patterns == ["**/*.pem", "**/.env"]
    schema = plan.contracts.required_schemas[0]
    assert (schema.file, schema.schema, schema.rules[0].kind, schema.rules[0].field) == (
        "config.json",
        "json",
        "has_field",
        "name",
    )
    assert plan.contracts.naming_conventions[0].rule == "snake_case"
    assert [t.name for t in plan.tests] == ["lint", "unit", "smoke"]
    lint, unit, smoke = plan.tests
    assert (lint.kind, lint.command, lint.timeout, lint.expected_exit) == ("lint", "ruff check .", 120.0, 0)
    assert unit.timeout == 600.0
    # Defaults: timeout 600, expected_exit 0, no kind.
    assert (smoke.kind, smoke.timeout, smoke.expected_exit) == ("", 600.0, 0)
    box = plan.blackbox[0]
    assert box.fixture == "fixtures/in.txt"
    assert [(a.type, a.params) for a in box.assertions] == [
        ("exit_code", {"expected": 0}),
        ("contains", {"value": "5"}),
    ]
    assert plan.sanity is not None and plan.sanity.max_file_mb == 5.0 and plan.sanity.forbid_debug_artifacts
    assert plan.policy.network is False and plan.policy.max_runtime == 900.0
    assert all(plan.has_level(level) for level in ("L0", "L1", "L2", "L3"))


def test_numeric_version_is_accepted_as_text() -> None:
    assert parse_gate_plan("version: 1\ntests: []\n").version == "1"


def test_unknown_top_level_key_names_key_and_line() -> None:
    with pytest.raises(GatePlanError) as caught:
        parse_gate_plan('version: "1"\nname: x\n\nverify_all: true\n')
    message = str(caught.value)
    assert "verify_all" in message
    assert "line 4" in message
    assert caught.value.line == 4


def test_unknown_nested_key_names_its_path_and_line() -> None:
    text = textwrap.dedent(
        """\
        tests:
          - name: unit
            command: pytest
          - name: lint
            command: ruff check .
            timout: 30
        """
    )
    with pytest.raises(GatePlanError) as caught:
        parse_gate_plan(text, source=".agentgate/verify.yaml")
    message = str(caught.value)
    assert "tests[1].timout" in message
    assert "line 6" in message
    assert message.startswith(".agentgate/verify.yaml")


@pytest.mark.parametrize(
    ("text", "key", "line", "expected"),
    [
        ("tests:\n  name: unit\n", "tests", 2, "must be a list"),
        ("contracts:\n  required_files: README.md\n", "contracts.required_files", 2, "must be a list"),
        ("tests:\n  - name: unit\n    command: pytest\n    timeout: soon\n", "tests[0].timeout", 4, "must be a number"),
        ("tests:\n  - {name: u, command: c, expected_exit: 1.5}\n", "tests[0].expected_exit", 2, "integer"),
        ("policy:\n  network: maybe\n", "policy.network", 2, "true or false"),
        ("tests:\n  - {name: u, command: [a, b]}\n", "tests[0].command", 2, "single value"),
        # A denylist of commands is easy to bypass: refused rather than silently ignored.
        ("policy:\n  disallowed_commands: [curl]\n", "policy.disallowed_commands", 2, "is not supported"),
    ],
)
def test_wrong_types_name_key_and_line(text: str, key: str, line: int, expected: str) -> None:
    with pytest.raises(GatePlanError) as caught:
        parse_gate_plan(text)
    message = str(caught.value)
    assert key in message
    assert f"line {line}" in message
    assert expected in message


def test_missing_required_test_field_is_an_error() -> None:
    with pytest.raises(GatePlanError, match=r"line 2: 'tests\[0\]' needs 'command'"):
        parse_gate_plan("tests:\n  - name: unit\n")


def test_duplicate_keys_and_names_are_errors() -> None:
    with pytest.raises(GatePlanError, match="duplicate key 'name'"):
        parse_gate_plan("name: a\nname: b\n")
    with pytest.raises(GatePlanError, match="the name 'unit' is used twice"):
        parse_gate_plan("tests:\n  - {name: unit, command: a}\n  - {name: unit, command: b}\n")


def test_invalid_yaml_and_empty_plans_are_errors() -> None:
    with pytest.raises(GatePlanError, match="not valid YAML") as caught:
        parse_gate_plan("tests: [\n  - a\n")
    assert caught.value.line is not None
    with pytest.raises(GatePlanError, match="empty"):
        parse_gate_plan("   \n# nothing\n")
    with pytest.raises(GatePlanError, match="must be a mapping"):
        parse_gate_plan("- a\n- b\n")


def test_paths_and_enums_are_checked() -> None:
    with pytest.raises(GatePlanError, match="relative path inside the workspace"):
        parse_gate_plan("contracts: {required_files: [../secret]}\n")
    with pytest.raises(GatePlanError, match="must be one of kebab-case"):
        parse_gate_plan("contracts: {naming_conventions: [{pattern: '*.py', rule: UPPER}]}\n")
    with pytest.raises(GatePlanError, match="assertions\\[0\\].type' must be one of"):
        parse_gate_plan("blackbox: [{name: b, command: c, assertions: [{type: smells_ok}]}]\n")
    with pytest.raises(GatePlanError, match="not a valid regular expression"):
        parse_gate_plan("blackbox: [{name: b, command: c, assertions: [{type: matches_regex, pattern: '('}]}]\n")


def test_summary_describes_the_checks() -> None:
    summary = gate_plan_summary(parse_gate_plan(FULL_PLAN), "verify.yaml")
    assert 'Gate plan "calculator" (verify.yaml)' in summary
    assert "`README.md`" in summary
    assert "unit: `pytest -q`" in summary
    assert "L2 blackbox" in summary
    assert "Do not edit the gate plan" in summary


def test_find_gate_plan_file_prefers_root_then_agentgate_folder(tmp_path: Path) -> None:
    assert find_gate_plan_file(tmp_path) is None
    (tmp_path / ".agentgate").mkdir()
    (tmp_path / ".agentgate" / "verify.yaml").write_text("tests: []\n")
    assert find_gate_plan_file(tmp_path) == tmp_path / ".agentgate" / "verify.yaml"
    (tmp_path / "verify.yaml").write_text("tests: []\n")
    assert find_gate_plan_file(tmp_path) == tmp_path / "verify.yaml"


def test_security_section_and_allowlist() -> None:
    plan = parse_gate_plan(
        textwrap.dedent(
            """\
            security:
              high_entropy: false
              allowlist:
                - {path: "tests/fixtures/**"}
                - {secret: "AKIA[0-9A-Z]{16}", rule: aws-access-key}
            """
        )
    )
    assert plan.security.enabled and not plan.security.high_entropy
    assert [(e.path, e.secret, e.rule) for e in plan.security.allowlist] == [
        ("tests/fixtures/**", "", ""),
        ("", "AKIA[0-9A-Z]{16}", "aws-access-key"),
    ]
    assert parse_gate_plan("tests: []\n").security.enabled


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("security:\n  allowlist:\n    - {}\n", "line 3: 'security.allowlist[0]' needs at least one of path, secret, rule"),
        ("security:\n  allowlist:\n    - {rule: nope}\n", "line 3: 'security.allowlist[0].rule' must be one of"),
        ("security:\n  allowlist:\n    - {secret: '('}\n", "line 3: 'security.allowlist[0].secret' is not a valid"),
        ("security: {enabled: maybe}\n", "line 1: 'security.enabled' must be true or false"),
        (
            "contracts:\n  required_schemas:\n    - file: c.json\n      schema: json\n      rules:\n"
            "        - json_schema: {type: 12}\n",
            "line 6: 'contracts.required_schemas[0].rules[0].json_schema' is not a valid JSON Schema",
        ),
        (
            "blackbox:\n  - name: b\n    command: x\n    assertions:\n      - {type: json_schema, schema: {minimum: x}}\n",
            "line 5: 'blackbox[0].assertions[0].schema' is not a valid JSON Schema",
        ),
        (
            "blackbox:\n  - name: b\n    command: x\n    assertions:\n      - {type: contains, value: a, stream: both}\n",
            "line 5: 'blackbox[0].assertions[0].stream' must be stdout or stderr",
        ),
        (
            "blackbox:\n  - name: b\n    command: x\n    assertions:\n      - {type: equals_file, file: /etc/passwd}\n",
            "line 5: 'blackbox[0].assertions[0].file' must be a relative path inside the workspace",
        ),
    ],
)
def test_new_keys_are_checked_with_key_and_line(text: str, expected: str) -> None:
    with pytest.raises(GatePlanError) as caught:
        parse_gate_plan(text)
    assert expected in str(caught.value)


def test_json_schema_rule_and_assertion_forms() -> None:
    plan = parse_gate_plan(
        textwrap.dedent(
            """\
            contracts:
              required_schemas:
                - file: c.json
                  schema: json
                  rules: [{json_schema: schemas/c.json}, {json_schema: {type: object}}]
            blackbox:
              - name: b
                command: x
                assertions:
                  - {type: json_schema, schema: schemas/out.json}
                  - {type: json_schema, schema: {type: array}}
                  - {type: contains, value: "", stream: stderr}
            """
        )
    )
    file_rule, inline_rule = plan.contracts.required_schemas[0].rules
    assert (file_rule.value, file_rule.schema) == ("schemas/c.json", None)
    assert inline_rule.schema == {"type": "object"}
    assert [a.params for a in plan.blackbox[0].assertions] == [
        {"schema": "schemas/out.json"},
        {"schema": {"type": "array"}},
        {"value": "", "stream": "stderr"},
    ]


def test_summary_mentions_blackbox_sanity_policy_and_security() -> None:
    summary = gate_plan_summary(parse_gate_plan(FULL_PLAN), "verify.yaml")
    assert "- L2 blackbox: cli-add: `python -m calc add 2 3` < fixtures/in.txt (exit_code, contains)" in summary
    assert "- L3 sanity: no file over 5 MB; no debug leftovers" in summary
    assert "- the whole gate must finish within 900s" in summary
    assert "- L0 security: your change must not add secrets" in summary
