"""The workspace service through its stub, against a real grpc.aio server and real git.

Covers PrepareForRun (local copy and git URL), RunAgent (scripted and command drivers,
streaming, timeouts, cancellation), CreateSnapshot, Verify in a clean room, GetWorkspace,
ReleaseLease, and the errors of bad requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentgate.common.channels import aio_channel
from agentgate.common.config import ServiceSettings
from agentgate.common.errors import field_violations
from agentgate.common.server import start_server
from agentgate.v1 import common_pb2, events_pb2, workspace_pb2, workspace_pb2_grpc
from agentgate.workspace.server import WorkspaceApp
from tests.credentials import service_credential
from tests.ports import free_port

# --- helpers -------------------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    """Runs git with a fixed identity (the host's configuration is not assumed)."""
    done = subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def tree_digest(root: Path) -> str:
    """A digest of every path (hidden ones and .git included), its type, mode and content."""
    digest = hashlib.sha256()
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]):
            path = Path(directory) / name
            info = path.lstat()
            digest.update(str(path.relative_to(root)).encode() + b"\0" + oct(info.st_mode).encode())
            if stat.S_ISLNK(info.st_mode):
                digest.update(os.readlink(path).encode())
            else:
                digest.update(path.read_bytes())
        for name in dirs:
            digest.update(f"dir:{Path(directory, name).relative_to(root)}".encode())
    return digest.hexdigest()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def file_names(root: Path) -> set[str]:
    """Names of every file and folder under `root`."""
    return {path.name for path in root.rglob("*")}


def write_file(path: Path, text: str) -> None:
    path.write_text(text)


async def wait_gone(pid: int, seconds: float = 5.0) -> bool:
    """Waits until `pid` is gone; False if it still runs after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


def scripted(script: str) -> common_pb2.AgentSpec:
    return common_pb2.AgentSpec(name="scripted", options={"script": textwrap.dedent(script)})


CALC_BROKEN = "def add(a, b):\n    return a - b\n"
CALC_FIXED = "def add(a, b):\n    return a + b\n"
VERIFY_YAML = textwrap.dedent(
    """\
    version: "1"
    name: calc
    contracts:
      required_files: [calc.py]
    tests:
      - name: unit
        kind: test
        command: "python3 -c 'import calc; assert calc.add(2, 3) == 5, calc.add(2, 3)'"
      - name: clean-room
        kind: test
        command: "test ! -e ignored.txt && test ! -d .git"
    """
)


@dataclass
class Service:
    stub: workspace_pb2_grpc.WorkspaceServiceStub
    home: Path
    address: str

    async def prepare(
        self, source: Path | str, run_id: str = "run-1", **kwargs: str
    ) -> workspace_pb2.PrepareForRunResponse:
        if isinstance(source, Path):
            spec = common_pb2.WorkspaceSource(local_path=str(source))
        else:
            spec = common_pb2.WorkspaceSource(git_url=source, ref=kwargs.pop("ref", ""))
        return await self.stub.PrepareForRun(workspace_pb2.PrepareForRunRequest(run_id=run_id, source=spec, **kwargs))

    async def run_agent(
        self, workspace: workspace_pb2.Workspace, agent: common_pb2.AgentSpec, **kwargs: object
    ) -> tuple[list[tuple[events_pb2.AgentOutput, float]], common_pb2.AgentResult]:
        """Runs an agent; returns the outputs (with arrival times) and the result (last)."""
        request = workspace_pb2.RunAgentRequest(
            workspace_id=workspace.id,
            run_id=workspace.run_id,
            agent=agent,
            **kwargs,  # type: ignore[arg-type]
        )
        outputs: list[tuple[events_pb2.AgentOutput, float]] = []
        result = None
        async for item in self.stub.RunAgent(request):
            assert result is None, "nothing may follow the result"
            if item.HasField("output"):
                outputs.append((item.output, time.monotonic()))
            else:
                result = item.result
        assert result is not None
        return outputs, result


@pytest.fixture
async def service(home: Path) -> AsyncIterator[Service]:
    settings = ServiceSettings.load("workspace", "127.0.0.1:0", str(home))
    running = await start_server(WorkspaceApp(settings, kill_grace_seconds=1.0), "127.0.0.1:0")
    address = f"127.0.0.1:{running.port}"
    channel = aio_channel(address)
    try:
        yield Service(workspace_pb2_grpc.WorkspaceServiceStub(channel), home, address)
    finally:
        await channel.close()
        await running.stop(grace=1)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project: a git repository with history, hidden files, an uncommitted edit,
    an untracked file, a file ignored by git, rules and a gate plan."""
    root = tmp_path / "project"
    root.mkdir()
    git(root, "init", "-q")
    (root / "calc.py").write_text(CALC_BROKEN)
    (root / "verify.yaml").write_text(VERIFY_YAML)
    (root / "AGENTS.md").write_text("Keep functions small.\n")
    (root / ".gitignore").write_text("ignored.txt\n__pycache__/\n")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.cfg").write_text("x=1\n")
    (root / "link-to-calc").symlink_to("calc.py")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "user: first commit")
    (root / "README.md").write_text("untracked\n")
    (root / "AGENTS.md").write_text("Keep functions small.\nWrite tests.\n")  # uncommitted edit
    (root / "ignored.txt").write_text("build output\n")
    return root


