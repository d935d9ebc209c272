"""`agentgate up` with AGENTGATE_TOKEN set: it becomes the suite's stored token; the four
processes refuse callers without it (CLI, buf curl, the Node.js client), accept them with it
(from the variable or the token file), keep health and reflection open, and call each other
with their own credentials; a service beyond loopback requires it too (auth is on by default)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import AGENTGATE, Suite, free_port, running_suite, suite_env
from .helpers import fixing_script, make_project

pytestmark = pytest.mark.slow

TOKEN = "e2e-token-5f1c2a9b7d"
ROOT = Path(__file__).resolve().parents[2]
BUF = shutil.which("buf") or str(ROOT / "tools/node_modules/.bin/buf")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    home = tmp_path_factory.mktemp("secured-home")
    env = suite_env(home)
    env["AGENTGATE_TOKEN"] = TOKEN
    with running_suite(home, env) as running:
        yield running


def without_token(suite: Suite, token: str | None = None, file: bool = False) -> dict[str, str]:
    """The suite's environment without its token: `token` instead, or none at all (not even
    the token file of the home, unless `file`)."""
    env = {key: value for key, value in suite.env.items() if key != "AGENTGATE_TOKEN"}
    if token is not None:
        env["AGENTGATE_TOKEN"] = token
    elif not file:
        env["AGENTGATE_TOKEN_FILE"] = str(suite.home / "no-such-token-file")
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENTGATE, *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_with_the_token_runs_a_work_order(secured: Suite, tmp_path: Path):
    project = make_project(tmp_path / "project")
    code, out = secured.cli_json(
        "exec", "--path", str(project), "--prompt", "Fix add()", "--agent", "scripted",
        "--agent-option", f"script={fixing_script(tmp_path / 'fix.yaml')}",
    )
    assert code == 0, (out, secured.logs())
    assert out["status"] == "SUCCEEDED" and out["iterations"] == 2
    listed = secured.cli("list", "--json", check=True)
    assert out["work_order_id"] in listed.stdout
    # Without the variable, the CLI finds the token `up` stored under $AGENTGATE_HOME/auth.
    assert (secured.home / "auth" / "token").read_text().strip() == TOKEN
    found = cli(without_token(secured, file=True), "list", "--json")
    assert found.returncode == 0 and out["work_order_id"] in found.stdout, found.stderr


@pytest.mark.parametrize("token", [None, "wrong-token"], ids=["missing", "wrong"])
def test_cli_without_the_right_token_is_refused(secured: Suite, tmp_path: Path, token: str | None):
    env = without_token(secured, token)
    listed = cli(env, "list")
    assert listed.returncode == 3
    assert "UNAUTHENTICATED" in listed.stderr and "AGENTGATE_TOKEN" in listed.stderr
    project = make_project(tmp_path / "project")
    submitted = cli(env, "submit", "--path", str(project), "--prompt", "x", "--agent", "scripted",
                    "--agent-option", f"script={fixing_script(tmp_path / 'fix.yaml')}")
    assert submitted.returncode == 3 and "UNAUTHENTICATED" in submitted.stderr
    # Health stays open: probes and `agentgate health` need no token.
    assert cli(env, "health").returncode == 0


def test_buf_curl_needs_the_header_except_for_reflection(secured: Suite):
    url = f"http://{secured.address('queue')}"
    base = [BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    listed = subprocess.run([*base, "--list-services", url], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "agentgate.v1.QueueService" in listed.stdout, listed.stderr
    stats = f"{url}/agentgate.v1.QueueService/GetQueueStats"
    refused = subprocess.run([*base, stats], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "unauthenticated" in refused.stderr.lower()
    answered = subprocess.run(
        [*base, "-H", f"Authorization: Bearer {TOKEN}", stats], capture_output=True, text=True, timeout=60
    )
    assert answered.returncode == 0, answered.stderr
    assert '"maxConcurrent"' in answered.stdout


def test_node_client_sends_the_token(secured: Suite, tmp_path: Path):
    project = make_project(tmp_path / "project")
    args = ["node", str(ROOT / "clients/node/submit.js"), "--path", str(project), "--prompt", "Fix add()",
            "--agent", "scripted", "--agent-option-file", f"script={fixing_script(tmp_path / 'fix.yaml')}"]
    refused = subprocess.run(args, env=without_token(secured), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 3 and "UNAUTHENTICATED" in refused.stderr
    # From AGENTGATE_TOKEN, and from the token file of $AGENTGATE_HOME when it is not set.
    for env in (secured.env, without_token(secured, file=True)):
        ran = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, (ran.stdout, ran.stderr)
        assert ran.stdout.strip().splitlines()[-1].startswith("SUCCEEDED")


def test_a_service_beyond_loopback_requires_a_token_it_made_itself(secured: Suite):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from agentgate.v1 import queue_pb2, queue_pb2_grpc

    home = secured.home / "other"
    address = f"0.0.0.0:{free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "agentgate.queue", "--address", address, "--home", str(home)],
        env=without_token(secured, file=True), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        local = address.replace("0.0.0.0", "127.0.0.1")
        with grpc.insecure_channel(local) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as refused:
                queue_pb2_grpc.QueueServiceStub(channel).GetQueueStats(queue_pb2.GetQueueStatsRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert oct((home / "auth" / "token").stat().st_mode & 0o777) == "0o600"
    finally:
        process.terminate()
        process.wait(timeout=30)
