"""The GitHub REST client against a fake GitHub that is a real HTTP server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agentgate.orchestrator.github_client import GitHubClient, GitHubConfig, GitHubError

from ..fake_github import FakeGitHubApi

TOKEN = "ghp_unitTestToken0123456789abcdefABCDEF"


@pytest.fixture
def api() -> Iterator[FakeGitHubApi]:
    fake = FakeGitHubApi(token=TOKEN).start()
    yield fake
    fake.stop()


def client_for(api: FakeGitHubApi, token: str = TOKEN) -> GitHubClient:
    return GitHubClient(GitHubConfig(api_url=api.url, token=token, timeout_seconds=5))


def test_config_from_env() -> None:
    config = GitHubConfig.from_env({"AGENTGATE_GITHUB_API_URL": "https://ghe.example/api/v3/",
                                    "AGENTGATE_GITHUB_TOKEN": " secret-value ",
                                    "AGENTGATE_GITHUB_GIT_URL": "https://ghe.example/"})
    assert config.api_url == "https://ghe.example/api/v3"
    assert config.git_url == "https://ghe.example"
    assert config.token == "secret-value"
    assert "secret-value" not in repr(config)
    default = GitHubConfig.from_env({})
    assert (default.api_url, default.git_url, default.token) == ("https://api.github.com", "https://github.com", "")


async def test_create_pull_request_speaks_the_rest_api(api: FakeGitHubApi) -> None:
    async with client_for(api) as client:
        repo = await client.get_repository("octo", "proj")
        assert repo["default_branch"] == "main"
        pull = await client.create_pull_request(
            "octo", "proj", head="agentgate/run-1", base="main", title="[AgentGate] Fix", body="body", draft=True
        )
        assert (pull.number, pull.draft, pull.existing) == (1, True, False)
        assert pull.url == "https://github.example/octo/proj/pull/1"
        found = await client.find_pull_request("octo", "proj", "agentgate/run-1")
        assert found is not None and found.existing and found.number == 1
        assert await client.find_pull_request("octo", "proj", "other") is None
        url = await client.add_comment("octo", "proj", 1, "hello")
        assert url.endswith("#issuecomment-1")
    post = next(r for r in api.requests if r.method == "POST" and r.path.endswith("/pulls"))
    assert post.headers["Authorization"] == f"Bearer {TOKEN}"
    assert post.headers["Accept"] == "application/vnd.github+json"
    assert post.body == {"title": "[AgentGate] Fix", "head": "agentgate/run-1", "base": "main", "body": "body",
                         "draft": True}
    assert api.comments[0]["issue"] == 1 and api.comments[0]["body"] == "hello"


@pytest.mark.parametrize(
    ("status", "retryable", "says"),
    [
        (500, True, "GitHub server error 500"),
        (502, True, "GitHub server error 502"),
        (429, True, "rate limit"),
        (404, False, "does not exist or the token cannot see it"),
        (403, False, "not allowed"),
        (422, False, "rejected the request (422)"),
    ],
)
async def test_errors_are_classified(api: FakeGitHubApi, status: int, retryable: bool, says: str) -> None:
    api.fail("POST", "/pulls", [status])
    async with client_for(api) as client:
        with pytest.raises(GitHubError) as caught:
            await client.create_pull_request("octo", "proj", head="b", base="main", title="t", body="")
    assert caught.value.status == status
    assert caught.value.retryable is retryable
    assert says in caught.value.message
    assert "POST /repos/octo/proj/pulls" in caught.value.message
    assert TOKEN not in caught.value.message


async def test_bad_token_is_401_and_not_retryable(api: FakeGitHubApi) -> None:
    async with client_for(api, token="wrong-token-value") as client:
        with pytest.raises(GitHubError) as caught:
            await client.get_repository("octo", "proj")
    assert caught.value.status == 401 and not caught.value.retryable
    assert "token was refused" in caught.value.message and "Bad credentials" in caught.value.message
    assert "wrong-token-value" not in caught.value.message


async def test_403_rate_limit_is_retryable(api: FakeGitHubApi) -> None:
    class RateLimited(FakeGitHubApi):
        def answer(self, request):  # type: ignore[no-untyped-def]
            return 403, {"message": "API rate limit exceeded for user"}, {"X-RateLimit-Remaining": "0"}

    fake = RateLimited().start()
    try:
        async with GitHubClient(GitHubConfig(api_url=fake.url, token=TOKEN)) as client:
            with pytest.raises(GitHubError) as caught:
                await client.get_repository("octo", "proj")
    finally:
        fake.stop()
    assert caught.value.retryable and "rate limit" in caught.value.message


async def test_unreachable_github_is_retryable() -> None:
    async with GitHubClient(GitHubConfig(api_url="http://127.0.0.1:9", token=TOKEN, timeout_seconds=2)) as client:
        with pytest.raises(GitHubError) as caught:
            await client.get_repository("octo", "proj")
    assert caught.value.retryable and "cannot reach http://127.0.0.1:9" in caught.value.message


async def test_a_repository_without_default_branch_is_an_error(api: FakeGitHubApi) -> None:
    api.default_branch = ""
    async with client_for(api) as client:
        with pytest.raises(GitHubError, match="no default_branch"):
            await client.get_repository("octo", "proj")