# --- PrepareForRun -----------------------------------------------------------------------


async def test_prepare_from_local_dir_copies_and_never_writes_the_source(service: Service, project: Path) -> None:
    before = tree_digest(project)
    user_head = git(project, "rev-parse", "HEAD")
    response = await service.prepare(project, run_id="run-1")
    assert tree_digest(project) == before, "the user's directory was modified"

    workspace = response.workspace
    path = Path(workspace.path)
    assert path.parent == service.home / "workspaces"
    assert workspace.id == path.name and workspace.run_id == "run-1" and workspace.leased
    assert workspace.branch == "agentgate/run-1"
    assert git(path, "rev-parse", "--abbrev-ref", "HEAD") == "agentgate/run-1"
    assert workspace.base_commit == git(path, "rev-parse", "HEAD")
    # History kept: the initial snapshot sits on the user's commit.
    assert git(path, "rev-parse", "HEAD~1") == user_head
    assert git(path, "log", "-1", "--format=%s") == "agentgate: initial snapshot"
    assert git(path, "log", "-1", "--format=%an <%ae>") == "AgentGate <agentgate@localhost>"
    # Uncommitted and untracked work is in the snapshot; ignored files are not copied (the
    # clean room never sees them either) unless asked for, and then not committed.
    assert git(path, "status", "--porcelain") == ""
    assert (path / "README.md").read_text() == "untracked\n"
    assert not (path / "ignored.txt").exists()
    with_ignored = await service.stub.PrepareForRun(
        workspace_pb2.PrepareForRunRequest(
            run_id="run-1b", source=common_pb2.WorkspaceSource(local_path=str(project), include_ignored=True)
        )
    )
    assert tree_digest(project) == before, "the user's directory was modified"
    assert (Path(with_ignored.workspace.path) / "ignored.txt").read_text() == "build output\n"
    assert "ignored.txt" not in git(Path(with_ignored.workspace.path), "ls-files")
    assert (path / "link-to-calc").is_symlink()
    assert response.rules == "Keep functions small.\nWrite tests.\n"
    assert 'Gate plan "calc" (verify.yaml)' in response.gate_plan_summary
    assert "unit:" in response.gate_plan_summary

    got = await service.stub.GetWorkspace(workspace_pb2.GetWorkspaceRequest(workspace_id=workspace.id))
    assert got.workspace == workspace


async def test_prepare_from_plain_dir_initializes_git(service: Service, tmp_path: Path) -> None:
    source = tmp_path / "plain"
    (source / ".agentgate").mkdir(parents=True)
    (source / "main.py").write_text("print('hi')\n")
    (source / ".agentgate" / "AGENTS.md").write_text("rules from .agentgate\n")
    before = tree_digest(source)
    response = await service.prepare(source, run_id="plain.run_2", gate_plan_yaml="tests: [{name: t, command: 'true'}]")
    assert tree_digest(source) == before
    assert not (source / ".git").exists()
    path = Path(response.workspace.path)
    assert git(path, "rev-list", "--count", "HEAD") == "1"
    assert git(path, "ls-files").splitlines() == [".agentgate/AGENTS.md", "main.py"]
    assert response.rules == "rules from .agentgate\n"
    assert "(inline)" in response.gate_plan_summary
    no_plan = await service.prepare(source, run_id="plain-3")
    assert no_plan.gate_plan_summary.startswith("No gate plan found")
    assert no_plan.workspace.id != response.workspace.id


