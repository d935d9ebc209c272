"""Size limits of stored agent output (docs/troubleshooting.md): stdout and stderr are kept whole up to a
limit (1 MiB each by default); above it they are cut on a UTF-8 character boundary and end
with `[TRUNCATED - exceeded N bytes]`, N being the limit. The byte count the agent really
wrote is kept in `stdout_bytes` / `stderr_bytes`."""

from __future__ import annotations

from agentgate.v1 import common_pb2

DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024


def truncation_marker(limit: int) -> str:
    """The line that ends a cut stream."""
    return f"[TRUNCATED - exceeded {limit} bytes]"


def cut_utf8(text: str, limit: int) -> tuple[str, bool]:
    """`text` whole when it has at most `limit` UTF-8 bytes; else its first `limit` bytes,
    shortened to the last whole character, then a newline and the marker. Returns the
    text and whether it was cut."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text, False
    # The text was valid, so "ignore" can only drop the partial character at the cut.
    kept = data[:limit].decode("utf-8", errors="ignore")
    return f"{kept}\n{truncation_marker(limit)}", True


def count_output_bytes(result: common_pb2.AgentResult) -> None:
    """Fills stdout_bytes / stderr_bytes from the text when the driver did not report them
    (older workspaces, drivers that do not count)."""
    if not result.stdout_bytes and result.stdout:
        result.stdout_bytes = len(result.stdout.encode("utf-8"))
    if not result.stderr_bytes and result.stderr:
        result.stderr_bytes = len(result.stderr.encode("utf-8"))


def limit_agent_output(result: common_pb2.AgentResult, limit: int) -> None:
    """Cuts stdout and stderr of `result` (in place) to `limit` bytes each, setting the
    *_truncated flags. A flag already set (the workspace cut the stream) stays set."""
    stdout, cut = cut_utf8(result.stdout, limit)
    if cut:
        result.stdout = stdout
        result.stdout_truncated = True
    stderr, cut = cut_utf8(result.stderr, limit)
    if cut:
        result.stderr = stderr
        result.stderr_truncated = True
