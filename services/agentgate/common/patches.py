"""The bound on a stored patch of a run's change (docs/results.md).

A patch is what the agent wrote, so it is hostile input of any size: the workspace service
refuses to export one above the bound, and persistence refuses to store one (both
RESOURCE_EXHAUSTED with `patch_too_large`'s words). Two patches travel in one SavePatch
message, so twice the bound stays well under the 16 MiB message limit (common/config.py).
"""

from __future__ import annotations

MAX_PATCH_BYTES = 4 * 1024 * 1024


def patch_too_large(what: str, size: int, limit: int = MAX_PATCH_BYTES) -> str:
    """How a refusal of an oversized patch reads."""
    return (
        f"{what} is {size} bytes, over the limit of {limit} bytes for a stored patch; "
        "the change is only in the run's workspace (docs/results.md)"
    )
