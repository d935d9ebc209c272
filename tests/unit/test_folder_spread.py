"""The per-run roots under $AGENTGATE_HOME carry ext4's top-directory attribute, so that
each run's tree is placed apart from the trees deleted just before (common/folder_spread.py)."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest

from agentgate.common import folder_spread
from agentgate.common.folder_spread import spread_root
from agentgate.workspace.workspaces import PER_RUN_ROOTS, WorkspaceManager


def _on_ext4(path: Path) -> bool:
    # `stat -f` names ext2, ext3 and ext4 alike.
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip() == "ext2/ext3"


def _attributes(path: Path) -> str:
    return subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]


def test_a_root_is_made_and_marked_where_the_file_system_knows_the_mark(tmp_path: Path) -> None:
    root = tmp_path / "a" / "root"
    marked = spread_root(root)
    assert root.is_dir()
    assert marked == _on_ext4(tmp_path)
    if marked:
        # What `chattr +T` sets, and nothing else (no data journaling, say).
        assert "T" in _attributes(root) and "j" not in _attributes(root)
    assert spread_root(root) == marked  # again: no change, no error


def test_a_file_system_without_the_mark_is_no_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> None:
        raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")

    monkeypatch.setattr(folder_spread.fcntl, "ioctl", refuse)
    assert spread_root(tmp_path / "root") is False
    assert (tmp_path / "root").is_dir()


def test_a_root_linked_to_another_disk_is_marked_there(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "root").symlink_to(target)
    assert spread_root(tmp_path / "root") == _on_ext4(tmp_path)
    assert ("T" in _attributes(target)) == _on_ext4(tmp_path)


async def test_the_workspace_service_marks_its_per_run_roots(tmp_path: Path) -> None:
    manager = WorkspaceManager(tmp_path / "home")
    await manager.open()
    try:
        for name in PER_RUN_ROOTS:
            assert (tmp_path / "home" / name).is_dir()
            assert ("T" in _attributes(tmp_path / "home" / name)) == _on_ext4(tmp_path)
    finally:
        await manager.close()
