"""`agentgate up` with AGENTGATE_TOKEN set: the four processes refuse callers without the
token (CLI, buf curl, the Node.js client), accept them with it, keep health and reflection
open, and call each other with it; a service refuses to listen beyond loopback without one."""

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


def without_token(suite: Suite, token: str | None = None) -> dict[str, str]:
    env = {key: value for key, value in suite.env.items() if key != "AGENTGATE_TOKEN"}
    if token is not None:
        env["AGENTGATE_TOKEN"] = token
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
    ran = subprocess.run(args, env=secured.env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, (ran.stdout, ran.stderr)
    assert ran.stdout.strip().splitlines()[-1].startswith("SUCCEEDED")


def test_a_service_refuses_a_remote_address_without_a_token(secured: Suite):
    env = without_token(secured)
    address = f"0.0.0.0:{free_port()}"
    refused = subprocess.run(
        [sys.executable, "-m", "agentgate.queue", "--address", address, "--home", str(secured.home / "other")],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode == 2
    assert "AGENTGATE_TOKEN" in refused.stderr and "--allow-insecure-remote" in refused.stderr
