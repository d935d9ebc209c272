"""Run and work order ids become folder names: only safe single path components pass."""

from __future__ import annotations

import pytest

from agentgate.persistence.ids import check_id, is_valid_id
from agentgate.persistence.pagination import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    BadPageToken,
    PageCursor,
    decode_page_token,
    effective_page_size,
    encode_page_token,
)


@pytest.mark.parametrize("value", ["a", "run-1", "R_2.final", "0abc", "01J9Z3K8Q", "a" * 128])
def test_safe_ids_are_accepted(value: str) -> None:
    assert is_valid_id(value)
    assert check_id(value, "run.id") is None


@pytest.mark.parametrize(
    "value",
    ["..", ".", "../etc", "a/b", "a\\b", ".hidden", "-x", "_x", "a b", "a\n", "ä", "a" * 129, "a:b", "/abs"],
)
def test_unsafe_ids_are_refused_naming_the_field(value: str) -> None:
    assert not is_valid_id(value)
    violation = check_id(value, "run.id")
    assert violation is not None
    assert violation.field == "run.id"
    assert "must match" in violation.description


def test_empty_id_is_required() -> None:
    violation = check_id("", "events[3].run_id")
    assert violation is not None
    assert violation.field == "events[3].run_id"
    assert violation.description == "is required"


def test_page_token_round_trip() -> None:
    cursor = PageCursor("wo-1", 1_700_000_000_123_456_789, "run-9")
    token = encode_page_token(cursor)
    assert "wo-1" not in token  # opaque, not the raw values
    assert decode_page_token(token, "wo-1") == cursor


@pytest.mark.parametrize("token", ["garbage!", "e30", "bm90IGpzb24", "W10", "eyJ3IjoiIiwiYyI6MWUzMCwiaSI6IngifQ"])
def test_bad_page_tokens_are_refused(token: str) -> None:
    with pytest.raises(BadPageToken):
        decode_page_token(token, "")


def test_page_token_of_another_filter_is_refused() -> None:
    token = encode_page_token(PageCursor("wo-1", 5, "r"))
    with pytest.raises(BadPageToken, match="different work_order_id"):
        decode_page_token(token, "wo-2")


def test_page_size_default_and_cap() -> None:
    assert effective_page_size(0) == DEFAULT_PAGE_SIZE == 50
    assert effective_page_size(7) == 7
    assert effective_page_size(5000) == MAX_PAGE_SIZE == 1000
