"""Trees a run leaves are gone from their place at once and deleted behind the request
(workspaces.discard_trees): by `rm` in a process of its own, else by the service's own walk."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from agentgate.workspace import workspaces


def _hostile_tree(root: Path, outside: Path) -> Path:
    tree = root / "ws"
    (tree / "sub" / "deep").mkdir(parents=True)
    for i in range(50):
        (tree / "sub" / f"f{i}.txt").write_text("x\n")
    (tree / "link-out").symlink_to(outside)  # removed, never followed
    (tree / "sub" / "deep" / "g.txt").write_text("g\n")
    (tree / "sub" / "deep").chmod(0o555)
    (tree / "locked").mkdir()
    (tree / "locked" / "h.txt").write_text("h\n")
    (tree / "locked").chmod(0)
    return tree


@pytest.mark.parametrize("with_rm", [True, False])
async def test_a_discarded_tree_goes_at_once_and_is_deleted_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_rm: bool
) -> None:
    outside = tmp_path / "keep.txt"
    outside.write_text("not the agent's\n")
    tree = _hostile_tree(tmp_path, outside)
    trash = tmp_path / "trash"
    if not with_rm:  # no `nice`/`rm` to start: the service's own walk deletes it
        empty = tmp_path / "no-tools"
        empty.mkdir()
        monkeypatch.setenv("PATH", str(empty))
    # What the service's walk finds still there when it comes after `rm`.
    found: list[bool] = []
    walk = workspaces.remove_tree
    monkeypatch.setattr(workspaces, "remove_tree", lambda path: (found.append(os.path.lexists(path)), walk(path)))
    assert await workspaces.discard_trees([tree], trash) == []
    assert not tree.exists()
    await asyncio.gather(*list(workspaces._deleting))
    assert list(trash.iterdir()) == []
    assert found == [not with_rm]  # with `rm`, the walk finds nothing left to do
    assert outside.read_text() == "not the agent's\n"


async def test_trees_discarded_one_after_the_other_go_in_one_rm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trees = [tmp_path / name for name in ("workspace", "room", "home")]
    for tree in trees:
        (tree / "sub").mkdir(parents=True)
        (tree / "sub" / "f.txt").write_text("x\n")
    started: list[tuple[str, ...]] = []
    spawn = asyncio.create_subprocess_exec

    async def counting(*argv: str, **kwargs: object) -> asyncio.subprocess.Process:
        started.append(argv)
        return await spawn(*argv, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(asyncio, "create_subprocess_exec", counting)
    for tree in trees:  # as a run's end discards them: one request, several steps
        assert await workspaces.discard_trees([tree], tmp_path / "trash") == []
        assert not tree.exists()
    assert started == []  # nothing started while the request is being answered
    await asyncio.gather(*list(workspaces._deleting))
    assert len(started) == 1 and sum(arg.startswith(str(tmp_path / "trash")) for arg in started[0]) == 3
    assert list((tmp_path / "trash").iterdir()) == []
