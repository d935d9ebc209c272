"""Issue 22's attacks by a real agent and real checks against the real services: the four
service processes started by `agentgate up`, one work order with `sandbox: off` (a profile),
where every attack must work, and one with the sandbox on, where every attack must fail.

The agent (`attack_agent.py`, `command` driver) tries, from its workspace: reading the
services' token in /proc/<pid>/environ, signalling a service, writing outside its workspace,
reading another run's files and the SQLite databases under $AGENTGATE_HOME, connecting to a
loopback port the test opened, starting more processes than the profile allows (a bounded
fork bomb), reaching a host outside the allowlist (reported as sandbox:connection_refused),
and leaving a double-forked setsid daemon behind. The gate's checks (the trusted plan of the
base commit) follow committed symlinks to /etc/passwd and into the home folder, read the
databases, connect to the loopback port and write more than `policy.max_disk_mb`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Suite, running_suite, suite_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

TOKEN = "ghp_" + "S4ndb0xT0kenN0tF0rAgents" * 2
OTHER_RUN_SECRET = "the result of someone else's run"
PROCESS_LIMIT = 48
PROCESSES_TRIED = 120
REFUSED_HOST = "exfiltrate.example.com"
AGENT = Path(__file__).with_name("attack_agent.py")
HOME_FILE = next((Path.home() / name for name in (".bashrc", ".profile") if (Path.home() / name).is_file()), None)


class Listener:
    """A loopback port the test opens: it greets whoever connects with b"hello"."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"hello")


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    opened = Listener()
    yield opened
    opened.sock.close()


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    """The four services with a token in their environment, another run's files, and the
    profiles `attack-off` (`sandbox: off`) and `attack-on` (a process limit, one more host)."""
    home = tmp_path_factory.mktemp("attacked-home")
    (home / "runs" / "run-other").mkdir(parents=True)
    (home / "runs" / "run-other" / "result.json").write_text(OTHER_RUN_SECRET)
    (home / "profiles").mkdir()
    (home / "profiles" / "attack-off.yaml").write_text("sandbox: off\n")
    (home / "profiles" / "attack-on.yaml").write_text(
        f"sandbox:\n  mode: on\n  max_processes: {PROCESS_LIMIT}\n  allowed_hosts: [api.example.org]\n"
    )
    env = suite_env(home)
    env["AGENTGATE_GITHUB_TOKEN"] = TOKEN
    with running_suite(home, env, up_timeout=90) as running:
        yield running


def _project(root: Path, suite: Suite, listener: Listener, outside: Path) -> Path:
    root.mkdir(parents=True)
    (root / "attack_agent.py").write_text(AGENT.read_text())
    (root / "attack.json").write_text(json.dumps({
        "token": TOKEN,
        "outside": str(outside),
        "other_run_file": str(suite.home / "runs" / "run-other" / "result.json"),
        "other_run_secret": OTHER_RUN_SECRET,
        "agentgate_home": str(suite.home),
        "loopback_port": listener.port,
        "processes": PROCESSES_TRIED,
        "refused_host": REFUSED_HOST,
    }))
    (root / "users.txt").symlink_to("/etc/passwd")
    if HOME_FILE is not None:
        (root / "home-file").symlink_to(HOME_FILE)
    connect = f"import socket; assert socket.create_connection(('127.0.0.1', {listener.port}), 3).recv(16) == b'hello'"
    checks = {
        "symlink-passwd": "test $(grep -c : users.txt) -gt 2",
        "symlink-home": "grep -q . home-file",
        "check-reads-databases": f"head -c 15 {suite.home}/queue.db | grep -q SQLite",
        "check-loopback": f"{sys.executable} -c {json.dumps(connect)}",
        "check-disk": "dd if=/dev/zero of=big.bin bs=1M count=32 2>/dev/null && rm big.bin",
    }
    lines = ['version: "1"', "policy:", "  max_disk_mb: 8", "tests:"]
    lines += [f"  - {{name: {name}, kind: test, command: {json.dumps(cmd)}}}" for name, cmd in checks.items()]
    (root / "verify.yaml").write_text("\n".join(lines) + "\n")
    return root


