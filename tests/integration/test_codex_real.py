"""The real `codex` CLI (pinned in tools/agents/package.json, installed by `make agent-clis`)
against our fake OpenAI Responses API server (tests/fake_models/openai.py), through the
real services in one event loop: work orders that fail verification, resume the thread and
succeed; a 401; a 500 retried until the server recovers; a token cap that stops codex in
the middle of an execution; a lost thread; refused tool calls.

Nothing here is a stand-in: codex runs its real tools (commands, apply_patch) in the
workspace. The tests fail, not skip, when the CLI is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agentgate.v1 import common_pb2, workspace_pb2

from ..fake_models.openai import (
    API_KEY,
    API_KEY_ENV,
    MODEL,
    FakeOpenAI,
    LoggedRequest,
    Reply,
    command,
    http_error,
    message,
    patch,
    replace_patch,
    reply,
)
from .inprocess_suite import InProcessSuite
from .workspace_client import WorkspaceClient, git, workspace_service, write_files

R = common_pb2.RunResult
T = common_pb2.BuildErrorType
REPO = Path(__file__).resolve().parents[2]
CODEX_BIN = REPO / "tools" / "agents" / "node_modules" / ".bin"
BUGGY = "    return a - b"


@pytest.fixture(autouse=True)
def codex_on_path(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The pinned codex first on the services' PATH; a missing CLI fails the test loudly."""
    executable = CODEX_BIN / "codex"
    if not executable.exists():
        pytest.fail(f"the real codex CLI is not installed at {executable}: run `make agent-clis`")
    monkeypatch.setenv("PATH", f"{CODEX_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return executable


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An AGENTGATE_HOME outside the temporary folder: codex refuses to install its sandbox
    helpers in a home under it, and the run's codex home lives in AGENTGATE_HOME."""
    path = Path.home() / ".cache" / "agentgate-tests" / f"codex-{uuid.uuid4().hex[:12]}"
    path.mkdir(parents=True)
    monkeypatch.setenv("AGENTGATE_HOME", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """The fake model server, and the operator's codex home pointing codex at it (a custom
    provider in config.toml; the key in the service's environment, never in a file).
    Codex's own retries are cut to one so a failing test does not wait for five."""
    with FakeOpenAI() as server:
        operator = home / "operator-codex"
        server.write_codex_config(operator, request_max_retries=1, stream_max_retries=1)
        monkeypatch.setenv("CODEX_HOME", str(operator))
        monkeypatch.setenv(API_KEY_ENV, API_KEY)
        yield server


@pytest.fixture
async def suite(home: Path, fake: FakeOpenAI) -> AsyncIterator[InProcessSuite]:
    running = await InProcessSuite.start(home)
    yield running
    await running.stop()


def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    write_files(
        root,
        {
            "calc.py": f"def add(a, b):\n{BUGGY}\n",
            "verify.yaml": 'version: "1"\ntests:\n  - {name: unit, kind: test, command: "grep -q \'a + b\' calc.py"}\n',
        },
    )
    return root


def spec(root: Path, *, max_iterations: int = 3, **limits: int) -> common_pb2.WorkOrderSpec:
    built = common_pb2.WorkOrderSpec(task_prompt="Fix add() in calc.py", agent=common_pb2.AgentSpec(name="codex"))
    built.source.local_path = str(root)
    built.harness.loop_strategy.max_iterations = max_iterations
    built.harness.limits.agent_timeout_seconds = 120
    # Backoff between agent attempts short enough for a test, still exercised.
    built.harness.retry.initial_backoff_seconds = 0.2
    built.harness.retry.max_backoff_seconds = 0.5
    # The run's codex home is inspected after the run (docs/workspaces.md, "Retention").
    built.harness.retention.workspace = common_pb2.WORKSPACE_RETENTION_KEEP
    for key, value in limits.items():
        setattr(built.harness.limits, key, value)
    return built


def outage_of_first_thread(status: int, text: str):
    """An intercept: every request of the first codex thread seen is answered `status`."""
    first: list[str] = []

    def intercept(request: LoggedRequest) -> Reply | None:
        if not first:
            first.append(request.thread_id)
        return http_error(status, text) if request.thread_id == first[0] else None

    return intercept


def files_containing(root: Path, needle: str) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle.encode() in path.read_bytes():
                    found.append(path)
            except OSError:
                continue
    return found


async def test_fails_verification_then_resumes_the_thread_and_succeeds(suite, fake, home, tmp_path):
    fake.add(
        # Iteration 1: look, then a wrong fix the gate refuses.
        reply(command("cat calc.py"), usage=(1000, 20)),
        reply(patch(replace_patch("calc.py", BUGGY, "    return a * b")), usage=(1100, 30)),
        reply(message("Changed the operator."), usage=(1200, 5)),
        # Iteration 2, same thread with the feedback: run a command, the right fix, answer.
        reply(command("grep -n return calc.py"), usage=(1500, 15)),
        reply(patch(replace_patch("calc.py", "    return a * b", "    return a + b")), usage=(1600, 25)),
        reply(message("Fixed add()."), usage=(1700, 6)),
    )
    work_order = await suite.submit(spec(project(tmp_path)))
    final = await suite.wait_terminal(work_order.id, timeout=240)
    run = await suite.run(work_order.run_id)
    assert final.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED, run.error
    assert run.iteration_count == 2 and fake.problems == []
    first = suite.run_file(work_order.run_id, "agent-1.json")
    second = suite.run_file(work_order.run_id, "agent-2.json")

    # One thread: iteration 2 resumed it (codex sent the same thread id), with the feedback.
    assert first["session_id"] and second["session_id"] == first["session_id"]
    requests = fake.responses_requests()
    assert {r.thread_id for r in requests} == {first["session_id"]}
    assert any("a * b" in text or "unit" in text for text in requests[3].user_texts()[-1:])
    # Per-iteration tokens (codex reports the thread's cumulative usage) add up to what was served.
    tokens = [(int(a["tokens"]["input"]), int(a["tokens"]["output"])) for a in (first, second)]
    assert tokens == [(3300, 55), (4800, 46)]
    assert sum(t[0] for t in tokens) == fake.served.input_tokens
    assert sum(t[1] for t in tokens) == fake.served.output_tokens
    assert run.tokens.total == fake.served.input_tokens + fake.served.output_tokens
    # The tool calls, with their outputs; one model name for the run.
    assert [c["tool"] for c in first["tool_calls"]] == ["command_execution", "file_change"]
    assert "return a - b" in first["tool_calls"][0]["output"]
    assert first["tool_calls"][1]["output"].startswith("completed: update")
    assert [c["tool"] for c in second["tool_calls"]] == ["command_execution", "file_change"]
    assert first["model"] == second["model"] == MODEL
    # The key reached codex (its Authorization header) and no file we wrote holds it.
    assert {r.headers.get("authorization") for r in requests} == {f"Bearer {API_KEY}"}
    assert files_containing(home, API_KEY) == []
    # The run's own codex home, outside the workspace and the temporary folder.
    run_home = home / "agent-homes" / work_order.run_id / "codex"
    assert (run_home / "config.toml").is_file() and list((run_home / "sessions").rglob("rollout-*.jsonl"))


async def test_401_ends_the_run_after_one_iteration_with_the_api_message(suite, fake, tmp_path):
    text = "Incorrect API key provided: sk-agent***. You can find your API key at https://platform.openai.com."
    fake.intercept = lambda request: http_error(401, text, code="invalid_api_key")
    work_order = await suite.submit(spec(project(tmp_path)))
    final = await suite.wait_terminal(work_order.id, timeout=120)
    assert final.status == common_pb2.WORK_ORDER_STATUS_FAILED
    run = await suite.run(work_order.run_id)
    assert run.iteration_count == 1
    assert run.build_error.type == T.BUILD_ERROR_TYPE_AGENT_AUTH_ERROR
    assert "Incorrect API key provided" in run.error and "reported success" not in run.error
    iteration = suite.run_file(work_order.run_id, "iteration-1.json")
    assert len(iteration.get("attempts", [])) <= 1  # not retried: the credentials stay wrong
    assert iteration["decision"]["metadata"]["rule"] == "agent_auth_error"


async def test_500_is_retried_and_succeeds_when_the_server_recovers(suite, fake, tmp_path):
    fake.intercept = outage_of_first_thread(500, "The server had an error while processing your request.")
    fake.add(
        reply(patch(replace_patch("calc.py", BUGGY, "    return a + b")), usage=(900, 40)),
        reply(message("Fixed."), usage=(1000, 4)),
    )
    work_order = await suite.submit(spec(project(tmp_path)))
    final = await suite.wait_terminal(work_order.id, timeout=180)
    run = await suite.run(work_order.run_id)
    assert final.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED, run.error
    assert run.iteration_count == 1 and fake.problems == []
    events = await suite.events(work_order.id)
    retries = [e.retry_attempt for e in events if e.type == "retry:attempt" and e.retry_attempt.operation == "agent"]
    assert [r.success for r in retries] == [False, True]
    assert retries[0].error_type == T.BUILD_ERROR_TYPE_AGENT_API_ERROR
    assert len({r.thread_id for r in fake.responses_requests()}) == 2  # codex's retries, then ours
    agent = suite.run_file(work_order.run_id, "agent-1.json")
    assert agent["success"] and int(agent["tokens"]["input"]) == 1900


async def test_token_cap_stops_codex_in_the_middle_of_an_execution(suite, fake, tmp_path):
    step = (1000, 10)
    fake.add(*[reply(command(f"echo step {n}"), usage=step) for n in range(12)], reply(message("done")))
    cap = 3500
    work_order = await suite.submit(spec(project(tmp_path), max_total_tokens=cap))
    final = await suite.wait_terminal(work_order.id, timeout=180)
    assert final.status == common_pb2.WORK_ORDER_STATUS_FAILED
    run = await suite.run(work_order.run_id)
    assert run.build_error.type == T.BUILD_ERROR_TYPE_BUDGET_EXCEEDED
    agent = suite.run_file(work_order.run_id, "agent-1.json")
    used = int(agent["tokens"]["total"])
    # Stopped within one model response (plus the one codex may have asked for meanwhile).
    assert cap < used <= cap + 2 * sum(step), used
    assert len(fake.responses_requests()) < 12
    assert agent["tool_calls"], "the partial result is kept"
    types = [e.type for e in await suite.events(work_order.id)]
    assert "budget:exceeded" in types


async def test_cost_cap_with_prices_stops_codex_in_the_middle_of_an_execution(suite, fake, tmp_path):
    """Codex prints no cost: with the `pricing` option the driver prices the tokens it reads
    while codex runs, and a cost cap stops it like a token cap does."""
    step = (1000, 10)
    fake.add(*[reply(command(f"echo step {n}"), usage=step) for n in range(12)], reply(message("done")))
    built = spec(project(tmp_path))
    built.harness.limits.max_cost_usd = 0.0035
    # $1 per million input tokens, output free: each model response costs $0.001.
    built.agent.options["pricing"] = "1,1,0"
    work_order = await suite.submit(built)
    final = await suite.wait_terminal(work_order.id, timeout=180)
    assert final.status == common_pb2.WORK_ORDER_STATUS_FAILED
    run = await suite.run(work_order.run_id)
    assert run.build_error.type == T.BUILD_ERROR_TYPE_BUDGET_EXCEEDED
    assert "Cost budget exceeded" in run.build_error.message
    agent = suite.run_file(work_order.run_id, "agent-1.json")
    cost = float(agent["cost_usd"])
    assert cost == pytest.approx(int(agent["tokens"]["input"]) / 1e6)
    assert 0.0035 < cost <= 0.0035 + 2 * 0.001, cost
    assert len(fake.responses_requests()) < 12


# --- one execution through the workspace service ------------------------------------------------


@pytest.fixture
async def client(home: Path, fake: FakeOpenAI) -> AsyncIterator[WorkspaceClient]:
    async with workspace_service(home) as running:
        yield running


@pytest.fixture
async def workspace(client: WorkspaceClient, tmp_path: Path) -> workspace_pb2.Workspace:
    root = project(tmp_path)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    return await client.prepare(root)


async def test_a_lost_thread_falls_back_to_a_fresh_session_with_the_full_prompt(client, workspace, fake):
    fake.add(reply(message("Starting over."), usage=(500, 5)))
    lost = str(uuid.uuid4())
    prompt = "Fix add()\n\n## Feedback\nunit failed"
    outputs, result = await client.run_agent(
        workspace, common_pb2.AgentSpec(name="codex"), prompt=prompt, iteration=2, resume_session_id=lost
    )
    assert result.success, result.stderr
    assert result.session_id and result.session_id != lost
    assert lost in result.session_note and "fresh session" in result.session_note
    assert any("fresh session" in o.text for o in outputs)
    [request] = fake.responses_requests()
    assert prompt in "\n".join(request.user_texts())
    assert (result.tokens.input, result.tokens.output) == (500, 5)


async def test_a_codex_login_reaches_the_sandboxed_agent_read_only(client, workspace, fake, monkeypatch):
    """A `codex login` (auth.json in the operator's codex home, which the sandbox hides like
    every login folder and all of AGENTGATE_HOME) reaches the agent through its run home's
    link, read-only: the request carries the login's key and the agent cannot rewrite it."""
    monkeypatch.delenv(API_KEY_ENV)
    operator = Path(os.environ["CODEX_HOME"])
    # The built-in OpenAI provider (the one a login is for), at the fake's address.
    (operator / "config.toml").write_text(f'model = "{MODEL}"\nopenai_base_url = "{fake.base_url}"\n')
    auth = operator / "auth.json"
    login = json.dumps({"auth_mode": "apikey", "OPENAI_API_KEY": "sk-login-0123456789"})
    auth.write_text(login)
    fake.add(reply(command(f"sh -c 'echo hacked > {auth}'")), reply(message("Done.")))
    _, result = await client.run_agent(workspace, common_pb2.AgentSpec(name="codex"), prompt="x", iteration=1)
    assert result.success, result.stderr
    requests = fake.responses_requests()
    assert requests and {r.headers.get("authorization") for r in requests} == {"Bearer sk-login-0123456789"}
    assert auth.read_text() == login
    assert "Read-only file system" in result.tool_calls[0].output


def test_refused_tool_calls_with_a_home_under_the_temporary_folder(fake, tmp_path, codex_on_path):
    """The same refusal, reproduced directly with the real CLI (a codex home under /tmp), fed
    to the driver's parser: every call is recorded with its error and the execution fails."""
    import subprocess

    from agentgate.workspace.drivers.codex import CodexStreamParser

    fake.add(
        reply(command("ls"), usage=(100, 5)),
        reply(patch(replace_patch("calc.py", BUGGY, "    return a + b")), usage=(100, 5)),
        reply(message("Done."), usage=(100, 5)),
    )
    temp_home = tmp_path / "codex-home"
    shutil.copytree(Path(os.environ["CODEX_HOME"]), temp_home)
    root = project(tmp_path)
    git(root, "init", "-q")
    completed = subprocess.run(
        [str(codex_on_path), "exec", "--json", "--sandbox", "workspace-write", "-"],
        input="Fix add()",
        text=True,
        capture_output=True,
        cwd=root,
        env={**os.environ, "CODEX_HOME": str(temp_home)},
        timeout=120,
    )
    parser = CodexStreamParser()
    for line in completed.stdout.splitlines():
        parser.feed(json.loads(line), 0.0)
    for line in completed.stderr.splitlines():
        parser.stderr_line(line)
    result = common_pb2.AgentResult()
    failure = parser.apply(result, 0.0)
    if "Refusing to create helper binaries" not in completed.stderr:
        pytest.fail(f"codex no longer refuses a home under the temporary folder: {completed.stderr[:500]}")
    assert "refused by its own sandbox" in failure, completed.stdout
    assert result.error_type == T.BUILD_ERROR_TYPE_AGENT_CRASH
    assert all(call.output.startswith("ERROR:") for call in result.tool_calls)
    assert "return a - b" in (root / "calc.py").read_text()


async def test_agents_listing_reports_the_codex_version(client):
    response = await client.stub.ListAgentDrivers(workspace_pb2.ListAgentDriversRequest())
    codex = {d.name: d for d in response.drivers}["codex"]
    assert codex.available and codex.version == "codex-cli 0.171.0"
    assert {d.name: d for d in response.drivers}["scripted"].version == ""


async def test_inside_our_sandbox_auto_lets_codex_run_commands_and_edit(fake, home, tmp_path):
    """The driver in AgentGate's bubblewrap sandbox (host network here, so the fake on the
    host's loopback is reachable; the service uses the allowlist proxy). `sandbox=auto` runs
    codex with danger-full-access: its own sandbox cannot nest in ours (`bwrap: Creating new
    namespace failed`), which the explicit workspace-write run shows as refused calls."""
    from agentgate.workspace.drivers.api import AgentInvocation
    from agentgate.workspace.drivers.codex import CodexDriver
    from agentgate.workspace.sandbox import Sandbox, SandboxSpec

    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is missing: run `make sandbox-deps`")
    root = project(tmp_path)
    git(root, "init", "-q")

    async def run(options: dict[str, str], run_id: str) -> common_pb2.AgentResult:
        run_dir = home / "agent-homes" / run_id
        (run_dir / "codex").mkdir(parents=True)
        spec = SandboxSpec(
            writable_dir=root,
            network="host",
            agentgate_home=home,
            extra_writable=(run_dir,),
            extra_read_only=(CODEX_BIN.parent,),
        )
        invocation = AgentInvocation(
            run_id=run_id, workspace_id="ws", workspace=root, iteration=1, attempt=1, prompt="Fix add()",
            options=options, timeout_seconds=120, files_dir=home / "agent-files" / run_id,
            prompt_dir=home / "prompts" / run_id, sandbox=Sandbox(spec), run_dir=run_dir,
        )
        return await CodexDriver().run(invocation, lambda stream, line: None)

    fake.add(
        reply(command("python3 -c 'print(40 + 2)'"), usage=(100, 5)),
        reply(patch(replace_patch("calc.py", BUGGY, "    return a + b")), usage=(100, 5)),
        reply(message("Fixed."), usage=(100, 5)),
    )
    result = await run({}, "run-auto")
    assert result.success, result.stderr
    assert "42" in result.tool_calls[0].output and result.tool_calls[1].output.startswith("completed")
    assert "a + b" in (root / "calc.py").read_text()

    fake.add(
        reply(command("ls"), usage=(100, 5)),
        reply(patch(replace_patch("calc.py", "    return a + b", "    return a * b")), usage=(100, 5)),
        reply(message("Done."), usage=(100, 5)),
    )
    nested = await run({"sandbox": "workspace-write"}, "run-nested")
    assert not nested.success and nested.error_type == T.BUILD_ERROR_TYPE_AGENT_CRASH
    assert "namespace" in nested.tool_calls[0].output and "a + b" in (root / "calc.py").read_text()
