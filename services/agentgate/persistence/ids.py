"""Identifier rules: run and work order ids become folder names under $AGENTGATE_HOME/runs,
so only a safe, single path component is accepted."""

from __future__ import annotations

import re

from agentgate.common.errors import FieldViolation

# One path component: no separators, cannot start with '.', so never '..' or a hidden name.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

ID_RULE = "must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


def is_valid_id(value: str) -> bool:
    """True when `value` is a safe id (fullmatch, so a trailing newline is refused too)."""
    return ID_PATTERN.fullmatch(value) is not None


def check_id(value: str, field: str) -> FieldViolation | None:
    """A violation for `field` when `value` is empty or not a safe id, else None."""
    if not value:
        return FieldViolation(field, "is required")
    if not is_valid_id(value):
        return FieldViolation(field, ID_RULE)
    return None
