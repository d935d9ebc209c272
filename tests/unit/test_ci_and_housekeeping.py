"""Plain logic of retention, gc and waiting for CI: the retention rule, durations, GitHub's
CI answers and rate-limit headers, the pull request's verification summary, and the CI
waiter's grace period and timeout (docs/workspaces.md, docs/delivery.md)."""

from __future__ import annotations

from typing import Any

import pytest

from agentgate.client.housekeeping import human_bytes, parse_duration
from agentgate.client.spec_builder import build_spec
from agentgate.harness import profiles
from agentgate.harness.retention import deletes_workspace
from agentgate.harness.retry import resolve_policy
from agentgate.orchestrator.ci import CiSettings, CiWaiter, read_state
from agentgate.orchestrator.delivery import verification_summary
from agentgate.orchestrator.github_client import rate_limit_wait
from agentgate.orchestrator.retry import RetryExecutor, settings_from_policy
from agentgate.v1 import common_pb2

RS = common_pb2.RetentionSettings


def test_retention_rule() -> None:
    assert deletes_workspace(RS(), succeeded=False) and deletes_workspace(RS(), succeeded=True)
    assert not deletes_workspace(RS(workspace=common_pb2.WORKSPACE_RETENTION_KEEP), succeeded=True)
    on_failure = RS(workspace=common_pb2.WORKSPACE_RETENTION_ON_FAILURE)
    assert deletes_workspace(on_failure, succeeded=True) and not deletes_workspace(on_failure, succeeded=False)


def test_profile_keys_and_flags_for_retention_and_the_pr_base() -> None:
    layer, problems = profiles.parse_layer({"retention": {"workspace": "on-failure"}, "git_ops": {"base_branch": "dev"}})
    assert problems == [] and layer.retention.workspace == common_pb2.WORKSPACE_RETENTION_ON_FAILURE
    assert layer.git_ops.base_branch == "dev"
    _, problems = profiles.parse_layer({"retention": {"workspace": "forever"}, "git_ops": {"base_branch": "-x"}})
    assert sorted(key for key, _ in problems) == ["git_ops.base_branch", "retention.workspace"]
    spec = build_spec(prompt="x", prompt_file=None, path=None, git_url="https://h/r.git", ref="dev", agent="scripted",
                      agent_options=[], base="release", keep_workspace=True)
    assert spec.harness.git_ops.base_branch == "release"
    assert spec.harness.retention.workspace == common_pb2.WORKSPACE_RETENTION_KEEP


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("15m", 900), ("12h", 43200), ("7d", 604800),
                                               ("1h30m", 5400), ("2w", 1209600), ("0s", 0)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "1y", "1h 30", "-1h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (None, 0, 999, 1500, 2_500_000)] == ["-", "0 B", "999 B", "1.5 kB", "2.5 MB"]


def check_run(name: str, status: str = "completed", conclusion: str | None = "success", **output: str) -> dict:
    return {"name": name, "status": status, "conclusion": conclusion, "html_url": f"https://gh/{name}",
            "output": {"title": output.get("title"), "summary": output.get("summary"), "text": output.get("text")}}


def test_read_state_sorts_check_runs_and_statuses() -> None:
    state = read_state(
        [check_run("build", conclusion="failure", summary="1 failed", text="FAILED test_x"),
         check_run("docs", conclusion="skipped"), check_run("lint", conclusion="neutral"),
         check_run("e2e", status="in_progress", conclusion=None)],
        {"state": "failure", "statuses": [{"context": "ci/old", "state": "error", "description": "crashed",
                                           "target_url": "https://ci/1"},
                                          {"context": "ci/ok", "state": "success"}]},
    )
    assert state.pending == ["e2e"] and state.passed == ["docs", "lint", "ci/ok"]
    build, old = state.failed
    assert build.kind == "ci" and "FAILED test_x" in build.output and "concluded failure" in build.output
    assert "https://gh/build" in build.output and "1 failed" in build.output
    assert "status error" in old.output and "crashed" in old.output


def test_rate_limit_headers() -> None:
    assert rate_limit_wait({"retry-after": "7"}) == 7
    assert rate_limit_wait({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1010"}, now=1000.0) == 11
    assert rate_limit_wait({"x-ratelimit-remaining": "12", "x-ratelimit-reset": "1010"}, now=1000.0) == 0
    assert rate_limit_wait({}) == 0


def test_verification_summary_names_levels_and_checks() -> None:
    report = common_pb2.VerificationReport(passed=True)
    l0 = report.levels.add(level="L0", ran=True, passed=True)
    l0.checks.add(name="a", passed=True)
    l0.checks.add(name="b", passed=True)
    report.levels.add(level="L2", ran=False, skip_reason="no plan")
    assert verification_summary(report) == "L0 ✓ (2 checks), L2 skipped (no plan)"
    assert verification_summary(None) == ""


class FakeClient:
    """Answers the waiter's two GETs from a list of (check runs, statuses) looks."""

    def __init__(self, looks: list[tuple[list[dict], list[dict]]]):
        self.looks = looks
        self.asked = 0
        self.wait_before_next = 0.0

    async def list_check_runs(self, owner: str, repo: str, sha: str) -> list[dict[str, Any]]:
        self.asked += 1
        return self.looks[min(self.asked - 1, len(self.looks) - 1)][0]

    async def get_combined_status(self, owner: str, repo: str, sha: str) -> dict[str, Any]:
        return {"statuses": self.looks[min(self.asked - 1, len(self.looks) - 1)][1]}


async def wait(looks: list, settings: CiSettings) -> common_pb2.LevelResult:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    waiter = CiWaiter(FakeClient(looks), RetryExecutor(settings_from_policy(resolve_policy(common_pb2.RetryPolicy()))), settings,  # type: ignore[arg-type]
                      sleep=sleep, clock=lambda: now[0])
    return await waiter.wait("o", "r", "abc")


async def test_ci_waiter_waits_for_running_checks_then_reports_them() -> None:
    looks = [([check_run("build", status="queued", conclusion=None)], []), ([check_run("build")], [])]
    level = await wait(looks, CiSettings(poll_seconds=10, timeout_seconds=100, grace_seconds=30))
    assert level.level == "CI" and level.passed and [c.name for c in level.checks] == ["build"]


async def test_ci_waiter_grace_period_and_timeout() -> None:
    none = await wait([([], [])], CiSettings(poll_seconds=10, timeout_seconds=100, grace_seconds=30))
    assert none.passed and "no CI check or status showed up within 30s" in none.skip_reason
    stuck = await wait([([check_run("build", status="in_progress", conclusion=None)], [])],
                       CiSettings(poll_seconds=10, timeout_seconds=60, grace_seconds=30))
    assert not stuck.passed and "still running after 60s" in stuck.checks[0].output


def test_a_failed_ci_level_is_a_ci_failure_with_its_excerpt_in_the_feedback() -> None:
    from agentgate.orchestrator.build_errors import from_verification_report
    from agentgate.orchestrator.ci import ci_level
    from agentgate.orchestrator.feedback import verification_feedback

    state = read_state([check_run("build", conclusion="failure", text="FAILED test_calc.py::test_add")], {})
    report = common_pb2.VerificationReport(passed=False, summary="CI failed: build")
    report.levels.append(ci_level(state))
    assert from_verification_report(report).type == common_pb2.BUILD_ERROR_TYPE_CI_FAILED
    feedback = verification_feedback(1, report)
    assert "### CI check `build` failed" in feedback and "FAILED test_calc.py::test_add" in feedback
    assert "exit code" not in feedback
