"""The dashboard in a real browser (docs/dashboard.md): the suite started by `agentgate up`
(gateway included), Debian's chromium driven by playwright-core (clients/web/tests/scenario.mjs).

One scenario, in order: log in with `agentgate dashboard`'s URL, submit a work order from the
form (scripted agent: iteration 1 fails, 2 passes), watch its events arrive live, open the
verification report and the diff, measure how fast a streamed event reaches the page, cancel
a waiting work order from the queue page, and replay a work order with 50,000 events.
Screenshots are test artifacts in test-artifacts/screenshots/ (AGENTGATE_SCREENSHOTS
overrides; `make screenshots` writes the copies docs/ shows)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agentgate.common import security
from agentgate.v1 import events_pb2, persistence_pb2, persistence_pb2_grpc
from tests.credentials import service_credential

from .conftest import Suite, running_suite, suite_env
from .helpers import fixing_script, make_project

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "clients" / "web"
CHROMIUM = os.environ.get("AGENTGATE_CHROMIUM", "/usr/bin/chromium")
#: The figure the issue asks for: a streamed event reaches the page within this.
STREAM_LATENCY_BUDGET_MS = 250
BIG_RUN_EVENTS = 50_000


def _missing() -> str | None:
    if not (WEB / "dist" / "index.html").is_file():
        return "the dashboard is not built: run `make dashboard`"
    if not (WEB / "node_modules" / "playwright-core").is_dir():
        return "clients/web/node_modules is missing: run `make dashboard`"
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} is missing: run `make browser-deps`"
    return None


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    """The suite with one run at a time, so a second work order waits."""
    problem = _missing()
    if problem:
        pytest.fail(problem)
    home = tmp_path_factory.mktemp("dashboard-home")
    env = suite_env(home)
    env["AGENTGATE_MAX_CONCURRENT"] = "1"
    with running_suite(home, env) as running:
        yield running


def _persistence(suite: Suite) -> persistence_pb2_grpc.PersistenceServiceStub:
    channel = security.intercept_sync_channel(
        grpc.insecure_channel(suite.address("persistence")), service_credential(suite.home)
    )
    return persistence_pb2_grpc.PersistenceServiceStub(channel)


def _event(work_order: dict, text: str) -> events_pb2.RunEvent:
    return events_pb2.RunEvent(
        type="agent:output",
        work_order_id=work_order["work_order_id"],
        run_id=work_order["run_id"],
        agent_output=events_pb2.AgentOutput(text=text),
    )


def _submit_sleeper(suite: Suite, project: Path, tmp_path: Path, name: str) -> dict:
    script = tmp_path / f"{name}.yaml"
    script.write_text("default:\n  - sleep: 300\n")
    result = suite.cli(
        "submit", "--path", str(project), "--prompt", name, "--agent", "scripted",
        "--agent-option", f"script={script}", "--json", check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def stop_gateway(suite: Suite) -> None:
    """SIGTERM to the gateway `up` started; returns once it is gone."""
    pid = json.loads((suite.home / "run" / "gateway.pid").read_text())["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            break
        time.sleep(0.05)


def test_dashboard_in_a_browser(suite: Suite, tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    login = suite.cli("dashboard", "--json", check=True)
    login_url = json.loads(login.stdout)["url"]
    assert "/login?code=" in login_url and suite.token not in login_url
    shots = Path(os.environ.get("AGENTGATE_SCREENSHOTS") or REPO / "test-artifacts" / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DASHBOARD_LOGIN_URL": login_url,
        "SCREENSHOT_DIR": str(shots),
        "PROJECT": str(project),
        "SCRIPT": fixing_script(tmp_path / "fix.yaml").read_text(),
        "CHROMIUM": CHROMIUM,
    }
    node = subprocess.Popen(
        [shutil.which("node") or "node", str(WEB / "tests" / "scenario.mjs")],
        cwd=WEB, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert node.stdin is not None and node.stdout is not None
    persistence = _persistence(suite)
    results: dict = {}
    try:
        for line in node.stdout:
            line = line.strip()
            if line == "NEED_WAITER":
                _submit_sleeper(suite, project, tmp_path, "blocker")
                waiter = _submit_sleeper(suite, project, tmp_path, "waiter")
                print(f"WAITER {waiter['work_order_id']}", file=node.stdin, flush=True)
            elif line == "READY_FOR_EVENT":
                sent_ms = time.time() * 1000
                seqs = persistence.AppendEvents(
                    persistence_pb2.AppendEventsRequest(events=[_event(waiter, "appended after the page loaded")]),
                    timeout=10,
                ).seqs
                print(f"APPENDED {seqs[0]} {sent_ms}", file=node.stdin, flush=True)
            elif line == "RESTART_GATEWAY":
                stop_gateway(suite)
                seqs = persistence.AppendEvents(
                    persistence_pb2.AppendEventsRequest(events=[_event(waiter, "appended while the gateway was down")]),
                    timeout=10,
                ).seqs
                suite.cli("up", "--detach", check=True)
                print(f"RESTARTED {seqs[0]}", file=node.stdin, flush=True)
            elif line == "NEED_BIG":
                big = _submit_sleeper(suite, project, tmp_path, "big")
                for start in range(0, BIG_RUN_EVENTS, 5000):
                    batch = [_event(big, f"line {n}") for n in range(start, start + 5000)]
                    persistence.AppendEvents(persistence_pb2.AppendEventsRequest(events=batch), timeout=60)
                print(f"BIG {big['work_order_id']} {BIG_RUN_EVENTS}", file=node.stdin, flush=True)
            elif line.startswith("RESULT "):
                results = json.loads(line.removeprefix("RESULT "))
            else:
                print(line, file=sys.stderr)
        node.wait(timeout=60)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    stderr = node.stderr.read() if node.stderr else ""
    assert node.returncode == 0 and results, f"browser scenario failed:\n{stderr}\n{suite.logs()}"

    # Logged in once, the code spent, the token never in a URL.
    assert results["afterLogin"].rstrip("/").endswith(suite.env["AGENTGATE_GATEWAY_ADDR"]), results["afterLogin"]
    assert results["reusedCodeStatus"] == 401
    # The form's work order: events came while the page was open, iteration 1 failed, 2 passed.
    assert results["status"] == "succeeded"
    assert results["eventsAtEnd"] > results["eventsWhenFirstSeen"] >= 1
    assert results["lastEventType"] == "run:complete"
    assert "unit" in results["report1"] and "assert" in results["report1"]
    assert "+    return a + b" in results["diff2"]
    assert results["traceId"] not in ("", "-")
    assert "succeeded" in results["listRow"] and "scripted" in results["listRow"]
    # The waiting one: on the queue page at position 1, canceled from there.
    assert results["queueRow"].startswith("1"), results["queueRow"]
    assert results["waiterPosition"].startswith("Queue position 1 (0 ahead)"), results["waiterPosition"]
    # Through a gateway restart: every event once, in order.
    seqs = results["seqsAfterReconnect"]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 3, seqs
    assert "running 1/1" in results["queueStats"]
    assert json.loads(suite.cli("status", waiter["work_order_id"], "--json").stdout)["status"] == "CANCELED"
    # 50,000 events: all replayed into the list, only a screenful of rows drawn.
    assert results["bigRenderedRows"] < 100
    assert results["pageErrors"] == []
    # Browsers that went away (navigation, the restart) ended their calls quietly.
    gateway_log = (suite.home / "logs" / "gateway.log").read_text()
    assert "Traceback" not in gateway_log and "Error handling request" not in gateway_log, gateway_log[-3000:]
    print(
        f"\nstream latency (append -> page) {results['streamLatencyMs']:.0f} ms (budget {STREAM_LATENCY_BUDGET_MS}); "
        f"{BIG_RUN_EVENTS} events replayed in {results['bigReplayMs']} ms, "
        f"{results['bigRenderedRows']} rows drawn, scroll to the middle {results['bigScrollMs']} ms"
    )
    assert results["streamLatencyMs"] < STREAM_LATENCY_BUDGET_MS
