"""Delivery of a successful run (docs/delivery.md): per `git_ops.mode`, nothing (`local`), push the
run's branch to the workspace's remote (`push`), or push and open a pull request (`pr`).

`github_mode` says what a failed operation does: `fail_fast` fails the run (FAILED_GITHUB,
`Push failed: ...` / `PR creation failed: ...`), `best_effort` logs and records it and the
run still succeeds, `disabled` attempts nothing and records each operation as skipped.
Every operation (the push through the workspace port) goes through the retry executor and
ends up in the run's `GitHubSummary` and a `github:operation` event; a new pull request
also gets a `pr:created` event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from agentgate.common import events as ev
from agentgate.common.github import repo_of_remote, split_repo
from agentgate.common.timeutil import now_timestamp
from agentgate.orchestrator.ci import CI_OPERATION, CiSettings, CiWaiter
from agentgate.orchestrator.github_client import GitHubClient, GitHubConfig, GitHubError, PullRequest
from agentgate.orchestrator.retry import AttemptCallback, OperationFailed, RetryExecutor
from agentgate.orchestrator.workspace_port import WorkspacePort
from agentgate.v1 import common_pb2, events_pb2, workspace_pb2

log = logging.getLogger(__name__)

M = common_pb2.GitHubMode
PUSH = "push"
CREATE_PR = "create_pr"
ADD_COMMENT = "add_comment"

#: What each git mode does, in order.
STEPS: dict[int, tuple[str, ...]] = {
    common_pb2.GIT_MODE_LOCAL: (),
    common_pb2.GIT_MODE_PUSH: (PUSH,),
    common_pb2.GIT_MODE_PR: (PUSH, CREATE_PR),
}
#: Lines of the task quoted in a pull request's body.
TASK_QUOTE_LINES = 30

Emit = Callable[..., None]


@dataclass(frozen=True)
class DeliveryRequest:
    """What delivery needs to know about the run."""

    run: common_pb2.Run
    git_ops: common_pb2.GitOpsSettings
    source: common_pb2.WorkspaceSource
    workspace_id: str
    verification_summary: str = ""


@dataclass(frozen=True)
class OpenPullRequest:
    """The pull request delivery opened (or found open), and the commit it pushed."""

    owner: str
    repo: str
    pull: PullRequest
    head_commit: str


@dataclass(frozen=True)
class DeliveryOutcome:
    """The summary to store on the run, and the error that fails it (fail_fast only)."""

    summary: common_pb2.GitHubSummary
    failure: common_pb2.BuildError | None = None
    #: The pull request, when one is open now (git mode pr).
    pull_request: OpenPullRequest | None = None


def github_error(message: str, operation: str) -> common_pb2.BuildError:
    """A `github_error` BuildError."""
    return common_pb2.BuildError(
        type=common_pb2.BUILD_ERROR_TYPE_GITHUB_ERROR,
        message=message,
        context={"operation": operation},
        failed_at=now_timestamp(),
    )


def pr_title(task_prompt: str) -> str:
    """`[AgentGate] {first line of the task}`."""
    first = next((line.strip() for line in task_prompt.splitlines() if line.strip()), "change")
    return f"[AgentGate] {first}"


def verification_summary(report: common_pb2.VerificationReport | None) -> str:
    """What the gate checked, for the pull request: each level with its checks passed (or
    why it did not run), e.g. `L0 ✓ (3 checks), L1 ✓ (2 checks), L2 skipped (no plan)`."""
    if report is None:
        return ""
    parts = []
    for level in report.levels:
        if not level.ran:
            parts.append(f"{level.level} skipped ({level.skip_reason})" if level.skip_reason else
                         f"{level.level} skipped")
            continue
        passed = sum(1 for check in level.checks if check.passed)
        mark = "✓" if level.passed else "✗"
        detail = f"{passed}/{len(level.checks)} checks" if len(level.checks) != passed else f"{passed} checks"
        if not level.checks and level.skip_reason:
            detail = level.skip_reason
        parts.append(f"{level.level} {mark} ({detail})")
    return ", ".join(parts) or report.summary


def pr_body(run: common_pb2.Run, verification_summary: str) -> str:
    """The pull request's description: the task and what the run did (levels and checks,
    iterations, tokens, cost)."""
    lines = run.task_prompt.strip().splitlines()
    quoted = "\n".join(f"> {line}" for line in lines[:TASK_QUOTE_LINES])
    if len(lines) > TASK_QUOTE_LINES:
        quoted += f"\n> … ({len(lines) - TASK_QUOTE_LINES} more lines)"
    rows = [
        ("Run", f"`{run.id}`"),
        ("Work order", f"`{run.work_order_id}`"),
        ("Agent", f"`{run.agent.name}`" if run.agent.name else "-"),
        ("Iterations", f"{run.iteration_count} of {run.max_iterations}"),
        ("Verification", f"passed — {verification_summary}" if verification_summary else "passed"),
        ("Tokens", f"{run.tokens.total:,}" if run.tokens.total else "-"),
        ("Cost", f"${run.cost_usd:.4f}" if run.cost_usd else "-"),
        ("Branch", f"`{run.branch_name}`"),
        ("Commit", f"`{run.final_commit}`" if run.final_commit else "-"),
        ("Stop reason", run.stop_reason or "-"),
    ]
    table = "\n".join(["| | |", "|---|---|"] + [f"| {key} | {value} |" for key, value in rows])
    return (
        "This change was made by an AI coding agent under AgentGate and passed its verification gate.\n\n"
        f"**Task**\n\n{quoted}\n\n**Run**\n\n{table}\n"
    )


class Delivery:
    """Delivers one run; every GitHub/git operation goes through `retry`."""

    def __init__(
        self,
        workspace: WorkspacePort,
        retry: RetryExecutor,
        emit: Emit,
        github: GitHubConfig | None = None,
        on_attempt: AttemptCallback | None = None,
    ):
        self._workspace = workspace
        self._retry = retry
        self._emit = emit
        self.github = github or GitHubConfig.from_env()
        self._on_attempt = on_attempt

    async def deliver(self, request: DeliveryRequest) -> DeliveryOutcome:
        """Runs the operations of the git mode under the GitHub mode; never raises for a
        failed operation (the outcome says what happened)."""
        git_ops = request.git_ops
        mode = git_ops.github_mode
        summary = common_pb2.GitHubSummary(mode=mode, branch_name=request.run.branch_name)
        steps = STEPS.get(git_ops.mode, ())
        if mode == M.GIT_HUB_MODE_DISABLED:
            for step in steps:
                self._record(summary, common_pb2.GitHubOperation(operation=step, skipped=True,
                                                                 error="skipped: github_mode is disabled"))
            return self._finish(summary)

        pushed: workspace_pb2.PushResponse | None = None
        if PUSH in steps:
            pushed, error = await self._push(request, summary)
            if error is not None:
                failure = self.on_failure(mode, f"Push failed: {error.message}", PUSH, error)
                if CREATE_PR in steps:
                    self._record(summary, common_pb2.GitHubOperation(operation=CREATE_PR, skipped=True,
                                                                     error="skipped: the push failed"))
                return self._finish(summary, failure)
        opened: OpenPullRequest | None = None
        if CREATE_PR in steps:
            assert pushed is not None
            opened, error = await self._open_pull_request(request, summary, pushed)
            if error is not None:
                return self._finish(summary, self.on_failure(mode, f"PR creation failed: {error.message}",
                                                              CREATE_PR, error))
        return self._finish(summary, pull_request=opened)

    # -- steps -------------------------------------------------------------------

    async def _push(
        self, request: DeliveryRequest, summary: common_pb2.GitHubSummary
    ) -> tuple[workspace_pb2.PushResponse | None, common_pb2.BuildError | None]:
        async def call(attempt: int) -> workspace_pb2.PushResponse:
            return await self._workspace.push(request.workspace_id, request.run.branch_name)

        result = await self._retry.run(PUSH, call, on_attempt=self._on_attempt)
        operation = common_pb2.GitHubOperation(operation=PUSH, success=result.succeeded, retries=result.retries)
        if result.value is not None and result.succeeded:
            operation.url = result.value.remote_url
        if result.error is not None:
            operation.error = result.error.message
        self._record(summary, operation)
        return (result.value if result.succeeded else None), result.error

    async def _open_pull_request(
        self, request: DeliveryRequest, summary: common_pb2.GitHubSummary, pushed: workspace_pb2.PushResponse
    ) -> tuple[OpenPullRequest | None, common_pb2.BuildError | None]:
        repo = request.source.github_repo or repo_of_remote(pushed.remote_url)
        problem = ""
        if not repo:
            problem = (
                f"the remote {pushed.remote_url} is not a GitHub repository (on {self.github.git_url}); "
                "a pull request needs a github_repo source or a GitHub remote"
            )
        elif not self.github.token:
            problem = "AGENTGATE_GITHUB_TOKEN is not set on the orchestrator"
        if problem:
            error = github_error(problem, CREATE_PR)
            self._record(summary, common_pb2.GitHubOperation(operation=CREATE_PR, error=problem))
            return None, error
        owner, name = split_repo(repo or "")
        branch = pushed.branch or request.run.branch_name
        draft = request.git_ops.draft_pr
        base: list[str] = [request.git_ops.base_branch] if request.git_ops.base_branch else []

        async with GitHubClient(self.github) as client:

            async def call(attempt: int) -> PullRequest:
                try:
                    if not base:
                        base.append(await self._base_branch(client, owner, name, request.source.ref))
                    try:
                        return await client.create_pull_request(
                            owner, name, head=branch, base=base[0], title=pr_title(request.run.task_prompt),
                            body=pr_body(request.run, request.verification_summary), draft=draft,
                        )
                    except GitHubError as exc:
                        # A second attempt of this run: its pull request is open already.
                        if exc.status == 422 and (existing := await client.find_pull_request(owner, name, branch)):
                            return existing
                        raise
                except GitHubError as exc:
                    raise OperationFailed(
                        github_error(exc.message, CREATE_PR), permanent=not exc.retryable, timed_out=exc.timed_out,
                        retry_after=exc.retry_after,
                    ) from None

            result = await self._retry.run(CREATE_PR, call, on_attempt=self._on_attempt)
            operation = common_pb2.GitHubOperation(
                operation=CREATE_PR, success=result.succeeded, retries=result.retries
            )
            pull = result.value if result.succeeded else None
            if pull is not None:
                operation.url = pull.url
                summary.pr_url = pull.url
            if result.error is not None:
                operation.error = result.error.message
            self._record(summary, operation)
            if pull is None:
                return None, result.error
            if not pull.existing:
                self._emit(
                    ev.PR_CREATED,
                    pr_created=events_pb2.PrCreated(url=pull.url, number=pull.number, branch=branch, draft=pull.draft),
                )
            else:
                await self._comment(client, owner, name, pull, request, summary)
        return OpenPullRequest(owner, name, pull, pushed.commit or request.run.final_commit), None

    @staticmethod
    async def _base_branch(client: GitHubClient, owner: str, name: str, ref: str) -> str:
        """The branch a pull request targets without `base_branch`: the source's `ref` when
        it is a branch of the repository (a tag or commit cannot be a base), else the
        repository's default branch."""
        if ref and await client.get_branch(owner, name, ref):
            return ref
        return str((await client.get_repository(owner, name))["default_branch"])

    async def wait_for_ci(
        self, opened: OpenPullRequest, summary: common_pb2.GitHubSummary, settings: CiSettings | None = None
    ) -> tuple[common_pb2.LevelResult | None, common_pb2.BuildError | None]:
        """Waits for the CI of the pull request's head commit (see ci.py); returns the `CI`
        verification level, or the error when GitHub could not be asked. Recorded as the
        `wait_for_ci` operation."""
        async with GitHubClient(self.github) as client:
            waiter = CiWaiter(client, self._retry, settings or CiSettings.from_env(), on_attempt=self._on_attempt)
            try:
                level = await waiter.wait(opened.owner, opened.repo, opened.head_commit)
            except OperationFailed as exc:
                self._record(summary, common_pb2.GitHubOperation(
                    operation=CI_OPERATION, url=opened.pull.url, error=exc.failure.error.message))
                return None, exc.failure.error
        failed = [check.name for check in level.checks if not check.passed]
        self._record(summary, common_pb2.GitHubOperation(
            operation=CI_OPERATION, success=level.passed, url=opened.pull.url,
            error=f"CI failed: {', '.join(failed)}" if failed else ""))
        return level, None

    async def _comment(
        self,
        client: GitHubClient,
        owner: str,
        name: str,
        pull: PullRequest,
        request: DeliveryRequest,
        summary: common_pb2.GitHubSummary,
    ) -> None:
        """Tells an already open pull request that this run pushed to it again (never fatal:
        the branch and the pull request are in place)."""
        body = f"AgentGate pushed again to this branch.\n\n{pr_body(request.run, request.verification_summary)}"

        async def call(attempt: int) -> str:
            try:
                return await client.add_comment(owner, name, pull.number, body)
            except GitHubError as exc:
                raise OperationFailed(
                    github_error(exc.message, ADD_COMMENT), permanent=not exc.retryable, timed_out=exc.timed_out
                ) from None

        result = await self._retry.run(ADD_COMMENT, call, on_attempt=self._on_attempt)
        operation = common_pb2.GitHubOperation(operation=ADD_COMMENT, success=result.succeeded,
                                               retries=result.retries, url=result.value or "")
        if result.error is not None:
            operation.error = result.error.message
            log.warning("run %s: could not comment on %s: %s", request.run.id, pull.url, result.error.message)
        self._record(summary, operation)

    # -- bookkeeping -------------------------------------------------------------

    def _record(self, summary: common_pb2.GitHubSummary, operation: common_pb2.GitHubOperation) -> None:
        summary.operations.append(operation)
        self._emit(ev.GITHUB_OPERATION, github_operation=operation)

    def on_failure(
        self, mode: int, message: str, operation: str, error: common_pb2.BuildError
    ) -> common_pb2.BuildError | None:
        """The error that fails the run under github_mode `mode` (fail_fast), or None
        (best_effort: logged)."""
        if mode != M.GIT_HUB_MODE_FAIL_FAST:
            log.warning("delivery (best effort) went on without %s: %s", operation, message)
            return None
        failure = common_pb2.BuildError()
        failure.CopyFrom(error)
        failure.type = common_pb2.BUILD_ERROR_TYPE_GITHUB_ERROR
        failure.message = message
        failure.context["operation"] = operation
        return failure

    @staticmethod
    def _finish(
        summary: common_pb2.GitHubSummary,
        failure: common_pb2.BuildError | None = None,
        pull_request: OpenPullRequest | None = None,
    ) -> DeliveryOutcome:
        attempted = [op for op in summary.operations if not op.skipped]
        summary.any_failed = any(not op.success for op in attempted)
        summary.all_succeeded = not summary.any_failed
        return DeliveryOutcome(summary=summary, failure=failure, pull_request=pull_request)
