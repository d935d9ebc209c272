"""Faults: each service in turn is killed with SIGKILL in the middle of running work orders
and brought back by `agentgate up --detach`. Every work order must end (succeeded, or failed
with a clear error), none may be lost or run twice, every event sequence is 1..N without a
gap, and every SQLite file passes its integrity check."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentgate.client import AgentGateClient
from agentgate.common.events import TERMINAL_EVENT_TYPES
from agentgate.v1 import common_pb2

from .conftest import Suite, suite_env
from .helpers import FIXED, make_project

pytestmark = pytest.mark.slow

WORK_ORDERS_PER_ROUND = 3
# Iteration 1 takes a while (so the kill lands mid-run), iteration 2 fixes the bug.
SLOW_THEN_FIX = (
    "iterations:\n"
    "  1:\n"
    "    - print: thinking\n"
    "    - sleep: 1.5\n"
    "  2:\n"
    f"    - write: {{path: calc.py, content: {json.dumps(FIXED)}}}\n"
)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    home = tmp_path_factory.mktemp("faults-home")
    env = suite_env(home)
    env["AGENTGATE_LEASE_SECONDS"] = "3"  # a dead worker's lease expires fast
    env["AGENTGATE_MAX_CONCURRENT"] = "2"
    running = Suite(home=home, env=env)
    up = running.cli("up", "--detach", timeout=60)
    if up.returncode != 0:
        running.cli("down")
        raise AssertionError(f"agentgate up failed:\n{up.stdout}\n{up.stderr}\n{running.logs()}")
    yield running
    running.cli("down", timeout=60)


@pytest.fixture(scope="module")
def client(suite: Suite) -> Iterator[AgentGateClient]:
    with AgentGateClient(suite.address("queue"), suite.address("persistence"), token=suite.token) as made:
        yield made


def service_pid(suite: Suite, service: str) -> int:
    """The pid of a service (the first orchestrator worker for the orchestrator), from `agentgate ps`."""
    rows = json.loads(suite.cli("ps", "--json", check=True).stdout)
    pids = sorted((row["name"], row["pid"]) for row in rows if row["name"].startswith(service) and row["pid"])
    assert pids, rows
    return int(pids[0][1])


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - a service may be down for a moment
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def integrity_ok(home: Path) -> None:
    databases = sorted(home.rglob("*.db"))
    assert {db.name for db in databases} >= {"queue.db", "persistence.db"}
    for path in databases:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)], path


@pytest.mark.parametrize("victim", ["orchestrator", "workspace", "queue", "persistence"])
def test_sigkill_mid_run_loses_and_duplicates_nothing(suite: Suite, client: AgentGateClient, tmp_path: Path,
                                                       victim: str):
    project = make_project(tmp_path / "project")
    script = tmp_path / "script.yaml"
    script.write_text(SLOW_THEN_FIX)
    submitted = []
    for index in range(WORK_ORDERS_PER_ROUND):
        result = suite.cli("submit", "--path", str(project), "--prompt", f"Fix add() #{index} ({victim})",
                           "--agent", "scripted", "--agent-option", f"script={script}", "--json", check=True)
        submitted.append(json.loads(result.stdout)["work_order_id"])

    # Kill the victim while an agent is running.
    def agent_running() -> bool:
        return any(e.type == "agent:started" for e in client.events(submitted[0], follow=False))

    wait_until(agent_running, 60, "the first agent to start")
    os.kill(service_pid(suite, victim), signal.SIGKILL)
    time.sleep(0.5)
    up = suite.cli("up", "--detach", timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr, suite.logs())

    # Every work order ends.
    finals = {}
    for work_order_id in submitted:
        status = client.wait(work_order_id, timeout=120)
        finals[work_order_id] = status
        work_order, run = status.work_order, status.run
        if work_order.status != common_pb2.WORK_ORDER_STATUS_SUCCEEDED:
            assert work_order.status == common_pb2.WORK_ORDER_STATUS_FAILED, work_order
            assert (run.error if run else "") or work_order.error, f"{work_order_id} failed without an error"

    # None lost, none duplicated: each listed once, each with exactly one run.
    listed = [wo.id for wo in client.work_orders(limit=1000)]
    for work_order_id in submitted:
        assert listed.count(work_order_id) == 1
        runs = client.runs(work_order_id)
        assert [r.id for r in runs] == [finals[work_order_id].work_order.run_id], runs

    # Event sequences without gaps, ending with the run's end when it succeeded.
    for work_order_id, status in finals.items():
        events = list(client.events(work_order_id, follow=False))
        assert [e.seq for e in events] == list(range(1, len(events) + 1)), (victim, [e.type for e in events])
        if status.succeeded:
            assert events[-1].type in TERMINAL_EVENT_TYPES, [e.type for e in events]
            assert status.run is not None and status.run.state == common_pb2.RUN_STATE_SUCCEEDED
    integrity_ok(suite.home)
    # The restarted service is a new process, serving.
    assert suite.cli("health").returncode == 0

    # A killed worker's run is picked up again in a new workspace; the one it held stays
    # leased by the dead worker until `agentgate gc` removes it (docs/workspaces.md, "gc").
    # Then nothing of any run is left on disk.
    gc = json.loads(suite.cli("gc", "--json", check=True).stdout)
    assert gc["kept"] == [], gc
    if victim == "orchestrator":
        assert gc["deleted_workspace_ids"], gc
    for name in ("workspaces", "gitdirs", "cleanrooms", "agent-homes"):
        folder = suite.home / name
        assert not folder.is_dir() or not any(folder.iterdir()), (name, sorted(p.name for p in folder.iterdir()))
