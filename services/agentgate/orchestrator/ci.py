"""Waiting for a pull request's CI (docs/delivery.md, "Waiting for CI"): `verification.wait_for_ci`.

After delivery opened (or pushed again to) the pull request, the head commit's check runs
(`GET .../commits/{sha}/check-runs`) and combined commit status (`GET .../commits/{sha}/status`)
are polled until every check has finished, under the run's retry policy for failed requests
and honouring GitHub's rate-limit headers (Retry-After, X-RateLimit-Remaining/Reset). The
outcome is one more verification level, `CI`: its failed checks carry the check run's output
(title, summary, text) or the status's description, so the feedback of the next iteration
quotes them like any failed check (kind `ci`, error type CI_FAILED).

A commit on which no check and no status shows up within the grace period counts as having
no CI (the level passes, saying so); one whose checks do not finish within the timeout fails
the level.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentgate.common.config import env_int
from agentgate.orchestrator.github_client import GitHubClient, GitHubError
from agentgate.orchestrator.retry import AttemptCallback, OperationFailed, RetryExecutor
from agentgate.v1 import common_pb2

CI_LEVEL = "CI"
CI_OPERATION = "wait_for_ci"
DEFAULT_POLL_SECONDS = 15
DEFAULT_TIMEOUT_SECONDS = 1800
DEFAULT_GRACE_SECONDS = 120
#: Check-run conclusions that pass (GitHub's: success, neutral, skipped; the others fail).
PASSING_CONCLUSIONS = frozenset({"success", "neutral", "skipped"})
#: Commit-status states that fail.
FAILING_STATES = frozenset({"failure", "error"})
#: Characters of a failed check's output quoted (the feedback cuts further to fit 4 KB).
MAX_EXCERPT_CHARS = 6000


@dataclass(frozen=True)
class CiSettings:
    """How CI is polled: AGENTGATE_CI_POLL_SECONDS (15), AGENTGATE_CI_TIMEOUT_SECONDS (1800)
    and AGENTGATE_CI_GRACE_SECONDS (120, how long a commit may show no check at all)."""

    poll_seconds: float = DEFAULT_POLL_SECONDS
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    grace_seconds: float = DEFAULT_GRACE_SECONDS

    @classmethod
    def from_env(cls) -> CiSettings:
        """The settings of the orchestrator's environment."""
        return cls(
            poll_seconds=env_int("AGENTGATE_CI_POLL_SECONDS", DEFAULT_POLL_SECONDS, minimum=0),
            timeout_seconds=env_int("AGENTGATE_CI_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS, minimum=1),
            grace_seconds=env_int("AGENTGATE_CI_GRACE_SECONDS", DEFAULT_GRACE_SECONDS, minimum=0),
        )


@dataclass(frozen=True)
class CiState:
    """One look at a commit's CI."""

    pending: list[str]
    failed: list[common_pb2.CheckResult]
    passed: list[str]

    @property
    def seen(self) -> bool:
        """Whether any check or status exists yet."""
        return bool(self.pending or self.failed or self.passed)


def _excerpt(*parts: Any) -> str:
    text = "\n\n".join(str(part).strip() for part in parts if isinstance(part, str) and part.strip())
    return text if len(text) <= MAX_EXCERPT_CHARS else text[:MAX_EXCERPT_CHARS] + "\n[...]"


def _failed_check(name: str, why: str, output: str, url: str) -> common_pb2.CheckResult:
    return common_pb2.CheckResult(
        name=name,
        kind="ci",
        passed=False,
        exit_code=1,
        expected_exit=0,
        output=_excerpt(f"{name}: {why}" + (f" ({url})" if url else ""), output),
    )


def read_state(check_runs: Sequence[Mapping[str, Any]], combined: Mapping[str, Any]) -> CiState:
    """Sorts a commit's check runs and statuses into pending, failed and passed."""
    pending: list[str] = []
    failed: list[common_pb2.CheckResult] = []
    passed: list[str] = []
    for run in check_runs:
        name = str(run.get("name") or "check")
        if run.get("status") != "completed":
            pending.append(name)
        elif run.get("conclusion") in PASSING_CONCLUSIONS:
            passed.append(name)
        else:
            raw_output = run.get("output")
            output: Mapping[str, Any] = raw_output if isinstance(raw_output, Mapping) else {}
            failed.append(
                _failed_check(
                    name,
                    f"concluded {run.get('conclusion') or 'without a conclusion'}",
                    _excerpt(output.get("title"), output.get("summary"), output.get("text")),
                    str(run.get("html_url") or run.get("details_url") or ""),
                )
            )
    raw_statuses = combined.get("statuses")
    statuses: list[Any] = raw_statuses if isinstance(raw_statuses, list) else []
    for status in statuses:
        if not isinstance(status, Mapping):
            continue
        context = str(status.get("context") or "status")
        state = status.get("state")
        if state == "pending":
            pending.append(context)
        elif state in FAILING_STATES:
            failed.append(
                _failed_check(context, f"status {state}", str(status.get("description") or ""),
                              str(status.get("target_url") or ""))
            )
        else:
            passed.append(context)
    return CiState(pending, failed, passed)


def ci_level(state: CiState | None, note: str = "") -> common_pb2.LevelResult:
    """The `CI` verification level of what was seen (None: nothing seen at all)."""
    level = common_pb2.LevelResult(level=CI_LEVEL, name="pull request CI", ran=True)
    if state is None or not state.seen:
        level.passed = True
        level.skip_reason = note or "no CI check or status reported on the pull request"
        return level
    level.checks.extend(common_pb2.CheckResult(name=name, kind="ci", passed=True) for name in state.passed)
    level.checks.extend(state.failed)
    for name in state.pending:
        level.checks.append(
            common_pb2.CheckResult(name=name, kind="ci", passed=False, exit_code=-1, output=f"{name}: {note}")
        )
    level.passed = not state.failed and not state.pending
    return level


class CiWaiter:
    """Polls one commit's CI until it has finished, failed or timed out."""

    def __init__(
        self,
        client: GitHubClient,
        retry: RetryExecutor,
        settings: CiSettings,
        on_attempt: AttemptCallback | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._client = client
        self._retry = retry
        self._settings = settings
        self._on_attempt = on_attempt
        self._sleep = sleep
        self._clock = clock

    async def _look(self, owner: str, repo: str, sha: str) -> CiState:
        async def call(attempt: int) -> CiState:
            try:
                runs = await self._client.list_check_runs(owner, repo, sha)
                combined = await self._client.get_combined_status(owner, repo, sha)
            except GitHubError as exc:
                error = common_pb2.BuildError(
                    type=common_pb2.BUILD_ERROR_TYPE_GITHUB_ERROR, message=exc.message,
                    context={"operation": CI_OPERATION},
                )
                raise OperationFailed(
                    error, permanent=not exc.retryable, timed_out=exc.timed_out, retry_after=exc.retry_after
                ) from None
            return read_state(runs, combined)

        result = await self._retry.run(CI_OPERATION, call, on_attempt=self._on_attempt)
        if result.value is None or result.error is not None:
            raise OperationFailed(result.error or common_pb2.BuildError(message="no CI state"), permanent=True)
        return result.value

    async def wait(self, owner: str, repo: str, sha: str) -> common_pb2.LevelResult:
        """The `CI` level of commit `sha` once its checks have finished (or the timeout or
        grace period ran out). Raises OperationFailed when GitHub cannot be asked."""
        started = self._clock()
        while True:
            state = await self._look(owner, repo, sha)
            waited = self._clock() - started
            if state.seen and not state.pending:
                return ci_level(state)
            if not state.seen and waited >= self._settings.grace_seconds:
                return ci_level(None, f"no CI check or status showed up within {self._settings.grace_seconds:g}s")
            if waited >= self._settings.timeout_seconds:
                return ci_level(state, f"still running after {self._settings.timeout_seconds:g}s (the CI timeout)")
            # The quota may be spent: then wait for its reset rather than poll into 403s.
            pause = max(self._settings.poll_seconds, self._client.wait_before_next)
            await self._sleep(min(pause, max(self._settings.timeout_seconds - waited, 0.0)) or 0.01)
