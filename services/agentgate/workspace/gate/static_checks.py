"""Checks that run our own code on untrusted input, in a child process a timeout can kill.

The contracts' `required_schemas` rules (a file the agent wrote, a `json_schema`, a
`matches_regex`) and the blackbox assertions that match a product's output against a regex
or a JSON Schema can take exponential time on crafted input: a schema of nested `$ref`s, a
YAML file of nested aliases, a pattern that backtracks. A thread running them cannot be
stopped; a child process can. Each call gets what is left of the plan's
`policy.max_runtime` (else STATIC_CHECK_TIMEOUT_SECONDS), and a cancelled Verify kills it
(docs/security.md, "Bounded work").

The child reads its request as JSON on stdin and answers with JSON on stdout, so nothing it
sends back is executed by the service.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from agentgate.common import yaml_text
from agentgate.workspace.gate.json_schema import SchemaLoadError, load_schema_file, schema_errors
from agentgate.workspace.gate.plan import Assertion, RequiredSchema, SchemaRule
from agentgate.workspace.processes import DEFAULT_KILL_GRACE_SECONDS, ProcessResult, run_process

#: Time one call may take when the plan sets no policy.max_runtime.
STATIC_CHECK_TIMEOUT_SECONDS = 60.0
#: Answer kept from the child: problem lists are short, assertion descriptions quote little.
ANSWER_BYTES = 4 * 1024 * 1024
FIELD_TYPES = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


class StaticCheckError(RuntimeError):
    """The child did not answer: it ran out of time, or failed."""


def _inside(room: Path, relative: str) -> Path | None:
    target = (room / relative).resolve()
    return target if target.is_relative_to(room.resolve()) else None


def _lookup(data: Any, dotted: str) -> tuple[bool, Any]:
    current = data
    for part in dotted.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return False, None
    return True, current


def _json_schema_problems(room: Path, data: Any, schema: Any) -> list[str]:
    label = f"json_schema {schema}" if isinstance(schema, str) else "the inline json_schema"
    try:
        loaded = load_schema_file(room, schema) if isinstance(schema, str) else schema
    except SchemaLoadError as exc:
        return [str(exc)]
    return [f"{label}: {error}" for error in schema_errors(data, loaded)]


def schema_problems(room: Path, schema: RequiredSchema) -> list[str]:
    """How the file of a `required_schemas` entry breaks its rules (runs in the child)."""
    target = _inside(room, schema.file)
    if target is None or not target.is_file():
        return [f"{schema.file} is missing"]
    try:
        text = target.read_text(encoding="utf-8")
        data = json.loads(text) if schema.schema == "json" else yaml_text.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return [f"{schema.file} is not valid {schema.schema}: {exc}"]
    problems = []
    for rule in schema.rules:
        if rule.kind == "json_schema":
            problems += _json_schema_problems(room, data, rule.schema if rule.schema is not None else rule.value)
            continue
        present, value = _lookup(data, rule.field)
        if not present:
            problems.append(f"field {rule.field!r} is missing")
        elif rule.kind == "field_type":
            types = FIELD_TYPES.get(rule.value)
            is_bool = isinstance(value, bool)
            if types is None:
                problems.append(f"unknown type {rule.value!r} (known: {', '.join(FIELD_TYPES)})")
            elif not isinstance(value, types) or (is_bool and rule.value in ("number", "integer")):
                problems.append(f"field {rule.field!r} is not of type {rule.value}")
        elif rule.kind == "matches_regex":
            if not isinstance(value, str) or re.search(rule.value, value) is None:
                problems.append(f"field {rule.field!r} does not match /{rule.value}/")
    return problems


async def ask_child(room: Path, request: dict[str, Any], what: str, timeout: float | None, kill_grace: float) -> Any:
    """The answer of a child process to `request` (see `_answer`); StaticCheckError, naming
    `what`, when it runs out of time or fails."""
    limit = STATIC_CHECK_TIMEOUT_SECONDS if timeout is None else max(timeout, 0.0)
    result = await run_process(
        # Isolated (-I) and outside the room: with the room as working directory, `-m` would
        # import an `agentgate` package the agent wrote there instead of ours.
        [sys.executable, "-I", "-m", "agentgate.workspace.gate.static_checks"],
        cwd="/",
        stdin=json.dumps(request).encode(),
        timeout=limit,
        kill_grace=kill_grace,
        capture_limit=ANSWER_BYTES,
    )
    if result.timed_out:
        raise StaticCheckError(f"{what}: stopped after {limit:.1f}s (the gate's time limit)")
    if result.exit_code != 0 or result.stdout_truncated:
        detail = result.stderr.strip().splitlines()[-1:] or [f"exit code {result.exit_code}"]
        raise StaticCheckError(f"{what}: the check failed: {detail[0]}")
    return json.loads(result.stdout)


async def bounded_schema_problems(
    room: Path, schema: RequiredSchema, timeout: float | None, kill_grace: float = DEFAULT_KILL_GRACE_SECONDS
) -> list[str]:
    """`schema_problems` in a child process stopped after `timeout` seconds."""
    request = {"task": "schema", "room": str(room), "schema": asdict(schema)}
    try:
        return list(await ask_child(room, request, f"schema:{schema.file}", timeout, kill_grace))
    except StaticCheckError as exc:
        return [str(exc)]


def _answer(request: dict[str, Any]) -> Any:
    room = Path(request["room"])
    if request["task"] == "schema":
        raw = request["schema"]
        rules = [SchemaRule(**rule) for rule in raw["rules"]]
        return schema_problems(room, RequiredSchema(file=raw["file"], schema=raw["schema"], rules=rules))
    # Imported here, in the child only: blackbox imports this module.
    from agentgate.workspace.gate.blackbox import evaluate

    result = ProcessResult(**request["result"])
    assertions = [Assertion(type=a["type"], params=a["params"]) for a in request["assertions"]]
    return [asdict(evaluate(a, result, room)) for a in assertions]


if __name__ == "__main__":
    json.dump(_answer(json.load(sys.stdin)), sys.stdout)
