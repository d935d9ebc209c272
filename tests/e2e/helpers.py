"""Projects and agent scripts for the end-to-end tests."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

BUGGY = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"
TESTS = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
VERIFY = """version: "1"
contracts:
  required_files: [calc.py]
tests:
  - {name: unit, kind: test, command: "python -m pytest -q -p no:cacheprovider", timeout: 120}
"""


def make_project(root: Path) -> Path:
    """A tiny Python project whose test fails until add() is fixed."""
    root.mkdir(parents=True)
    (root / "calc.py").write_text(BUGGY)
    (root / "test_calc.py").write_text(TESTS)
    (root / "verify.yaml").write_text(VERIFY)
    (root / ".hidden").write_text("user file\n")
    return root


def fixing_script(path: Path) -> Path:
    """Iteration 1 changes nothing useful; iteration 2 fixes the bug."""
    path.write_text(
        "iterations:\n"
        "  1:\n"
        "    - print: looking at calc.py\n"
        "    - write: {path: NOTES.md, content: \"first look\\n\"}\n"
        "  2:\n"
        f"    - write: {{path: calc.py, content: {json.dumps(FIXED)}}}\n"
        "    - print: fixed\n"
    )
    return path


def never_fixing_script(path: Path) -> Path:
    """Writes notes every iteration, never the fix."""
    path.write_text("default:\n  - append: {path: NOTES.md, content: \"still looking\\n\"}\n")
    return path


def tree_digest(root: Path) -> str:
    """A hash of every file (hidden ones too), its path, content and mode."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            digest.update(str(path.relative_to(root)).encode())
            digest.update(oct(path.stat().st_mode).encode())
            digest.update(path.read_bytes())
        digest.update(("dirs:" + ",".join(dirnames)).encode())
    return digest.hexdigest()
