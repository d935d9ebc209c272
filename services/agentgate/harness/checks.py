"""Value checks shared by the harness's settings: each returns the problem as text, or
None when the value is fine, so a caller can name the field itself."""

from __future__ import annotations

from collections.abc import Callable

Check = Callable[[float], "str | None"]


def positive(value: float) -> str | None:
    """Greater than 0."""
    return None if value > 0 else f"must be greater than 0, got {value:g}"


def not_negative(value: float) -> str | None:
    """0 or more."""
    return None if value >= 0 else f"must be 0 or more, got {value:g}"


def between(low: float, high: float) -> Check:
    """A check that the value lies in [low, high]."""

    def check(value: float) -> str | None:
        return None if low <= value <= high else f"must be between {low:g} and {high:g}, got {value:g}"

    return check


def fraction(value: float) -> str | None:
    """In (0, 1]."""
    return None if 0 < value <= 1 else f"must be greater than 0 and at most 1, got {value:g}"
