"""Attacks on the service's own git commands, each run by a real agent (the `command`
driver, a shell script in its workspace) against a real workspace service over gRPC.

Every test first shows that the attack works when git is run the way it was before the
trusted git directory (on the workspace's own `.git`, or with plain git as an agent or a
user would), then that the service's snapshot, diff, clean room and push hold. See
docs/security.md ("Git").
"""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from agentgate.common.channels import aio_channel
from agentgate.common.config import ServiceSettings
from agentgate.common.server import start_server
from agentgate.v1 import common_pb2, workspace_pb2, workspace_pb2_grpc
from agentgate.workspace import git as gitops
from agentgate.workspace.server import WorkspaceApp

from ..fake_github import git, make_remote_and_clone

SERVICE_SECRET = "ghp_serviceSecretNoGitProcessNeeds0123"
VERIFY_YAML = 'version: "1"\nname: t\ntests:\n  - name: t\n    kind: test\n    command: "true"\n'


@dataclass
class Target:
    stub: workspace_pb2_grpc.WorkspaceServiceStub
    workspace: workspace_pb2.Workspace
    remote: Path
    elsewhere: Path
    marker: Path

    @property
    def path(self) -> Path:
        return Path(self.workspace.path)

    async def agent(self, script: str) -> None:
        """Runs `script` as the agent, in its workspace."""
        agent = common_pb2.AgentSpec(name="command", options={"command": textwrap.dedent(script)})
        request = workspace_pb2.RunAgentRequest(workspace_id=self.workspace.id, run_id=self.workspace.run_id, agent=agent)
        result = None
        async for item in self.stub.RunAgent(request, timeout=60):
            if item.HasField("result"):
                result = item.result
        assert result is not None and result.exit_code == 0, result

    async def everything_we_run(self) -> str:
        """Every git operation of the service on the workspace: snapshot, diff, list,
        clean room (Verify, with the security scan's diff), restore, push. Returns the
        snapshot id."""
        ws = self.workspace.id
        snapshot = (await self.stub.CreateSnapshot(workspace_pb2.CreateSnapshotRequest(workspace_id=ws))).snapshot_id
        await self.stub.GetDiff(workspace_pb2.GetDiffRequest(workspace_id=ws))
        await self.stub.ListSnapshots(workspace_pb2.ListSnapshotsRequest(workspace_id=ws))
        await self.stub.Verify(
            workspace_pb2.VerifyRequest(workspace_id=ws, snapshot_id=snapshot, run_id=self.workspace.run_id, iteration=1)
        )
        await self.stub.RestoreSnapshot(workspace_pb2.RestoreSnapshotRequest(workspace_id=ws, snapshot_id=snapshot))
        pushed = await self.stub.Push(workspace_pb2.PushRequest(workspace_id=ws), timeout=60)
        assert pushed.remote_url == str(self.remote)
        return snapshot

    def pushed_to(self, repo: Path) -> bool:
        return has_branch(repo, self.workspace.branch)


def has_branch(repo: Path, branch: str) -> bool:
    found = subprocess.run(
        ["git", "rev-parse", "--verify", "-q", f"refs/heads/{branch}"], cwd=repo, capture_output=True, text=True
    )
    return found.returncode == 0


@pytest.fixture
async def target(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Target]:
    # A secret in the service's environment that no git process needs.
    monkeypatch.setenv("AGENTGATE_GITHUB_TOKEN", SERVICE_SECRET)
    remote, clone = make_remote_and_clone(tmp_path / "user", {"app.py": "x = 1\n", "verify.yaml": VERIFY_YAML})
    elsewhere = tmp_path / "elsewhere.git"
    git("init", "-q", "--bare", str(elsewhere), cwd=tmp_path)
    settings = ServiceSettings.load("workspace", "127.0.0.1:0", str(home))
    running = await start_server(WorkspaceApp(settings, kill_grace_seconds=1.0), "127.0.0.1:0")
    channel = aio_channel(f"127.0.0.1:{running.port}")
    try:
        stub = workspace_pb2_grpc.WorkspaceServiceStub(channel)
        prepared = await stub.PrepareForRun(
            workspace_pb2.PrepareForRunRequest(run_id="run-attack", source=common_pb2.WorkspaceSource(local_path=str(clone))),
            timeout=60,
        )
        yield Target(stub, prepared.workspace, remote, elsewhere, tmp_path / "pwned")
    finally:
        await channel.close()
        await running.stop(grace=1)


def plain_git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """git as anyone runs it in the workspace: its `.git`, no options of ours."""
    return subprocess.run(
        ["git", "-c", "user.name=u", "-c", "user.email=u@u", *args], cwd=cwd, capture_output=True, text=True
    )


