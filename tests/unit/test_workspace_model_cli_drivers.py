"""The claude-code and codex drivers' plain parts: command lines, option checks, stream
parsing, and availability (the stand-in CLI runs them for real in the integration tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentgate.harness.drivers import DRIVERS, agent_unavailable, validate_agent
from agentgate.v1 import common_pb2
from agentgate.workspace.drivers.claude_code import ClaudeStreamParser, claude_argv
from agentgate.workspace.drivers.codex import CodexStreamParser, Usage, codex_argv
from agentgate.workspace.drivers.stream import StreamReader
from agentgate.workspace.processes import MAX_LINE_CHARS

from ..agent_standin import stream


def test_claude_argv_defaults_and_resume() -> None:
    head = ["-p", "--output-format", "stream-json", "--verbose", "--include-partial-messages"]
    assert claude_argv({}) == [
        "claude", *head, "--allowedTools", "Bash", "--permission-mode", "acceptEdits"
    ]
    argv = claude_argv({"executable": "/opt/claude", "max_turns": "3", "allowed_tools": "Read"}, resume_session_id="s-1")
    assert argv == [
        "/opt/claude", *head, "--allowedTools", "Read", "--max-turns", "3",
        "--permission-mode", "acceptEdits", "--resume", "s-1",
    ]
    assert "--resume" not in claude_argv({"resume": "no"}, resume_session_id="s-1")


def test_claude_extra_args_and_budget() -> None:
    argv = claude_argv({"extra_args": "--add-dir '../my lib' --max-budget-usd=2"}, max_budget_usd=0.5)
    assert argv[argv.index("--add-dir") + 1] == "../my lib" and argv[-2:] == ["--max-budget-usd", "0.500000"]
    # A lower cap of the work order's own stays the only one.
    assert claude_argv({"extra_args": "--max-budget-usd 0.1"}, max_budget_usd=0.5).count("--max-budget-usd") == 1
    assert claude_argv({}, max_budget_usd=1.25)[-2:] == ["--max-budget-usd", "1.250000"]


def test_codex_argv() -> None:
    assert codex_argv({}) == ["codex", "exec", "--json", "--sandbox", "workspace-write", "-"]
    assert codex_argv({"sandbox": "read-only", "profile": "ci", "config.a.b": "1"}, "t-1") == [
        "codex", "exec", "--json", "--sandbox", "read-only", "--profile", "ci", "-c", "a.b=1", "resume", "t-1", "-"
    ]


@pytest.mark.parametrize(
    ("name", "options", "fields"),
    [
        ("claude-code", {"max_turns": "0"}, ["spec.agent.options.max_turns"]),
        ("claude-code", {"max_turns": "1001"}, ["spec.agent.options.max_turns"]),
        ("claude-code", {"resume": "perhaps"}, ["spec.agent.options.resume"]),
        ("claude-code", {"model": " "}, ["spec.agent.options.model"]),
        ("claude-code", {"env.1BAD": "x"}, ["spec.agent.options.env.1BAD"]),
        ("claude-code", {"sandbox": "read-only"}, ["spec.agent.options.sandbox"]),
        ("codex", {"sandbox": "yolo"}, ["spec.agent.options.sandbox"]),
        ("codex", {"max_turns": "3"}, ["spec.agent.options.max_turns"]),
        ("codex", {"config.": "x"}, ["spec.agent.options.config."]),
    ],
)
def test_option_violations(name: str, options: dict[str, str], fields: list[str]) -> None:
    violations = validate_agent(common_pb2.AgentSpec(name=name, options=options))
    assert [v.field for v in violations] == fields


def test_valid_options() -> None:
    claude = {"model": "opus", "max_turns": "1000", "allowed_tools": "Read", "disallowed_tools": "Bash",
              "append_system_prompt": "x", "permission_mode": "bypassPermissions", "resume": "true",
              "executable": "claude", "env.FOO": "1"}
    assert validate_agent(common_pb2.AgentSpec(name="claude-code", options=claude)) == []
    codex = {"model": "gpt-5", "sandbox": "danger-full-access", "config.x": "y", "resume": "0"}
    assert validate_agent(common_pb2.AgentSpec(name="codex", options=codex)) == []


def test_unknown_option_message_lists_the_known_ones() -> None:
    [violation] = validate_agent(common_pb2.AgentSpec(name="codex", options={"turns": "1"}))
    assert violation.description == (
        "unknown option (known: model, sandbox, profile, extra_args, pricing, resume, executable, env.NAME, config.NAME)"
    )


def replay(parser, name: str) -> tuple[StreamReader, common_pb2.AgentResult, str]:  # type: ignore[no-untyped-def]
    cli = "claude" if isinstance(parser, ClaudeStreamParser) else "codex"
    reader = StreamReader(parser, cli)
    for line in stream(cli, name).read_text().splitlines():
        if line.startswith("#!partial "):
            reader.piece(line[len("#!partial "):])
        elif not line.startswith("#!"):
            reader.piece(line)
    reader.flush()
    result = common_pb2.AgentResult()
    failure = parser.apply(result, now=1e9)
    return reader, result, failure


def test_claude_parser_on_the_fix_stream() -> None:
    reader, result, failure = replay(ClaudeStreamParser(), "fix-calc/iteration-2")
    assert failure == "" and reader.malformed == []
    assert result.session_id == "7d1e4b2a-9c3f-4e8d-b6a1-2f3e4d5c6b7a"
    assert [c.tool for c in result.tool_calls] == ["Write", "Bash"]
    assert result.tool_calls[1].output == "1 passed in 0.01s"
    assert (result.tokens.input, result.tokens.output) == (3040, 200)
    assert result.cost_usd == pytest.approx(0.0456)


def test_claude_parser_failures() -> None:
    _, _, failure = replay(ClaudeStreamParser(), "max-turns")
    assert failure == "claude stopped at its turn limit (2 turns, max_turns)"
    reader, result, failure = replay(ClaudeStreamParser(), "crash")
    assert failure == "the claude stream ended without a result event"
    assert reader.malformed == [3]  # the half-written event
    assert "line 3: JSONDecodeError" in reader.note()


def test_claude_parser_takes_the_model_from_model_usage_and_old_cost_field() -> None:
    parser = ClaudeStreamParser()
    parser.feed({"type": "result", "subtype": "success", "cost_usd": 0.5, "modelUsage": {"claude-x": {}},
                 "usage": {"input_tokens": 1, "output_tokens": 2}}, 0.0)
    result = common_pb2.AgentResult()
    assert parser.apply(result, 0.0) == ""
    assert (result.model, result.cost_usd, result.tokens.total) == ("claude-x", 0.5, 3)


def test_codex_parser_counts_turns_and_usage() -> None:
    # turn.completed usage covers the whole thread: the execution's own tokens are the last
    # cumulative figure less the thread's figure before it (the baseline of a resumed thread).
    parser = CodexStreamParser(baseline=Usage(input=100, output=10))
    for event in [
        {"type": "thread.started", "thread_id": "t"},
        {"type": "turn.completed", "usage": {"input_tokens": 110, "cached_input_tokens": 5, "output_tokens": 12}},
        {"type": "item.completed", "item": {"id": "e", "type": "error", "message": "warn"}},
        {"type": "item.completed", "item": {"id": "w", "type": "web_search", "query": "q"}},
        {"type": "turn.completed", "usage": {"input_tokens": 111, "output_tokens": 13}},
    ]:
        parser.feed(event, 0.0)
    result = common_pb2.AgentResult()
    assert parser.apply(result, 0.0) == ""
    assert (result.tokens.input, result.tokens.output, result.tokens.total) == (11, 3, 14)
    assert [c.tool for c in result.tool_calls] == ["web_search"]
    assert result.structured_output["turns_completed"] == 2
    _, _, failure = replay(CodexStreamParser(), "crash")
    assert failure == "the codex stream ended without a completed turn"


def test_stream_reader_reassembles_pieces_and_counts_bad_events() -> None:
    parser = ClaudeStreamParser()
    reader = StreamReader(parser, "claude")
    event = json.dumps({"type": "system", "subtype": "init", "session_id": "s", "model": "m" * 70000})
    pieces = [event[i : i + MAX_LINE_CHARS] for i in range(0, len(event), MAX_LINE_CHARS)]
    shown = [reader.piece(piece) for piece in pieces]
    assert shown[:-1] == [None] * (len(pieces) - 1) and shown[-1].startswith("[claude] session s started")
    assert reader.piece("[1, 2]") == "[1, 2]"  # JSON, but not an event
    assert reader.piece('{"type": "assistant", "message": {"content": [1]}}')  # wrong shape
    assert reader.malformed == [2, 3]


def test_availability(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    claude = common_pb2.AgentSpec(name="claude-code")
    assert agent_unavailable(claude) == (
        "agent driver 'claude-code' is not available here: the claude executable is not on PATH"
    )
    assert agent_unavailable(common_pb2.AgentSpec(name="command", options={"command": "x"})) == ""
    assert agent_unavailable(common_pb2.AgentSpec(name="no-such-driver")) == ""
    custom = common_pb2.AgentSpec(name="codex", options={"executable": str(tmp_path / "bin" / "codex")})
    assert "does not exist or is not executable" in agent_unavailable(custom)
    (tmp_path / "claude").write_text("#!/bin/sh\n")
    (tmp_path / "claude").chmod(0o755)
    assert agent_unavailable(claude) == ""
    assert DRIVERS["claude-code"].description


def test_claude_model_name_is_one_per_run() -> None:
    from agentgate.workspace.drivers.claude_code import model_name

    assert model_name("claude-opus-4-8[1m]") == model_name("claude-opus-4-8") == "claude-opus-4-8"
    parser = ClaudeStreamParser()
    parser.feed({"type": "system", "subtype": "init", "session_id": "s", "model": "claude-opus-4-8[1m]"}, 0.0)
    assert parser.model == "claude-opus-4-8"


def test_claude_result_that_says_success_with_is_error_is_an_api_error() -> None:
    parser = ClaudeStreamParser()
    parser.feed({"type": "result", "subtype": "success", "is_error": True, "api_error_status": 529,
                 "result": "API Error: 529 Overloaded", "session_id": "s"}, 0.0)
    result = common_pb2.AgentResult()
    failure = parser.apply(result, 0.0)
    assert result.error_type == common_pb2.BUILD_ERROR_TYPE_AGENT_API_ERROR
    assert "success" not in failure and "HTTP 529" in failure and "Overloaded" in failure
