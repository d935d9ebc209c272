"""The scripted agent's script format (the `script` option of the `scripted` driver): the
queue checks a script at submit, the workspace's scripted agent plays it.

A script::

    iterations:
      1: [steps]                       # steps of iteration 1
      2:
        attempts:                      # different steps per retry attempt
          1: [steps]
          2: [steps]
        steps: [steps]                 # optional: attempts not listed (and none lower)
    default: [steps]                   # any iteration not listed

Steps (one key each): print, stderr, write {path, content}, append {path, content},
delete {path}, run, tool_call {tool, input, output, duration}, tokens {input, output},
sleep, exit, crash.

Imports only the standard library and yaml: the scripted agent process starts quickly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentgate.common import yaml_text

#: step name -> what its value must be (for messages).
STEP_KINDS = {
    "print": "text",
    "stderr": "text",
    "write": "{path, content}",
    "append": "{path, content}",
    "delete": "{path}",
    "run": "a shell command",
    "tool_call": "{tool, input, output, duration}",
    "tokens": "{input, output}",
    "sleep": "seconds",
    "exit": "an exit code",
    "crash": "a message",
}


class ScriptError(ValueError):
    """A script that cannot be played; the message says where and why."""


@dataclass(frozen=True)
class Step:
    """One step: its kind and its (checked) value."""

    kind: str
    value: Any


@dataclass(frozen=True)
class IterationScript:
    """Steps of one iteration: by attempt, plus the steps used when no attempt matches."""

    attempts: dict[int, list[Step]] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)

    def for_attempt(self, attempt: int) -> list[Step]:
        """`attempts[A]`, else the highest listed attempt below A, else the plain steps."""
        if attempt in self.attempts:
            return self.attempts[attempt]
        lower = [a for a in self.attempts if a <= attempt]
        if lower:
            return self.attempts[max(lower)]
        return self.steps


@dataclass(frozen=True)
class Script:
    """A parsed script."""

    iterations: dict[int, IterationScript] = field(default_factory=dict)
    default: list[Step] = field(default_factory=list)

    def steps_for(self, iteration: int, attempt: int) -> list[Step]:
        """The steps to play for this iteration and attempt."""
        if iteration in self.iterations:
            return self.iterations[iteration].for_attempt(attempt)
        return self.default


def check_relative_path(path: Any, where: str) -> str:
    """A step's path: non-empty, relative, without `..`, not inside `.git`."""
    if not isinstance(path, str) or not path.strip():
        raise ScriptError(f"{where}: path must be a non-empty string")
    pure = Path(path)
    if pure.is_absolute():
        raise ScriptError(f"{where}: path {path!r} is absolute; paths are relative to the workspace")
    if ".." in pure.parts:
        raise ScriptError(f"{where}: path {path!r} contains '..'; paths must stay inside the workspace")
    if pure.parts and pure.parts[0] == ".git":
        raise ScriptError(f"{where}: path {path!r} is inside .git")
    return path