def _attack(suite: Suite, listener: Listener, root: Path, profile: str) -> dict:
    outside = root / "outside"
    outside.mkdir(parents=True)
    project = _project(root / "project", suite, listener, outside)
    code, out = suite.cli_json(
        "exec", "--path", str(project), "--prompt", "attack", "--agent", "command",
        "--agent-option", f"command={sys.executable} attack_agent.py",
        "--max-iterations", "1", "--profile", profile, "--keep-workspace", timeout=300,
    )
    assert "run_id" in out, (code, out, suite.logs())
    workspace = Path(out["workspace"])
    results = json.loads((workspace / "results.json").read_text())
    # A daemon that outlived the run keeps appending to daemon.log.
    log = workspace / "daemon.log"
    size = log.stat().st_size if log.exists() else 0
    time.sleep(1.5)
    grew = log.exists() and log.stat().st_size > size
    if (workspace / "daemon.pid").exists() and grew:
        # Only the unconfined run's pid is a host pid; end what it left behind.
        os.kill(int((workspace / "daemon.pid").read_text()), signal.SIGKILL)
    report = json.loads((suite.home / "runs" / out["run_id"] / "verification-1.json").read_text())
    checks = {c["name"]: c for level in report.get("levels", []) for c in level.get("checks", [])}
    events = [json.loads(line) for line in suite.cli("watch", out["work_order_id"], "--json").stdout.splitlines()]
    _, status = suite.cli_json("status", out["work_order_id"])
    return {
        "out": out, "results": results, "daemon_survived": grew, "checks": checks, "report": report,
        "events": events, "status": status, "outside": outside,
    }


@pytest.fixture(scope="module")
def attacks(suite: Suite, listener: Listener, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    return {
        mode: _attack(suite, listener, tmp_path_factory.mktemp(f"attack-{mode}"), f"attack-{mode}")
        for mode in ("off", "on")
    }


MODES = pytest.mark.parametrize("mode", ["off", "on"])


def _worked(attacks: dict[str, dict], mode: str, name: str) -> bool:
    return bool(attacks[mode]["results"][name])


@MODES
def test_reading_the_services_token_in_proc_environ(attacks: dict[str, dict], mode: str) -> None:
    assert _worked(attacks, mode, "environ_token") is (mode == "off"), attacks[mode]["results"]


@MODES
def test_signalling_a_service_process(attacks: dict[str, dict], mode: str) -> None:
    assert _worked(attacks, mode, "signal_service") is (mode == "off"), attacks[mode]["results"]


@MODES
def test_writing_outside_the_workspace(attacks: dict[str, dict], mode: str) -> None:
    assert _worked(attacks, mode, "write_outside") is (mode == "off")
    assert (attacks[mode]["outside"] / "from-agent").exists() is (mode == "off")


@MODES
def test_reading_another_runs_files_and_the_databases(attacks: dict[str, dict], mode: str) -> None:
    assert _worked(attacks, mode, "read_other_run") is (mode == "off"), attacks[mode]["results"]
    assert _worked(attacks, mode, "read_databases") is (mode == "off"), attacks[mode]["results"]
    assert attacks[mode]["checks"]["check-reads-databases"]["passed"] is (mode == "off")


@MODES
def test_connecting_to_a_loopback_port_of_the_host(attacks: dict[str, dict], mode: str) -> None:
    assert _worked(attacks, mode, "loopback_port") is (mode == "off"), attacks[mode]["results"]
    assert attacks[mode]["checks"]["check-loopback"]["passed"] is (mode == "off")


@MODES
def test_checks_following_committed_symlinks(attacks: dict[str, dict], mode: str) -> None:
    checks = attacks[mode]["checks"]
    assert checks["symlink-passwd"]["passed"] is (mode == "off"), checks["symlink-passwd"]
    if HOME_FILE is not None:
        assert checks["symlink-home"]["passed"] is (mode == "off"), checks["symlink-home"]


@MODES
def test_a_setsid_double_forked_daemon_outliving_the_run(attacks: dict[str, dict], mode: str) -> None:
    assert attacks[mode]["results"]["daemon"] is True  # it started in both modes
    assert attacks[mode]["daemon_survived"] is (mode == "off")


@MODES
def test_a_bounded_fork_bomb(attacks: dict[str, dict], mode: str) -> None:
    started = attacks[mode]["results"]["processes"]
    if mode == "off":
        assert started == PROCESSES_TRIED
    else:
        assert started < PROCESS_LIMIT, attacks[mode]["results"]


@MODES
def test_max_disk_mb_of_the_plan(attacks: dict[str, dict], mode: str) -> None:
    assert attacks[mode]["checks"]["check-disk"]["passed"] is (mode == "off")


def test_a_refused_connection_is_an_event(attacks: dict[str, dict]) -> None:
    assert attacks["on"]["results"]["proxy_refused"] is True
    refused = [e for e in attacks["on"]["events"] if e["type"] == "sandbox:connection_refused"]
    assert refused, [e["type"] for e in attacks["on"]["events"]]
    payload = refused[0]["sandbox_connection_refused"]
    assert (payload["host"], payload["port"]) == (REFUSED_HOST, 443)
    assert "allowlist" in payload["reason"]
    assert not [e for e in attacks["off"]["events"] if e["type"] == "sandbox:connection_refused"]


def test_sandbox_off_is_shown_in_the_status_and_the_report(attacks: dict[str, dict]) -> None:
    assert attacks["off"]["status"]["sandbox"] == "off"
    assert attacks["on"]["status"]["sandbox"] == "on"
    assert "sandbox: off" in attacks["off"]["report"]["summary"]
    assert "sandbox: off" not in attacks["on"]["report"]["summary"]
