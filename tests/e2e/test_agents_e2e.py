"""Real agent CLIs end to end: `agentgate exec --agent claude-code` against a stand-in
`claude` on the services' PATH that replays recorded streams, through the four service
processes; `agentgate agents`; and the refusal of a driver whose CLI is missing."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..agent_standin import FIXTURES, install_standin, invocations, stream
from .conftest import Suite, running_suite, suite_env
from .helpers import make_project

pytestmark = pytest.mark.slow

SESSION_1 = "0f3c2a9e-6b1d-4c8e-9a52-1d2e3f4a5b6c"
SESSION_2 = "7d1e4b2a-9c3f-4e8d-b6a1-2f3e4d5c6b7a"
MODEL = "claude-sonnet-4-5-20250929"


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    """The suite with a stand-in `claude` (and this virtualenv's python) first on PATH."""
    home = tmp_path_factory.mktemp("agents-suite-home")
    bin_dir = tmp_path_factory.mktemp("agents-bin")
    install_standin(bin_dir, "claude")
    env = suite_env(home)
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")])
    with running_suite(home, env, up_timeout=90) as running:
        yield running


def test_agents_lists_drivers_and_availability(suite: Suite) -> None:
    result = suite.cli("agents", "--json", check=True)
    drivers = {d["name"]: d for d in json.loads(result.stdout)}
    assert sorted(drivers) == ["claude-code", "codex", "command", "scripted"]
    assert drivers["claude-code"]["available"] is True and drivers["claude-code"]["missing"] == ""
    codex_here = shutil.which("codex", path=suite.env["PATH"]) is not None
    assert drivers["codex"]["available"] is codex_here
    if not codex_here:
        assert drivers["codex"]["missing"] == "the codex executable is not on PATH"
    human = suite.cli("agents", check=True).stdout
    assert "claude-code" in human and "scripted" in human


def test_exec_with_claude_code_records_the_agent_and_resumes_the_session(suite: Suite, tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    bin_dir = Path(suite.env["PATH"].split(os.pathsep)[0])
    code, out = suite.cli_json(
        "exec", "--path", str(project), "--prompt", "Fix add() so the tests pass",
        "--agent", "claude-code",
        "--agent-option", f"env.STANDIN_STREAM_DIR={stream('claude', 'fix-calc')}",
        # Relative to the agent's working directory, the workspace: the one place a
        # sandboxed agent writes to that outlives it.
        "--agent-option", "env.STANDIN_LOG=.standin-calls.jsonl",
        "--agent-option", "max_turns=10",
        "--max-iterations", "3", "--keep-workspace",
        # The stand-in `claude` and its recordings live outside the toolchain folders the
        # sandbox shows by default, as a user's own tools might: named read-only.
        "--sandbox-read-only", str(bin_dir), "--sandbox-read-only", str(FIXTURES),
    )
    assert code == 0, (out, suite.logs())
    log = Path(out["workspace"]) / ".standin-calls.jsonl"
    assert (out["status"], out["result"], out["iterations"]) == ("SUCCEEDED", "SUCCEEDED", 2)

    first, second = invocations(log)
    assert first["argv"][:5] == ["-p", "--output-format", "stream-json", "--verbose", "--include-partial-messages"]
    assert "--max-turns" in first["argv"]
    assert "--resume" not in first["argv"]
    assert second["argv"][-2:] == ["--resume", SESSION_1]
    assert first["prompt"].startswith("Fix add() so the tests pass")
    assert "Verification failed — iteration 1" in second["prompt"]

    run_dir = suite.home / "runs" / out["run_id"]
    agent_1 = json.loads((run_dir / "agent-1.json").read_text())
    agent_2 = json.loads((run_dir / "agent-2.json").read_text())
    assert (agent_1["session_id"], agent_1["model"], agent_1["driver"]) == (SESSION_1, MODEL, "claude-code")
    assert [call["tool"] for call in agent_1["tool_calls"]] == ["Read"]
    assert agent_1["tool_calls"][0]["input"] == {"file_path": "calc.py"}
    assert agent_1["cost_usd"] == pytest.approx(0.0123)
    assert agent_1["tokens"] == {"input": "3530", "output": "120", "total": "3650"}
    assert agent_2["session_id"] == SESSION_2
    assert [call["tool"] for call in agent_2["tool_calls"]] == ["Write", "Bash"]
    assert agent_2["tool_calls"][1]["output"] == "1 passed in 0.01s"
    assert agent_2["cost_usd"] == pytest.approx(0.0456)
    iteration_2 = json.loads((run_dir / "iteration-2.json").read_text())
    assert iteration_2["agent_session_id"] == SESSION_2 and iteration_2["model"] == MODEL
    verification_2 = json.loads((run_dir / "verification-2.json").read_text())
    assert verification_2["passed"] is True
    assert "a + b" in (Path(out["workspace"]) / "calc.py").read_text()


def test_submit_to_a_driver_whose_cli_is_missing_is_refused(suite: Suite, tmp_path: Path) -> None:
    if shutil.which("codex", path=suite.env["PATH"]) is not None:
        pytest.fail("this machine has a real codex on PATH; the test needs one without")
    project = make_project(tmp_path / "project")
    before = json.loads(suite.cli("list", "--json", check=True).stdout)
    result = suite.cli("submit", "--path", str(project), "--prompt", "x", "--agent", "codex")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "FAILED_PRECONDITION" in result.stderr
    assert "the codex executable is not on PATH" in result.stderr
    assert json.loads(suite.cli("list", "--json", check=True).stdout) == before  # nothing was stored
