"""The claude-code and codex drivers through the workspace service, against a stand-in CLI
on PATH that replays recorded streams (tests/fixtures/agents/): argv and prompt as the
real CLI gets them, tool calls, tokens, cost, model, session id, resume, a malformed line,
a crash in the middle of the stream, a CLI that reports failure, and a missing CLI.
Also ListAgentDrivers."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from agentgate.common.errors import field_violations
from agentgate.orchestrator import build_errors
from agentgate.v1 import common_pb2, workspace_pb2
from agentgate.workspace.drivers.stream import TOOL_OUTPUT_CHARS
from agentgate.workspace.processes import MAX_LINE_CHARS

from ..agent_standin import FIXTURES, install_standin, invocations, stream
from .workspace_client import WorkspaceClient, git, workspace_service, write_files

T = common_pb2.BuildErrorType
SESSION = "0f3c2a9e-6b1d-4c8e-9a52-1d2e3f4a5b6c"
THREAD = "0199a213-81c0-7800-8aa1-bbab2a035a53"
MODEL = "claude-sonnet-4-5-20250929"


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`claude` and `codex` stand-ins first on the service's PATH."""
    folder = tmp_path / "bin"
    install_standin(folder, "claude")
    install_standin(folder, "codex")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    return folder


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
    # The stand-in CLIs and their recorded streams live outside the system's toolchain
    # folders, as a user's own tools might: the run names them read-only (docs/sandbox.md).
    sandbox = common_pb2.SandboxSettings(
        read_only_paths=[str(tmp_path / "bin"), str(tmp_path / "recorded"), str(FIXTURES)]
    )
    return await client.prepare(root, sandbox=sandbox)


def standin_log(workspace: workspace_pb2.Workspace) -> Path:
    """Where the stand-in records its invocations: in the workspace, the one place a
    sandboxed agent can write to that outlives it (not part of the tests' assertions on
    files, which look at calc.py only)."""
    return Path(workspace.path) / ".standin-log.jsonl"


def agent(name: str, recorded: Path, log: Path, **options: str) -> common_pb2.AgentSpec:
    key = "env.STANDIN_STREAM_DIR" if recorded.is_dir() else "env.STANDIN_STREAM"
    return common_pb2.AgentSpec(name=name, options={key: str(recorded), "env.STANDIN_LOG": str(log), **options})


# --- claude-code ---------------------------------------------------------------------------


async def test_claude_code_runs_claude_p_and_parses_the_stream(
    client: WorkspaceClient, workspace: workspace_pb2.Workspace, bin_dir: Path, tmp_path: Path
) -> None:
    log = standin_log(workspace)
    spec = agent(
        "claude-code",
        stream("claude", "tools"),
        log,
        model="sonnet",
        max_turns="7",
        allowed_tools="Read,Edit,Bash(git diff:*)",
        disallowed_tools="WebFetch",
        append_system_prompt="Never push.",
    )
    outputs, result = await client.run_agent(workspace, spec, iteration=1, attempt=1, prompt="Fix add()\nplease")
    [call] = invocations(log)
    assert call["argv"] == [
        "-p", "--output-format", "stream-json", "--verbose", "--include-partial-messages",
        "--model", "sonnet",
        "--allowedTools", "Read,Edit,Bash(git diff:*)",
        "--disallowedTools", "WebFetch",
        "--max-turns", "7",
        "--append-system-prompt", "Never push.",
        "--permission-mode", "acceptEdits",
    ]
    assert call["prompt"] == "Fix add()\nplease"
    assert call["cwd"] == workspace.path

    assert result.success and result.exit_code == 0 and result.driver == "claude-code"
    assert (result.session_id, result.model) == (SESSION, MODEL)
    assert result.cost_usd == pytest.approx(0.0123)
    assert (result.tokens.input, result.tokens.output, result.tokens.total) == (3530, 120, 3650)
    bash, read = result.tool_calls
    assert (bash.tool, dict(bash.input), bash.output) == (
        "Bash", {"command": "ls", "description": "List files"}, "calc.py\ntest_calc.py"
    )
    assert bash.duration_seconds >= 0.04  # the stand-in paused 0.05 s before the result
    assert (read.tool, read.output) == ("Read", "ERROR: <tool_use_error>File does not exist.</tool_use_error>")
    assert result.structured_output["subtype"] == "success" and result.structured_output["result"] == "Done."
    # The raw stream is kept whole; the streamed lines are readable.
    assert result.stdout.count("\n") == 6 and '"type":"result"' in result.stdout
    texts = [o.text for o in outputs]
    assert texts[0] == f"[claude] session {SESSION} started, model {MODEL}"
    assert "-> Bash: {\"command\": \"ls\", \"description\": \"List files\"}" in "\n".join(texts)
    assert texts[-1] == "[claude] done: success, 3 turns, cost $0.0123"


