"""The retry policy and executor (docs/delivery.md), with an injected clock and random source."""

from __future__ import annotations

import pytest

from agentgate.harness.retry import PRESETS, resolve_policy
from agentgate.orchestrator.retry import (
    Failure,
    OperationFailed,
    RetryExecutor,
    RetrySettings,
    settings_from_policy,
)
from agentgate.v1 import common_pb2

T = common_pb2.BuildErrorType


class FakeClock:
    """Time that moves only when the executor sleeps (or a call says it took a while)."""

    def __init__(self) -> None:
        self.time = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.time += seconds


def preset(name: str) -> RetrySettings:
    return settings_from_policy(common_pb2.RetryPolicy(preset=name))


def error(error_type: int, message: str = "boom") -> common_pb2.BuildError:
    return common_pb2.BuildError(type=error_type, message=message)


def failing(*failures: Failure | None, clock: FakeClock | None = None, took: float = 0.0):
    """A call that fails with each given Failure in turn (None = succeeds), recording attempts."""
    seen: list[int] = []

    async def call(attempt: int) -> str:
        seen.append(attempt)
        if clock is not None:
            clock.time += took
        failure = failures[min(attempt, len(failures)) - 1]
        if failure is not None:
            raise OperationFailed(failure.error, permanent=failure.permanent, timed_out=failure.timed_out)
        return f"ok on {attempt}"

    return call, seen


def test_presets_have_the_spec_numbers() -> None:
    default, aggressive, none = preset("default"), preset("aggressive"), preset("none")
    assert (default.max_attempts, default.initial_backoff, default.backoff_multiplier, default.max_backoff) == (
        3, 5.0, 2.0, 30.0)
    assert default.jitter and default.retry_on_timeout
    assert default.retryable_errors == {
        T.BUILD_ERROR_TYPE_AGENT_TIMEOUT, T.BUILD_ERROR_TYPE_SYSTEM_ERROR, T.BUILD_ERROR_TYPE_GITHUB_ERROR,
        T.BUILD_ERROR_TYPE_AGENT_API_ERROR}
    assert (aggressive.max_attempts, aggressive.initial_backoff, aggressive.backoff_multiplier,
            aggressive.max_backoff) == (6, 1.0, 1.5, 60.0)
    assert aggressive.retryable_errors == default.retryable_errors | {
        T.BUILD_ERROR_TYPE_AGENT_CRASH, T.BUILD_ERROR_TYPE_WORKSPACE_ERROR}
    assert none.max_attempts == 1


def test_delay_formula_without_and_with_jitter() -> None:
    settings = RetrySettings(10, 5.0, 2.0, 30.0, False, frozenset(), True)
    assert [settings.delay(k) for k in range(1, 6)] == [5.0, 10.0, 20.0, 30.0, 30.0]
    jittered = RetrySettings(10, 5.0, 2.0, 30.0, True, frozenset(), True)
    assert jittered.delay(1, 0.0) == 5.0
    assert jittered.delay(1, 1.0) == pytest.approx(6.25)  # 25% more at most
    assert jittered.delay(2, 0.5) == pytest.approx(11.25)
    assert jittered.delay(3, 1.0) == 25.0 == min(20 * 1.25, 30)
    assert jittered.delay(4, 1.0) == 30.0  # never above max_backoff


def test_resolve_policy_fills_the_preset_and_keeps_explicit_fields() -> None:
    resolved = resolve_policy(common_pb2.RetryPolicy())
    assert resolved.preset == "default" and resolved.max_attempts == 3
    assert resolved.initial_backoff_seconds == 5.0 and resolved.jitter is True
    explicit = common_pb2.RetryPolicy(preset="aggressive", max_attempts=2, jitter=False,
                                      retryable_errors=[T.BUILD_ERROR_TYPE_GITHUB_ERROR])
    resolved = resolve_policy(explicit)
    assert (resolved.max_attempts, resolved.initial_backoff_seconds, resolved.backoff_multiplier) == (2, 1.0, 1.5)
    assert resolved.jitter is False
    assert list(resolved.retryable_errors) == [T.BUILD_ERROR_TYPE_GITHUB_ERROR]
    assert resolve_policy(common_pb2.RetryPolicy(preset="none")).max_attempts == 1
    settings = settings_from_policy(common_pb2.RetryPolicy(preset="none", max_attempts=4))
    assert settings.max_attempts == 4 and settings.initial_backoff == 5.0


