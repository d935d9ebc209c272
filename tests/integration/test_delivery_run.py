"""Retry (docs/delivery.md) and delivery (docs/delivery.md) in whole runs: the four real services in one event
loop, a fake GitHub REST API and a fake GitHub git host (real HTTP servers), and real bare
repositories as remotes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agentgate.common.errors import field_violations
from agentgate.common.github import secret_forms
from agentgate.v1 import common_pb2

from ..fake_github import CiOutcome, FakeGitHost, FakeGitHubApi, git, grep_tree, make_remote_and_clone, tree_digest
from .inprocess_suite import InProcessSuite

R = common_pb2.RunResult
T = common_pb2.BuildErrorType
W = common_pb2.WorkOrderStatus

TOKEN = "ghp_deliveryTestToken0123456789abcdefABCD"
BUGGY = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"
VERIFY = 'version: "1"\ntests:\n  - {name: unit, kind: test, command: "grep -q \'a + b\' calc.py"}\n'
FIX_SCRIPT = "default:\n  - write: {path: calc.py, content: " + json.dumps(FIXED) + "}\n"


@pytest.fixture
async def suite(home: Path):
    running = await InProcessSuite.start(home)
    yield running
    await running.stop()


@pytest.fixture
def github(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeGitHubApi, FakeGitHost]]:
    """A fake GitHub (API and git host) holding octo/proj, and the variables that point at it."""
    api = FakeGitHubApi(token=TOKEN).start()
    host = FakeGitHost(tmp_path / "git-host", token=TOKEN).start()
    make_remote_and_clone(tmp_path / "seed", {"calc.py": BUGGY, "verify.yaml": VERIFY},
                          bare=host.bare_repo("octo", "proj"))
    monkeypatch.setenv("AGENTGATE_GITHUB_API_URL", api.url)
    monkeypatch.setenv("AGENTGATE_GITHUB_GIT_URL", host.url)
    monkeypatch.setenv("AGENTGATE_GITHUB_TOKEN", TOKEN)
    yield api, host
    api.stop()
    host.stop()


def make_spec(script: str, *, local: Path | None = None, git_url: str = "", github_repo: str = "",
              git_mode: int = 0, github_mode: int = 0, preset: str = "", max_attempts: int | None = None,
              backoff: float = 0.05, jitter: bool = False, agent_timeout: int | None = None,
              max_iterations: int = 1) -> common_pb2.WorkOrderSpec:
    spec = common_pb2.WorkOrderSpec(
        task_prompt="Fix add()\n\nThe tests must pass.",
        agent=common_pb2.AgentSpec(name="scripted", options={"script": script}),
    )
    if local is not None:
        spec.source.local_path = str(local)
    elif git_url:
        spec.source.git_url = git_url
    else:
        spec.source.github_repo = github_repo
    spec.harness.loop_strategy.max_iterations = max_iterations
    spec.harness.git_ops.mode = git_mode  # type: ignore[assignment]
    spec.harness.git_ops.github_mode = github_mode  # type: ignore[assignment]
    retry = spec.harness.retry
    retry.preset = preset
    retry.initial_backoff_seconds = backoff
    retry.jitter = jitter
    if max_attempts is not None:
        retry.max_attempts = max_attempts
    if agent_timeout is not None:
        spec.harness.limits.agent_timeout_seconds = agent_timeout
    return spec


def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "calc.py").write_text(BUGGY)
    (root / "verify.yaml").write_text(VERIFY)
    return root


async def run_to_end(suite: InProcessSuite, spec: common_pb2.WorkOrderSpec):
    work_order = await suite.submit(spec)
    final = await suite.wait_terminal(work_order.id, timeout=90)
    run = await suite.run(work_order.run_id)
    events = await suite.events(work_order.id)
    return final, run, events


def retry_events(events, operation: str):
    return [e for e in events if e.type == "retry:attempt" and e.retry_attempt.operation == operation]


async def test_agent_that_outlasts_its_timeout_is_retried_and_succeeds(suite, tmp_path):
    script = (
        "iterations:\n  1:\n    attempts:\n"
        "      1: [{print: stuck}, {sleep: 30}]\n"
        "      2: [{write: {path: calc.py, content: " + json.dumps(FIXED) + "}}]\n"
    )
    spec = make_spec(script, local=project(tmp_path), agent_timeout=1, backoff=0.4)
    final, run, events = await run_to_end(suite, spec)
    assert final.status == W.WORK_ORDER_STATUS_SUCCEEDED, run.error
    assert run.result == R.RUN_RESULT_SUCCEEDED and run.iteration_count == 1

    iteration = suite.run_file(run.id, "iteration-1.json")
    first, second = iteration["attempts"]
    assert (first["operation"], first["attempt"], first["success"]) == ("agent", 1, False)
    assert first["error_type"] == "BUILD_ERROR_TYPE_AGENT_TIMEOUT"
    assert first["will_retry"] is True and first["next_retry_ms"] == "400"  # the policy's delay (no jitter)
    assert first["duration_seconds"] >= 1.0
    assert (second["attempt"], second["success"], second["will_retry"]) == (2, True, False)

    agent_events = retry_events(events, "agent")
    assert [(e.iteration, e.retry_attempt.attempt, e.retry_attempt.success) for e in agent_events] == [
        (1, 1, False), (1, 2, True)]
    started = [e for e in events if e.type == "agent:started"]
    assert [e.agent_started.attempt for e in started] == [1, 2]
    waited = started[1].timestamp.ToNanoseconds() - agent_events[0].timestamp.ToNanoseconds()
    assert 0.4e9 <= waited < 3e9, waited
    assert [e.type for e in events].count("agent:failed") == 1
    # The agent result file holds the attempt that counted.
    assert suite.run_file(run.id, "agent-1.json")["attempt"] == 2


async def test_agent_timeouts_exhaust_the_attempts_and_say_so(suite, tmp_path):
    spec = make_spec("default: [{sleep: 30}]\n", local=project(tmp_path), agent_timeout=1, max_attempts=2)
    final, run, _ = await run_to_end(suite, spec)
    assert final.status == W.WORK_ORDER_STATUS_FAILED
    assert run.result == R.RUN_RESULT_FAILED_BUILD
    assert run.error.startswith("Failed after 1 retries: Agent timed out after"), run.error
    assert len(suite.run_file(run.id, "iteration-1.json")["attempts"]) == 2


async def test_a_failing_test_is_never_retried(suite, tmp_path):
    spec = make_spec("default: [{append: {path: NOTES.md, content: x}}]\n", local=project(tmp_path),
                     preset="aggressive", max_iterations=2)
    final, run, events = await run_to_end(suite, spec)
    assert run.result == R.RUN_RESULT_FAILED_VERIFICATION
    assert "Failed after" not in run.error
    for n in (1, 2):
        assert len(suite.run_file(run.id, f"iteration-{n}.json")["attempts"]) == 1
    assert not any(e.retry_attempt.will_retry for e in events if e.type == "retry:attempt")
    assert [e.type for e in events].count("verification:started") == 2


async def test_workspace_error_is_retried_under_aggressive_only(suite, tmp_path):
    missing = f"file://{tmp_path}/no-such-repo"
    final, run, events = await run_to_end(suite, make_spec("default: []\n", git_url=missing))
    assert run.build_error.type == T.BUILD_ERROR_TYPE_WORKSPACE_ERROR
    assert len(retry_events(events, "prepare_workspace")) == 1
    assert run.error.startswith("Workspace preparation failed")

    final, run, events = await run_to_end(suite, make_spec("default: []\n", git_url=missing, preset="aggressive",
                                                           max_attempts=3))
    assert final.status == W.WORK_ORDER_STATUS_FAILED
    attempts = retry_events(events, "prepare_workspace")
    assert [(e.retry_attempt.attempt, e.retry_attempt.will_retry) for e in attempts] == [
        (1, True), (2, True), (3, False)]
    assert [e.retry_attempt.next_retry_ms for e in attempts] == [50, 75, 0]  # 0.05 s × 1.5
    assert run.error.startswith("Failed after 2 retries: Workspace preparation failed"), run.error


async def test_push_mode_puts_the_branch_on_the_remote_and_leaves_the_source_alone(suite, tmp_path):
    bare, clone = make_remote_and_clone(tmp_path / "git", {"calc.py": BUGGY, "verify.yaml": VERIFY})
    before = tree_digest(clone)
    spec = make_spec(FIX_SCRIPT, local=clone, git_mode=common_pb2.GIT_MODE_PUSH)
    final, run, events = await run_to_end(suite, spec)
    assert final.status == W.WORK_ORDER_STATUS_SUCCEEDED, run.error
    branch = f"agentgate/{run.id}"
    assert run.branch_name == branch
    assert git("show", f"{branch}:calc.py", cwd=bare) == FIXED
    assert git("rev-parse", branch, cwd=bare).strip() == run.final_commit
    assert tree_digest(clone) == before
    summary = run.github_summary
    assert summary.mode == common_pb2.GIT_HUB_MODE_BEST_EFFORT  # push's default
    assert [(op.operation, op.success, op.url) for op in summary.operations] == [("push", True, str(bare))]
    assert summary.all_succeeded and not summary.any_failed and summary.branch_name == branch
    assert [e.github_operation.operation for e in events if e.type == "github:operation"] == ["push"]
    assert suite.run_file(run.id, "run.json")["github_summary"]["operations"][0]["operation"] == "push"


async def test_push_that_cannot_succeed_fails_fast_without_retries(suite, tmp_path):
    spec = make_spec(FIX_SCRIPT, local=project(tmp_path), git_mode=common_pb2.GIT_MODE_PUSH,
                     github_mode=common_pb2.GIT_HUB_MODE_FAIL_FAST)
    final, run, events = await run_to_end(suite, spec)
    assert final.status == W.WORK_ORDER_STATUS_FAILED
    assert run.result == R.RUN_RESULT_FAILED_GITHUB
    assert run.build_error.type == T.BUILD_ERROR_TYPE_GITHUB_ERROR
    assert run.error.startswith("Push failed: workspace ") and "has no git remote 'origin'" in run.error
    assert len(retry_events(events, "push")) == 1
    assert run.github_summary.any_failed


async def test_pull_request_is_created_on_the_third_try(suite, github, home):
    api, host = github
    api.fail("POST", "/repos/octo/proj/pulls", [500, 500])
    spec = make_spec(FIX_SCRIPT, github_repo="octo/proj", git_mode=common_pb2.GIT_MODE_PR)
    final, run, events = await run_to_end(suite, spec)
    assert final.status == W.WORK_ORDER_STATUS_SUCCEEDED, run.error
    assert run.pr_url == "https://github.example/octo/proj/pull/1"
    assert suite.run_file(run.id, "run.json")["pr_url"] == run.pr_url

    posts = [r for r in api.requests if r.method == "POST" and r.path == "/repos/octo/proj/pulls"]
    assert len(posts) == 3
    [pull] = api.pulls
    assert pull["title"] == "[AgentGate] Fix add()"
    assert (pull["head"], pull["base"], pull["draft"]) == (f"agentgate/{run.id}", "main", False)
    assert run.id in pull["body"]
    assert git("show", f"agentgate/{run.id}:calc.py", cwd=host.bare_repo("octo", "proj")) == FIXED

    summary = run.github_summary
    assert summary.mode == common_pb2.GIT_HUB_MODE_FAIL_FAST and summary.pr_url == run.pr_url
    assert [(op.operation, op.success, op.retries) for op in summary.operations] == [
        ("push", True, 0), ("create_pr", True, 2)]
    tries = retry_events(events, "create_pr")
    assert [(e.retry_attempt.success, e.retry_attempt.error_type) for e in tries] == [
        (False, T.BUILD_ERROR_TYPE_GITHUB_ERROR), (False, T.BUILD_ERROR_TYPE_GITHUB_ERROR), (True, 0)]
    assert "GitHub server error 500" in tries[0].retry_attempt.error
    [created] = [e for e in events if e.type == "pr:created"]
    assert (created.pr_created.number, created.pr_created.url) == (1, run.pr_url)
    # The token is in no file, database row, event or log under the home.
    assert grep_tree(home, secret_forms(TOKEN)) == []
    assert not any(TOKEN in str(e) for e in events)


async def test_persistent_server_errors_fail_fast_as_failed_github(suite, github):
    api, _ = github
    api.fail("POST", "/pulls", [500] * 10)
    spec = make_spec(FIX_SCRIPT, github_repo="octo/proj", git_mode=common_pb2.GIT_MODE_PR)
    final, run, _ = await run_to_end(suite, spec)
    assert final.status == W.WORK_ORDER_STATUS_FAILED
    assert run.result == R.RUN_RESULT_FAILED_GITHUB and run.state == common_pb2.RUN_STATE_FAILED
    assert run.error.startswith("PR creation failed: Failed after 2 retries: GitHub server error 500"), run.error
    assert final.error == run.error
    assert run.pr_url == "" and api.pulls == []
    assert run.github_summary.any_failed and not run.github_summary.all_succeeded


async def test_best_effort_succeeds_without_a_pull_request(suite, github):
    api, _ = github
    api.fail("POST", "/pulls", [500] * 10)
    spec = make_spec(FIX_SCRIPT, github_repo="octo/proj", git_mode=common_pb2.GIT_MODE_PR,
                     github_mode=common_pb2.GIT_HUB_MODE_BEST_EFFORT)
    final, run, events = await run_to_end(suite, spec)
    assert final.status == W.WORK_ORDER_STATUS_SUCCEEDED, run.error
    assert run.result == R.RUN_RESULT_SUCCEEDED
    assert run.github_summary.any_failed and run.pr_url == "" and api.pulls == []
    failed = [e for e in events if e.type == "github:operation" and not e.github_operation.success]
    assert [e.github_operation.operation for e in failed] == ["create_pr"]
    assert "pr:created" not in [e.type for e in events]


async def test_disabled_sends_nothing_to_github(suite, github):
    api, host = github
    spec = make_spec(FIX_SCRIPT, github_repo="octo/proj", git_mode=common_pb2.GIT_MODE_PR,
                     github_mode=common_pb2.GIT_HUB_MODE_DISABLED)
    final, run, _ = await run_to_end(suite, spec)
    assert final.status == W.WORK_ORDER_STATUS_SUCCEEDED, run.error
    assert api.requests == []
    assert f"agentgate/{run.id}" not in git("branch", "--list", cwd=host.bare_repo("octo", "proj"))
    ops = run.github_summary.operations
    assert [(op.operation, op.skipped) for op in ops] == [("push", True), ("create_pr", True)]
    assert run.github_summary.all_succeeded and not run.github_summary.any_failed


async def test_a_rerun_finds_its_open_pull_request_and_comments(suite, github):
    api, _ = github
    api.pulls.append({"number": 7, "html_url": "https://github.example/octo/proj/pull/7", "draft": True,
                      "head": "agentgate/run-rerun", "base": "main"})
    spec = make_spec(FIX_SCRIPT, github_repo="octo/proj", git_mode=common_pb2.GIT_MODE_PR)
    spec.harness.git_ops.branch_pattern = "agentgate/run-rerun"  # refused: without {run_id} runs would share it
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await suite.submit(spec)
    assert [v.field for v in field_violations(refused.value)] == ["spec.harness.git_ops.branch_pattern"]
    spec.harness.git_ops.branch_pattern = "agentgate/{run_id}"
    work_order = await suite.submit(spec)
    api.pulls[0]["head"] = f"agentgate/{work_order.run_id}"
    final = await suite.wait_terminal(work_order.id, timeout=90)
    run = await suite.run(work_order.run_id)
    assert final.status == W.WORK_ORDER_STATUS_SUCCEEDED, run.error
    assert run.pr_url == "https://github.example/octo/proj/pull/7"
    assert [op.operation for op in run.github_summary.operations] == ["push", "create_pr", "add_comment"]
    assert api.comments and api.comments[0]["issue"] == 7


async def test_wait_for_ci_feeds_a_failed_check_back_and_ends_when_ci_passes(suite, github, tmp_path, monkeypatch):
    """The PR targets --ref (dev) and carries the verification summary; its first commit's
    CI fails (after running a while, behind a spent rate limit), the failing check's output
    reaches iteration 2's prompt, iteration 2 pushes to the same PR, and its CI passes."""
    api, host = github
    git("push", "-q", "origin", "HEAD:refs/heads/dev", cwd=tmp_path / "seed" / "user-clone")
    api.branches.add("dev")
    api.ci(
        CiOutcome(check_runs=[{"name": "build", "conclusion": "failure", "title": "1 test failed",
                               "summary": "pytest: 1 failed, 3 passed",
                               "text": "FAILED test_calc.py::test_add_negative - assert add(-1, -2) == -3"}],
                  statuses=[{"context": "ci/lint", "state": "success"}], pending_polls=2),
        CiOutcome(check_runs=[{"name": "build", "conclusion": "success"}],
                  statuses=[{"context": "ci/lint", "state": "success"}]),
    )
    api.rate_limit("/check-runs", 1)
    monkeypatch.setenv("AGENTGATE_CI_POLL_SECONDS", "0")
    # Each iteration writes the fix anew (a new commit, so a new head for CI).
    command = "printf 'def add(a, b):\\n    return a + b  # %s\\n' {iteration} > calc.py"
    spec = make_spec("", github_repo="octo/proj", git_mode=common_pb2.GIT_MODE_PR, max_iterations=2)
    spec.agent.CopyFrom(common_pb2.AgentSpec(name="command", options={"command": command}))
    spec.source.ref = "dev"
    spec.harness.verification.wait_for_ci = True
    spec.harness.retention.workspace = common_pb2.WORKSPACE_RETENTION_KEEP  # its prompts are read below
    final, run, events = await run_to_end(suite, spec)
    assert final.status == W.WORK_ORDER_STATUS_SUCCEEDED, run.error
    assert run.result == R.RUN_RESULT_SUCCEEDED and run.iteration_count == 2

    # Iteration 1: the gate passed, CI failed, and that failure was the feedback.
    first = suite.run_file(run.id, "verification-1.json")
    assert first["passed"] is False and first["levels"][-1]["level"] == "CI"
    prompt = (suite.home / "prompts" / run.workspace_id / "prompt-2.md").read_text()
    assert "FAILED test_calc.py::test_add_negative" in prompt and "`build`" in prompt
    assert suite.run_file(run.id, "verification-2.json")["passed"] is True

    # One pull request, on dev, with the summary; iteration 2 pushed to it and commented.
    [pull] = api.pulls
    assert (pull["head"], pull["base"]) == (f"agentgate/{run.id}", "dev")
    assert "| Iterations | 1 of 2 |" in pull["body"] and "L1 ✓ (1 checks)" in pull["body"]
    assert "| Cost |" in pull["body"] and "| Tokens |" in pull["body"]
    assert len(api.comments) == 1 and "| Iterations | 2 of 2 |" in api.comments[0]["body"]
    assert git("rev-parse", f"agentgate/{run.id}", cwd=host.bare_repo("octo", "proj")).strip() == run.final_commit

    # The spent quota was waited out (Retry: at least until X-RateLimit-Reset), then CI polled.
    ci_tries = retry_events(events, "wait_for_ci")
    assert ci_tries[0].retry_attempt.success is False and ci_tries[0].retry_attempt.next_retry_ms >= 1000
    assert "rate limit" in ci_tries[0].retry_attempt.error
    polls = [r for r in api.requests if r.path.endswith("/check-runs")]
    assert len(polls) >= 5  # 1 refused + 2 still running + 1 failed, then the second commit's
    ops = [(op.operation, op.success) for op in run.github_summary.operations]
    assert ops == [("push", True), ("create_pr", True), ("add_comment", True), ("wait_for_ci", True)]


async def test_pull_request_base_is_base_branch_else_a_branch_ref_else_the_default(suite, github, tmp_path):
    api, _ = github
    api.branches.add("release")
    git("tag", "v1", cwd=tmp_path / "seed" / "user-clone")
    git("push", "-q", "origin", "v1", cwd=tmp_path / "seed" / "user-clone")
    given = make_spec(FIX_SCRIPT, github_repo="octo/proj", git_mode=common_pb2.GIT_MODE_PR)
    given.harness.git_ops.base_branch = "release"
    tagged = make_spec(FIX_SCRIPT, github_repo="octo/proj", git_mode=common_pb2.GIT_MODE_PR)
    tagged.source.ref = "v1"  # a tag cannot be a base: the default branch is
    for spec in (given, tagged):
        final, run, _ = await run_to_end(suite, spec)
        assert final.status == W.WORK_ORDER_STATUS_SUCCEEDED, run.error
    assert [pull["base"] for pull in api.pulls] == ["release", "main"]
    asked = [r.path for r in api.requests if "/branches/" in r.path]
    assert asked == ["/repos/octo/proj/branches/v1"]  # base_branch is used as given
