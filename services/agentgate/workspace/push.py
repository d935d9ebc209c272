"""Pushing a workspace's branch to its git remote (any URL git can push to).

The remote is the one the service resolved when it made the workspace: the repository it
was cloned from (git_url, github_repo), or the `origin` URL of the user's local repository,
recorded in the workspace's trusted git directory (outside the agent's reach, see
docs/security.md, "Git"). The push names that URL explicitly, so no remote setting the agent
could write (`pushurl`, `receivepack`, `insteadOf` in its own `.git/config`) is consulted,
and the reported URL is the one pushed to. The user's working tree is never touched. A
GitHub remote gets the token as a header through this one process's environment (see
agentgate.common.github).

A failure that asking again may cure (network, server error, timeout) is UNAVAILABLE; one
that it will not (no remote, refused credentials, rejected update) is FAILED_PRECONDITION,
so the orchestrator's retry policy can tell them apart.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

from agentgate.common.branches import branch_problem
from agentgate.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, ServiceError, Unavailable
from agentgate.common.github import git_auth_env, strip_credentials
from agentgate.workspace import git as gitops
from agentgate.workspace.workspaces import WorkspaceManager

log = logging.getLogger(__name__)

DEFAULT_REMOTE = "origin"
PUSH_TIMEOUT_SECONDS = 300.0
REMOTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

#: git's words for failures of the network or the server rather than of the request.
_TRANSIENT = re.compile(
    r"could not resolve host|connection refused|connection timed out|connection reset|failed to connect"
    r"|operation timed out|timed out after|the remote end hung up unexpectedly|early eof|rpc failed"
    r"|returned error: 5\d\d|http 5\d\d|temporary failure|network is unreachable|could not read from remote",
    re.IGNORECASE,
)
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_AUTH = re.compile(r"returned error: 40[13]|authentication failed|permission denied|could not read username", re.I)


@dataclass(frozen=True)
class PushResult:
    """What was pushed where."""

    branch: str
    commit: str
    #: The remote's URL with any credentials removed.
    remote_url: str


def classify_push_error(exc: gitops.GitError, remote_url: str) -> ServiceError:
    """The service error of a failed push: transient → Unavailable, else FailedPrecondition."""
    detail = (exc.stderr.strip() or exc.stdout.strip() or f"exit code {exc.returncode}").splitlines()
    # A remote configured as https://user:secret@host keeps its secret out of the message.
    text = _CREDENTIALS.sub(r"\1", " ".join(line.strip() for line in detail[-6:]))
    message = f"git push to {remote_url} failed: {text}"
    if _AUTH.search(text):
        return FailedPrecondition(message + " (the remote refused the credentials; for GitHub set "
                                  "AGENTGATE_GITHUB_TOKEN to a token with write access)")
    if _TRANSIENT.search(text):
        return Unavailable(message)
    return FailedPrecondition(message)


async def push_branch(manager: WorkspaceManager, workspace_id: str, branch: str = "", remote: str = "") -> PushResult:
    """Pushes `branch` (default: the workspace's run branch) of a workspace to `remote`
    (default origin), creating or fast-forwarding the branch of the same name there."""
    violations: list[FieldViolation] = []
    if remote and not REMOTE_NAME.match(remote):
        violations.append(FieldViolation("remote", f"{remote[:80]!r} is not a git remote name"))
    if branch and (problem := branch_problem(branch)):
        violations.append(FieldViolation("branch", f"{branch[:80]!r} {problem}"))
    if violations:
        raise InvalidArgument(violations)
    record = await manager.get(workspace_id)
    remote = remote or DEFAULT_REMOTE
    branch = branch or record.branch
    async with manager.lock(workspace_id):
        if not await asyncio.to_thread(record.path.is_dir):
            raise FailedPrecondition(f"the folder of workspace {record.id} is gone: {record.path}")
        git_dir = record.git_dir
        found = await gitops.git("config", "--get", f"remote.{remote}.url", cwd=git_dir, git_dir=git_dir, check=False)
        url = found.stdout.strip()
        if found.returncode != 0 or not url:
            raise FailedPrecondition(
                f"workspace {record.id} has no git remote {remote!r}: its source has nowhere to push to "
                "(use a git_url or github_repo source, or a local repository that has an origin remote)"
            )
        commit = await gitops.resolve_commit(git_dir, f"refs/heads/{branch}")
        if commit is None:
            raise FailedPrecondition(f"workspace {record.id} has no branch {branch!r}")
        shown = strip_credentials(url)
        try:
            # `--` then the URL: a URL, never a remote name, so nothing configured for a
            # remote applies.
            await gitops.git(
                "push", "--porcelain", "--no-verify", "--", url, f"refs/heads/{branch}:refs/heads/{branch}",
                cwd=git_dir, git_dir=git_dir, env=git_auth_env(url), timeout=PUSH_TIMEOUT_SECONDS, user_config=True,
            )
        except gitops.GitError as exc:
            raise classify_push_error(exc, shown) from None
    log.info("pushed %s of workspace %s (%s) to %s", branch, record.id, commit[:12], shown)
    return PushResult(branch=branch, commit=commit, remote_url=shown)