async def test_agent_timeout_then_success_records_both_attempts_with_the_policy_delay() -> None:
    clock = FakeClock()
    recorded: list[common_pb2.RetryAttempt] = []
    executor = RetryExecutor(preset("default"), clock=clock, random=lambda: 0.4, on_attempt=recorded.append)
    call, seen = failing(
        Failure(error(T.BUILD_ERROR_TYPE_AGENT_TIMEOUT, "Agent timed out after 1s"), timed_out=True),
        None, clock=clock, took=1.5,
    )
    result = await executor.run("agent", call)
    assert result.succeeded and result.value == "ok on 2" and seen == [1, 2]
    assert clock.sleeps == [pytest.approx(5.0 * 1.1)]  # 5 s + 40% of the 25% jitter
    first, second = result.attempts
    assert recorded == result.attempts
    assert (first.attempt, first.success, first.will_retry, first.next_retry_ms) == (1, False, True, 5500)
    assert first.error_type == T.BUILD_ERROR_TYPE_AGENT_TIMEOUT and first.duration_seconds == 1.5
    assert first.operation == "agent" and first.error == "Agent timed out after 1s"
    assert (second.attempt, second.success, second.will_retry, second.next_retry_ms) == (2, True, False, 0)
    assert result.retries == 1


async def test_exhausted_attempts_say_failed_after_n_retries() -> None:
    clock = FakeClock()
    executor = RetryExecutor(preset("default"), clock=clock, random=lambda: 0.0)
    call, seen = failing(Failure(error(T.BUILD_ERROR_TYPE_GITHUB_ERROR, "GitHub server error 500")))
    result = await executor.run("create_pr", call)
    assert not result.succeeded and seen == [1, 2, 3]
    assert clock.sleeps == [5.0, 10.0]
    assert result.error is not None
    assert result.error.message == "Failed after 2 retries: GitHub server error 500"
    assert result.error.type == T.BUILD_ERROR_TYPE_GITHUB_ERROR
    assert [a.will_retry for a in result.attempts] == [True, True, False]
    assert [a.next_retry_ms for a in result.attempts] == [5000, 10000, 0]


async def test_a_failing_test_is_never_retried_under_any_preset() -> None:
    for name in PRESETS:
        clock = FakeClock()
        executor = RetryExecutor(preset(name), clock=clock)
        call, seen = failing(Failure(error(T.BUILD_ERROR_TYPE_TEST_FAILED, "Test execution failed")))
        result = await executor.run("agent", call)
        assert seen == [1] and clock.sleeps == [], name
        assert result.error is not None and result.error.message == "Test execution failed"  # no prefix


async def test_workspace_error_is_retried_under_aggressive_only() -> None:
    for name, expected_tries in (("default", 1), ("none", 1), ("aggressive", 6)):
        clock = FakeClock()
        executor = RetryExecutor(preset(name), clock=clock, random=lambda: 0.0)
        call, seen = failing(Failure(error(T.BUILD_ERROR_TYPE_WORKSPACE_ERROR)))
        await executor.run("prepare_workspace", call)
        assert len(seen) == expected_tries, name
    # aggressive: 1, 1.5, 2.25, 3.375, 5.0625 seconds
    assert clock.sleeps == pytest.approx([1.0, 1.5, 2.25, 3.375, 5.0625])


async def test_permanent_failures_and_timeouts_without_retry_on_timeout_fail_at_once() -> None:
    executor = RetryExecutor(preset("aggressive"), clock=FakeClock())
    call, seen = failing(Failure(error(T.BUILD_ERROR_TYPE_GITHUB_ERROR, "404"), permanent=True))
    result = await executor.run("create_pr", call)
    assert seen == [1] and result.error is not None and result.error.message == "404"

    no_timeouts = settings_from_policy(common_pb2.RetryPolicy(retry_on_timeout=False))
    executor = RetryExecutor(no_timeouts, clock=FakeClock())
    call, seen = failing(Failure(error(T.BUILD_ERROR_TYPE_AGENT_TIMEOUT), timed_out=True))
    await executor.run("agent", call)
    assert seen == [1]
    call, seen = failing(Failure(error(T.BUILD_ERROR_TYPE_SYSTEM_ERROR)), None)
    assert (await executor.run("agent", call)).succeeded and seen == [1, 2]


async def test_value_failures_are_classified_by_failure_of_and_keep_the_last_value() -> None:
    executor = RetryExecutor(settings_from_policy(common_pb2.RetryPolicy(preset="aggressive", max_attempts=2)),
                             clock=FakeClock())

    async def call(attempt: int) -> int:
        return attempt

    def failure_of(value: int) -> Failure | None:
        return Failure(error(T.BUILD_ERROR_TYPE_AGENT_CRASH, f"crash {value}"))

    per_call: list[common_pb2.RetryAttempt] = []
    result = await executor.run("agent", call, failure_of, on_attempt=per_call.append)
    assert result.value == 2 and len(per_call) == 2
    assert result.error is not None and result.error.message == "Failed after 1 retries: crash 2"


async def test_other_exceptions_are_bugs_and_propagate() -> None:
    executor = RetryExecutor(preset("aggressive"), clock=FakeClock())

    async def call(attempt: int) -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await executor.run("agent", call)
