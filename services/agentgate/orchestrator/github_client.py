"""A small client of GitHub's REST API (httpx, asyncio): what delivery needs.

Base URL `AGENTGATE_GITHUB_API_URL` (default https://api.github.com; GitHub Enterprise is
`https://HOST/api/v3`), token `AGENTGATE_GITHUB_TOKEN`. The token travels only in the
`Authorization` header of requests to the base URL; it is never put in a message, a URL or
a log line, and redirects are not followed (they could lead the header elsewhere).

Failures are `GitHubError`s: rate limits (429, 403 with no requests left), server errors
(5xx) and network failures are retryable; 401, 403, 404 and 422 are not, and the message
says why.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from agentgate.common.github import (
    API_URL_ENV,
    DEFAULT_API_URL,
    github_git_url,
    github_token,
)

DEFAULT_TIMEOUT_SECONDS = 30.0
API_VERSION = "2022-11-28"

#: A PR title longer than this is cut (GitHub allows 256 characters).
MAX_TITLE_CHARS = 240
#: GitHub refuses bodies over 65536 characters.
MAX_BODY_CHARS = 60_000
#: A rate-limit wait longer than this is not waited out in one go (the caller's own
#: timeout decides what happens then).
MAX_RATE_LIMIT_WAIT_SECONDS = 3600.0
#: Check runs asked for per page (GitHub's maximum).
CHECK_RUNS_PER_PAGE = 100


@dataclass(frozen=True)
class GitHubConfig:
    """Where GitHub is and how to authenticate; from the environment."""

    api_url: str = DEFAULT_API_URL
    git_url: str = "https://github.com"
    token: str = field(default="", repr=False)
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GitHubConfig:
        """AGENTGATE_GITHUB_API_URL, AGENTGATE_GITHUB_GIT_URL and AGENTGATE_GITHUB_TOKEN."""
        env = os.environ if env is None else env
        return cls(
            api_url=(env.get(API_URL_ENV) or DEFAULT_API_URL).rstrip("/"),
            git_url=github_git_url(env),
            token=github_token(env),
        )


class GitHubError(Exception):
    """A GitHub request failed; `retryable` says whether asking again may help, and
    `retry_after` how many seconds GitHub asked to wait first (0 = it did not say)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        retryable: bool = False,
        timed_out: bool = False,
        retry_after: float = 0.0,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.timed_out = timed_out
        self.retry_after = retry_after


def rate_limit_wait(headers: Mapping[str, str], now: float | None = None) -> float:
    """Seconds GitHub's headers ask a client to wait before its next request: `Retry-After`
    (seconds), else, when `X-RateLimit-Remaining` is 0, until `X-RateLimit-Reset` (epoch
    seconds); 0 when they ask for nothing. Capped at MAX_RATE_LIMIT_WAIT_SECONDS."""
    retry_after = headers.get("retry-after", "")
    if retry_after.strip().isdigit():
        return min(float(retry_after), MAX_RATE_LIMIT_WAIT_SECONDS)
    reset = headers.get("x-ratelimit-reset", "")
    if headers.get("x-ratelimit-remaining") == "0" and reset.strip().isdigit():
        now = time.time() if now is None else now
        return min(max(float(reset) - now, 0.0) + 1.0, MAX_RATE_LIMIT_WAIT_SECONDS)
    return 0.0


@dataclass(frozen=True)
class PullRequest:
    """A pull request as delivery needs it."""

    number: int
    url: str
    draft: bool
    #: It was open already (found, not created).
    existing: bool = False


