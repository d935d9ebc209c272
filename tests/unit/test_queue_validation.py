"""Admission rules of a work order spec (agentgate.queue.validation)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentgate.common.errors import FieldViolation
from agentgate.queue.validation import MAX_TASK_PROMPT_BYTES, validate_spec
from agentgate.v1 import common_pb2

KNOWN_DRIVERS = {"command", "scripted"}


@pytest.fixture(autouse=True)
def _isolated_home(home: Path) -> None:
    """Profile files are looked for under $AGENTGATE_HOME: never the user's own."""


def check_agent(agent: common_pb2.AgentSpec) -> list[FieldViolation]:
    """Stands in for the workspace driver registry: a known name, and scripted needs a script."""
    if agent.name not in KNOWN_DRIVERS:
        return [FieldViolation("spec.agent.name", f"unknown agent driver {agent.name!r}")]
    if agent.name == "scripted" and "script" not in agent.options:
        return [FieldViolation("spec.agent.options.script", "is required")]
    return []


def good_spec(tmp_path: Path) -> common_pb2.WorkOrderSpec:
    return common_pb2.WorkOrderSpec(
        task_prompt="Add a subtract command",
        source=common_pb2.WorkspaceSource(local_path=str(tmp_path)),
        agent=common_pb2.AgentSpec(name="command", options={"command": "true"}),
    )


def fields(spec: common_pb2.WorkOrderSpec) -> list[str]:
    return [v.field for v in validate_spec(spec, agent_check=check_agent)]


def test_good_spec_has_no_violations(tmp_path: Path) -> None:
    spec = good_spec(tmp_path)
    spec.harness.profile = "default"
    spec.harness.loop_strategy.mode = common_pb2.LOOP_STRATEGY_MODE_FIXED
    spec.harness.loop_strategy.max_iterations = 100
    spec.harness.limits.max_wall_clock_seconds = 1
    spec.harness.verification.skip_levels.extend(["L0", "L3"])
    spec.labels["team"] = "core"
    spec.max_queue_wait_seconds = 0
    assert validate_spec(spec, agent_check=check_agent) == []


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_blank_prompt_is_refused(tmp_path: Path, prompt: str) -> None:
    spec = good_spec(tmp_path)
    spec.task_prompt = prompt
    assert fields(spec) == ["spec.task_prompt"]


