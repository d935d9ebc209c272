"""Delivery and retry settings: branch names, GitHub names, harness defaults, CLI flags,
admission rules and the pull request's text."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from agentgate.client.spec_builder import UsageError, build_spec
from agentgate.common.branches import branch_for, branch_pattern_problem, branch_problem
from agentgate.common.errors import FieldViolation
from agentgate.common.github import (
    clone_url,
    git_auth_env,
    repo_of_remote,
    secret_forms,
    split_repo,
    strip_credentials,
)
from agentgate.harness.resolution import resolve_harness
from agentgate.orchestrator.delivery import pr_body, pr_title
from agentgate.queue.validation import validate_spec
from agentgate.v1 import common_pb2

GITHUB_ENV = {"AGENTGATE_GITHUB_GIT_URL": "http://127.0.0.1:8080/", "AGENTGATE_GITHUB_TOKEN": "tok-secret-123"}


@pytest.mark.parametrize(
    "name", ["agentgate/run-1", "feature/x_y.z", "a"],
)
def test_valid_branch_names(name: str) -> None:
    assert branch_problem(name) == ""


@pytest.mark.parametrize(
    "name", ["", "-x", "a..b", "a b", "a/", "/a", "a//b", "x.lock", "a/.hidden", "a~1", "a^", "a:b", "@", "a@{1}",
             "end."],
)
def test_invalid_branch_names(name: str) -> None:
    assert branch_problem(name) != ""


def test_branch_patterns() -> None:
    assert branch_for("run-7") == "agentgate/run-7"
    assert branch_for("run-7", "bots/{run_id}/fix") == "bots/run-7/fix"
    assert branch_pattern_problem("") == ""
    assert branch_pattern_problem("bots/{run_id}") == ""
    assert "must contain {run_id}" in branch_pattern_problem("main")
    assert "valid branch name" in branch_pattern_problem("bad branch/{run_id}")


def test_github_names_and_urls() -> None:
    assert split_repo("octo/proj") == ("octo", "proj")
    assert split_repo("octo/proj.git") == ("octo", "proj")
    for bad in ("octo", "octo/proj/x", "/proj", "octo/..", "-octo/proj", "octo/pr oj"):
        with pytest.raises(ValueError):
            split_repo(bad)
    assert clone_url("octo/proj", GITHUB_ENV) == "http://127.0.0.1:8080/octo/proj.git"
    assert clone_url("octo/proj", {}) == "https://github.com/octo/proj.git"
    assert strip_credentials("https://user:secret@example.com/a.git") == "https://example.com/a.git"
    assert strip_credentials("git@github.com:o/r.git") == "git@github.com:o/r.git"
    assert repo_of_remote("http://127.0.0.1:8080/octo/proj.git", GITHUB_ENV) == "octo/proj"
    assert repo_of_remote("https://x:y@github.com/octo/proj", {}) == "octo/proj"
    assert repo_of_remote("git@github.com:octo/proj.git", {}) == "octo/proj"
    assert repo_of_remote("file:///srv/octo/proj.git", GITHUB_ENV) is None
    assert repo_of_remote("https://gitlab.com/octo/proj.git", {}) is None


def test_git_auth_env_is_scoped_to_the_github_host_and_needs_a_token() -> None:
    env = git_auth_env("http://127.0.0.1:8080/octo/proj.git", GITHUB_ENV)
    assert env["GIT_CONFIG_COUNT"] == "2"
    assert env["GIT_CONFIG_KEY_0"] == "http.http://127.0.0.1:8080/.extraHeader"
    header = env["GIT_CONFIG_VALUE_0"]
    assert header == "Authorization: Basic " + base64.b64encode(b"x-access-token:tok-secret-123").decode()
    assert (env["GIT_CONFIG_KEY_1"], env["GIT_CONFIG_VALUE_1"]) == ("credential.helper", "")
    assert git_auth_env("https://elsewhere.example/octo/proj.git", GITHUB_ENV) == {}
    assert git_auth_env("http://127.0.0.1:8080/octo/proj.git", {"AGENTGATE_GITHUB_GIT_URL": "http://127.0.0.1:8080"}) == {}
    assert secret_forms("tok-secret-123")[1] in header


def test_harness_defaults_for_git_ops_and_retry() -> None:
    resolved = resolve_harness(common_pb2.HarnessSettings())
    assert resolved.git_ops.mode == common_pb2.GIT_MODE_LOCAL
    assert resolved.git_ops.github_mode == common_pb2.GIT_HUB_MODE_DISABLED
    assert resolved.git_ops.branch_pattern == "agentgate/{run_id}"
    assert resolved.git_ops.draft_pr is False
    assert resolved.retry.preset == "default" and resolved.retry.max_attempts == 3
    for mode, expected in (
        (common_pb2.GIT_MODE_PR, common_pb2.GIT_HUB_MODE_FAIL_FAST),
        (common_pb2.GIT_MODE_PUSH, common_pb2.GIT_HUB_MODE_BEST_EFFORT),
    ):
        harness = common_pb2.HarnessSettings(git_ops=common_pb2.GitOpsSettings(mode=mode))
        assert resolve_harness(harness).git_ops.github_mode == expected
    explicit = common_pb2.HarnessSettings(git_ops=common_pb2.GitOpsSettings(
        mode=common_pb2.GIT_MODE_PR, github_mode=common_pb2.GIT_HUB_MODE_BEST_EFFORT))
    assert resolve_harness(explicit).git_ops.github_mode == common_pb2.GIT_HUB_MODE_BEST_EFFORT


def flags(**overrides):
    base = dict(prompt="fix it", prompt_file=None, path=None, git_url=None, ref=None, agent="command",
                agent_options=[])
    base.update(overrides)
    return build_spec(**base)


def test_cli_flags_fill_the_harness() -> None:
    spec = flags(github="octo/proj", ref="dev", git_mode="pr", github_mode="best-effort", draft_pr=True,
                 retry_preset="aggressive", max_attempts=2, agent_timeout=7)
    assert spec.source.github_repo == "octo/proj" and spec.source.ref == "dev"
    assert spec.harness.git_ops.mode == common_pb2.GIT_MODE_PR
    assert spec.harness.git_ops.github_mode == common_pb2.GIT_HUB_MODE_BEST_EFFORT
    assert spec.harness.git_ops.draft_pr is True
    assert spec.harness.retry.preset == "aggressive" and spec.harness.retry.max_attempts == 2
    assert spec.harness.limits.agent_timeout_seconds == 7
    plain = flags(git_url="file:///x")
    assert not plain.harness.HasField("git_ops") and not plain.harness.HasField("retry")


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"git_mode": "ftp"}, "--git-mode"),
        ({"github_mode": "sometimes"}, "--github-mode"),
        ({"retry_preset": "forever"}, "--retry-preset"),
        ({"max_attempts": 0}, "--max-attempts"),
        ({"agent_timeout": 0}, "--agent-timeout"),
        ({"github": "o/r", "git_url": "file:///x"}, "--github"),
        ({"ref": "main"}, "--ref"),
    ],
)
def test_bad_cli_flags_name_the_flag(overrides: dict, flag: str) -> None:
    with pytest.raises(UsageError, match=flag):
        flags(**overrides)


def _spec(tmp_path: Path) -> common_pb2.WorkOrderSpec:
    return common_pb2.WorkOrderSpec(
        task_prompt="x",
        source=common_pb2.WorkspaceSource(local_path=str(tmp_path)),
        agent=common_pb2.AgentSpec(name="command", options={"command": "true"}),
    )


def _fields(spec: common_pb2.WorkOrderSpec) -> list[str]:
    return [v.field for v in validate_spec(spec, agent_check=lambda agent: [])]


def test_admission_of_git_ops_and_retry(tmp_path: Path, home: Path) -> None:
    spec = _spec(tmp_path)
    spec.harness.git_ops.mode = common_pb2.GIT_MODE_PR
    spec.harness.git_ops.branch_pattern = "bots/{run_id}"
    spec.harness.retry.preset = "aggressive"
    spec.harness.retry.max_attempts = 4
    spec.harness.retry.initial_backoff_seconds = 0.1
    spec.harness.retry.retryable_errors.append(common_pb2.BUILD_ERROR_TYPE_AGENT_CRASH)
    assert _fields(spec) == []
    spec.harness.git_ops.mode = 9  # type: ignore[assignment]
    spec.harness.git_ops.github_mode = 9  # type: ignore[assignment]
    spec.harness.git_ops.branch_pattern = "fixed-branch"
    spec.harness.retry.preset = "sometimes"
    spec.harness.retry.max_attempts = 0
    spec.harness.retry.initial_backoff_seconds = -1
    spec.harness.retry.backoff_multiplier = 0.5
    spec.harness.retry.retryable_errors.append(0)
    assert _fields(spec) == [
        "spec.harness.git_ops.mode",
        "spec.harness.git_ops.branch_pattern",
        "spec.harness.git_ops.github_mode",
        "spec.harness.retry.preset",
        "spec.harness.retry.max_attempts",
        "spec.harness.retry.initial_backoff_seconds",
        "spec.harness.retry.backoff_multiplier",
        "spec.harness.retry.retryable_errors",
    ]
    github = _spec(tmp_path)
    github.source.github_repo = "octo/proj"
    assert _fields(github) == []
    github.source.github_repo = "octo"
    assert validate_spec(github, agent_check=lambda agent: []) == [
        FieldViolation("spec.source.github_repo", "must be owner/name, got 'octo'")
    ]


def test_pull_request_title_and_body() -> None:
    assert pr_title("\n  Fix the add function  \nso that tests pass") == "[AgentGate] Fix the add function"
    run = common_pb2.Run(id="run-1", work_order_id="wo-1", task_prompt="Fix add()\nplease", iteration_count=2,
                         max_iterations=3, branch_name="agentgate/run-1", final_commit="abc123",
                         stop_reason="Verification passed", agent=common_pb2.AgentSpec(name="scripted"))
    body = pr_body(run, "2 levels passed")
    for part in ("> Fix add()", "> please", "`run-1`", "`wo-1`", "2 of 3", "passed — 2 levels passed",
                 "`agentgate/run-1`", "`abc123`", "Verification passed", "`scripted`"):
        assert part in body


def test_new_events_render_in_a_few_words() -> None:
    from agentgate.client.render import describe
    from agentgate.common.events import make_event
    from agentgate.v1 import events_pb2

    retry = make_event("retry:attempt", "wo", "run", retry_attempt=common_pb2.RetryAttempt(
        operation="agent", attempt=1, error_type=common_pb2.BUILD_ERROR_TYPE_AGENT_TIMEOUT, error="timed out",
        duration_seconds=1.0, will_retry=True, next_retry_ms=1500))
    assert describe(retry) == "agent attempt 1 (1.0s) agent_timeout: timed out; retry in 1.5s"
    failed = make_event("github:operation", "wo", "run", github_operation=common_pb2.GitHubOperation(
        operation="create_pr", error="PR creation failed", retries=2))
    assert describe(failed) == "create_pr FAILED: PR creation failed (after 2 retries)"
    skipped = make_event("github:operation", "wo", "run", github_operation=common_pb2.GitHubOperation(
        operation="push", skipped=True))
    assert describe(skipped) == "push skipped"
    created = make_event("pr:created", "wo", "run", pr_created=events_pb2.PrCreated(
        url="https://x/pull/1", number=1, draft=True))
    assert describe(created) == "#1 https://x/pull/1 (draft)"
