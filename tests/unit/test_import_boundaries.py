"""The layers of docs/architecture.md hold: `common` < `harness` < services < clients. No
service imports another service, the client imports no service package, and the dashboard
gateway (a client-side process) imports `common` only. Checked on the
source, every import statement of every module (lazy ones inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import agentgate.client
import agentgate.client.gateway
import agentgate.common

SERVICES_ROOT = Path(agentgate.common.__file__).parent.parent
CLIENT_ROOT = Path(agentgate.client.__file__).parent
GATEWAY_ROOT = Path(agentgate.client.gateway.__file__).parent
SERVICES = ("queue", "orchestrator", "workspace", "persistence")
#: What each package may import of `agentgate`, besides itself and the stubs (`agentgate.v1`).
ALLOWED = {
    "common": set(),
    "harness": {"common"},
    **{service: {"common", "harness"} for service in SERVICES},
    "client": {"common", "harness"},
}


def agentgate_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of an `agentgate.` module in a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [node.module or ""]
            if node.module == "agentgate":
                modules = [f"agentgate.{alias.name}" for alias in node.names]
        else:
            modules = []
        found += [(node.lineno, name) for name in modules if name.startswith("agentgate.")]
    return found


def agentgate_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level agentgate package) of every import of `agentgate.X` in a module."""
    return [(line, name.split(".")[1]) for line, name in agentgate_modules(path)]


def violations(package: str, root: Path) -> list[str]:
    """Imports of `root`'s modules that cross the layers."""
    allowed = ALLOWED[package] | {package, "v1"}
    return [
        f"{module.relative_to(root.parent)}:{line} imports agentgate.{target}"
        for module in sorted(root.rglob("*.py"))
        for line, target in agentgate_imports(module)
        if target not in allowed
    ]


@pytest.mark.parametrize("package", [p for p in ALLOWED if p != "client"])
def test_a_service_package_imports_only_the_layers_below_it(package: str) -> None:
    root = SERVICES_ROOT / package
    assert any(root.rglob("*.py")), root
    assert violations(package, root) == []


def test_the_client_imports_no_service_package() -> None:
    assert violations("client", CLIENT_ROOT) == []


def test_the_gateway_imports_only_common() -> None:
    """The gateway, a process of the client package, needs nothing of the rest of it."""
    allowed = ("agentgate.common", "agentgate.v1", "agentgate.client.gateway")
    found = [
        f"{module.relative_to(GATEWAY_ROOT.parent)}:{line} imports {name}"
        for module in sorted(GATEWAY_ROOT.rglob("*.py"))
        for line, name in agentgate_modules(module)
        if not name.startswith(allowed)
    ]
    assert any(GATEWAY_ROOT.rglob("*.py")) and found == []


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    root = tmp_path / "queue"
    root.mkdir()
    (root / "m.py").write_text(
        "import agentgate.workspace.git\nfrom agentgate import orchestrator\n"
        "def f():\n    from agentgate.persistence import store\nfrom agentgate.harness import x\n"
    )
    assert violations("queue", root) == [
        "queue/m.py:1 imports agentgate.workspace",
        "queue/m.py:2 imports agentgate.orchestrator",
        "queue/m.py:4 imports agentgate.persistence",
    ]
