"""`agentgate demo`: a small Python project with a bug, its gate plan, and a scripted agent
that fails verification in iteration 1 and fixes the bug in iteration 2."""

from __future__ import annotations

import json
from pathlib import Path

CALC_BUGGY = '''"""A tiny calculator."""


def add(a, b):
    return a - b


def mul(a, b):
    return a * b
'''

CALC_FIXED = CALC_BUGGY.replace("return a - b", "return a + b")

TEST_CALC = '''from calc import add, mul


def test_add():
    assert add(2, 3) == 5


def test_mul():
    assert mul(2, 3) == 6
'''

VERIFY_YAML = '''version: "1"
name: calculator
contracts:
  required_files: [calc.py, test_calc.py]
tests:
  - {name: unit, kind: test, command: "python -m pytest -q -p no:cacheprovider", timeout: 120}
'''

DEMO_SCRIPT = f'''# Scripted agent for the demo: iteration 1 misses the bug, iteration 2 fixes it.
iterations:
  1:
    - print: "reading calc.py and test_calc.py"
    - tool_call: {{tool: Read, input: {{path: calc.py}}, output: "def add(a, b): return a - b"}}
    - print: "mul looks fine; writing down what I saw"
    - write: {{path: NOTES.md, content: "Looked at calc.py; mul is fine.\\n"}}
    - tokens: {{input: 1200, output: 150}}
  2:
    - print: "the feedback says test_add failed: add subtracts"
    - tool_call: {{tool: Edit, input: {{path: calc.py}}, output: "ok"}}
    - write: {{path: calc.py, content: {json.dumps(CALC_FIXED)}}}
    - print: "fixed add()"
    - tokens: {{input: 1800, output: 220}}
default:
  - print: "nothing left to do"
'''

DEMO_PROMPT = "Fix the failing tests of the calculator in calc.py."


def make_demo_project(root: Path) -> tuple[Path, Path]:
    """Writes the project and the agent script under `root`; returns (project, script)."""
    project = root / "calculator"
    project.mkdir(parents=True, exist_ok=True)
    (project / "calc.py").write_text(CALC_BUGGY)
    (project / "test_calc.py").write_text(TEST_CALC)
    (project / "verify.yaml").write_text(VERIFY_YAML)
    (project / "README.md").write_text("# calculator\n\nA demo project for AgentGate.\n")
    script = root / "demo-agent.yaml"
    script.write_text(DEMO_SCRIPT)
    return project, script