def _number(value: Any, where: str, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScriptError(f"{where}: must be a number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ScriptError(f"{where}: must be at least {minimum:g}, got {value!r}")
    return float(value)


def _integer(value: Any, where: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScriptError(f"{where}: must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ScriptError(f"{where}: must be at least {minimum}, got {value!r}")
    return value


def _text(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ScriptError(f"{where}: must be text, got {value!r}")
    return str(value)


def _fields(value: Any, where: str, required: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScriptError(f"{where}: must be a mapping with {', '.join(sorted(required | optional))}")
    unknown = set(value) - required - optional
    if unknown:
        raise ScriptError(f"{where}: unknown key {sorted(map(str, unknown))[0]!r}")
    missing = required - set(value)
    if missing:
        raise ScriptError(f"{where}: needs {sorted(missing)[0]!r}")
    return value


def _step(raw: Any, where: str) -> Step:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ScriptError(f"{where}: a step is a mapping with exactly one key, e.g. {{print: hello}}")
    kind, value = next(iter(raw.items()))
    if kind not in STEP_KINDS:
        raise ScriptError(f"{where}: unknown step {kind!r} (known steps: {', '.join(STEP_KINDS)})")
    where = f"{where}.{kind}"
    if kind in ("print", "stderr", "crash"):
        return Step(kind, _text(value, where))
    if kind == "run":
        if not isinstance(value, str) or not value.strip():
            raise ScriptError(f"{where}: must be a shell command")
        return Step(kind, value)
    if kind in ("write", "append"):
        fields = _fields(value, where, {"path", "content"}, set())
        path = check_relative_path(fields["path"], where)
        return Step(kind, {"path": path, "content": _text(fields["content"], f"{where}.content")})
    if kind == "delete":
        fields = _fields(value, where, {"path"}, set())
        return Step(kind, {"path": check_relative_path(fields["path"], where)})
    if kind == "tool_call":
        fields = _fields(value, where, {"tool"}, {"input", "output", "duration"})
        tool_input = fields.get("input", {})
        if not isinstance(tool_input, dict):
            raise ScriptError(f"{where}.input: must be a mapping")
        return Step(
            kind,
            {
                "tool": _text(fields["tool"], f"{where}.tool"),
                # JSON round trip: the input must be storable as a protobuf Struct.
                "input": json.loads(json.dumps(tool_input, default=str)),
                "output": _text(fields.get("output", ""), f"{where}.output"),
                "duration": _number(fields.get("duration", 0), f"{where}.duration", 0),
            },
        )
    if kind == "tokens":
        fields = _fields(value, where, set(), {"input", "output"})
        return Step(
            kind,
            {
                "input": _integer(fields.get("input", 0), f"{where}.input", 0),
                "output": _integer(fields.get("output", 0), f"{where}.output", 0),
            },
        )
    if kind == "sleep":
        return Step(kind, _number(value, where, 0))
    # exit
    code = _integer(value, where, 0) if value is not None else 0
    if code > 255:
        raise ScriptError(f"{where}: an exit code is at most 255, got {code}")
    return Step(kind, code)


def _steps(raw: Any, where: str) -> list[Step]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ScriptError(f"{where}: must be a list of steps")
    return [_step(item, f"{where}[{i}]") for i, item in enumerate(raw)]


def _number_key(key: Any, where: str) -> int:
    if isinstance(key, str) and key.strip().isdigit():
        key = int(key)
    if isinstance(key, bool) or not isinstance(key, int) or key < 1:
        raise ScriptError(f"{where}: {key!r} is not a number from 1")
    return key


def parse_script(text: str) -> Script:
    """Parses and checks a script; raises ScriptError naming the problem and where."""
    try:
        raw = yaml_text.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ScriptError(f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if raw is None:
        raise ScriptError("the script is empty")
    if not isinstance(raw, dict):
        raise ScriptError("the script must be a mapping with 'iterations' and/or 'default'")
    unknown = set(raw) - {"iterations", "default"}
    if unknown:
        raise ScriptError(f"unknown key {sorted(map(str, unknown))[0]!r} (known keys: iterations, default)")
    iterations: dict[int, IterationScript] = {}
    raw_iterations = raw.get("iterations") or {}
    if not isinstance(raw_iterations, dict):
        raise ScriptError("iterations: must be a mapping of iteration number to steps")
    for key, body in raw_iterations.items():
        number = _number_key(key, "iterations")
        where = f"iterations.{number}"
        if number in iterations:
            raise ScriptError(f"{where}: listed twice")
        if isinstance(body, dict):
            unknown = set(body) - {"attempts", "steps"}
            if unknown:
                first = sorted(map(str, unknown))[0]
                raise ScriptError(f"{where}: unknown key {first!r} (known keys: attempts, steps)")
            attempts: dict[int, list[Step]] = {}
            raw_attempts = body.get("attempts") or {}
            if not isinstance(raw_attempts, dict):
                raise ScriptError(f"{where}.attempts: must be a mapping of attempt number to steps")
            for attempt_key, steps in raw_attempts.items():
                attempt = _number_key(attempt_key, f"{where}.attempts")
                attempts[attempt] = _steps(steps, f"{where}.attempts.{attempt}")
            iterations[number] = IterationScript(attempts=attempts, steps=_steps(body.get("steps"), f"{where}.steps"))
        else:
            iterations[number] = IterationScript(steps=_steps(body, where))
    return Script(iterations=iterations, default=_steps(raw.get("default"), "default"))
