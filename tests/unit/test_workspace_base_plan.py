"""The trusted inputs of the gate: protected-path globs, the detection inputs taken from the
base commit, and plans that expand too far through YAML aliases."""

from __future__ import annotations

import pytest

from agentgate.workspace.gate.base_plan import path_matches, protected_changes
from agentgate.workspace.gate.detection import detection_inputs
from agentgate.workspace.gate.plan import MAX_PLAN_VALUES, GatePlanError, parse_gate_plan


@pytest.mark.parametrize(
    ("path", "pattern", "matches"),
    [
        ("verify.yaml", "/verify.yaml", True),
        ("sub/verify.yaml", "/verify.yaml", False),
        (".github/workflows/ci.yml", "/.github/workflows/", True),
        (".github/dependabot.yml", "/.github/workflows/", False),
        ("pkg/tests/test_a.py", "tests/", True),
        ("tests.py", "tests/", False),
        ("pkg/test_a.py", "test_*.py", True),
        ("src/a/b.py", "src/*.py", True),
        ("a.py", "/", False),
    ],
)
def test_path_matches(path: str, pattern: str, matches: bool) -> None:
    assert path_matches(path, pattern) is matches


def test_protected_changes_name_the_glob_and_honour_allowed() -> None:
    changed = ["calc.py", "verify.yaml", ".agentgate/notes.md", ".github/workflows/x.yml", "tests/test_a.py"]
    found = protected_changes(changed, extra=["tests/"], allowed=["/.github/workflows/"])
    assert found == [
        ("verify.yaml", "/verify.yaml"),
        (".agentgate/notes.md", "/.agentgate/"),
        ("tests/test_a.py", "tests/"),
    ]


def test_detection_inputs() -> None:
    assert detection_inputs(".github/workflows/ci.yml") == "content"
    assert detection_inputs(".github/workflows/sub/ci.yml") is None
    assert detection_inputs("Makefile") == "content"
    assert detection_inputs("go.mod") == "presence"
    assert detection_inputs("tests/unit/test_a.py") == "presence"
    assert detection_inputs("test_top.py") == "presence"
    assert detection_inputs("src/Makefile") is None
    assert detection_inputs("calc.py") is None


def test_anchors_are_fine_but_an_alias_bomb_is_refused() -> None:
    plan = parse_gate_plan("tests:\n  - {name: a, command: &cmd 'true'}\n  - {name: b, command: *cmd}\n")
    assert [(t.name, t.command) for t in plan.tests] == [("a", "true"), ("b", "true")]
    levels = ["a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 6)]
    bomb = "contracts:\n  required_schemas:\n    - file: x.json\n      schema: json\n      rules:\n"
    bomb += "        - json_schema:\n" + "".join(f"            {line}\n" for line in levels)
    with pytest.raises(GatePlanError, match=f"more than {MAX_PLAN_VALUES} values"):
        parse_gate_plan(bomb)


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(GatePlanError, match="nested too deeply"):
        parse_gate_plan("name: &a [*a]\n")