def test_prompt_size_limit_counts_utf8_bytes(tmp_path: Path) -> None:
    spec = good_spec(tmp_path)
    spec.task_prompt = "a" * MAX_TASK_PROMPT_BYTES
    assert fields(spec) == []
    # 'é' is two bytes: half as many characters already exceed the limit.
    spec.task_prompt = "é" * (MAX_TASK_PROMPT_BYTES // 2 + 1)
    violations = validate_spec(spec, agent_check=check_agent)
    assert [v.field for v in violations] == ["spec.task_prompt"]
    assert "256 KiB" in violations[0].description


def test_missing_source(tmp_path: Path) -> None:
    spec = good_spec(tmp_path)
    spec.ClearField("source")
    assert fields(spec) == ["spec.source"]
    spec.source.ref = "main"  # present, but no kind chosen
    assert fields(spec) == ["spec.source"]


def test_local_path_must_be_an_existing_absolute_directory(tmp_path: Path) -> None:
    spec = good_spec(tmp_path)
    spec.source.local_path = "relative/dir"
    assert fields(spec) == ["spec.source.local_path"]
    spec.source.local_path = str(tmp_path / "missing")
    [violation] = validate_spec(spec, agent_check=check_agent)
    assert violation.field == "spec.source.local_path"
    assert "not an existing directory" in violation.description
    file = tmp_path / "file.txt"
    file.write_text("x")
    spec.source.local_path = str(file)
    assert fields(spec) == ["spec.source.local_path"]


def test_git_url_and_github_repo(tmp_path: Path) -> None:
    spec = good_spec(tmp_path)
    spec.source.git_url = ""
    assert fields(spec) == ["spec.source.git_url"]
    spec.source.git_url = "file:///srv/repo.git"
    spec.source.ref = "main"
    assert fields(spec) == []
    spec.source.github_repo = "octo/repo"
    assert fields(spec) == []
    spec.source.github_repo = "not a repo"
    [violation] = validate_spec(spec, agent_check=check_agent)
    assert violation == FieldViolation("spec.source.github_repo", "must be owner/name, got 'not a repo'")
    spec.source.github_repo = "octo/repo"
    spec.source.include_ignored = True
    assert fields(spec) == ["spec.source.include_ignored"]


def test_agent_violations_come_from_the_agent_check(tmp_path: Path) -> None:
    spec = good_spec(tmp_path)
    spec.agent.name = "no-such-driver"
    assert fields(spec) == ["spec.agent.name"]
    spec.agent.name = "scripted"
    assert fields(spec) == ["spec.agent.options.script"]


def test_unknown_profile(tmp_path: Path) -> None:
    spec = good_spec(tmp_path)
    spec.harness.profile = "turbo"
    [violation] = validate_spec(spec, agent_check=check_agent)
    assert violation.field == "spec.harness.profile"
    assert violation.description.startswith("unknown profile 'turbo' (known: default, fast, reliable;")


def test_builtin_profiles_are_known(tmp_path: Path) -> None:
    spec = good_spec(tmp_path)
    for name in ("default", "fast", "reliable"):
        spec.harness.profile = name
        assert fields(spec) == []


def test_every_loop_mode_is_accepted(tmp_path: Path) -> None:
    spec = good_spec(tmp_path)
    for mode in (common_pb2.LOOP_STRATEGY_MODE_FIXED, common_pb2.LOOP_STRATEGY_MODE_HYBRID, common_pb2.LOOP_STRATEGY_MODE_RALPH):
        spec.harness.loop_strategy.mode = mode
        assert fields(spec) == []


def test_loop_mode(tmp_path: Path) -> None:
    spec = good_spec(tmp_path)
    spec.harness.loop_strategy.mode = 42  # open enum: any number reaches the server
    [violation] = validate_spec(spec, agent_check=check_agent)
    assert violation == FieldViolation("spec.harness.loop_strategy.mode", "unknown value 42")


@pytest.mark.parametrize(("value", "ok"), [(1, True), (100, True), (0, False), (101, False), (-3, False)])
def test_max_iterations_range(tmp_path: Path, value: int, ok: bool) -> None:
    spec = good_spec(tmp_path)
    spec.harness.loop_strategy.max_iterations = value
    assert fields(spec) == ([] if ok else ["spec.harness.loop_strategy.max_iterations"])


@pytest.mark.parametrize("name", ["max_wall_clock_seconds", "agent_timeout_seconds"])
def test_limits_must_be_positive_when_set(tmp_path: Path, name: str) -> None:
    spec = good_spec(tmp_path)
    setattr(spec.harness.limits, name, 0)
    assert fields(spec) == [f"spec.harness.limits.{name}"]
    setattr(spec.harness.limits, name, 5)
    assert fields(spec) == []


def test_skip_levels(tmp_path: Path) -> None:
    spec = good_spec(tmp_path)
    spec.harness.verification.skip_levels.extend(["L1", "L7", "l2"])
    [violation] = validate_spec(spec, agent_check=check_agent)
    assert violation.field == "spec.harness.verification.skip_levels"
    assert "'L7'" in violation.description and "'l2'" in violation.description


def test_negative_queue_wait_and_blank_label_key(tmp_path: Path) -> None:
    spec = good_spec(tmp_path)
    spec.max_queue_wait_seconds = -1
    spec.labels[""] = "x"
    assert fields(spec) == ["spec.max_queue_wait_seconds", "spec.labels"]


def test_every_violation_is_reported_at_once(tmp_path: Path) -> None:
    spec = common_pb2.WorkOrderSpec(
        task_prompt=" ",
        source=common_pb2.WorkspaceSource(local_path="nope"),
        agent=common_pb2.AgentSpec(name="ghost"),
        harness=common_pb2.HarnessSettings(
            profile="x",
            loop_strategy=common_pb2.LoopStrategySettings(mode=9, max_iterations=0),
            limits=common_pb2.LimitsSettings(agent_timeout_seconds=-1),
            verification=common_pb2.VerificationSettings(skip_levels=["L9"]),
        ),
        max_queue_wait_seconds=-5,
    )
    assert fields(spec) == [
        "spec.task_prompt",
        "spec.source.local_path",
        "spec.agent.name",
        "spec.harness.profile",
        "spec.harness.loop_strategy.mode",
        "spec.harness.loop_strategy.max_iterations",
        "spec.harness.limits.agent_timeout_seconds",
        "spec.harness.verification.skip_levels",
        "spec.max_queue_wait_seconds",
    ]


def test_default_agent_check_refuses_an_empty_driver_name(tmp_path: Path) -> None:
    # Whether or not the workspace driver registry is importable, no driver has an empty name.
    spec = good_spec(tmp_path)
    spec.agent.name = ""
    assert "spec.agent.name" in [v.field for v in validate_spec(spec)]


def test_a_cost_cap_on_codex_needs_its_prices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Codex reports no cost: a cost cap without `pricing` would silently do nothing, so it
    is refused naming the option; a token cap alone, or prices given, is accepted."""
    monkeypatch.setenv("AGENTGATE_CHECK_AGENT_AVAILABILITY", "0")
    spec = good_spec(tmp_path)
    spec.agent.CopyFrom(common_pb2.AgentSpec(name="codex"))
    spec.harness.limits.max_cost_usd = 2.5
    (violation,) = validate_spec(spec)
    assert violation.field == "spec.agent.options.pricing"
    assert "limits.max_cost_usd (2.5)" in violation.description
    spec.agent.options["pricing"] = "1.25,0.125,10"
    assert validate_spec(spec) == []
    spec.agent.options.pop("pricing")
    spec.harness.limits.ClearField("max_cost_usd")
    spec.harness.limits.max_total_tokens = 1000
    assert validate_spec(spec) == []
    # claude reports its cost: nothing more is needed.
    spec.agent.CopyFrom(common_pb2.AgentSpec(name="claude-code"))
    spec.harness.limits.max_cost_usd = 2.5
    assert validate_spec(spec) == []