async def test_claude_code_resumes_the_given_session(
    client: WorkspaceClient, workspace: workspace_pb2.Workspace, bin_dir: Path, tmp_path: Path
) -> None:
    log = standin_log(workspace)
    spec = agent("claude-code", stream("claude", "tools"), log)
    await client.run_agent(workspace, spec, iteration=2, prompt="again", resume_session_id="sess-before")
    no_resume = agent("claude-code", stream("claude", "tools"), log, resume="false", permission_mode="plan")
    await client.run_agent(workspace, no_resume, iteration=3, prompt="again", resume_session_id="sess-before")
    first, second = invocations(log)
    assert first["argv"][-2:] == ["--resume", "sess-before"]
    assert "--resume" not in second["argv"] and second["argv"][-2:] == ["--permission-mode", "plan"]


async def test_claude_code_survives_malformed_lines(
    client: WorkspaceClient, workspace: workspace_pb2.Workspace, bin_dir: Path, tmp_path: Path
) -> None:
    outputs, result = await client.run_agent(
        workspace, agent("claude-code", stream("claude", "malformed"), standin_log(workspace)), prompt="x"
    )
    assert result.success
    [call] = result.tool_calls
    assert (call.tool, call.output) == ("Bash", "calc.py")
    assert "[agentgate] 2 line(s) of the claude stream could not be used (line 2, 4)" in result.stderr
    # The unusable lines are still shown as they were.
    assert "Warning: could not read ~/.claude/settings.json, using defaults" in [o.text for o in outputs]


async def test_claude_code_crash_mid_stream_keeps_what_was_seen(
    client: WorkspaceClient, workspace: workspace_pb2.Workspace, bin_dir: Path, tmp_path: Path
) -> None:
    _, result = await client.run_agent(
        workspace, agent("claude-code", stream("claude", "crash"), standin_log(workspace)), prompt="x"
    )
    assert not result.success and result.exit_code == 139  # SIGSEGV
    assert result.session_id == SESSION and result.model == MODEL
    [call] = result.tool_calls
    assert call.tool == "Bash" and call.output == "[no result: the agent stopped first]"
    # No result event: tokens from the assistant messages seen, no cost.
    assert (result.tokens.input, result.tokens.output, result.cost_usd) == (1512, 8, 0.0)
    assert not result.HasField("structured_output")
    assert "JavaScript heap out of memory" in result.stderr
    assert "the claude stream ended without a result event" in result.stderr
    assert build_errors.from_agent_result(result).type == T.BUILD_ERROR_TYPE_AGENT_CRASH


async def test_claude_code_reported_failure_is_a_task_failure(
    client: WorkspaceClient, workspace: workspace_pb2.Workspace, bin_dir: Path, tmp_path: Path
) -> None:
    _, result = await client.run_agent(
        workspace, agent("claude-code", stream("claude", "max-turns"), standin_log(workspace)), prompt="x"
    )
    assert not result.success and result.exit_code == 1
    assert result.structured_output["subtype"] == "error_max_turns"
    assert result.cost_usd == pytest.approx(0.002)
    error = build_errors.from_agent_result(result)
    assert error.type == T.BUILD_ERROR_TYPE_AGENT_TASK_FAILURE
    assert error.message == "Agent reported task failure: claude stopped at its turn limit (2 turns, max_turns)"


