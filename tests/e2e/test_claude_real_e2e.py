"""The REAL `claude` CLI end to end: work orders through the four service processes, the
agent pointed at our fake Anthropic Messages API (tests/fake_models/anthropic.py) running in
this test process. The CLI is required (`make agent-clis`): a missing one fails the tests.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..fake_models.anthropic import FakeAnthropic, Turn
from .conftest import Suite, running_suite, suite_env
from .helpers import make_project

pytestmark = pytest.mark.slow

CLAUDE_BIN = Path(__file__).resolve().parents[2] / "tools" / "agents" / "node_modules" / ".bin"
KEY = "sk-ant-e2e-0123456789abcdef"
FIX = "sed -i 's/a - b/a + b/' calc.py"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, fake: FakeAnthropic) -> Iterator[Suite]:
    """The suite with the pinned claude first on PATH and the fake's address and key in the
    services' environment (the driver passes ANTHROPIC_* to the agent only)."""
    if not (CLAUDE_BIN / "claude").exists():
        pytest.fail(f"the real claude CLI is missing in {CLAUDE_BIN}: run `make agent-clis`", pytrace=False)
    home = tmp_path_factory.mktemp("claude-suite-home")
    env = suite_env(home)
    env["PATH"] = os.pathsep.join([str(CLAUDE_BIN), str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update({"ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": KEY, "CLAUDE_CODE_MAX_RETRIES": "0"})
    with running_suite(home, env, up_timeout=90) as running:
        yield running


def exec_claude(suite: Suite, project: Path, *more: str) -> tuple[int, dict]:
    return suite.cli_json(
        "exec", "--path", str(project), "--prompt", "Fix add() so the tests pass",
        "--agent", "claude-code", "--max-iterations", "3", "--retry-preset", "aggressive", "--keep-workspace", *more,
        timeout=300,
    )


def events(suite: Suite, run_id: str) -> list[dict]:
    path = suite.home / "runs" / run_id / "events.jsonl"
    if path.exists():
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return []


def test_agents_reports_the_claude_version(suite: Suite, fake: FakeAnthropic) -> None:
    drivers = {d["name"]: d for d in json.loads(suite.cli("agents", "--json", check=True).stdout)}
    pinned = json.loads((CLAUDE_BIN.parents[1] / "package.json").read_text())["dependencies"]
    assert drivers["claude-code"]["available"] is True
    assert drivers["claude-code"]["version"].startswith(pinned["@anthropic-ai/claude-code"])
    # Probed from inside the agent sandbox, through its proxy, at the configured endpoint.
    host_port = fake.url.split("://", 1)[1].rstrip("/")
    assert drivers["claude-code"]["endpoint"] == f"reachable from the sandbox: {host_port}"


def test_real_claude_fails_verification_then_resumes_and_succeeds(
    suite: Suite, fake: FakeAnthropic, tmp_path: Path
) -> None:
    project = make_project(tmp_path / "project")
    before = (fake.served_input, fake.served_output, len(fake.agent_requests()))
    fake.add(
        # Iteration 1: looks, changes nothing useful, says it is done: the gate fails.
        # The agent prints its own key: it must not reach any file or event of ours.
        Turn.bash("cat calc.py; echo key=$ANTHROPIC_API_KEY", input_tokens=2000, output_tokens=50),
        Turn.say("I looked at calc.py.", input_tokens=2100, output_tokens=20),
        # Iteration 2 (the same session, resumed with the feedback): fixes and runs the tests.
        Turn.bash(FIX, input_tokens=2500, output_tokens=40),
        Turn.bash("python -m pytest -q -p no:cacheprovider", input_tokens=2600, output_tokens=30),
        Turn.say("Fixed add(); the tests pass.", input_tokens=2700, output_tokens=25),
    )
    code, out = exec_claude(suite, project)
    assert code == 0, (out, suite.logs())
    assert (out["status"], out["result"], out["iterations"]) == ("SUCCEEDED", "SUCCEEDED", 2)

    run_dir = suite.home / "runs" / out["run_id"]
    agent_1 = json.loads((run_dir / "agent-1.json").read_text())
    agent_2 = json.loads((run_dir / "agent-2.json").read_text())
    assert agent_1["session_id"] and agent_2["session_id"] == agent_1["session_id"]
    assert [call["tool"] for call in agent_1["tool_calls"]] == ["Bash"]
    assert "key=" in agent_1["tool_calls"][0]["output"]  # printed, and redacted below
    assert [call["tool"] for call in agent_2["tool_calls"]] == ["Bash", "Bash"]
    assert "1 passed" in agent_2["tool_calls"][1]["output"]
    served_in, served_out = fake.served_input - before[0], fake.served_output - before[1]
    tokens = [agent_1["tokens"], agent_2["tokens"]]
    assert sum(int(t["input"]) for t in tokens) == served_in == 2000 + 2100 + 2500 + 2600 + 2700
    assert sum(int(t["output"]) for t in tokens) == served_out == 50 + 20 + 40 + 30 + 25
    assert agent_1["model"] and agent_1["model"] == agent_2["model"]
    assert agent_1["cost_usd"] > 0 and agent_2["cost_usd"] > 0
    # Iteration 2 resumed: its first request carries iteration 1's conversation and the feedback.
    iteration_2_first = fake.agent_requests()[before[2] + 2]
    sent = json.dumps(iteration_2_first.body["messages"])
    assert "I looked at calc.py." in sent and "Verification failed" in sent
    assert "a + b" in (Path(out["workspace"]) / "calc.py").read_text()
    for file in run_dir.rglob("*"):
        if file.is_file():
            assert KEY not in file.read_text(errors="replace"), file
    assert KEY not in suite.cli("watch", out["work_order_id"], "--json", timeout=60).stdout


def test_real_claude_401_ends_the_run_after_one_iteration_with_the_api_message(
    suite: Suite, fake: FakeAnthropic, tmp_path: Path
) -> None:
    project = make_project(tmp_path / "project")
    fake.api_key = "a-key-the-services-do-not-have"
    try:
        code, out = exec_claude(suite, project)
    finally:
        fake.api_key = KEY
    assert code != 0
    assert out["iterations"] == 1, out
    error = out.get("error", "") + json.dumps(out.get("build_error", {}))
    assert "Invalid API key" in error and "401" in error, out
    run_dir = suite.home / "runs" / out["run_id"]
    iteration = json.loads((run_dir / "iteration-1.json").read_text())
    assert len(iteration.get("attempts", [])) <= 1  # not retried
    assert KEY not in (run_dir / "agent-1.json").read_text()


def test_real_claude_500_is_retried_with_backoff_then_succeeds(
    suite: Suite, fake: FakeAnthropic, tmp_path: Path
) -> None:
    project = make_project(tmp_path / "project")
    fake.add(
        Turn.fail(500, "upstream failure"),
        Turn.bash(FIX),
        Turn.say("Fixed."),
    )
    code, out = exec_claude(suite, project)
    assert code == 0, (out, suite.logs())
    assert (out["result"], out["iterations"]) == ("SUCCEEDED", 1)
    run_dir = suite.home / "runs" / out["run_id"]
    iteration = json.loads((run_dir / "iteration-1.json").read_text())
    attempts = iteration["attempts"]
    assert attempts[0]["success"] is False and attempts[0]["error_type"] == "BUILD_ERROR_TYPE_AGENT_API_ERROR"
    assert attempts[0]["will_retry"] is True and int(attempts[0]["next_retry_ms"]) >= 1000
    assert attempts[-1]["success"] is True
