"""How the persistence service tells a caller that a record was stored in its index but its
file under runs/{run_id}/ could not be written (disk full, permission denied, ...).

The RPC still succeeds (the record is kept and readable through the API); the reason travels
as trailing metadata, so the orchestrator can emit a `persistence:warning` naming the file.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Trailing metadata key; its value says which file was not written and why.
FILE_WARNING_KEY = "agentgate-persistence-warning"


def warning_metadata(message: str) -> tuple[tuple[str, str], ...]:
    """Trailing metadata carrying `message` (made ASCII: metadata values must be)."""
    return ((FILE_WARNING_KEY, message.encode("ascii", "backslashreplace").decode("ascii")),)


def warning_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The warning in a call's trailing metadata, or '' when there is none."""
    for key, value in metadata or ():
        if key == FILE_WARNING_KEY:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return ""
