"""CLI flags -> WorkOrderSpec."""

from __future__ import annotations

import pytest

from agentgate.client.spec_builder import UsageError, build_spec, parse_agent_options


def spec(**overrides):
    flags = dict(
        prompt="fix it", prompt_file=None, path=None, git_url=None, ref=None, agent="command",
        agent_options=[], max_iterations=None,
    )
    flags.update(overrides)
    return build_spec(**flags)


def test_local_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "proj").mkdir()
    from pathlib import Path

    assert spec(path=Path("proj")).source.local_path == str(tmp_path / "proj")


def test_scripted_script_file_content_is_sent(tmp_path):
    script = tmp_path / "s.yaml"
    script.write_text("default: [{print: hi}]\n")
    options = parse_agent_options([f"script={script}", "x=1=2"], "scripted")
    assert options == {"script": "default: [{print: hi}]\n", "x": "1=2"}


def test_bad_agent_option_names_flag():
    with pytest.raises(UsageError, match="--agent-option"):
        parse_agent_options(["novalue"], "command")


def test_unreadable_script_names_flag(tmp_path):
    with pytest.raises(UsageError, match="script"):
        parse_agent_options([f"script={tmp_path / 'missing.yaml'}"], "scripted")


def test_conflicting_flags(tmp_path):
    with pytest.raises(UsageError, match="--prompt and --prompt-file"):
        spec(prompt_file=tmp_path / "p.txt")
    with pytest.raises(UsageError, match="--path, --git-url and --github: give one"):
        spec(path=tmp_path, git_url="file:///x")
    with pytest.raises(UsageError, match="--ref"):
        spec(ref="main")


def test_prompt_file_and_git_and_iterations(tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("from a file")
    built = spec(prompt=None, prompt_file=prompt, git_url="file:///repo", ref="v1", max_iterations=4)
    assert built.task_prompt == "from a file"
    assert built.source.git_url == "file:///repo" and built.source.ref == "v1"
    assert built.harness.loop_strategy.max_iterations == 4
    assert not spec().harness.loop_strategy.HasField("max_iterations")


def test_include_ignored_goes_with_path_only(tmp_path):
    assert spec(path=tmp_path, include_ignored=True).source.include_ignored
    assert not spec(path=tmp_path).source.include_ignored
    with pytest.raises(UsageError, match="--include-ignored"):
        spec(git_url="https://example.com/x.git", include_ignored=True)


def test_sandbox_flags(tmp_path, monkeypatch):
    from agentgate.v1 import common_pb2

    monkeypatch.chdir(tmp_path)
    built = spec(sandbox="OFF", sandbox_read_only=["tools"])
    assert built.harness.sandbox.mode == common_pb2.SANDBOX_MODE_OFF
    assert list(built.harness.sandbox.read_only_paths) == [str(tmp_path / "tools")]
    assert not spec().harness.HasField("sandbox")  # unset: the harness's default (on)
    with pytest.raises(UsageError, match="--sandbox"):
        spec(sandbox="maybe")
