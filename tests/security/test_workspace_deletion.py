"""Deleting what an agent left (docs/workspaces.md, "Retention"): an agent may take the rights
away from its directories and plant symlinks out of its workspace. The deletion must remove
the whole tree and touch nothing the symlinks point to.

The services often run as root, for whom file modes do not count; the deletion then runs
in a process without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (setpriv), as for any other user.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SETPRIV = shutil.which("setpriv")


def hostile_tree(root: Path, outside: Path) -> None:
    """A workspace as a hostile agent leaves it, and the outside folder it points at."""
    (outside / "guarded").mkdir(parents=True)
    (outside / "keep.txt").write_text("not the agent's\n")
    os.chmod(outside / "guarded", 0o500)
    (root / "locked" / "inner").mkdir(parents=True)
    (root / "locked" / "inner" / "f").write_text("x")
    (root / "locked" / "out-dir").symlink_to(outside)
    (root / "readonly").mkdir()
    (root / "readonly" / "g").write_text("y")
    (root / "out-file").symlink_to(outside / "keep.txt")
    (root / "out-guarded").symlink_to(outside / "guarded")
    os.mkfifo(root / "pipe")
    os.chmod(root / "locked" / "inner", 0)
    os.chmod(root / "locked", 0)
    os.chmod(root / "readonly", 0o500)


def delete_unprivileged(code: str, path: Path) -> None:
    """Runs `code` (with `path` as argv[1]) as the current user, without the rights that
    let root ignore file modes."""
    prefix = []
    if os.geteuid() == 0:
        if SETPRIV is None:
            pytest.skip("setpriv (util-linux) is needed to drop root's file-mode override")
        prefix = [SETPRIV, "--bounding-set", "-dac_override,-dac_read_search"]
    subprocess.run([*prefix, sys.executable, "-c", code, str(path)], check=True, timeout=60)


def restore(path: Path) -> None:
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            full = Path(dirpath) / name
            if not full.is_symlink():
                os.chmod(full, 0o700)


def test_a_hostile_workspace_is_deleted_and_nothing_outside_it_is_touched(tmp_path: Path):
    workspace, outside = tmp_path / "ws", tmp_path / "outside"
    hostile_tree(workspace, outside)
    delete_unprivileged("import sys, pathlib; from agentgate.workspace.workspaces import remove_tree; "
                        "remove_tree(pathlib.Path(sys.argv[1]))", workspace)
    assert not workspace.exists() and not workspace.is_symlink()
    assert (outside / "keep.txt").read_text() == "not the agent's\n"
    # Not even the modes of what the symlinks point to changed.
    assert stat.S_IMODE((outside / "guarded").stat().st_mode) == 0o500


def test_without_the_protection_a_plain_delete_leaves_the_tree(tmp_path: Path):
    workspace, outside = tmp_path / "ws", tmp_path / "outside"
    hostile_tree(workspace, outside)
    delete_unprivileged("import sys, shutil; shutil.rmtree(sys.argv[1], ignore_errors=True)", workspace)
    try:
        assert (workspace / "locked").exists(), "the attack no longer works: this test shows nothing"
    finally:
        os.chmod(workspace / "locked", 0o700)
        restore(workspace)