async def test_long_events_are_reassembled(
    client: WorkspaceClient, workspace: workspace_pb2.Workspace, bin_dir: Path, tmp_path: Path
) -> None:
    """An event longer than the process reader's line limit (a big tool result) parses."""
    big = "x" * (2 * MAX_LINE_CHARS + 10)
    lines = stream("claude", "tools").read_text().replace("calc.py\\ntest_calc.py", big)
    recorded = tmp_path / "recorded" / "long.jsonl"
    recorded.parent.mkdir()
    recorded.write_text(lines)
    _, result = await client.run_agent(workspace, agent("claude-code", recorded, standin_log(workspace)), prompt="x")
    assert result.success and "could not be used" not in result.stderr
    # Parsed whole; kept in the tool call up to its cap.
    assert result.tool_calls[0].output == big[:TOOL_OUTPUT_CHARS]
    assert big in result.stdout


async def test_missing_cli_is_a_clear_failure(
    client: WorkspaceClient, workspace: workspace_pb2.Workspace, tmp_path: Path
) -> None:
    spec = common_pb2.AgentSpec(name="claude-code", options={"executable": str(tmp_path / "no-such-claude")})
    outputs, result = await client.run_agent(workspace, spec, prompt="x")
    assert not result.success and result.exit_code == 127
    assert "no-such-claude executable is not on PATH" in result.stderr
    assert outputs[-1].text in result.stderr


