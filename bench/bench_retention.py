"""Retention: what deleting a run's workspace and measuring disk usage cost
(docs/workspaces.md, "Retention", "Disk usage"), next to floors measured in the same run.

A tree like a small project's workspace (FILES files in DIRS folders, 4 KiB each) is made
in a temporary folder, then

- deleted by `remove_tree` (rights restored through fds, symlinks never followed) next to
  `rm -rf` of an identical tree (the floor: the kernel's unlinks);
- measured by `tree_usage` (the walk behind GetWorkspaceDiskUsage) next to `du -s`.

Each is repeated REPEATS times in turn with its floor; medians are printed.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from agentgate.common.disk_usage import tree_usage
from agentgate.workspace.workspaces import remove_tree

FILES = 5000
DIRS = 100
REPEATS = 5


def make_tree(root: Path) -> None:
    payload = b"x" * 4096
    for d in range(DIRS):
        folder = root / f"pkg{d}" / "sub"
        folder.mkdir(parents=True)
        for f in range(FILES // DIRS):
            (folder / f"m{f}.py").write_bytes(payload)


def timed(action, *args: object) -> float:
    started = time.perf_counter()
    action(*args)
    return time.perf_counter() - started


def run(*argv: str) -> None:
    subprocess.run(argv, capture_output=True, check=True)


def main() -> None:
    delete, delete_floor, usage, usage_floor = [], [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        for index in range(REPEATS):
            ours, floor = base / f"ours{index}", base / f"floor{index}"
            make_tree(ours)
            make_tree(floor)
            usage.append(timed(tree_usage, ours))
            usage_floor.append(timed(run, "du", "-s", str(floor)))
            delete.append(timed(remove_tree, ours))
            delete_floor.append(timed(run, "rm", "-rf", str(floor)))

    def ms(values: list[float]) -> float:
        return statistics.median(values) * 1000

    print(f"tree: {FILES} files of 4 KiB in {DIRS * 2} folders; median of {REPEATS}")
    print(f"delete  remove_tree {ms(delete):8.1f} ms   floor rm -rf {ms(delete_floor):8.1f} ms")
    print(f"measure tree_usage  {ms(usage):8.1f} ms   floor du -s  {ms(usage_floor):8.1f} ms")


if __name__ == "__main__":
    main()
