"""The codex driver's logic without the CLI: API error classification, the sandbox mode it
picks, `extra_args`, per-execution usage of a resumed thread, refused tool calls. The same
behaviours on the real CLI: tests/integration/test_codex_real.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentgate.harness.drivers import parse_prices, validate_agent
from agentgate.v1 import common_pb2
from agentgate.workspace.drivers.codex import (
    CodexStreamParser,
    Usage,
    classify_api_error,
    codex_argv,
    load_usage_state,
    prepare_home,
    save_usage_state,
)

T = common_pb2.BuildErrorType


def test_api_errors_are_classified_by_what_they_are() -> None:
    auth = "unexpected status 401 Unauthorized: Incorrect API key provided: sk-ab***. You can find your API key at x., url: http://127.0.0.1:1/v1/responses"
    kind, message = classify_api_error(auth)
    assert kind == T.BUILD_ERROR_TYPE_AGENT_AUTH_ERROR
    assert message.endswith("You can find your API key at x.") and "url:" not in message
    for transient in (
        "We’re currently experiencing high demand, which may cause temporary errors.",
        "stream disconnected before completion: error sending request",
        "unexpected status 503 Service Unavailable: down",
        "exceeded retry limit, last status: 429 Too Many Requests",
    ):
        assert classify_api_error(transient)[0] == T.BUILD_ERROR_TYPE_AGENT_API_ERROR, transient
    assert classify_api_error("unexpected status 400 Bad Request: bad model")[0] == T.BUILD_ERROR_TYPE_AGENT_TASK_FAILURE
    assert "context window" in classify_api_error("Codex ran out of room in the model's context window")[1]


def test_sandbox_mode_lets_the_agent_run_tests_where_it_runs() -> None:
    assert codex_argv({})[3:5] == ["--sandbox", "workspace-write"]
    assert codex_argv({}, inside_our_sandbox=True)[3:5] == ["--sandbox", "danger-full-access"]
    assert codex_argv({"sandbox": "read-only"}, inside_our_sandbox=True)[3:5] == ["--sandbox", "read-only"]


def test_extra_args_are_validated_against_an_allowlist() -> None:
    def problems(value: str) -> list[str]:
        spec = common_pb2.AgentSpec(name="codex", options={"extra_args": value})
        return [v.description for v in validate_agent(spec)]

    assert problems("--add-dir /data --enable web_search_request --skip-git-repo-check") == []
    assert problems("--add-dir=/data") == []
    assert "not allowed" in problems("--dangerously-bypass-approvals-and-sandbox")[0]
    assert "not allowed" in problems("--sandbox danger-full-access")[0]
    assert "cannot be split" in problems("--add-dir 'x")[0]
    argv = codex_argv({"extra_args": "--add-dir '/my data'"}, "t")
    assert argv[-5:] == ["--add-dir", "/my data", "resume", "t", "-"]


def test_usage_state_and_home(tmp_path: Path) -> None:
    source = tmp_path / "operator"
    source.mkdir()
    (source / "config.toml").write_text('model = "m"\n')
    (source / "ci.config.toml").write_text('model = "n"\n')
    (source / "auth.json").write_text("{}")
    (source / "history.jsonl").write_text("private")
    home = tmp_path / "run" / "codex"
    notes = prepare_home(home, source)
    assert sorted(p.name for p in home.iterdir()) == ["auth.json", "ci.config.toml", "config.toml"]
    assert (home / "auth.json").is_symlink() and notes
    save_usage_state(home, {"t": Usage(10, 2, 3)})
    assert load_usage_state(home) == {"t": Usage(10, 2, 3)}


def test_refused_tool_calls_are_recorded_and_fail_the_execution() -> None:
    parser = CodexStreamParser()
    helper = "bwrap: execvp codex-linux-sandbox: No such file or directory\n"
    for event in [
        {"type": "thread.started", "thread_id": "t"},
        {"type": "item.completed", "item": {"id": "1", "type": "command_execution", "command": "ls",
                                            "aggregated_output": helper, "exit_code": 1, "status": "failed"}},
        {"type": "item.completed", "item": {"id": "2", "type": "file_change", "status": "failed",
                                            "changes": [{"path": "a.py", "kind": "update"}]}},
        {"type": "turn.completed", "usage": {"input_tokens": 5, "output_tokens": 1}},
    ]:
        parser.feed(event, 0.0)
    for line in ["2026 ERROR codex_core::tools::router: error=Exit code: 1", "Output:", "Failed to write file a.py", ""]:
        parser.stderr_line(line)
    result = common_pb2.AgentResult()
    failure = parser.apply(result, 0.0)
    assert "refused by its own sandbox" in failure and result.error_type == T.BUILD_ERROR_TYPE_AGENT_CRASH
    assert result.tool_calls[0].output.startswith("ERROR: codex's sandbox could not run the command")
    assert result.tool_calls[1].output.startswith("ERROR: patch rejected: Exit code: 1 | Output: | Failed to write file a.py")


def test_pricing_turns_codex_tokens_into_a_cost() -> None:
    """Codex prints tokens only; the `pricing` option prices them (cached input at its own
    price), and a bad value is refused naming the option."""
    parser = CodexStreamParser(prices=parse_prices("2, 0.5, 10"), baseline=Usage(1000, 0, 100))
    parser.feed({"type": "turn.completed", "usage": {"input_tokens": 5000, "cached_input_tokens": 2000, "output_tokens": 600}}, 0.0)
    tokens, cost = parser.running_usage()
    # This execution: 4,000 input of which 2,000 cached, 500 output.
    assert tokens == 4500
    assert cost == pytest.approx((2000 * 2 + 2000 * 0.5 + 500 * 10) / 1e6)
    result = common_pb2.AgentResult()
    parser.apply(result, 0.0)
    assert result.cost_usd == pytest.approx(cost)
    assert CodexStreamParser().running_usage() == (0, 0.0)

    def problems(value: str) -> list[str]:
        return [f"{v.field}: {v.description}" for v in validate_agent(common_pb2.AgentSpec(name="codex", options={"pricing": value}))]

    assert problems("1.25,0.125,10") == []
    for bad in ("1,2", "a,b,c", "-1,0,1", "1,,2"):
        assert problems(bad)[0].startswith("spec.agent.options.pricing: must be INPUT,CACHED_INPUT,OUTPUT"), bad
