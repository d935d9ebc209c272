"""The result in the user's hands and progress that survives a lost worker (docs/results.md),
with the four services as real processes:

- `exec --path` then `agentgate apply`: a branch in the user's repository whose tree is the
  run's final snapshot, the user's working tree, index and HEAD untouched; a second `apply`
  after the user moved that branch in a conflicting way is refused naming the file;
- the worker (orchestrator) SIGKILLed during iteration 2 of a run whose iteration 1 completed:
  the next attempt goes on with iteration 2, iteration 1 ran exactly once, and attempt 1's
  files are all still there, byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentgate.client import AgentGateClient
from agentgate.v1 import common_pb2

from .conftest import Suite, running_suite, suite_env
from .helpers import FIXED, fixing_script, make_project
from .test_faults_e2e import service_pid, wait_until

pytestmark = pytest.mark.slow


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=U", "-c", "user.email=u@example.com", "-c", "init.defaultBranch=main", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    home = tmp_path_factory.mktemp("results-home")
    env = suite_env(home)
    env["AGENTGATE_LEASE_SECONDS"] = "3"  # a dead worker's lease expires fast
    with running_suite(home, env) as running:
        yield running


@pytest.fixture(scope="module")
def client(suite: Suite) -> Iterator[AgentGateClient]:
    with AgentGateClient(suite.address("queue"), suite.address("persistence"), token=suite.token) as made:
        yield made


def snapshot_tree(suite: Suite, run: common_pb2.Run) -> str:
    git_dir = suite.home / "gitdirs" / f"{run.workspace_id}.git"
    return git(git_dir, f"--git-dir={git_dir}", "rev-parse", f"{run.final_commit}^{{tree}}")


def test_exec_then_apply_makes_the_branch_and_refuses_a_conflicting_move(
    suite: Suite, client: AgentGateClient, tmp_path: Path
) -> None:
    project = make_project(tmp_path / "project")
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "start")
    (project / "scratch.txt").write_text("the user's uncommitted work\n")
    script = fixing_script(tmp_path / "script.yaml")
    done = suite.cli(
        "exec", "--path", str(project), "--prompt", "Fix add()", "--agent", "scripted",
        "--agent-option", f"script={script}", "--json",
        # Kept so the test can read the final snapshot from the run's own git directory;
        # `apply` itself reads only the stored patches.
        "--keep-workspace",
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    run_id = json.loads(done.stdout.strip().splitlines()[-1])["run_id"]
    run = client.run(run_id)
    assert run is not None

    # diff: plain when piped, the whole run's change; --stat names the files.
    shown = suite.cli("diff", run_id, check=True).stdout
    assert "calc.py" in shown and "NOTES.md" in shown and "\x1b[" not in shown
    assert "calc.py" not in suite.cli("diff", run_id, "-i", "1", check=True).stdout
    stat = suite.cli("diff", run_id, "--stat", check=True).stdout
    assert "calc.py " in stat and "3 files changed" in stat  # calc.py, NOTES.md, the user's scratch.txt

    head, status = git(project, "rev-parse", "HEAD"), git(project, "status", "--porcelain")
    applied = suite.cli("apply", run_id, check=True)
    branch = f"agentgate/{run_id}"
    assert branch in applied.stdout
    assert git(project, "rev-parse", f"{branch}^{{tree}}") == snapshot_tree(suite, run)
    assert git(project, "rev-parse", f"{branch}~1") == head
    # Nothing of the user's moved: HEAD, working tree, index.
    assert (git(project, "rev-parse", "HEAD"), git(project, "status", "--porcelain")) == (head, status)
    assert (project / "calc.py").read_text() != FIXED
    # Applying again is a no-op.
    assert "already holds" in suite.cli("apply", run_id, check=True).stdout

    # The user moves the branch in a conflicting way: apply refuses, naming the file.
    git(project, "stash", "-u", "-q")
    git(project, "checkout", "-q", branch)
    (project / "calc.py").write_text("def add(a, b):\n    return b + a  # mine\n")
    git(project, "commit", "-qam", "my own fix")
    git(project, "checkout", "-q", "main")
    refused = suite.cli("apply", run_id)
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert "refused" in refused.stderr and "calc.py" in refused.stderr

    # A directory that is not a git repository: applied when all of it applies, else refused.
    plain = make_project(tmp_path / "plain")
    suite.cli("apply", run_id, "--to", str(plain), check=True)
    assert (plain / "calc.py").read_text() == FIXED
    moved = make_project(tmp_path / "moved")
    (moved / "calc.py").write_text("def add(a, b):\n    return 0\n")
    refused = suite.cli("apply", run_id, "--to", str(moved))
    assert refused.returncode == 1 and "calc.py" in refused.stderr, refused.stderr


def resumable_script(path: Path, counts: Path) -> Path:
    """Iteration 1 leaves notes (the gate still fails); iteration 2 sleeps the first time it
    runs (the worker is killed then) and fixes the bug the next. Every execution is counted
    in `counts`, outside the workspace."""
    first = f"echo run >> {counts}/iteration-1"
    second = (
        f"echo run >> {counts}/iteration-2; "
        f"if [ $(wc -l < {counts}/iteration-2) -lt 2 ]; then sleep 60; fi"
    )
    path.write_text(
        "iterations:\n"
        "  1:\n"
        f"    - run: {json.dumps(first)}\n"
        "    - write: {path: NOTES.md, content: \"first look\\n\"}\n"
        "  2:\n"
        f"    - run: {json.dumps(second)}\n"
        f"    - write: {{path: calc.py, content: {json.dumps(FIXED)}}}\n"
    )
    return path


ATTEMPT_1_FILES = ("agent-1.json", "verification-1.json", "iteration-1.json", "patch-1.diff")


def test_a_lost_worker_resumes_after_the_last_completed_iteration(
    suite: Suite, client: AgentGateClient, tmp_path: Path
) -> None:
    project = make_project(tmp_path / "project")
    counts = tmp_path / "counts"
    counts.mkdir()
    script = resumable_script(tmp_path / "script.yaml", counts)
    submitted = suite.cli(
        "submit", "--path", str(project), "--prompt", "Fix add()", "--agent", "scripted",
        "--agent-option", f"script={script}", "--sandbox", "off", "--max-iterations", "3", "--json", check=True,
    )
    work_order_id = json.loads(submitted.stdout)["work_order_id"]
    run_id = client.work_order(work_order_id).run_id
    run_dir = suite.home / "runs" / run_id

    # Iteration 1 is complete and on file; iteration 2's agent is running.
    wait_until(
        lambda: (counts / "iteration-2").exists() and all((run_dir / name).exists() for name in ATTEMPT_1_FILES),
        60,
        "iteration 2 to start",
    )
    kept = {name: (run_dir / name).read_bytes() for name in ATTEMPT_1_FILES}
    os.kill(service_pid(suite, "orchestrator"), signal.SIGKILL)
    time.sleep(0.5)
    up = suite.cli("up", "--detach", timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr, suite.logs())

    status = client.wait(work_order_id, timeout=120)
    assert status.work_order.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED, (status, suite.logs())
    assert status.work_order.attempts == 2
    run = client.run(run_id)
    assert run is not None and run.iteration_count == 2
    assert [(a.attempt, a.resumed_after_iteration) for a in run.attempts] == [(1, 0), (2, 1)]

    # Iteration 1 ran exactly once: one execution, one record, one agent start in the log.
    assert (counts / "iteration-1").read_text().count("run") == 1
    assert (counts / "iteration-2").read_text().count("run") == 2
    started = [e.iteration for e in client.events(work_order_id, follow=False) if e.type == "agent:started"]
    assert started.count(1) == 1, started
    iteration_1 = json.loads((run_dir / "iteration-1.json").read_text())
    assert len(iteration_1.get("attempts", [])) <= 1

    # Attempt 1's files are all still there, unchanged; attempt 2's sit beside them.
    assert {name: (run_dir / name).read_bytes() for name in ATTEMPT_1_FILES} == kept
    names = {path.name for path in run_dir.iterdir()}
    assert {"agent-2.attempt-2.json", "iteration-2.attempt-2.json", "patch-2.attempt-2.diff", "patch.diff"} <= names
    assert not any(name.startswith(("agent-1.attempt", "patch-1.attempt")) for name in names)

    # The resumed run's change is whole: iteration 1's notes and iteration 2's fix.
    change = suite.cli("diff", run_id, check=True).stdout
    assert "NOTES.md" in change and "calc.py" in change
    shown = suite.cli("runs", "show", run_id, check=True).stdout
    assert "resumed after iteration 1" in shown
