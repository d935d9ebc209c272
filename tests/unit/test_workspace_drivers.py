"""Agent driver registry and option validation (what the queue calls at submit)."""

from __future__ import annotations

import textwrap

import pytest

from agentgate.harness.drivers import validate_agent
from agentgate.harness.scripted_script import ScriptError, parse_script
from agentgate.v1 import common_pb2
from agentgate.workspace.drivers.registry import driver_names, get_driver

GOOD_SCRIPT = textwrap.dedent(
    """\
    iterations:
      1:
        - print: "looking at calc.py"
        - stderr: "warning: something"
        - write: {path: src/calc.py, content: "def add(a, b):\\n    return a - b\\n"}
        - append: {path: NOTES.md, content: "more\\n"}
        - delete: {path: old.txt}
        - run: "python -c 'print(42)'"
        - tool_call: {tool: Write, input: {path: src/calc.py}, output: "ok"}
        - tokens: {input: 1200, output: 300}
        - sleep: 0.5
        - exit: 1
      2:
        attempts:
          1: [{sleep: 60}]
          3: [{print: third}]
        steps: [{print: fallback}]
      3: [{crash: "boom"}]
    default: [{print: "nothing to do"}]
    """
)


def scripted(script: str) -> common_pb2.AgentSpec:
    return common_pb2.AgentSpec(name="scripted", options={"script": script})


def test_registry_lists_builtin_drivers() -> None:
    assert {"command", "scripted"} <= set(driver_names())
    driver = get_driver("scripted")
    assert driver is not None and driver.name == "scripted"
    assert get_driver("nope") is None


def test_good_script_is_valid() -> None:
    assert validate_agent(scripted(GOOD_SCRIPT)) == []


def test_attempt_selection() -> None:
    script = parse_script(GOOD_SCRIPT)
    second = script.iterations[2]
    assert [s.value for s in script.steps_for(2, 1)] == [60.0]
    # Attempt 2: highest listed attempt at or below it (1).
    assert [s.value for s in script.steps_for(2, 2)] == [60.0]
    assert [s.value for s in script.steps_for(2, 5)] == ["third"]
    assert second.for_attempt(0) == second.steps
    assert [s.value for s in script.steps_for(9, 1)] == ["nothing to do"]
    assert script.steps_for(1, 1)[-1].kind == "exit"


@pytest.mark.parametrize(
    ("script", "problem"),
    [
        ("iterations: [\n", "not valid YAML"),
        ("iterations:\n  1: [{dance: now}]\n", "unknown step 'dance'"),
        ("iterations:\n  1: [{write: {path: /etc/passwd, content: x}}]\n", "absolute"),
        ("iterations:\n  1: [{write: {path: ../outside.txt, content: x}}]\n", "'..'"),
        ("iterations:\n  1: [{delete: {path: a/../../b}}]\n", "'..'"),
        ("iterations:\n  1: [{write: {path: .git/config, content: x}}]\n", ".git"),
        ("iterations:\n  zero: []\n", "not a number"),
        ("iterations:\n  1: [{sleep: -1}]\n", "at least 0"),
        ("iterations:\n  1: [{print: a, stderr: b}]\n", "exactly one key"),
        ("steps: []\n", "unknown key 'steps'"),
        ("", "needs a script"),
    ],
)
def test_invalid_scripts_are_refused_naming_the_problem(script: str, problem: str) -> None:
    violations = validate_agent(scripted(script))
    assert len(violations) == 1
    assert violations[0].field == "spec.agent.options.script"
    assert problem in violations[0].description


def test_parse_script_raises_script_error() -> None:
    with pytest.raises(ScriptError, match=r"iterations\.1\[0\]: unknown step"):
        parse_script("iterations:\n  1: [{fly: high}]\n")


def test_unknown_and_empty_driver_names() -> None:
    unknown = validate_agent(common_pb2.AgentSpec(name="gpt-9"))
    assert [v.field for v in unknown] == ["spec.agent.name"]
    assert "gpt-9" in unknown[0].description and "scripted" in unknown[0].description
    empty = validate_agent(common_pb2.AgentSpec())
    assert [v.field for v in empty] == ["spec.agent.name"]
    assert "command" in empty[0].description


def test_field_prefix_for_run_agent_requests() -> None:
    violations = validate_agent(scripted("iterations: [\n"), field_prefix="agent")
    assert [v.field for v in violations] == ["agent.options.script"]


def test_command_driver_options() -> None:
    ok = common_pb2.AgentSpec(name="command", options={"command": "cat {prompt_file}", "env.FOO": "1"})
    assert validate_agent(ok) == []
    bad = common_pb2.AgentSpec(
        name="command", options={"prompt_via": "carrier-pigeon", "env.1BAD": "x", "colour": "blue"}
    )
    fields = {v.field for v in validate_agent(bad)}
    assert fields == {
        "spec.agent.options.command",
        "spec.agent.options.prompt_via",
        "spec.agent.options.env.1BAD",
        "spec.agent.options.colour",
    }
