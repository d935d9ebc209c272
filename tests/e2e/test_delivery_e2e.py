"""Retry and delivery end to end: the four services as processes (`agentgate up`), driven by
the CLI, with a fake GitHub (REST API and git host, real HTTP servers) and real bare
repositories."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentgate.common.github import secret_forms

from ..fake_github import FakeGitHost, FakeGitHubApi, git, grep_tree, make_remote_and_clone, tree_digest
from .conftest import Suite, running_suite, suite_env
from .helpers import FIXED, make_project

pytestmark = pytest.mark.slow

TOKEN = "ghp_e2eDeliveryToken0123456789abcdefABCDE"
FIX = f"default:\n  - write: {{path: calc.py, content: {json.dumps(FIXED)}}}\n"


@pytest.fixture(scope="module")
def github(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeGitHubApi, FakeGitHost]]:
    root = tmp_path_factory.mktemp("github")
    api = FakeGitHubApi(token=TOKEN).start()
    host = FakeGitHost(root / "srv", token=TOKEN).start()
    project = make_project(root / "seed-project")
    files = {p.name: p.read_text() for p in project.iterdir() if p.is_file()}
    make_remote_and_clone(root / "seed", files, bare=host.bare_repo("octo", "proj"))
    yield api, host
    api.stop()
    host.stop()


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, github) -> Iterator[Suite]:
    """The suite with the AGENTGATE_GITHUB_* variables pointing at the fake GitHub."""
    api, host = github
    home = tmp_path_factory.mktemp("delivery-home")
    env = suite_env(home)
    env.update(AGENTGATE_GITHUB_API_URL=api.url, AGENTGATE_GITHUB_GIT_URL=host.url, AGENTGATE_GITHUB_TOKEN=TOKEN)
    with running_suite(home, env) as running:
        yield running


def events(suite: Suite, run_id: str) -> list[dict]:
    lines = (suite.home / "runs" / run_id / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def seconds(timestamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def test_agent_timeout_on_attempt_1_is_retried_after_the_policy_delay(suite: Suite, tmp_path: Path):
    project = make_project(tmp_path / "project")
    script = tmp_path / "script.yaml"
    script.write_text(
        "iterations:\n  1:\n    attempts:\n"
        "      1: [{print: stuck}, {sleep: 30}]\n"
        f"      2: [{{write: {{path: calc.py, content: {json.dumps(FIXED)}}}}}]\n"
    )
    code, out = suite.cli_json(
        "exec", "--path", str(project), "--prompt", "Fix add()", "--agent", "scripted",
        "--agent-option", f"script={script}", "--agent-timeout", "1", "--retry-preset", "aggressive",
        "--max-attempts", "2",
    )
    assert code == 0, (out, suite.logs())
    assert out["status"] == "SUCCEEDED" and out["iterations"] == 1
    run_dir = suite.home / "runs" / out["run_id"]
    first, second = json.loads((run_dir / "iteration-1.json").read_text())["attempts"]
    assert first["error_type"] == "BUILD_ERROR_TYPE_AGENT_TIMEOUT" and first["will_retry"] is True
    assert 1000 <= int(first["next_retry_ms"]) <= 1250  # aggressive: 1 s, up to 25% jitter
    assert second["success"] is True and second["attempt"] == 2
    # The second attempt started after the delay the policy gave (within bounds).
    evs = events(suite, out["run_id"])
    retry = next(e for e in evs if e["type"] == "retry:attempt" and e["retry_attempt"]["operation"] == "agent")
    started = [e for e in evs if e["type"] == "agent:started"]
    assert [e["agent_started"]["attempt"] for e in started] == [1, 2]
    waited = seconds(started[1]["timestamp"]) - seconds(retry["timestamp"])
    assert int(first["next_retry_ms"]) / 1000 - 0.05 <= waited <= int(first["next_retry_ms"]) / 1000 + 2.0


def test_pr_mode_opens_the_pull_request_on_the_third_try(suite: Suite, github):
    api, host = github
    api.fail("POST", "/repos/octo/proj/pulls", [500, 500])
    script = host.root.parent / "fix.yaml"
    script.write_text(FIX)
    code, out = suite.cli_json(
        "exec", "--github", "octo/proj", "--prompt", "Fix add() so the tests pass\nmore detail",
        "--agent", "scripted", "--agent-option", f"script={script}", "--git-mode", "pr", "--draft-pr",
        "--retry-preset", "aggressive", "--max-attempts", "3",
    )
    assert code == 0, (out, suite.logs())
    assert out["pr_url"] == "https://github.example/octo/proj/pull/1"
    code, status = suite.cli_json("status", out["run_id"])
    assert code == 0 and status["pr_url"] == out["pr_url"]
    summary = status["github_summary"]
    assert summary["mode"] == "GIT_HUB_MODE_FAIL_FAST" and summary["pr_url"] == out["pr_url"]
    assert [(op["operation"], op["success"], op["retries"]) for op in summary["operations"]] == [
        ("push", True, 0), ("create_pr", True, 2)]
    [pull] = api.pulls
    assert pull["title"] == "[AgentGate] Fix add() so the tests pass" and pull["draft"] is True
    branch = f"agentgate/{out['run_id']}"
    assert git("show", f"{branch}:calc.py", cwd=host.bare_repo("octo", "proj")) == FIXED
    # The token was used to clone, push and call the API, and was written nowhere.
    assert grep_tree(suite.home, secret_forms(TOKEN)) == []


def test_push_mode_leaves_the_users_repository_unchanged(suite: Suite, tmp_path: Path):
    project = make_project(tmp_path / "files")
    files = {p.name: p.read_text() for p in project.iterdir() if p.is_file()}
    bare, clone = make_remote_and_clone(tmp_path / "git", files)
    before = tree_digest(clone)
    script = tmp_path / "fix.yaml"
    script.write_text(FIX)
    code, out = suite.cli_json(
        "exec", "--path", str(clone), "--prompt", "Fix add()", "--agent", "scripted",
        "--agent-option", f"script={script}", "--git-mode", "push",
    )
    assert code == 0, (out, suite.logs())
    assert git("show", f"agentgate/{out['run_id']}:calc.py", cwd=bare) == FIXED
    assert tree_digest(clone) == before
    assert out["github_summary"]["mode"] == "GIT_HUB_MODE_BEST_EFFORT"


def test_the_token_is_in_no_file_database_event_or_log(suite: Suite):
    # After every run of this module (clone, push, API calls), nothing under the home holds it.
    assert (suite.home / "logs").is_dir() and any((suite.home / "logs").iterdir())
    assert grep_tree(suite.home, secret_forms(TOKEN)) == []