@pytest.fixture
def remote(tmp_path: Path) -> dict[str, str]:
    """A git repository to clone by file:// URL: main (v=2), tag v1 (v=1), branch feature (v=3)."""
    root = tmp_path / "remote"
    root.mkdir()
    git(root, "init", "-q")
    (root / "version.txt").write_text("1\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "v1")
    first = git(root, "rev-parse", "HEAD")
    git(root, "tag", "v1")
    git(root, "checkout", "-q", "-b", "feature")
    (root / "version.txt").write_text("3\n")
    git(root, "commit", "-q", "-am", "feature")
    git(root, "checkout", "-q", "main")
    (root / "version.txt").write_text("2\n")
    git(root, "commit", "-q", "-am", "v2")
    return {"url": root.as_uri(), "first": first, "path": str(root)}


@pytest.mark.parametrize(("ref", "version"), [("", "2\n"), ("v1", "1\n"), ("feature", "3\n"), ("first", "1\n")])
async def test_prepare_from_git_url_with_ref(service: Service, remote: dict[str, str], ref: str, version: str) -> None:
    ref = remote["first"] if ref == "first" else ref
    before = tree_digest(Path(remote["path"]))
    response = await service.prepare(remote["url"], run_id="clone-1", ref=ref)
    path = Path(response.workspace.path)
    assert (path / "version.txt").read_text() == version
    assert git(path, "rev-parse", "--abbrev-ref", "HEAD") == "agentgate/clone-1"
    assert git(path, "log", "-1", "--format=%s") == "agentgate: initial snapshot"
    assert response.workspace.source.git_url == remote["url"]
    assert tree_digest(Path(remote["path"])) == before


async def test_failed_prepare_leaves_nothing_behind(service: Service, remote: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as bad_ref:
        await service.prepare(remote["url"], ref="no-such-branch")
    assert bad_ref.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no-such-branch" in (bad_ref.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as bad_url:
        await service.prepare((tmp_path / "nowhere").as_uri())
    assert bad_url.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = bad_url.value.details() or ""
    assert "git clone" in details and "nowhere" in details  # git's own message

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await service.prepare(tmp_path / "missing-dir")
    assert missing.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "does not exist" in (missing.value.details() or "")

    assert list((service.home / "workspaces").iterdir()) == []


async def test_prepare_refuses_bad_requests(service: Service, tmp_path: Path) -> None:
    for run_id in ("../evil", "", "a b", "-x", "x..y", "a" * 129):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.prepare(tmp_path, run_id=run_id)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, run_id
        assert [v.field for v in field_violations(caught.value)] == ["run_id"]

    with pytest.raises(grpc.aio.AioRpcError) as relative:
        await service.prepare(Path("relative/dir"))
    assert relative.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(relative.value)] == ["source.local_path"]

    with pytest.raises(grpc.aio.AioRpcError) as github:
        await service.stub.PrepareForRun(
            workspace_pb2.PrepareForRunRequest(run_id="r", source=common_pb2.WorkspaceSource(github_repo="o/n/x"))
        )
    assert github.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(github.value)] == ["source.github_repo"]

    with pytest.raises(grpc.aio.AioRpcError) as pattern:
        await service.stub.PrepareForRun(
            workspace_pb2.PrepareForRunRequest(
                run_id="r", source=common_pb2.WorkspaceSource(local_path=str(tmp_path)), branch_pattern="fixed"
            )
        )
    assert [v.field for v in field_violations(pattern.value)] == ["branch_pattern"]

    with pytest.raises(grpc.aio.AioRpcError) as no_source:
        await service.stub.PrepareForRun(workspace_pb2.PrepareForRunRequest(run_id="r"))
    assert [v.field for v in field_violations(no_source.value)] == ["source"]

    # The AgentGate home itself cannot be copied into its own workspaces folder.
    with pytest.raises(grpc.aio.AioRpcError) as itself:
        await service.prepare(service.home)
    assert itself.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_unknown_workspaces_are_not_found(service: Service) -> None:
    stub = service.stub
    for workspace_id in ("ws-0000000000000000", "../../etc", "ws-../x"):
        calls = [
            stub.GetWorkspace(workspace_pb2.GetWorkspaceRequest(workspace_id=workspace_id)),
            stub.ReleaseLease(workspace_pb2.ReleaseLeaseRequest(workspace_id=workspace_id)),
            stub.CreateSnapshot(workspace_pb2.CreateSnapshotRequest(workspace_id=workspace_id)),
            stub.Verify(workspace_pb2.VerifyRequest(workspace_id=workspace_id)),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND, workspace_id
        with pytest.raises(grpc.aio.AioRpcError) as agent:
            async for _ in stub.RunAgent(
                workspace_pb2.RunAgentRequest(workspace_id=workspace_id, agent=scripted("default: []"))
            ):
                pass
        assert agent.value.code() == grpc.StatusCode.NOT_FOUND


# --- RunAgent ------------------------------------------------------------------------------


async def test_scripted_agent_streams_output_and_reports_tool_calls(service: Service, project: Path) -> None:
    workspace = (await service.prepare(project)).workspace
    script = """\
        iterations:
          1:
            - print: "looking at calc.py"
            - stderr: "warning: something"
            - sleep: 0.8
            - write: {path: calc.py, content: "def add(a, b):\\n    return a + b\\n"}
            - write: {path: docs/NOTES.md, content: "first\\n"}
            - append: {path: docs/NOTES.md, content: "more\\n"}
            - delete: {path: README.md}
            - run: "python3 -c 'print(6 * 7)'"
            - tool_call: {tool: Write, input: {path: calc.py, lines: 2}, output: "ok", duration: 0.25}
            - tokens: {input: 1200, output: 300}
            - tokens: {input: 10, output: 5}
            - print: "done"
        """
    outputs, result = await service.run_agent(workspace, scripted(script), iteration=1, attempt=1, prompt="fix add")
    lines = [(o.stream, o.text) for o, _ in outputs]
    assert lines == [
        (events_pb2.OUTPUT_STREAM_STDOUT, "looking at calc.py"),
        (events_pb2.OUTPUT_STREAM_STDERR, "warning: something"),
        (events_pb2.OUTPUT_STREAM_STDOUT, "42"),
        (events_pb2.OUTPUT_STREAM_STDOUT, "done"),
    ]
    # Streamed while running: the first line arrived well before the last (0.8 s sleep between).
    assert outputs[-1][1] - outputs[0][1] > 0.5
    assert result.success and result.exit_code == 0 and not result.timed_out
    assert result.stdout == "looking at calc.py\n42\ndone\n"
    assert result.stderr == "warning: something\n"
    assert (result.driver, result.run_id, result.iteration, result.attempt) == ("scripted", "run-1", 1, 1)
    assert result.duration_seconds >= 0.8 and result.captured_at.seconds > 0
    [call] = result.tool_calls
    assert (call.tool, call.output, call.duration_seconds) == ("Write", "ok", 0.25)
    assert dict(call.input) == {"path": "calc.py", "lines": 2.0}
    assert (result.tokens.input, result.tokens.output, result.tokens.total) == (1210, 305, 1515)

    path = Path(workspace.path)
    assert (path / "calc.py").read_text() == CALC_FIXED
    assert (path / "docs" / "NOTES.md").read_text() == "first\nmore\n"
    assert not (path / "README.md").exists()
    assert (project / "calc.py").read_text() == CALC_BROKEN  # the user's copy is untouched
    # Script and report files live outside the workspace.
    assert not any(name.startswith(("script-", "report-")) for name in file_names(path))


async def test_scripted_attempts_exit_codes_and_crash(service: Service, project: Path) -> None:
    workspace = (await service.prepare(project)).workspace
    script = """\
        iterations:
          2:
            attempts:
              1: [{print: first try}, {exit: 3}]
              2: [{print: second try}]
          3: [{crash: "segmentation fault (core dumped)"}]
        default: [{print: default}]
        """
    _, first = await service.run_agent(workspace, scripted(script), iteration=2, attempt=1)
    assert (first.exit_code, first.success, first.stdout) == (3, False, "first try\n")
    _, retry = await service.run_agent(workspace, scripted(script), iteration=2, attempt=4)
    assert (retry.exit_code, retry.success, retry.stdout) == (0, True, "second try\n")
    _, crash = await service.run_agent(workspace, scripted(script), iteration=3, attempt=1)
    assert not crash.success and not crash.timed_out
    assert crash.exit_code == 128 + signal.SIGABRT
    assert "segmentation fault" in crash.stderr
    _, other = await service.run_agent(workspace, scripted(script), iteration=7, attempt=1)
    assert other.stdout == "default\n"
    assert not any(name.startswith("core") for name in file_names(Path(workspace.path)))


async def test_scripted_paths_through_symlinks_cannot_leave_the_workspace(
    service: Service, project: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (project / "escape").symlink_to(outside)
    workspace = (await service.prepare(project)).workspace
    script = "default: [{write: {path: escape/pwned.txt, content: x}}, {print: not reached}]"
    _, result = await service.run_agent(workspace, scripted(script))
    assert not result.success and result.exit_code == 2
    assert "resolves outside the workspace" in result.stderr
    assert result.stdout == ""
    assert file_names(outside) == set()


async def test_command_driver_prompt_on_stdin(service: Service, project: Path) -> None:
    workspace = (await service.prepare(project)).workspace
    agent = common_pb2.AgentSpec(
        name="command",
        options={"command": 'echo "iteration {iteration} in {workspace}"; cat; echo "[$FOO]"', "env.FOO": "bar"},
    )
    outputs, result = await service.run_agent(workspace, agent, iteration=2, prompt="Fix add.\nThen stop.")
    assert result.success and result.driver == "command"
    assert result.stdout == f"iteration 2 in {workspace.path}\nFix add.\nThen stop.[bar]\n"
    assert [o.text for o, _ in outputs][:2] == [f"iteration 2 in {workspace.path}", "Fix add."]


async def test_command_driver_prompt_file_is_outside_the_workspace(
    service: Service, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "must-not-leak")
    workspace = (await service.prepare(project)).workspace
    agent = common_pb2.AgentSpec(
        name="command",
        options={"command": 'cat {prompt_file}; echo "file={prompt_file}"; echo "secret=[$SECRET_TOKEN]"'},
    )
    _, result = await service.run_agent(workspace, agent, iteration=1, prompt="the prompt\n")
    prompt_file = service.home / "prompts" / workspace.id / "prompt-1.md"
    assert result.stdout == f"the prompt\nfile={prompt_file}\nsecret=[]\n"
    assert prompt_file.read_text() == "the prompt\n"
    snapshot = await service.stub.CreateSnapshot(workspace_pb2.CreateSnapshotRequest(workspace_id=workspace.id))
    assert not snapshot.has_changes


async def test_agent_timeout(service: Service, project: Path) -> None:
    workspace = (await service.prepare(project)).workspace
    started = time.monotonic()
    _, result = await service.run_agent(
        workspace, scripted("default: [{print: starting}, {sleep: 60}]"), timeout_seconds=1
    )
    assert result.timed_out and not result.success
    assert result.stdout == "starting\n"
    assert time.monotonic() - started < 10


def _find_pid(cmdline: bytes) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "cmdline").read_bytes() == cmdline:
                    return int(entry.name)
    return None


async def _pid_with_cmdline(cmdline: bytes, timeout: float = 10) -> int:
    """The host pid of the process whose command line is `cmdline` (NUL-separated)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (pid := await asyncio.to_thread(_find_pid, cmdline)) is not None:
            return pid
        await asyncio.sleep(0.05)
    raise AssertionError(f"no process {cmdline!r}")


async def test_client_cancel_kills_the_agent(service: Service, project: Path, tmp_path: Path) -> None:
    workspace = (await service.prepare(project)).workspace
    # A duration no other process uses: the child is found by its command line in the
    # host's /proc (inside the sandbox the agent sees only its own PID namespace).
    duration = f"60.{os.getpid()}{secrets.randbelow(10**6)}"
    agent = common_pb2.AgentSpec(name="command", options={"command": f"sleep {duration} & echo started; wait"})
    call = service.stub.RunAgent(workspace_pb2.RunAgentRequest(workspace_id=workspace.id, agent=agent))
    first = await call.read()
    assert first.output.text == "started"
    child = await _pid_with_cmdline(b"sleep\0" + duration.encode() + b"\0")
    assert alive(child)
    call.cancel()
    assert await wait_gone(child), "the agent survived the client's cancellation"


async def test_run_agent_bad_requests(service: Service, project: Path) -> None:
    workspace = (await service.prepare(project)).workspace

    async def run(**kwargs: object) -> grpc.aio.AioRpcError:
        request = workspace_pb2.RunAgentRequest(workspace_id=workspace.id, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in service.stub.RunAgent(request):
                pass
        return caught.value

    unknown = await run(agent=common_pb2.AgentSpec(name="nope"))
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(unknown)] == ["agent.name"]
    bad_script = await run(agent=scripted("iterations:\n  1: [{write: {path: /etc/x, content: y}}]\n"))
    assert [v.field for v in field_violations(bad_script)] == ["agent.options.script"]
    negative = await run(agent=scripted("default: []"), timeout_seconds=-1)
    assert [v.field for v in field_violations(negative)] == ["timeout_seconds"]
    other_run = await run(agent=scripted("default: []"), run_id="someone-else")
    assert [v.field for v in field_violations(other_run)] == ["run_id"]


# --- snapshots and leases --------------------------------------------------------------


async def test_create_snapshot_with_and_without_changes(service: Service, project: Path) -> None:
    workspace = (await service.prepare(project)).workspace
    path = Path(workspace.path)
    request = workspace_pb2.CreateSnapshotRequest(workspace_id=workspace.id)
    unchanged = await service.stub.CreateSnapshot(request)
    assert (unchanged.has_changes, unchanged.snapshot_id, list(unchanged.changed_files)) == (
        False,
        workspace.base_commit,
        [],
    )
    (path / "calc.py").write_text(CALC_FIXED)
    (path / "new.txt").write_text("new\n")
    (path / "ignored.txt").write_text("changed but ignored\n")
    changed = await service.stub.CreateSnapshot(
        workspace_pb2.CreateSnapshotRequest(workspace_id=workspace.id, message="fix add")
    )
    assert changed.has_changes
    assert sorted(changed.changed_files) == ["calc.py", "new.txt"]
    # Snapshots live in the workspace's trusted git directory, not in the agent's `.git`.
    trusted = service.home / "gitdirs" / f"{workspace.id}.git"
    assert changed.snapshot_id == git(trusted, "rev-parse", "HEAD")
    assert git(trusted, "log", "-1", "--format=%s") == "fix add"
    again = await service.stub.CreateSnapshot(request)
    assert (again.has_changes, again.snapshot_id) == (False, changed.snapshot_id)
    (path / "new.txt").unlink()
    default_message = await service.stub.CreateSnapshot(request)
    assert list(default_message.changed_files) == ["new.txt"]
    assert git(trusted, "log", "-1", "--format=%s") == "agentgate: snapshot"


async def test_release_lease_keeps_files_and_ends_agent_runs(service: Service, project: Path) -> None:
    workspace = (await service.prepare(project)).workspace
    released = await service.stub.ReleaseLease(workspace_pb2.ReleaseLeaseRequest(workspace_id=workspace.id))
    assert not released.workspace.leased
    assert "calc.py" in file_names(Path(workspace.path))
    got = await service.stub.GetWorkspace(workspace_pb2.GetWorkspaceRequest(workspace_id=workspace.id))
    assert not got.workspace.leased
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.run_agent(workspace, scripted("default: []"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# --- Verify --------------------------------------------------------------------------------


async def verify(
    service: Service, workspace_id: str, snapshot: str, **settings: object
) -> common_pb2.VerificationReport:
    response = await service.stub.Verify(
        workspace_pb2.VerifyRequest(
            workspace_id=workspace_id,
            snapshot_id=snapshot,
            run_id="run-1",
            iteration=1,
            settings=common_pb2.VerificationSettings(**settings),  # type: ignore[arg-type]
        )
    )
    return response.report


async def test_verify_fails_then_passes_in_a_clean_room(service: Service, project: Path) -> None:
    workspace = (await service.prepare(project)).workspace
    path = Path(workspace.path)
    (path / "ignored.txt").write_text("agent's build output\n")  # in the workspace, not in the snapshot

    failing = await verify(service, workspace.id, workspace.base_commit)
    assert not failing.passed
    assert failing.summary == "L1 failed: 1 of 2 checks failed (unit)"
    assert failing.gate_plan_source == "verify.yaml"
    assert failing.snapshot_commit == workspace.base_commit
    l1 = next(level for level in failing.levels if level.level == "L1")
    unit, clean = l1.checks
    assert not unit.passed and unit.exit_code == 1 and "AssertionError: -1" in unit.output
    assert clean.passed, clean.output  # ignored.txt and .git are not in the clean room

    _, result = await service.run_agent(
        workspace, scripted(f"default: [{{write: {{path: calc.py, content: {json.dumps(CALC_FIXED)}}}}}]")
    )
    assert result.success
    snapshot = await service.stub.CreateSnapshot(workspace_pb2.CreateSnapshotRequest(workspace_id=workspace.id))
    passing = await verify(service, workspace.id, snapshot.snapshot_id)
    assert passing.passed, passing.summary
    assert passing.summary == "All 4 checks passed"  # with the security scan of the change
    assert list(passing.levels_run) == ["L0", "L1"]
    assert (passing.run_id, passing.iteration) == ("run-1", 1)
    # The leased workspace keeps one clean room for all its verifications (reset to each
    # snapshot); releasing the lease deletes it and its index.
    assert len(list((service.home / "cleanrooms").iterdir())) == 1
    await service.stub.ReleaseLease(workspace_pb2.ReleaseLeaseRequest(workspace_id=workspace.id))
    assert list((service.home / "cleanrooms").iterdir()) == []


async def test_verify_only_sees_the_snapshot_not_later_edits(service: Service, project: Path) -> None:
    workspace = (await service.prepare(project)).workspace
    write_file(Path(workspace.path) / "calc.py", CALC_FIXED)  # not snapshotted
    report = await verify(service, workspace.id, workspace.base_commit)
    assert not report.passed


async def test_verify_missing_required_file_fails_l0_and_skips_l1(service: Service, project: Path) -> None:
    workspace = (await service.prepare(project)).workspace
    plan = 'contracts: {required_files: [calc.py, CHANGELOG.md]}\ntests: [{name: unit, command: "true"}]\n'
    report = await verify(service, workspace.id, workspace.base_commit, gate_plan_yaml=plan)
    assert not report.passed
    assert report.gate_plan_source == "inline"
    assert report.summary == "L0 failed: 1 of 3 checks failed (required_file:CHANGELOG.md)"
    l0, l1 = report.levels[0], report.levels[1]
    assert l0.ran and [c.passed for c in l0.checks] == [True, False, True]
    assert [c.kind for c in l0.checks] == ["contract", "contract", "security"]
    assert not l1.ran and l1.skip_reason == "an earlier level failed"
    assert list(report.skipped_levels) == ["L1", "L2", "L3"]


async def test_verify_skip_levels_and_malformed_plan(service: Service, project: Path) -> None:
    workspace = (await service.prepare(project)).workspace
    skipped = await verify(service, workspace.id, "", skip_levels=["L1"])
    assert skipped.passed and list(skipped.levels_run) == ["L0"]
    assert skipped.levels[1].skip_reason == "skipped by harness"
    assert skipped.snapshot_commit == workspace.base_commit  # empty snapshot id = HEAD
    bad = await verify(service, workspace.id, "", gate_plan_yaml="tests:\n  - name: unit\n    run: pytest\n")
    assert not bad.passed
    [check] = bad.levels[0].checks
    assert check.name == "gate-plan" and "tests[0].run" in check.output and "line 3" in check.output


async def test_verify_bad_requests(service: Service, project: Path) -> None:
    workspace = (await service.prepare(project)).workspace
    with pytest.raises(grpc.aio.AioRpcError) as unknown_commit:
        await verify(service, workspace.id, "deadbeef" * 5)
    assert unknown_commit.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as bad_level:
        await verify(service, workspace.id, "", skip_levels=["L9"])
    assert [v.field for v in field_violations(bad_level.value)] == ["settings.skip_levels"]


# --- the process entry point ------------------------------------------------------------


async def test_module_entry_point_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentgate.workspace",
        "--address",
        address,
        "--home",
        str(tmp_path / "h"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aio_channel(address, credential=service_credential(tmp_path / "h")) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="agentgate.v1.WorkspaceService")
            reply = await health.Check(request, wait_for_ready=True, timeout=20)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stub = workspace_pb2_grpc.WorkspaceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetWorkspace(workspace_pb2.GetWorkspaceRequest(workspace_id="ws-0000000000000000"))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
        assert (tmp_path / "h" / "workspace.db").exists()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
