"""`agentgate.harness` sits between `agentgate.common` and the services (docs/harness.md):
it imports no service, so the queue and the client can use it without loading one."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import agentgate.harness

HARNESS = Path(agentgate.harness.__file__).parent
ALLOWED = ("agentgate.common", "agentgate.harness", "agentgate.v1")


def agentgate_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
    return [name for name in found if name.startswith("agentgate")]


def test_the_harness_imports_only_common_and_the_stubs() -> None:
    modules = sorted(HARNESS.glob("*.py"))
    assert len(modules) > 5
    wrong = [
        f"{module.name}: {name}"
        for module in modules
        for name in agentgate_imports(module)
        if not name.startswith(ALLOWED)
    ]
    assert wrong == []


def test_the_queue_checks_a_work_order_without_loading_the_workspace() -> None:
    code = (
        "import sys\n"
        "from agentgate.queue.validation import validate_spec\n"
        "from agentgate.v1 import common_pb2\n"
        "spec = common_pb2.WorkOrderSpec(agent=common_pb2.AgentSpec(name='scripted', options={'script': 'x: ['}))\n"
        "assert 'spec.agent.options.script' in [v.field for v in validate_spec(spec)]\n"
        "print(sorted(m for m in sys.modules if m.startswith(('agentgate.workspace', 'agentgate.orchestrator'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
