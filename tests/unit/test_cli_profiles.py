"""The CLI side of profiles: `--profile` / `--loop-strategy` on submit and exec, and
`agentgate profiles list|show|validate` (run through typer, reading $AGENTGATE_HOME)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentgate.client.cli import app
from agentgate.client.spec_builder import UsageError, build_spec
from agentgate.v1 import common_pb2

runner = CliRunner()


def spec(**flags):
    return build_spec(prompt="p", prompt_file=None, path=None, git_url=None, ref=None, agent="scripted",
                      agent_options=[], **flags)


def test_profile_and_loop_strategy_flags():
    built = spec(profile="reliable", loop_strategy="Ralph")
    assert built.harness.profile == "reliable"
    assert built.harness.loop_strategy.mode == common_pb2.LOOP_STRATEGY_MODE_RALPH
    assert spec().harness.loop_strategy.mode == common_pb2.LOOP_STRATEGY_MODE_UNSPECIFIED
    with pytest.raises(UsageError, match="--loop-strategy: 'loopy' is not one of fixed, hybrid, ralph"):
        spec(loop_strategy="loopy")


def test_submit_and_exec_take_the_flags():
    for command in ("submit", "exec"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert "--profile" in result.output and "--loop-strategy" in result.output


@pytest.fixture
def profiles_home(home: Path) -> Path:
    directory = home / "profiles"
    directory.mkdir()
    (directory / "mine.yaml").write_text("extends: reliable\ndescription: my team\nlimits: {max_total_tokens: 9000}\n")
    (directory / "a.yaml").write_text("extends: b\n")
    (directory / "b.yaml").write_text("extends: a\n")
    return directory


def test_list(profiles_home):
    result = runner.invoke(app, ["profiles", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)["profiles"]}
    assert list(rows) == ["default", "fast", "reliable", "a", "b", "mine"]
    assert rows["fast"]["source"] == "built-in" and rows["fast"]["valid"]
    assert rows["mine"] == {
        "name": "mine", "source": str(profiles_home / "mine.yaml"), "extends": "reliable", "description": "my team",
        "valid": True, "error": "", "overrides_builtin": False,
    }
    assert not rows["a"]["valid"] and "extends: cycle: a -> b -> a" in rows["a"]["error"]
    human = runner.invoke(app, ["profiles", "list"], env={"COLUMNS": "300"})
    assert human.exit_code == 0 and "mine" in human.output and "cycle" in human.output


def test_show(profiles_home):
    result = runner.invoke(app, ["profiles", "show", "mine", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert [p["name"] for p in shown["chain"]] == ["reliable", "mine"]
    settings = shown["settings"]
    assert settings["loop_strategy"]["mode"] == "hybrid" and settings["loop_strategy"]["max_iterations"] == 5
    assert settings["limits"]["max_total_tokens"] == 9000
    assert settings["retry"]["preset"] == "aggressive" and settings["retry"]["max_attempts"] == 6
    human = runner.invoke(app, ["profiles", "show", "fast"], env={"COLUMNS": "200"})
    assert human.exit_code == 0
    assert "# resolved: built-in default <- fast" in human.output and "max_iterations: 1" in human.output


def test_show_refuses_a_bad_or_unknown_profile(profiles_home):
    cycle = runner.invoke(app, ["profiles", "show", "a"], env={"COLUMNS": "300"})
    assert cycle.exit_code == 2 and "extends: cycle: a -> b -> a" in cycle.output
    unknown = runner.invoke(app, ["profiles", "show", "ghost"], env={"COLUMNS": "300"})
    assert unknown.exit_code == 2 and "unknown profile 'ghost'" in unknown.output


def test_validate(profiles_home, tmp_path):
    good = tmp_path / "team.yaml"
    good.write_text("extends: mine\nloop_strategy: {max_bonus_iterations: 1}\n")
    result = runner.invoke(app, ["profiles", "validate", str(good), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "file": str(good), "name": "team", "valid": True, "problems": [],
        "chain": [{"name": "reliable", "source": "built-in"}, {"name": "mine", "source": str(profiles_home / "mine.yaml")},
                  {"name": "team", "source": str(good)}],
    }
    bad = tmp_path / "bad.yaml"
    bad.write_text("loop_strategy: {mode: turbo, mood: 1}\nretry: {preset: yolo}\n")
    result = runner.invoke(app, ["profiles", "validate", str(bad), "--json"])
    assert result.exit_code == 2
    assert json.loads(result.output)["problems"] == [
        "loop_strategy.mode: unknown value 'turbo' (expected one of fixed, hybrid, ralph)",
        "loop_strategy.mood: unknown key (known keys: mode, max_iterations, base_iterations, max_bonus_iterations, "
        "progress_threshold, min_iterations, window_size, convergence_threshold, no_change_limit, completion_signals)",
        "retry.preset: unknown preset 'yolo' (expected default, aggressive, none)",
    ]
    human = runner.invoke(app, ["profiles", "validate", str(bad)], env={"COLUMNS": "300"})
    assert human.exit_code == 2 and "invalid profile 'bad'" in human.output
    missing = runner.invoke(app, ["profiles", "validate", str(tmp_path / "none.yaml"), "--json"])
    assert missing.exit_code == 2 and "cannot be read" in missing.output
