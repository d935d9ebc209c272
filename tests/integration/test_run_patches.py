"""Each iteration's change stored through persistence (docs/results.md): a two-iteration
run against the real services leaves patch-1.diff, patch-2.diff and patch.diff, which
rebuild the run's final snapshot tree from the source's commit; the run records its
source and its attempt."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agentgate.v1 import common_pb2, persistence_pb2

from .inprocess_suite import InProcessSuite
from .test_orchestrator_run import spec

SCRIPT = """
iterations:
  1:
    - write: {path: notes.txt, content: "first\\n"}
    - run: "mv old.txt renamed.txt"
  2:
    - write: {path: calc.py, content: "def add(a, b):\\n    return a + b\\n"}
"""


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=T", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    )
    return done.stdout.strip()


@pytest.fixture
async def suite(home: Path):
    running = await InProcessSuite.start(home)
    yield running
    await running.stop()


async def test_a_run_stores_its_patches(suite: InProcessSuite, tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (root / "old.txt").write_text("moved by the agent\n" * 10)
    (root / "verify.yaml").write_text(
        'version: "1"\ntests:\n  - {name: unit, kind: test, command: "grep -q \'a + b\' calc.py"}\n'
    )
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "start")
    work_order = await suite.submit(spec(root, SCRIPT, max_iterations=3))
    done = await suite.wait_terminal(work_order.id)
    assert done.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED, done.error
    run = await suite.run(work_order.run_id)
    assert run.source.local_path == str(root)
    assert [(a.attempt, a.resumed_after_iteration) for a in run.attempts] == [(1, 0)]

    run_dir = suite.home / "runs" / run.id
    one = (run_dir / "patch-1.diff").read_bytes()
    assert b"rename from old.txt" in one and b"notes.txt" in one and b"calc.py" not in one
    assert b"calc.py" in (run_dir / "patch-2.diff").read_bytes()
    cumulative = (
        await suite.persistence.GetPatch(persistence_pb2.GetPatchRequest(run_id=run.id), timeout=5)
    ).patch
    assert cumulative.patch == (run_dir / "patch.diff").read_bytes()
    assert cumulative.from_commit == git(root, "rev-parse", "HEAD")
    assert cumulative.to_commit == run.final_commit

    # The cumulative patch on the source's commit is the run's final snapshot.
    check = tmp_path / "check"
    git(tmp_path, "clone", "-q", str(root), str(check))
    git(check, "apply", "--index", "--binary", str(run_dir / "patch.diff"))
    assert git(check, "write-tree") == cumulative.to_tree
    iteration = suite.run_file(run.id, "iteration-1.json")
    assert iteration.get("runAttempt", 1) == 1