async def test_bad_options_are_invalid_arguments(client: WorkspaceClient, workspace: workspace_pb2.Workspace) -> None:
    spec = common_pb2.AgentSpec(
        name="claude-code", options={"max_turns": "many", "permission_mode": "yolo", "colour": "red"}
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.run_agent(workspace, spec, prompt="x")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(v.field for v in field_violations(caught.value)) == [
        "agent.options.colour", "agent.options.max_turns", "agent.options.permission_mode"
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.run_agent(
            workspace, common_pb2.AgentSpec(name="claude-code"), prompt="x", resume_session_id="--dangerously-skip"
        )
    assert [v.field for v in field_violations(caught.value)] == ["resume_session_id"]


# --- codex ---------------------------------------------------------------------------------


async def test_codex_runs_codex_exec_json_and_parses_the_stream(
    client: WorkspaceClient, workspace: workspace_pb2.Workspace, bin_dir: Path, tmp_path: Path
) -> None:
    log = standin_log(workspace)
    spec = agent("codex", stream("codex", "tools"), log, model="gpt-5-codex", **{"config.model_reasoning_effort": "low"})
    outputs, result = await client.run_agent(workspace, spec, iteration=1, prompt="Fix add()")
    await client.run_agent(workspace, spec, iteration=2, prompt="Again", resume_session_id=THREAD)
    first, second = invocations(log)
    # Inside AgentGate's sandbox (on by default) `sandbox=auto` is danger-full-access:
    # codex's own bubblewrap cannot nest in ours, which confines it instead.
    assert first["argv"] == [
        "exec", "--json", "--sandbox", "danger-full-access", "--model", "gpt-5-codex",
        "-c", "model_reasoning_effort=low", "-",
    ]
    assert first["prompt"] == "Fix add()"
    assert second["argv"][-3:] == ["resume", THREAD, "-"]

    assert result.success and result.driver == "codex"
    assert (result.session_id, result.model, result.cost_usd) == (THREAD, "gpt-5-codex", 0.0)
    assert (result.tokens.input, result.tokens.output, result.tokens.total) == (24763, 122, 24885)
    command, change, mcp = result.tool_calls
    assert (command.tool, dict(command.input)) == ("command_execution", {"command": "bash -lc 'cat calc.py'"})
    assert command.output == "def add(a, b):\n    return a - b\n\n[exit code 0]"
    assert command.duration_seconds >= 0.04
    assert (change.tool, change.output) == ("file_change", "completed: update calc.py")
    assert (mcp.tool, mcp.output) == ("mcp:docs/search", "add(a, b) returns a + b")
    assert result.structured_output["last_message"] == "Fixed add() in calc.py."
    texts = [o.text for o in outputs]
    assert texts[0] == f"[codex] session {THREAD} started" and "Fixed add() in calc.py." in texts


async def test_codex_malformed_crash_and_failed_turn(
    client: WorkspaceClient, workspace: workspace_pb2.Workspace, bin_dir: Path, tmp_path: Path
) -> None:
    log = standin_log(workspace)
    _, malformed = await client.run_agent(workspace, agent("codex", stream("codex", "malformed"), log), prompt="x")
    assert malformed.success and len(malformed.tool_calls) == 1
    assert "2 line(s) of the codex stream could not be used (line 2, 5)" in malformed.stderr

    _, crashed = await client.run_agent(workspace, agent("codex", stream("codex", "crash"), log), prompt="x")
    assert not crashed.success and crashed.exit_code == 137 and crashed.session_id == THREAD
    assert crashed.tool_calls[0].output == "[no result: the agent stopped first]"
    assert build_errors.from_agent_result(crashed).type == T.BUILD_ERROR_TYPE_AGENT_TIMEOUT  # 137 = killed

    _, failed = await client.run_agent(workspace, agent("codex", stream("codex", "turn-failed"), log), prompt="x")
    assert not failed.success and failed.exit_code == 1
    assert failed.structured_output["error"] == "unexpected status 401 Unauthorized: Incorrect API key provided"
    # A 401 is the credentials, not the task: not retryable, with the API's message.
    error = build_errors.from_agent_result(failed)
    assert error.type == T.BUILD_ERROR_TYPE_AGENT_AUTH_ERROR and "Incorrect API key provided" in error.message


# --- ListAgentDrivers ----------------------------------------------------------------------


async def test_list_agent_drivers_says_what_is_missing(
    client: WorkspaceClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    drivers = {d.name: d for d in (await client.stub.ListAgentDrivers(workspace_pb2.ListAgentDriversRequest())).drivers}
    assert sorted(drivers) == ["claude-code", "codex", "command", "scripted"]
    assert drivers["command"].available and drivers["scripted"].available and not drivers["command"].missing
    assert not drivers["claude-code"].available
    assert drivers["claude-code"].missing == "the claude executable is not on PATH"
    assert drivers["codex"].missing == "the codex executable is not on PATH"
    assert all(d.description for d in drivers.values())

    install_standin(tmp_path / "empty-bin", "claude")
    drivers = {d.name: d for d in (await client.stub.ListAgentDrivers(workspace_pb2.ListAgentDriversRequest())).drivers}
    assert drivers["claude-code"].available and not drivers["claude-code"].missing
    assert not drivers["codex"].available


async def test_list_agent_drivers_probes_each_endpoint_from_inside_the_sandbox(
    client: WorkspaceClient, bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """claude's endpoint (ANTHROPIC_BASE_URL) is reached through the sandbox's proxy; codex's
    (from its config.toml) is refused by nobody listening, which only the proxy can report
    as a 502; with the sandbox off the answer says so."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        closed_port = spare.getsockname()[1]
    codex_home = tmp_path / "codex-home"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(f'openai_base_url = "http://127.0.0.1:{closed_port}/v1"\n')
    monkeypatch.setenv("CODEX_HOME", str(codex_home))
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{port}")
    # The stand-ins print their version from inside the folder the test made readable.
    monkeypatch.setenv("AGENTGATE_SANDBOX_READ_ONLY", str(bin_dir))
    async with server:
        drivers = {
            d.name: d for d in (await client.stub.ListAgentDrivers(workspace_pb2.ListAgentDriversRequest())).drivers
        }
        assert drivers["claude-code"].endpoint == f"reachable from the sandbox: 127.0.0.1:{port}"
        assert accepted
        assert drivers["codex"].endpoint.startswith(f"unreachable from the sandbox: 127.0.0.1:{closed_port} (HTTP/1.1 502")
        assert not drivers["command"].endpoint and not drivers["scripted"].endpoint

        monkeypatch.setenv("AGENTGATE_SANDBOX", "off")
        drivers = {
            d.name: d for d in (await client.stub.ListAgentDrivers(workspace_pb2.ListAgentDriversRequest())).drivers
        }
        assert drivers["claude-code"].endpoint == f"reachable (sandbox off): 127.0.0.1:{port}"
        assert drivers["codex"].endpoint.startswith(f"unreachable (sandbox off): 127.0.0.1:{closed_port}")
