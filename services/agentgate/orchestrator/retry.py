"""Retry of transient failures (docs/harness.md): one policy type, one executor; the
presets and bounds of a policy are `agentgate.harness.retry`'s.

The executor wraps agent execution, workspace preparation and every GitHub operation. It
records each try as a `RetryAttempt`, waits between tries through an injectable clock (so
tests of backoff take no real time) and draws jitter from an injectable random source.

What is retried is decided by the failure's `BuildErrorType` against the policy's
`retryable_errors`; a failure can also say it is permanent (a 404 from GitHub will not
turn into a 201 by asking again) or that it was a timeout (retried only when the policy's
`retry_on_timeout` allows). A failing test is never retried: that is the loop's job.
"""

from __future__ import annotations

import asyncio
import random as _random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from agentgate.harness.retry import resolve_policy
from agentgate.v1 import common_pb2

V = TypeVar("V")

#: Jitter adds up to this fraction of the delay.
JITTER_FRACTION = 0.25


@dataclass(frozen=True)
class RetrySettings:
    """A resolved retry policy: every number known."""

    max_attempts: int
    initial_backoff: float
    backoff_multiplier: float
    max_backoff: float
    jitter: bool
    retryable_errors: frozenset[int]
    retry_on_timeout: bool

    def delay(self, retry: int, random_value: float = 0.0) -> float:
        """Seconds to wait before retry `retry` (1 = the second attempt):
        `min(initial × multiplier^(retry-1), max)`, plus up to 25% with jitter, never above max."""
        base = min(self.initial_backoff * self.backoff_multiplier ** (retry - 1), self.max_backoff)
        if self.jitter:
            base = min(base * (1 + JITTER_FRACTION * random_value), self.max_backoff)
        return max(base, 0.0)

    def allows(self, failure: Failure) -> bool:
        """Whether this failure may be tried again (attempts left aside)."""
        if failure.permanent or failure.error.type not in self.retryable_errors:
            return False
        return not (failure.timed_out and not self.retry_on_timeout)


def settings_from_policy(policy: common_pb2.RetryPolicy) -> RetrySettings:
    """The executor's settings for a (possibly partial) policy, its preset filling what it
    leaves unset."""
    resolved = resolve_policy(policy)
    return RetrySettings(
        max_attempts=max(resolved.max_attempts, 1),
        initial_backoff=max(resolved.initial_backoff_seconds, 0.0),
        backoff_multiplier=max(resolved.backoff_multiplier, 1.0),
        max_backoff=max(resolved.max_backoff_seconds, 0.0),
        jitter=resolved.jitter,
        retryable_errors=frozenset(resolved.retryable_errors),
        retry_on_timeout=resolved.retry_on_timeout,
    )


@dataclass(frozen=True)
class Failure:
    """One failed try: the structured error, and what it says about trying again."""

    error: common_pb2.BuildError
    #: The same request will fail again (bad credentials, not found, bad input).
    permanent: bool = False
    #: The try ran out of time (retried only when the policy's retry_on_timeout allows).
    timed_out: bool = False
    #: Seconds the other side asked us to wait before the next try (GitHub's Retry-After
    #: or rate-limit reset): the backoff is at least this long.
    retry_after: float = 0.0


class OperationFailed(Exception):
    """Raised by a retried call to report a failed try."""

    def __init__(
        self,
        error: common_pb2.BuildError,
        *,
        permanent: bool = False,
        timed_out: bool = False,
        retry_after: float = 0.0,
    ):
        super().__init__(error.message)
        self.failure = Failure(error, permanent=permanent, timed_out=timed_out, retry_after=retry_after)


class Clock(Protocol):
    """Time as the executor sees it."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Waits `seconds`."""
        ...


class SystemClock:
    """The real monotonic clock and asyncio.sleep."""

    def now(self) -> float:
        """time.monotonic()."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """asyncio.sleep (cancellable)."""
        await asyncio.sleep(seconds)


@dataclass
class RetryResult(Generic[V]):
    """What a retried operation came to."""

    #: The last try's value (None when the last try raised).
    value: V | None
    attempts: list[common_pb2.RetryAttempt] = field(default_factory=list)
    #: The final failure, or None on success. After more than one try its message reads
    #: `Failed after N retries: ...`.
    error: common_pb2.BuildError | None = None

    @property
    def succeeded(self) -> bool:
        """Whether the last try succeeded."""
        return self.error is None

    @property
    def retries(self) -> int:
        """Tries after the first."""
        return max(len(self.attempts) - 1, 0)


def retries_message(retries: int, message: str) -> str:
    """The final error text after `retries` retries (docs/delivery.md)."""
    return f"Failed after {retries} retries: {message}" if retries else message


AttemptCallback = Callable[[common_pb2.RetryAttempt], None]


class RetryExecutor:
    """Runs an operation up to `max_attempts` times per a policy, recording every try."""

    def __init__(
        self,
        settings: RetrySettings,
        *,
        clock: Clock | None = None,
        random: Callable[[], float] | None = None,
        on_attempt: AttemptCallback | None = None,
    ):
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.random = random or _random.random
        self.on_attempt = on_attempt

    async def run(
        self,
        operation: str,
        call: Callable[[int], Awaitable[V]],
        failure_of: Callable[[V], Failure | None] | None = None,
        on_attempt: AttemptCallback | None = None,
    ) -> RetryResult[V]:
        """Calls `call(attempt)` (attempt from 1) until it succeeds, fails for good, or the
        attempts run out.

        A try fails when `call` raises OperationFailed, or when `failure_of(value)` returns a
        Failure (for operations whose failure is a value, like an agent's result). Any other
        exception is a bug and propagates at once. Never raises for a failed operation:
        the result carries the final error.
        """
        result: RetryResult[V] = RetryResult(value=None)
        attempt = 0
        while True:
            attempt += 1
            started = self.clock.now()
            value: V | None = None
            try:
                value = await call(attempt)
                failure = failure_of(value) if failure_of is not None else None
            except OperationFailed as exc:
                failure = exc.failure
            duration = self.clock.now() - started
            will_retry = (
                failure is not None and attempt < self.settings.max_attempts and self.settings.allows(failure)
            )
            delay = 0.0
            if will_retry:
                assert failure is not None
                delay = max(self.settings.delay(attempt, self.random()), failure.retry_after)
            record = common_pb2.RetryAttempt(
                operation=operation,
                attempt=attempt,
                success=failure is None,
                duration_seconds=duration,
                will_retry=will_retry,
                next_retry_ms=round(delay * 1000),
            )
            if failure is not None:
                record.error_type = failure.error.type
                record.error = failure.error.message
            result.attempts.append(record)
            result.value = value
            for callback in (self.on_attempt, on_attempt):
                if callback is not None:
                    callback(record)
            if failure is None:
                return result
            if not will_retry:
                final = common_pb2.BuildError()
                final.CopyFrom(failure.error)
                final.message = retries_message(attempt - 1, failure.error.message)
                final.context["attempts"] = str(attempt)
                result.error = final
                return result
            await self.clock.sleep(delay)
