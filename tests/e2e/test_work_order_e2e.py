"""One work order end to end through the four service processes, driven by the real CLI."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from agentgate.common.errors import field_violations
from agentgate.v1 import common_pb2, queue_pb2, queue_pb2_grpc

from .conftest import AGENTGATE, Suite
from .helpers import fixing_script, make_project, never_fixing_script, tree_digest

pytestmark = pytest.mark.slow

BUF = shutil.which("buf") or str(Path(__file__).resolve().parents[2] / "tools/node_modules/.bin/buf")


def exec_json(suite: Suite, project: Path, script: Path, *extra: str) -> tuple[int, dict]:
    return suite.cli_json(
        "exec", "--path", str(project), "--prompt", "Fix add() so the tests pass",
        "--agent", "scripted", "--agent-option", f"script={script}", *extra,
    )


def in_terminal(suite: Suite, *args: str) -> str:
    """What `agentgate ARGS` prints with its standard output on a terminal (a pty)."""
    parent, child = pty.openpty()
    process = subprocess.Popen([AGENTGATE, *args], env=dict(suite.env, COLUMNS="200"), stdout=child)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(parent, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(parent)
    assert process.wait(timeout=60) == 0
    return out.decode()


def test_health_and_reflection(suite: Suite):
    result = suite.cli("health", "--json", check=True)
    states = json.loads(result.stdout)
    assert {name: s["status"] for name, s in states.items()} == {
        "queue": "SERVING", "orchestrator-1": "SERVING", "workspace": "SERVING", "persistence": "SERVING",
        "gateway": "SERVING",
    }
    for service, full_name in [
        ("queue", "agentgate.v1.QueueService"),
        ("orchestrator", "agentgate.v1.OrchestratorService"),
        ("workspace", "agentgate.v1.WorkspaceService"),
        ("persistence", "agentgate.v1.PersistenceService"),
    ]:
        listed = subprocess.run(
            [BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-services",
             f"http://{suite.address(service)}"],
            capture_output=True, text=True, timeout=30,
        )
        assert listed.returncode == 0, listed.stderr
        names = listed.stdout.split()
        assert full_name in names
        assert "grpc.health.v1.Health" in names


def test_fixing_agent_succeeds_in_two_iterations_and_leaves_path_untouched(suite: Suite, tmp_path: Path):
    project = make_project(tmp_path / "project")
    before = tree_digest(project)
    code, out = exec_json(suite, project, fixing_script(tmp_path / "fix.yaml"), "--keep-workspace")
    assert code == 0, (out, suite.logs())
    assert out["status"] == "SUCCEEDED"
    assert out["result"] == "SUCCEEDED"
    assert out["iterations"] == 2
    assert out["work_order_id"].startswith("wo-") and out["run_id"].startswith("run-")
    assert tree_digest(project) == before, "the --path directory was modified"

    run_dir = suite.home / "runs" / out["run_id"]
    for name in ["run.json", "events.jsonl", "agent-1.json", "agent-2.json", "verification-1.json",
                 "verification-2.json", "iteration-1.json", "iteration-2.json"]:
        assert (run_dir / name).is_file(), f"{name} missing in {run_dir}"
    first = json.loads((run_dir / "verification-1.json").read_text())
    second = json.loads((run_dir / "verification-2.json").read_text())
    assert first["passed"] is False and second["passed"] is True
    iteration_2 = json.loads((run_dir / "iteration-2.json").read_text())
    assert iteration_2["agent_result_file"] == "agent-2.json"
    assert iteration_2["verification_file"] == "verification-2.json"
    # The fix is committed on the run's branch in the managed workspace, not in the user's tree.
    workspace = Path(out["workspace"])
    assert "a + b" in (workspace / "calc.py").read_text()
    branch = subprocess.run(["git", "-C", str(workspace), "branch", "--show-current"], capture_output=True, text=True)
    assert branch.stdout.strip() == f"agentgate/{out['run_id']}"

    # The whole history, replayed after the end, from queued to complete, seq 1, 2, 3, ...
    watched = suite.cli("watch", out["work_order_id"], "--json", check=True)
    events = [json.loads(line) for line in watched.stdout.splitlines() if line.strip()]
    assert events[0]["type"] == "work_order:queued"
    assert events[-1]["type"] == "run:complete"
    assert [int(e["seq"]) for e in events] == list(range(1, len(events) + 1))
    types = [e["type"] for e in events]
    for expected in ["run:started", "workspace:acquired", "iteration:started", "agent:started", "agent:output",
                     "agent:complete", "snapshot:created", "verification:started", "verification:complete",
                     "strategy:decision", "iteration:complete", "workspace:released"]:
        assert expected in types
    decisions = [e["strategy_decision"]["decision"] for e in events if e["type"] == "strategy:decision"]
    assert decisions[0]["should_continue"] is True and decisions[-1]["reason"] == "Verification passed"
    # The feedback from iteration 1 reached the agent's prompt in iteration 2.
    iteration_1 = json.loads((run_dir / "iteration-1.json").read_text())
    assert iteration_1["feedback_generated"] is True
    assert "Verification failed — iteration 1" in iteration_1["decision"]["feedback"]
    # events.jsonl holds the same history.
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == types

    # `list` and `status`: plain lines when piped (README.md, "Commands"), rich on a terminal.
    work_order, run = out["work_order_id"], out["run_id"]
    piped = suite.cli("list", "--limit", "1", check=True).stdout
    assert piped.splitlines()[0].split("\t")[:3] == [work_order, run, "SUCCEEDED"]
    assert "\n" not in piped.rstrip("\n") and "┃" not in piped
    table = in_terminal(suite, "list", "--limit", "1")
    assert "┃" in table and "work order" in table and work_order in table
    status = suite.cli("status", work_order, check=True).stdout
    assert f"run_id         {run}\n" in status and "\x1b[" not in status
    assert "\x1b[1mrun_id" in in_terminal(suite, "status", work_order)


def test_agent_that_never_fixes_fails_after_max_iterations(suite: Suite, tmp_path: Path):
    project = make_project(tmp_path / "project")
    code, out = exec_json(suite, project, never_fixing_script(tmp_path / "never.yaml"), "--max-iterations", "2")
    assert code != 0
    assert out["status"] == "FAILED"
    assert out["result"] == "FAILED_VERIFICATION"
    assert out["iterations"] == 2
    assert out["error"] == "Test execution failed (1 failed). Details: agent-2.json, verification-2.json"
    assert out["build_error"]["type"] == "BUILD_ERROR_TYPE_TEST_FAILED"
    assert out["loop_result"] == "MAX_ITERATIONS"
    assert "max iterations (2)" in out["stop_reason"]
    status_code, status = suite.cli_json("status", out["work_order_id"])
    assert status_code == 0 and status["status"] == "FAILED" and status["run_id"] == out["run_id"]
    # Retention (docs/workspaces.md): a failed run's workspace is deleted by default too,
    # with its trusted git directory and clean rooms.
    workspace_id = Path(out["workspace"]).name
    assert not Path(out["workspace"]).exists()
    assert not (suite.home / "gitdirs" / f"{workspace_id}.git").exists()
    assert not any((suite.home / "cleanrooms").glob(f"{out['run_id']}-*"))


def test_git_url_source_with_ref(suite: Suite, tmp_path: Path):
    repo = make_project(tmp_path / "repo")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "buggy"], check=True)
    subprocess.run([*git, "tag", "v1"], check=True)
    (repo / "calc.py").write_text("broken(\n")
    subprocess.run([*git, "commit", "-qam", "worse"], check=True)
    code, out = suite.cli_json(
        "exec", "--git-url", f"file://{repo}", "--ref", "v1", "--prompt", "Fix add()",
        "--agent", "scripted", "--agent-option", f"script={fixing_script(tmp_path / 'fix.yaml')}",
    )
    assert code == 0, (out, suite.logs())
    assert out["iterations"] == 2


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--prompt", "   ", "--agent", "scripted"], "spec.task_prompt"),
        (["--prompt", "x", "--agent", "scripted", "--path", "/does/not/exist"], "spec.source.local_path"),
        (["--prompt", "x", "--agent", "no-such-agent"], "spec.agent.name"),
    ],
)
def test_invalid_work_orders_are_refused_and_not_stored(suite: Suite, tmp_path: Path, args: list[str], field: str):
    if "--path" not in args:
        args = [*args, "--path", str(make_project(tmp_path / "project"))]
    before = json.loads(suite.cli("list", "--json", check=True).stdout)
    result = suite.cli("submit", *args, "--json")
    assert result.returncode == 2
    assert field in result.stderr
    after = json.loads(suite.cli("list", "--json", check=True).stdout)
    assert after == before


def test_invalid_submit_over_grpc_names_field_in_details(suite: Suite):
    channel = suite.channel(suite.address("queue"))
    stub = queue_pb2_grpc.QueueServiceStub(channel)
    spec = common_pb2.WorkOrderSpec(task_prompt="", agent=common_pb2.AgentSpec(name="scripted"))
    spec.source.local_path = "/nonexistent"
    with pytest.raises(grpc.RpcError) as caught:
        stub.Submit(queue_pb2.SubmitRequest(spec=spec), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in field_violations(caught.value)}
    assert {"spec.task_prompt", "spec.source.local_path"} <= fields
    channel.close()
