"""JSON Schema validation for the gate (contracts' `json_schema` rule, the blackbox
`json_schema` assertion), with the `jsonschema` library: the draft is the one the schema's
`$schema` names (default: the newest), every error is reported with its location.

Schemas are never fetched from the network: a `$ref` to a remote URL stays unresolved and
fails validation rather than downloading at run time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from referencing.exceptions import Unresolvable

from agentgate.common import yaml_text

#: Errors listed per validation; the count is always given.
MAX_ERRORS = 10


class SchemaLoadError(ValueError):
    """A schema file that is missing, unreadable or not a valid schema."""


def load_schema_file(room: Path, relative: str) -> dict[str, Any]:
    """A schema from a JSON or YAML file inside `room` (blocking; call off-loop)."""
    target = (room / relative).resolve()
    if not target.is_relative_to(room.resolve()):
        raise SchemaLoadError(f"schema {relative} is outside the workspace")
    if not target.is_file():
        raise SchemaLoadError(f"schema file {relative} is missing")
    try:
        text = target.read_text(encoding="utf-8")
        schema = json.loads(text) if target.suffix == ".json" else yaml_text.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise SchemaLoadError(f"schema file {relative} cannot be read: {exc}") from None
    check_schema(schema, relative)
    return schema


def check_schema(schema: Any, where: str) -> None:
    """Raises SchemaLoadError unless `schema` is a valid JSON Schema."""
    if not isinstance(schema, dict | bool):
        raise SchemaLoadError(f"{where} is not a JSON Schema (an object or a boolean)")
    try:
        validator_for(schema).check_schema(schema)  # type: ignore[arg-type]  # types-jsonschema omits boolean schemas
    except SchemaError as exc:
        raise SchemaLoadError(f"{where} is not a valid JSON Schema: {exc.message}") from None


def _location(path: Any) -> str:
    parts = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    return "$" + parts


def schema_errors(instance: Any, schema: dict[str, Any] | bool) -> list[str]:
    """Every way `instance` breaks `schema`, as `$.path: message` lines (empty = valid)."""
    validator = validator_for(schema)(schema)
    try:
        errors = sorted(validator.iter_errors(instance), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    except Unresolvable as exc:
        return [f"the schema has a $ref that cannot be resolved without the network: {exc}"]
    lines = [f"{_location(error.absolute_path)}: {error.message}" for error in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        lines.append(f"... and {len(errors) - MAX_ERRORS} more")
    return lines
