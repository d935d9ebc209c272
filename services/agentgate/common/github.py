"""GitHub settings and names shared by the services that talk to GitHub: the orchestrator
(REST API) and the workspace service (git over HTTPS).

The token is read from the environment when it is needed and handed only to the request
that uses it; nothing here logs or stores it.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

API_URL_ENV = "AGENTGATE_GITHUB_API_URL"
TOKEN_ENV = "AGENTGATE_GITHUB_TOKEN"
GIT_URL_ENV = "AGENTGATE_GITHUB_GIT_URL"
DEFAULT_API_URL = "https://api.github.com"
DEFAULT_GIT_URL = "https://github.com"

_OWNER = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})"
_NAME = r"[A-Za-z0-9._-]{1,100}"
REPO_PATTERN = re.compile(rf"^{_OWNER}/{_NAME}$")
#: git@github.com:owner/name(.git) and ssh://git@github.com/owner/name(.git)
_SSH_REMOTE = re.compile(rf"^(?:ssh://)?git@github\.com[:/]({_OWNER})/({_NAME}?)/?$")


def split_repo(full_name: str) -> tuple[str, str]:
    """'owner/name' → ('owner', 'name'), a trailing '.git' dropped; ValueError otherwise."""
    if not REPO_PATTERN.match(full_name):
        raise ValueError(f"{full_name!r} is not owner/name")
    owner, name = full_name.split("/")
    name = name.removesuffix(".git")
    if name in ("", ".", ".."):
        raise ValueError(f"{full_name!r} is not owner/name")
    return owner, name


def github_git_url(env: Mapping[str, str] | None = None) -> str:
    """The base URL repositories are cloned from (AGENTGATE_GITHUB_GIT_URL, default https://github.com)."""
    env = os.environ if env is None else env
    return (env.get(GIT_URL_ENV) or DEFAULT_GIT_URL).rstrip("/")


def github_token(env: Mapping[str, str] | None = None) -> str:
    """AGENTGATE_GITHUB_TOKEN ('' when unset)."""
    env = os.environ if env is None else env
    return (env.get(TOKEN_ENV) or "").strip()


def clone_url(full_name: str, env: Mapping[str, str] | None = None) -> str:
    """`{AGENTGATE_GITHUB_GIT_URL}/{owner}/{name}.git` — without credentials."""
    owner, name = split_repo(full_name)
    return f"{github_git_url(env)}/{owner}/{name}.git"


def strip_credentials(url: str) -> str:
    """The URL without a user name or password (`https://user:tok@host/x` → `https://host/x`)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def repo_of_remote(url: str, env: Mapping[str, str] | None = None) -> str | None:
    """'owner/name' when `url` is a GitHub repository (on AGENTGATE_GITHUB_GIT_URL or
    github.com), else None."""
    url = strip_credentials(url.strip())
    ssh = _SSH_REMOTE.match(url)
    if ssh:
        candidate = f"{ssh.group(1)}/{ssh.group(2)}"
    else:
        rest = None
        for base in (github_git_url(env), DEFAULT_GIT_URL):
            if url.startswith(base + "/"):
                rest = url[len(base) + 1 :]
                break
        if rest is None:
            return None
        candidate = rest.rstrip("/")
    try:
        owner, name = split_repo(candidate)
    except ValueError:
        return None
    return f"{owner}/{name}"


def git_auth_env(url: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a git command that talks to `url`: when `url` is on the GitHub git
    host and a token is set, an `Authorization` header scoped to that host, passed through
    GIT_CONFIG_COUNT/KEY/VALUE so it never reaches a command line, a config file or a log.
    Credential helpers are switched off so nothing stores the token either.
    """
    token = github_token(env)
    base = github_git_url(env)
    if not token or not strip_credentials(url).startswith(base + "/"):
        return {}
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return {
        "GIT_CONFIG_COUNT": "2",
        # Scoped to the GitHub git URL: a redirect or another remote never gets the header.
        "GIT_CONFIG_KEY_0": f"http.{base}/.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        "GIT_CONFIG_KEY_1": "credential.helper",
        "GIT_CONFIG_VALUE_1": "",
    }


def secret_forms(token: str) -> list[str]:
    """Every form in which a token could leak: itself and the Basic header value made of it."""
    if not token:
        return []
    return [token, base64.b64encode(f"x-access-token:{token}".encode()).decode()]