async def test_a_clean_filter_in_config_and_info_attributes_never_runs_in_our_git(target: Target) -> None:
    await target.agent(
        f"""
        git config filter.x.clean "sh -c 'env > {target.marker}; cat'"
        git config filter.x.smudge "sh -c 'env > {target.marker}; cat'"
        git config filter.x.required true
        mkdir -p .git/info && echo '* filter=x' > .git/info/attributes
        echo '* filter=x' > .gitattributes
        echo 'x = 2' > app.py
        """
    )
    # Without the trusted git directory: the service's `git add -A` on the workspace ran the
    # agent's filter (even now, it sees none of the service's secrets).
    await gitops.git("add", "-A", cwd=target.path)
    assert target.marker.exists(), "the attack should work on the workspace's own .git"
    assert SERVICE_SECRET not in target.marker.read_text()
    target.marker.unlink()

    snapshot = await target.everything_we_run()
    assert not target.marker.exists(), "a git command of the service ran the agent's filter"
    # The in-tree attribute is in the snapshot, but names a filter configured nowhere we look.
    diff = await target.stub.GetDiff(workspace_pb2.GetDiffRequest(workspace_id=target.workspace.id, to_snapshot_id=snapshot))
    assert sorted(diff.changed_files) == [".gitattributes", "app.py"]
    assert not target.marker.exists()


async def test_a_hook_never_runs_in_our_git(target: Target) -> None:
    await target.agent(
        f"""
        mkdir -p .git/hooks myhooks
        for hook in pre-commit post-commit reference-transaction post-index-change; do
          printf '#!/bin/sh\\nenv > {target.marker}\\n' > .git/hooks/$hook
          cp .git/hooks/$hook myhooks/$hook
        done
        chmod +x .git/hooks/* myhooks/*
        git config core.hooksPath "$PWD/myhooks"
        echo 'x = 3' > app.py
        """
    )
    plain_git(target.path, "commit", "-q", "-am", "agent")
    assert target.marker.exists(), "the attack should work on the workspace's own .git"
    target.marker.unlink()

    await target.everything_we_run()
    assert not target.marker.exists(), "a git command of the service ran the agent's hook"


async def test_an_fsmonitor_command_never_runs_in_our_git(target: Target) -> None:
    await target.agent(
        f"""
        printf '#!/bin/sh\\nenv > {target.marker}\\n' > monitor.sh && chmod +x monitor.sh
        git config core.fsmonitor "$PWD/monitor.sh"
        echo 'x = 4' > app.py
        """
    )
    plain_git(target.path, "status", "--porcelain")
    assert target.marker.exists(), "the attack should work on the workspace's own .git"
    target.marker.unlink()

    await target.everything_we_run()
    assert not target.marker.exists(), "a git command of the service ran the agent's fsmonitor"


async def test_a_diff_driver_and_textconv_never_run_in_our_git(target: Target) -> None:
    await target.agent(
        f"""
        git config diff.x.command "sh -c 'env > {target.marker}'"
        git config diff.x.textconv "sh -c 'env > {target.marker}; cat \\"\\$0\\"'"
        git config diff.external "sh -c 'env > {target.marker}'"
        echo '* diff=x' > .gitattributes
        echo 'x = 5' > app.py
        """
    )
    plain_git(target.path, "diff")
    assert target.marker.exists(), "the attack should work on the workspace's own .git"
    target.marker.unlink()

    await target.everything_we_run()
    assert not target.marker.exists(), "a git command of the service ran the agent's diff driver"


async def test_a_pushurl_of_the_agent_does_not_redirect_delivery(target: Target) -> None:
    await target.agent(
        f"""
        git remote add origin {target.remote} 2>/dev/null || git remote set-url origin {target.remote}
        git config remote.origin.pushurl {target.elsewhere}
        git config url.{target.elsewhere}.pushInsteadOf {target.remote}
        echo 'x = 6' > app.py
        """
    )
    plain_git(target.path, "push", "-q", "origin", f"HEAD:refs/heads/{target.workspace.branch}")
    assert target.pushed_to(target.elsewhere), "the attack should work on the workspace's own .git"
    git("update-ref", "-d", f"refs/heads/{target.workspace.branch}", cwd=target.elsewhere)

    snapshot = await target.everything_we_run()
    assert not target.pushed_to(target.elsewhere), "delivery went where the agent said"
    assert git("rev-parse", f"refs/heads/{target.workspace.branch}", cwd=target.remote).strip() == snapshot


async def test_a_receivepack_of_the_agent_never_runs_at_delivery(target: Target) -> None:
    await target.agent(
        f"""
        git remote add origin {target.remote} 2>/dev/null || git remote set-url origin {target.remote}
        git config remote.origin.receivepack "env > {target.marker}; git-receive-pack"
        git config remote.origin.uploadpack "env > {target.marker}; git-upload-pack"
        echo 'x = 7' > app.py
        """
    )
    plain_git(target.path, "push", "-q", "origin", f"HEAD:refs/heads/{target.workspace.branch}")
    assert target.marker.exists(), "the attack should work on the workspace's own .git"
    target.marker.unlink()
    git("update-ref", "-d", f"refs/heads/{target.workspace.branch}", cwd=target.remote)

    snapshot = await target.everything_we_run()
    assert not target.marker.exists(), "delivery ran the agent's receive-pack"
    assert git("rev-parse", f"refs/heads/{target.workspace.branch}", cwd=target.remote).strip() == snapshot


