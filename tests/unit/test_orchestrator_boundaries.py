"""The orchestrator reaches files, git and processes only through the workspace service
(docs/workspaces.md); the one file it writes itself is the audit log. Checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import agentgate.orchestrator

ORCHESTRATOR = Path(agentgate.orchestrator.__file__).parent
#: The audit log subscriber is the one module allowed to write a file.
ALLOWED = {"audit_log.py"}
FORBIDDEN_IMPORTS = {"subprocess", "shutil", "tempfile", "sqlite3", "aiosqlite", "glob"}
#: Names of calls that read or change files or start processes (`str.replace` and
#: `list.remove` share names with file operations, so those two are not listed).
FORBIDDEN_CALLS = {
    "open", "create_subprocess_exec", "create_subprocess_shell", "popen", "unlink", "rmdir", "mkdir",
    "makedirs", "rename", "write_text", "write_bytes", "read_text", "read_bytes", "rmtree", "chmod", "listdir",
    "scandir", "iterdir",
}


def violations(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
        else:
            names = []
        found += [f"{path.name}:{node.lineno} imports {name}" for name in names if name in FORBIDDEN_IMPORTS]
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in FORBIDDEN_CALLS:
                found.append(f"{path.name}:{node.lineno} calls {name}()")
    return found


def test_the_orchestrator_touches_no_files_or_processes_but_the_audit_log() -> None:
    modules = sorted(ORCHESTRATOR.glob("*.py"))
    assert len(modules) > 10
    found = [problem for module in modules if module.name not in ALLOWED for problem in violations(module)]
    assert found == []


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import subprocess\nfrom pathlib import Path\nPath('x').write_text('y')\nopen('f')\n")
    assert violations(sample) == ["sample.py:1 imports subprocess", "sample.py:3 calls write_text()",
                                  "sample.py:4 calls open()"]
