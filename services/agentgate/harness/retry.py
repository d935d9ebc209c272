"""The retry presets and the bounds of a retry policy (docs/harness.md).

The one place they are written: profiles and the queue check retry settings against the
bounds, the resolution fills a policy from its preset, the CLI offers the preset names,
and the orchestrator's retry executor runs the resolved policy. A new preset is one more
entry in `PRESETS`.
"""

from __future__ import annotations

from agentgate.v1 import common_pb2

T = common_pb2.BuildErrorType

DEFAULT_PRESET = "default"
MAX_RETRY_ATTEMPTS = 20
#: No single wait between retries above an hour.
MAX_BACKOFF_SECONDS = 3600.0
MAX_BACKOFF_MULTIPLIER = 10.0

_DEFAULT_RETRYABLE = (
    T.BUILD_ERROR_TYPE_AGENT_TIMEOUT,
    T.BUILD_ERROR_TYPE_SYSTEM_ERROR,
    T.BUILD_ERROR_TYPE_GITHUB_ERROR,
    # 429, 5xx, 529 overloaded, a dropped connection: the model API will likely answer later.
    T.BUILD_ERROR_TYPE_AGENT_API_ERROR,
)
_DEFAULT = common_pb2.RetryPolicy(
    max_attempts=3,
    initial_backoff_seconds=5.0,
    backoff_multiplier=2.0,
    max_backoff_seconds=30.0,
    jitter=True,
    retryable_errors=sorted(_DEFAULT_RETRYABLE),
    retry_on_timeout=True,
)


def _preset(
    base: common_pb2.RetryPolicy, more_retryable: tuple[int, ...] = (), **changes: float
) -> common_pb2.RetryPolicy:
    """`base` with some numbers changed and more error types retried."""
    policy = common_pb2.RetryPolicy()
    policy.CopyFrom(base)
    policy.MergeFrom(common_pb2.RetryPolicy(**changes))
    retryable = sorted({*policy.retryable_errors, *more_retryable})
    del policy.retryable_errors[:]
    policy.retryable_errors.extend(retryable)
    return policy


#: Each preset with every field set (`preset` itself left empty).
PRESETS: dict[str, common_pb2.RetryPolicy] = {
    "default": _DEFAULT,
    "aggressive": _preset(
        _DEFAULT,
        max_attempts=6,
        initial_backoff_seconds=1.0,
        backoff_multiplier=1.5,
        max_backoff_seconds=60.0,
        more_retryable=(T.BUILD_ERROR_TYPE_AGENT_CRASH, T.BUILD_ERROR_TYPE_WORKSPACE_ERROR),
    ),
    # One attempt; the other numbers (default's) only matter if max_attempts is raised explicitly.
    "none": _preset(_DEFAULT, max_attempts=1),
}
RETRY_PRESETS = tuple(PRESETS)

#: The policy's fields a work order may set one by one over its preset.
_SCALAR_FIELDS = (
    "max_attempts",
    "initial_backoff_seconds",
    "backoff_multiplier",
    "max_backoff_seconds",
    "jitter",
    "retry_on_timeout",
)


def resolve_policy(requested: common_pb2.RetryPolicy) -> common_pb2.RetryPolicy:
    """The policy with its preset's values in every unset field (the form stored with a run).

    The queue refuses unknown preset names at submit; should one get here anyway it takes
    the default preset's values rather than failing a run over a name.
    """
    name = requested.preset or DEFAULT_PRESET
    resolved = common_pb2.RetryPolicy()
    resolved.CopyFrom(PRESETS.get(name, PRESETS[DEFAULT_PRESET]))
    resolved.preset = name
    for field_name in _SCALAR_FIELDS:
        if requested.HasField(field_name):
            setattr(resolved, field_name, getattr(requested, field_name))
    if requested.retryable_errors:
        del resolved.retryable_errors[:]
        resolved.retryable_errors.extend(requested.retryable_errors)
    return resolved
