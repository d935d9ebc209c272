"""Opaque page tokens for ListRuns: keyset pagination over (created_at, id), newest first.

A keyset (rather than an offset) keeps pages stable while new runs are being created.
The token also carries the filters it was made for (work order and states), so it cannot be
replayed on another query.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


class BadPageToken(ValueError):
    """The token was not made by this service for this query."""


@dataclass(frozen=True)
class PageCursor:
    """Position after the last run of a page."""

    work_order_id: str
    created_ns: int
    run_id: str
    #: The RunState filter, sorted and without duplicates (empty = all states).
    states: tuple[int, ...] = field(default=())


def normalize_states(states: Iterable[int]) -> tuple[int, ...]:
    """A states filter in the form tokens carry: sorted, unique."""
    return tuple(sorted(set(states)))


def encode_page_token(cursor: PageCursor) -> str:
    """The cursor as an opaque URL-safe string."""
    data: dict[str, object] = {"w": cursor.work_order_id, "c": cursor.created_ns, "i": cursor.run_id}
    if cursor.states:
        data["s"] = list(cursor.states)
    raw = json.dumps(data)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, work_order_id: str, states: Iterable[int] = ()) -> PageCursor:
    """The cursor of `token`; BadPageToken when it is malformed or for other filters.
    Tokens made before the states filter existed carry none (= all states)."""
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        cursor = PageCursor(
            str(data["w"]), int(data["c"]), str(data["i"]), normalize_states(int(s) for s in data.get("s", []))
        )
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error, UnicodeError) as exc:
        raise BadPageToken("not a page token of ListRuns") from exc
    if not -(2**63) <= cursor.created_ns < 2**63:
        # SQLite integers are 64-bit; a forged value would fail deep in the driver.
        raise BadPageToken("not a page token of ListRuns")
    if cursor.work_order_id != work_order_id:
        raise BadPageToken("page token belongs to a different work_order_id filter")
    if cursor.states != normalize_states(states):
        raise BadPageToken("page token belongs to a different states filter")
    return cursor


def effective_page_size(requested: int) -> int:
    """0 means the default; larger than the maximum is capped. Negative is the caller's to refuse."""
    if requested <= 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)
