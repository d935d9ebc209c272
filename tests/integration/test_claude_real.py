"""The claude-code driver with the REAL `claude` CLI (pinned in tools/agents/package.json,
installed by `make agent-clis`) through the workspace service, against our fake Anthropic
Messages API (tests/fake_models/anthropic.py) on 127.0.0.1.

The CLI is required: these tests fail, not skip, when it is missing (`make test` installs
it). No stand-in is used here.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agentgate.orchestrator import build_errors
from agentgate.v1 import common_pb2, workspace_pb2

from ..fake_models.anthropic import DROP, FakeAnthropic, Turn
from .workspace_client import WorkspaceClient, git, workspace_service, write_files

T = common_pb2.BuildErrorType
ROOT = Path(__file__).resolve().parents[2]
CLAUDE = ROOT / "tools" / "agents" / "node_modules" / ".bin" / "claude"
KEY = "sk-ant-test-0123456789abcdef"


def claude_executable() -> str:
    """The pinned claude; a missing one fails the test with how to install it."""
    if not CLAUDE.exists():
        pytest.fail(f"the real claude CLI is missing at {CLAUDE}: run `make agent-clis`", pytrace=False)
    return str(CLAUDE)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    """The fake model server, its address and key in the service's environment (where the
    driver passes ANTHROPIC_* on to the agent only)."""
    with FakeAnthropic(api_key=KEY) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        # The CLI's own retries of 5xx would slow the tests; AgentGate's retry is tested.
        monkeypatch.setenv("CLAUDE_CODE_MAX_RETRIES", "0")
        yield server


@pytest.fixture
async def client(home: Path) -> AsyncIterator[WorkspaceClient]:
    async with workspace_service(home) as running:
        yield running


@pytest.fixture
async def workspace(client: WorkspaceClient, tmp_path: Path) -> workspace_pb2.Workspace:
    root = tmp_path / "project"
    write_files(root, {"calc.py": "def add(a, b):\n    return a - b\n"})
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    return await client.prepare(root)


def claude(**options: str) -> common_pb2.AgentSpec:
    return common_pb2.AgentSpec(name="claude-code", options={"executable": claude_executable(), **options})


async def test_real_claude_edits_runs_bash_and_reports_usage(
    client: WorkspaceClient, workspace: workspace_pb2.Workspace, fake: FakeAnthropic, home: Path
) -> None:
    path = Path(workspace.path)
    fake.add(
        Turn.write(str(path / "calc.py"), "def add(a, b):\n    return a + b\n", input_tokens=1200, output_tokens=40),
        # A command that writes a file: allowed by default (allowed_tools=Bash), not only reads.
        Turn.bash("python3 -c \"import calc; open('ok.txt', 'w').write(str(calc.add(2, 3)))\"",
                  input_tokens=1300, output_tokens=30),
        Turn.bash("false", input_tokens=1400, output_tokens=10),
        Turn.say("Fixed add().", input_tokens=1500, output_tokens=12),
    )
    outputs, result = await client.run_agent(workspace, claude(), iteration=1, attempt=1, prompt="Fix add()")
    assert result.success, result.stderr
    assert (path / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert (path / "ok.txt").read_text() == "5"
    assert [call.tool for call in result.tool_calls] == ["Write", "Bash", "Bash"]
    failed = result.tool_calls[2]
    assert failed.output.startswith("ERROR: ") and "exit code 1" in failed.output.lower()
    # Tokens are what the server served; cost and model come from the CLI.
    assert (result.tokens.input, result.tokens.output) == (fake.served_input, fake.served_output) == (5400, 92)
    # What the CLI sent: our key in its header, the prompt, the tools including Bash.
    [first, *_] = fake.agent_requests()
    assert result.cost_usd > 0 and result.model == first.body["model"] and result.session_id
    assert any("[claude] session" in output.text for output in outputs)
    assert first.headers.get("x-api-key") == KEY
    assert "Fix add()" in json.dumps(first.body["messages"])
    assert "Bash" in {tool["name"] for tool in first.body["tools"]}
    # The run's own home, outside the workspace; the key is never written to disk.
    agent_home = home / "agent-homes" / workspace.run_id / "claude"
    assert agent_home.is_dir() and oct(agent_home.stat().st_mode & 0o777) == "0o700"
    for file in agent_home.rglob("*"):
        if file.is_file():
            assert KEY not in file.read_text(errors="replace"), file
    assert KEY not in result.stdout + result.stderr


async def test_real_claude_resumes_its_session_and_recovers_a_lost_one(
    client: WorkspaceClient, workspace: workspace_pb2.Workspace, fake: FakeAnthropic
) -> None:
    fake.add(Turn.say("first answer"))
    _, first = await client.run_agent(workspace, claude(), iteration=1, attempt=1, prompt="task one")
    assert first.success and first.session_id
    fake.add(Turn.say("second answer"))
    _, second = await client.run_agent(
        workspace, claude(), iteration=2, attempt=1, prompt="feedback two", resume_session_id=first.session_id
    )
    assert second.success and second.session_id == first.session_id and not second.session_note
    sent = json.dumps(fake.agent_requests()[-1].body["messages"])
    assert "task one" in sent and "first answer" in sent and "feedback two" in sent
    assert second.model == first.model  # one model name, fresh or resumed

    fake.add(Turn.say("third answer"))
    lost = "7d1c0a4e-2b3f-4c5d-8e9f-0a1b2c3d4e5f"
    outputs, third = await client.run_agent(
        workspace, claude(), iteration=3, attempt=1, prompt="full prompt and feedback three", resume_session_id=lost
    )
    assert third.success, third.stderr
    assert third.session_id not in ("", lost) and lost in third.session_note
    assert any("could not be resumed" in output.text for output in outputs)
    sent = json.dumps(fake.agent_requests()[-1].body["messages"])
    assert "full prompt and feedback three" in sent and "task one" not in sent


async def test_real_claude_401_is_an_authentication_error_quoting_the_api(
    client: WorkspaceClient, workspace: workspace_pb2.Workspace, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-wrong")
    _, result = await client.run_agent(workspace, claude(), iteration=1, attempt=1, prompt="x")
    assert not result.success and result.error_type == T.BUILD_ERROR_TYPE_AGENT_AUTH_ERROR
    error = build_errors.from_agent_result(result)
    assert error.type == T.BUILD_ERROR_TYPE_AGENT_AUTH_ERROR
    # claude replaces the API's own 401 text with its message ("Invalid API key · ...");
    # that is what the result event carries and what the error quotes.
    assert "Invalid API key" in error.message and "HTTP 401" in error.message
    assert "success" not in error.message
    assert "sk-ant-wrong" not in result.stdout + result.stderr


async def test_real_claude_401_with_an_api_message_quotes_it(
    client: WorkspaceClient, workspace: workspace_pb2.Workspace, fake: FakeAnthropic
) -> None:
    """Any other 401 text (a revoked key, an organisation's policy) reaches the error as the
    API wrote it; only "invalid x-api-key" is reworded by claude itself (test above)."""
    fake.add(Turn.fail(401, "This key was revoked by your organization's admin"))
    _, result = await client.run_agent(workspace, claude(), iteration=1, attempt=1, prompt="x")
    assert not result.success and result.error_type == T.BUILD_ERROR_TYPE_AGENT_AUTH_ERROR
    error = build_errors.from_agent_result(result)
    assert "This key was revoked by your organization's admin" in error.message and "HTTP 401" in error.message


@pytest.mark.parametrize(
    ("status", "shown"), [(500, "HTTP 500"), (529, "HTTP 529"), (429, "HTTP 429"), (DROP, "")]
)
async def test_real_claude_transient_api_errors_are_retryable(
    client: WorkspaceClient, workspace: workspace_pb2.Workspace, fake: FakeAnthropic, status: int, shown: str
) -> None:
    fake.add(*[Turn.fail(status, "the fake is down")] * 3)
    _, result = await client.run_agent(workspace, claude(), iteration=1, attempt=1, prompt="x")
    assert not result.success and result.error_type == T.BUILD_ERROR_TYPE_AGENT_API_ERROR, result.stdout[-2000:]
    assert shown in result.error_message
    assert "success" not in result.error_message


async def test_real_claude_rejected_tool_call_is_recorded_with_its_error(
    client: WorkspaceClient, workspace: workspace_pb2.Workspace, fake: FakeAnthropic
) -> None:
    fake.add(Turn.bash("touch nope.txt"), Turn.say("Could not run it."))
    _, result = await client.run_agent(
        workspace, claude(allowed_tools="Read", disallowed_tools="Bash"), iteration=1, attempt=1, prompt="x"
    )
    assert not (Path(workspace.path) / "nope.txt").exists()
    [call] = result.tool_calls
    assert call.tool == "Bash" and call.output.startswith("ERROR: "), call.output


async def test_real_claude_max_turns(
    client: WorkspaceClient, workspace: workspace_pb2.Workspace, fake: FakeAnthropic
) -> None:
    fake.add(Turn.bash("echo 1"), Turn.bash("echo 2"), Turn.bash("echo 3"))
    _, result = await client.run_agent(workspace, claude(max_turns="1"), iteration=1, attempt=1, prompt="x")
    assert not result.success and result.error_type == T.BUILD_ERROR_TYPE_AGENT_TASK_FAILURE
    assert "turn limit" in result.error_message


async def test_real_claude_is_stopped_mid_execution_by_a_token_cap(
    client: WorkspaceClient, workspace: workspace_pb2.Workspace, fake: FakeAnthropic
) -> None:
    # Ten responses of 1,000 tokens each, a cap of 3,500: the meter stops the CLI after the
    # fourth response, long before the tenth.
    fake.add(*[Turn.bash(f"echo step {n}", input_tokens=900, output_tokens=100, delay=0.2) for n in range(10)])
    budget = common_pb2.AgentBudget(max_tokens=3500)
    outputs, result = await client.run_agent(workspace, claude(), iteration=1, attempt=1, prompt="x", budget=budget)
    assert not result.success and result.error_type == T.BUILD_ERROR_TYPE_BUDGET_EXCEEDED
    assert result.error_message.startswith("Token budget exceeded")
    assert 3500 < result.tokens.total <= 3500 + 1000  # within one model response of the cap
    assert len(fake.agent_requests()) < 10
    assert result.session_id and len(result.tool_calls) >= 3  # the partial result is kept
    assert any("stopping the agent" in output.text for output in outputs)


async def test_real_claude_gets_max_budget_usd_for_what_is_left(
    client: WorkspaceClient, workspace: workspace_pb2.Workspace, fake: FakeAnthropic
) -> None:
    fake.add(*[Turn.bash(f"echo {n}", input_tokens=200_000, output_tokens=1000) for n in range(5)])
    budget = common_pb2.AgentBudget(max_cost_usd=0.5)
    _, result = await client.run_agent(workspace, claude(), iteration=1, attempt=1, prompt="x", budget=budget)
    assert not result.success and result.error_type == T.BUILD_ERROR_TYPE_BUDGET_EXCEEDED, result.stdout[-1500:]
    assert len(fake.agent_requests()) < 5


def test_cli_version_is_the_pinned_one() -> None:
    pinned = json.loads((ROOT / "tools" / "agents" / "package.json").read_text())
    version = next(v for k, v in pinned["dependencies"].items() if "claude" in k)
    assert os.access(claude_executable(), os.X_OK) and version


async def test_a_run_whose_token_cap_is_crossed_mid_execution_ends_with_budget_exceeded(
    home: Path, fake: FakeAnthropic, tmp_path: Path
) -> None:
    from .inprocess_suite import InProcessSuite

    root = tmp_path / "project"
    root.mkdir()
    (root / "notes.txt").write_text("start\n")
    (root / "verify.yaml").write_text('version: "1"\ntests:\n  - {name: done, kind: test, command: "grep -qx done notes.txt"}\n')
    fake.add(*[Turn.bash(f"echo step {n} >> notes.txt", input_tokens=900, output_tokens=100) for n in range(10)])
    harness = common_pb2.HarnessSettings()
    harness.loop_strategy.max_iterations = 3
    harness.limits.max_total_tokens = 2500
    spec = common_pb2.WorkOrderSpec(task_prompt="Write the notes", agent=claude(), harness=harness)
    spec.source.local_path = str(root)
    suite = await InProcessSuite.start(home)
    try:
        work_order = await suite.submit(spec)
        final = await suite.wait_terminal(work_order.id, timeout=120)
        assert final.status == common_pb2.WORK_ORDER_STATUS_FAILED
        run = await suite.run(work_order.run_id)
        assert run.iteration_count == 1
        assert 2500 < run.tokens.total <= 3500  # within one model response of the cap
        assert "Token budget exceeded" in run.error
        agent = suite.run_file(work_order.run_id, "agent-1.json")
        assert agent["error_type"] == "BUILD_ERROR_TYPE_BUDGET_EXCEEDED" and agent["session_id"]
        assert len(agent["tool_calls"]) >= 2  # the partial result is kept
        iteration = suite.run_file(work_order.run_id, "iteration-1.json")
        assert len(iteration.get("attempts", [])) <= 1  # a crossed budget is not retried
        events = await suite.events(work_order.id)
        [exceeded] = [e for e in events if e.type == "budget:exceeded"]
        assert exceeded.budget_exceeded.rule == "token_budget" and exceeded.budget_exceeded.tokens.total > 2500
    finally:
        await suite.stop()
