"""Secrets an agent prints never reach a file under $AGENTGATE_HOME (run files, SQLite files,
logs, prompts, audit), nor the streamed events; and `agentgate runs …` / `agentgate logs`
show what a failed run did. The four services run as real processes (docs/troubleshooting.md, docs/clients.md)."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Suite, running_suite, suite_env

pytestmark = pytest.mark.slow

# Built at run time by the agent and the check, so these exact strings appear in no input
# (work order, script, gate plan): whatever holds them got them from the agent's output.
GHP = "gh" + "p_" + "R" * 18 + "7" * 18
SK = "s" + "k-" + "live" + "X9" * 12
CONFIGURED = "cfg-" + "value-" + "0042abcd"
CONFIGURED_ENV = "E2E_DEMO_API_KEY"
SECRETS = (GHP, SK, CONFIGURED)

AGENT = """import sys
ghp = "gh" + "p_" + "R" * 18 + "7" * 18
sk = "s" + "k-" + "live" + "X9" * 12
cfg = "cfg-" + "value-" + "0042abcd"
print("found a token", ghp)
print("Authorization: Bearer " + cfg)
print("key", sk, file=sys.stderr)
open("NOTES.md", "a").write("looked\\n")
"""
CHECK = "import sys; print('gh' + 'p_' + 'R' * 18 + '7' * 18, 's' + 'k-' + 'live' + 'X9' * 12); sys.exit(1)"


@pytest.fixture(scope="module")
def secret_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    """A suite whose services have a configured secret in their environment."""
    home = tmp_path_factory.mktemp("secrets-home")
    env = suite_env(home)
    env[CONFIGURED_ENV] = CONFIGURED
    with running_suite(home, env) as running:
        yield running


@pytest.fixture(scope="module")
def failed_run(secret_suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A work order whose agent prints secrets and whose check fails twice."""
    root = tmp_path_factory.mktemp("secret-project")
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (root / "verify.yaml").write_text(
        'version: "1"\ntests:\n'
        f"  - name: unit\n    kind: test\n    command: {json.dumps(f'{sys.executable} -c {shlex.quote(CHECK)}')}\n"
    )
    # The agent's script lives outside the project, as a user's would; the sandbox shows
    # it to the agent because the work order names its folder read-only.
    agent = tmp_path_factory.mktemp("secret-agent") / "secret_agent.py"
    agent.write_text(AGENT)
    code, out = secret_suite.cli_json(
        "exec", "--path", str(root), "--prompt", "Fix add()", "--agent", "command",
        "--agent-option", f"command={sys.executable} {agent}", "--max-iterations", "2",
        "--sandbox-read-only", str(agent.parent),
        # Kept, so that its prompt files are searched below too.
        "--keep-workspace",
    )
    assert code == 1 and out["status"] == "FAILED", (out, secret_suite.logs())
    return out


def _trash_emptied(home: Path, timeout: float = 20.0) -> None:
    """Waits until the trees the run's end discarded are deleted: that happens behind the
    run (docs/workspaces.md, "Clean rooms"), and a file read while it goes would be gone."""
    trash, deadline = home / "trash", time.monotonic() + timeout
    while trash.is_dir() and any(trash.iterdir()):
        assert time.monotonic() < deadline, f"the trash still holds {sorted(p.name for p in trash.iterdir())}"
        time.sleep(0.05)


def test_secrets_reach_no_file_no_database_and_no_event(secret_suite: Suite, failed_run: dict) -> None:
    _trash_emptied(secret_suite.home)
    files = [path for path in secret_suite.home.rglob("*") if path.is_file()]
    names = {path.name for path in files}
    # The places that saw the agent's output exist and were searched.
    assert {"agent-1.json", "verification-2.json", "events.jsonl", "persistence.db", "queue.db"} <= names, names
    assert any(path.suffix == ".log" for path in files) and any(path.name == "prompt-2.md" for path in files)
    for path in files:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret[:6]}… found in {path}"
    agent = json.loads((secret_suite.home / "runs" / failed_run["run_id"] / "agent-1.json").read_text())
    assert agent["stdout"] == "found a token [REDACTED]\nAuthorization: Bearer [REDACTED]\n"
    assert agent["stderr"] == "key [REDACTED]\n"
    watched = secret_suite.cli("watch", failed_run["work_order_id"], "--json", check=True).stdout
    assert "[REDACTED]" in watched and "agent:output" in watched
    for secret in SECRETS:
        assert secret not in watched


def test_runs_commands_explain_the_failure(secret_suite: Suite, failed_run: dict) -> None:
    run_id = failed_run["run_id"]
    show = json.loads(secret_suite.cli("runs", "show", run_id, "--json", check=True).stdout)
    assert show["run"]["error"] == "Test execution failed. Details: agent-2.json, verification-2.json"
    assert show["run"]["build_error"]["type"] == "BUILD_ERROR_TYPE_TEST_FAILED"
    assert [i["iteration"] for i in show["iterations"]] == [1, 2]
    assert show["run_dir"].endswith(f"runs/{run_id}")
    human = secret_suite.cli("runs", "show", failed_run["work_order_id"], check=True).stdout
    assert "Test execution failed. Details: agent-2.json, verification-2.json" in human
    assert f"agentgate runs verification {run_id} -i 2" in human and "FAILED" in human

    iterations = json.loads(secret_suite.cli("runs", "iterations", run_id, "--json", check=True).stdout)
    assert [i["verification_file"] for i in iterations] == ["verification-1.json", "verification-2.json"]

    agent = json.loads(secret_suite.cli("runs", "agent", run_id, "1", "--json", check=True).stdout)
    assert agent["iteration"] == 1 and agent["stderr"] == "key [REDACTED]\n"
    text = secret_suite.cli("runs", "agent", run_id, "-i", "1", check=True).stdout
    assert "found a token [REDACTED]" in text and "--- stderr ---" in text

    report = json.loads(secret_suite.cli("runs", "verification", run_id, "--json", check=True).stdout)
    assert report["iteration"] == 2 and report["passed"] is False
    text = secret_suite.cli("runs", "verification", run_id, "1", check=True).stdout
    assert "unit" in text and "[REDACTED] [REDACTED]" in text  # the failed check's output tail

    listed = json.loads(secret_suite.cli("runs", "list", "--state", "failed", "--json", check=True).stdout)
    assert run_id in [run["id"] for run in listed]
    assert secret_suite.cli("runs", "list", "--state", "nonsense").returncode == 2

    assert secret_suite.cli("logs", run_id, "-i", "2", check=True).stdout.startswith("found a token [REDACTED]")
    logs = json.loads(secret_suite.cli("logs", run_id, "--stderr", "--json", check=True).stdout)
    assert [(entry["iteration"], entry["text"]) for entry in logs] == [(1, "key [REDACTED]\n"), (2, "key [REDACTED]\n")]

    missing = secret_suite.cli("runs", "agent", run_id, "-i", "9")
    assert missing.returncode == 1 and "agent-9.json" in missing.stderr
