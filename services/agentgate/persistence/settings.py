"""Settings of the persistence service beyond the common ones (flags > environment > defaults)."""

from __future__ import annotations

from agentgate.common.config import ConfigError, env_int
from agentgate.persistence.output_limits import DEFAULT_MAX_OUTPUT_BYTES

MAX_OUTPUT_BYTES_ENV = "AGENTGATE_MAX_OUTPUT_BYTES"
MAX_OUTPUT_BYTES_FLAG = "--max-output-bytes"
MIN_OUTPUT_BYTES = 1024
# stdout and stderr of one agent result must fit in one 16 MiB gRPC message together.
MAX_OUTPUT_BYTES = 6 * 1024 * 1024


def max_output_bytes(flag_value: int | None = None) -> int:
    """Bytes of stdout (and of stderr) kept per agent result: the flag, else
    $AGENTGATE_MAX_OUTPUT_BYTES, else 1 MiB. ConfigError names the key of a bad value."""
    if flag_value is not None:
        key, value = MAX_OUTPUT_BYTES_FLAG, flag_value
    else:
        key, value = MAX_OUTPUT_BYTES_ENV, env_int(MAX_OUTPUT_BYTES_ENV, DEFAULT_MAX_OUTPUT_BYTES)
    if not MIN_OUTPUT_BYTES <= value <= MAX_OUTPUT_BYTES:
        raise ConfigError(f"{key}: must be between {MIN_OUTPUT_BYTES} and {MAX_OUTPUT_BYTES}, got {value}")
    return value