def _github_message(response: httpx.Response) -> str:
    """GitHub's own explanation from an error body ('' when there is none)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200]
    if not isinstance(body, dict):
        return ""
    message = str(body.get("message") or "")
    details = [
        str(item.get("message") or item.get("code") or "")
        for item in body.get("errors") or []
        if isinstance(item, dict)
    ]
    details = [d for d in details if d]
    if details:
        message = f"{message} ({'; '.join(details)})" if message else "; ".join(details)
    return message[:500]


def error_for(response: httpx.Response, what: str) -> GitHubError:
    """The GitHubError of a non-2xx answer to the request described by `what`."""
    status = response.status_code
    said = _github_message(response)
    suffix = f": {said}" if said else ""
    remaining = response.headers.get("x-ratelimit-remaining")
    if status == 429 or (status == 403 and (remaining == "0" or "rate limit" in said.lower())):
        wait = rate_limit_wait(response.headers)
        hint = f" (asked to wait {wait:.0f}s)" if wait else ""
        return GitHubError(
            f"GitHub rate limit hit ({status}) on {what}{hint}{suffix}", status=status, retryable=True, retry_after=wait
        )
    if status >= 500:
        return GitHubError(f"GitHub server error {status} on {what}{suffix}", status=status, retryable=True)
    reasons = {
        401: "the token was refused (401); check AGENTGATE_GITHUB_TOKEN",
        403: "the token is not allowed to do this (403); it needs write access to the repository's contents "
        "and pull requests",
        404: "not found (404): the repository does not exist or the token cannot see it",
        422: "GitHub rejected the request (422)",
    }
    reason = reasons.get(status, f"GitHub answered {status}")
    return GitHubError(f"{what}: {reason}{suffix}", status=status, retryable=False)


class GitHubClient:
    """Calls to the REST API with one connection pool; use as an async context manager."""

    def __init__(self, config: GitHubConfig, transport: httpx.AsyncBaseTransport | None = None):
        self.config = config
        headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": "agentgate",
        }
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        self._http = httpx.AsyncClient(
            base_url=config.api_url,
            headers=headers,
            timeout=config.timeout_seconds,
            follow_redirects=False,
            transport=transport,
        )
        #: Seconds the last answer's rate-limit headers ask to wait before the next request.
        self.wait_before_next = 0.0

    async def __aenter__(self) -> GitHubClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def _request(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise GitHubError(
                f"{what}: no answer from {self.config.api_url} within {self.config.timeout_seconds:g}s",
                retryable=True,
                timed_out=True,
            ) from None
        except httpx.HTTPError as exc:
            # The exception names the URL, never the headers.
            raise GitHubError(
                f"{what}: cannot reach {self.config.api_url}: {type(exc).__name__}: {exc}", retryable=True
            ) from None
        # Even a good answer may say the quota is spent: the next request waits for it.
        self.wait_before_next = rate_limit_wait(response.headers)
        if response.status_code >= 300:
            raise error_for(response, what)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise GitHubError(f"{what}: GitHub answered {response.status_code} with a body that is not JSON") from None

    async def get_repository(self, owner: str, repo: str) -> dict[str, Any]:
        """GET /repos/{owner}/{repo}: the repository (default_branch, html_url, ...)."""
        data = await self._request("GET", f"/repos/{owner}/{repo}", f"GET /repos/{owner}/{repo}")
        if not isinstance(data, dict) or not data.get("default_branch"):
            raise GitHubError(f"GET /repos/{owner}/{repo}: the answer has no default_branch")
        return data

    async def create_pull_request(
        self, owner: str, repo: str, *, head: str, base: str, title: str, body: str, draft: bool = False
    ) -> PullRequest:
        """POST /repos/{owner}/{repo}/pulls."""
        data = await self._request(
            "POST",
            f"/repos/{owner}/{repo}/pulls",
            f"POST /repos/{owner}/{repo}/pulls",
            json={"title": title[:MAX_TITLE_CHARS], "head": head, "base": base, "body": body[:MAX_BODY_CHARS],
                  "draft": draft},
        )
        return _pull_request(data, existing=False)

    async def find_pull_request(self, owner: str, repo: str, head: str) -> PullRequest | None:
        """The open pull request from branch `head` of the same repository, if any."""
        data = await self._request(
            "GET",
            f"/repos/{owner}/{repo}/pulls",
            f"GET /repos/{owner}/{repo}/pulls",
            params={"head": f"{owner}:{head}", "state": "open"},
        )
        if isinstance(data, list) and data:
            return _pull_request(data[0], existing=True)
        return None

    async def get_branch(self, owner: str, repo: str, branch: str) -> bool:
        """Whether `branch` is a branch of the repository (GET .../branches/{branch})."""
        try:
            await self._request(
                "GET", f"/repos/{owner}/{repo}/branches/{quote(branch, safe='')}", f"GET /repos/{owner}/{repo}/branches"
            )
        except GitHubError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def list_check_runs(self, owner: str, repo: str, sha: str) -> list[dict[str, Any]]:
        """GET /repos/{owner}/{repo}/commits/{sha}/check-runs, every page: the latest check
        run of each check on the commit."""
        runs: list[dict[str, Any]] = []
        page = 1
        while True:
            data = await self._request(
                "GET",
                f"/repos/{owner}/{repo}/commits/{sha}/check-runs",
                f"GET /repos/{owner}/{repo}/commits/{sha}/check-runs",
                params={"per_page": CHECK_RUNS_PER_PAGE, "page": page},
            )
            found = data.get("check_runs") if isinstance(data, dict) else None
            if not isinstance(found, list):
                raise GitHubError(f"GET /repos/{owner}/{repo}/commits/{sha}/check-runs: the answer has no check_runs")
            runs += [run for run in found if isinstance(run, dict)]
            total = data.get("total_count")
            if not found or not isinstance(total, int) or len(runs) >= total:
                return runs
            page += 1

    async def get_combined_status(self, owner: str, repo: str, sha: str) -> dict[str, Any]:
        """GET /repos/{owner}/{repo}/commits/{sha}/status: the commit statuses (`state`,
        `statuses`, `total_count`)."""
        data = await self._request(
            "GET", f"/repos/{owner}/{repo}/commits/{sha}/status", f"GET /repos/{owner}/{repo}/commits/{sha}/status"
        )
        if not isinstance(data, dict):
            raise GitHubError(f"GET /repos/{owner}/{repo}/commits/{sha}/status: the answer is not an object")
        return data

    async def add_comment(self, owner: str, repo: str, number: int, body: str) -> str:
        """POST /repos/{owner}/{repo}/issues/{number}/comments; returns the comment's URL."""
        data = await self._request(
            "POST",
            f"/repos/{owner}/{repo}/issues/{number}/comments",
            f"POST /repos/{owner}/{repo}/issues/{number}/comments",
            json={"body": body[:MAX_BODY_CHARS]},
        )
        return str((data or {}).get("html_url") or "")


def _pull_request(data: Any, existing: bool) -> PullRequest:
    if not isinstance(data, dict) or "number" not in data:
        raise GitHubError("GitHub's answer about the pull request has no number")
    return PullRequest(
        number=int(data["number"]),
        url=str(data.get("html_url") or data.get("url") or ""),
        draft=bool(data.get("draft")),
        existing=existing,
    )