async def test_the_agent_cannot_reach_the_trusted_git_directory_through_its_own(target: Target) -> None:
    """The agent's `.git` is a copy: no alternates, no remote, no link into ours."""
    agent_git = target.path / ".git"
    assert agent_git.is_dir() and not (agent_git / "objects" / "info" / "alternates").exists()
    assert plain_git(target.path, "remote").stdout == ""
    trusted = Path(target.workspace.path).parent.parent / "gitdirs" / f"{target.workspace.id}.git"
    assert trusted.is_dir() and not trusted.is_relative_to(target.path)
    # Nothing in the agent's copy shares an inode with our objects.
    ours = {p.stat().st_ino for p in (trusted / "objects").rglob("*") if p.is_file()}
    theirs = {p.stat().st_ino for p in (agent_git / "objects").rglob("*") if p.is_file()}
    assert not ours & theirs


async def test_git_processes_of_the_service_get_no_service_secret(target: Target) -> None:
    env = gitops.git_env()
    assert SERVICE_SECRET not in env.values()
    assert env["GIT_CONFIG_GLOBAL"] == "/dev/null" and env["GIT_CONFIG_NOSYSTEM"] == "1"
    with pytest.raises(grpc.aio.AioRpcError):  # a workspace that is not there is refused, nothing runs
        await target.stub.Push(workspace_pb2.PushRequest(workspace_id="ws-0000000000000000"))


async def test_a_work_order_whose_agent_attacks_every_git_command_is_delivered_where_we_resolved(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole suite: a work order in push mode whose agent fixes the code and sets a
    clean filter, a post-commit hook and a pushurl to another repository."""
    from ..integration.inprocess_suite import InProcessSuite

    monkeypatch.setenv("AGENTGATE_GITHUB_TOKEN", SERVICE_SECRET)
    verify = 'version: "1"\ntests:\n  - {name: unit, kind: test, command: "grep -q fixed app.py"}\n'
    remote, clone = make_remote_and_clone(tmp_path / "user", {"app.py": "broken\n", "verify.yaml": verify})
    elsewhere = tmp_path / "elsewhere.git"
    git("init", "-q", "--bare", str(elsewhere), cwd=tmp_path)
    marker = tmp_path / "pwned"
    script = f"""
        git config filter.x.clean "sh -c 'env > {marker}; cat'"
        git config filter.x.smudge "sh -c 'env > {marker}; cat'"
        mkdir -p .git/info .git/hooks && echo '* filter=x' > .git/info/attributes
        printf '#!/bin/sh\\nenv > {marker}\\n' > .git/hooks/post-commit && chmod +x .git/hooks/post-commit
        git remote add origin {remote}
        git config remote.origin.pushurl {elsewhere}
        echo fixed > app.py
    """
    spec = common_pb2.WorkOrderSpec(
        task_prompt="Fix app.py", agent=common_pb2.AgentSpec(name="command", options={"command": textwrap.dedent(script)})
    )
    spec.source.local_path = str(clone)
    spec.harness.loop_strategy.max_iterations = 1
    spec.harness.git_ops.mode = common_pb2.GIT_MODE_PUSH  # type: ignore[assignment]
    # The workspace is used below to show the attack (docs/workspaces.md, "Retention").
    spec.harness.retention.workspace = common_pb2.WORKSPACE_RETENTION_KEEP
    suite = await InProcessSuite.start(home)
    try:
        work_order = await suite.submit(spec)
        final = await suite.wait_terminal(work_order.id, timeout=120)
        run = await suite.run(work_order.run_id)
    finally:
        await suite.stop()
    assert final.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED, run.error
    assert not marker.exists(), "a git command of the services ran the agent's filter or hook"
    branch = f"agentgate/{run.id}"
    assert git("rev-parse", branch, cwd=remote).strip() == run.final_commit
    assert [(op.operation, op.success, op.url) for op in run.github_summary.operations] == [("push", True, str(remote))]
    assert not has_branch(elsewhere, branch)

    # The same repository, used the way the services used it before: the attack works.
    workspace = next(iter((home / "workspaces").iterdir()))
    plain_git(workspace, "push", "-q", "origin", f"HEAD:refs/heads/{branch}")
    assert has_branch(elsewhere, branch)
    (workspace / "app.py").write_text("fixed again\n")
    await gitops.git("add", "-A", cwd=workspace)
    assert marker.exists()
