"""Several replicas on PostgreSQL, end to end (docs/deployment.md, "Several replicas on
PostgreSQL"): two queue replicas, two persistence replicas and two workers as real
processes on one PostgreSQL database; 50 work orders of a cheap scripted agent. Mid-way one
queue replica and one persistence replica are killed with SIGKILL and started again.

Every work order must end SUCCEEDED exactly once (one run, listed once), no run may be
executed twice at the same time (each agent logs its start and end: they alternate), and
every event history must be 1..N with no gap and no event stored twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentgate.client import AgentGateClient
from agentgate.common.events import TERMINAL_EVENT_TYPES
from agentgate.v1 import common_pb2
from tests.pg_server import PgServer

from .conftest import free_port

pytestmark = pytest.mark.slow

WORK_ORDERS = 50
KILL_AFTER_ENDED = 15
VERIFY = """version: "1"
contracts:
  required_files: [done.txt]
tests:
  - {name: ok, kind: test, command: "true", timeout: 30}
"""


class Processes:
    """The service processes of the test, by name; each can be killed and started again."""

    def __init__(self, home: Path, env: dict[str, str]):
        self.home = home
        self.env = env
        self.argv: dict[str, list[str]] = {}
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str] | None = None) -> None:
        if argv is not None:
            self.argv[name] = argv
        log = (self.home / f"{name}.log").open("ab")
        self.running[name] = subprocess.Popen(
            [sys.executable, "-m", *self.argv[name]], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def kill(self, name: str) -> None:
        process = self.running.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for process in self.running.values():
            process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
        self.running.clear()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(self.home.glob("*.log")))


def wait_serving(address: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with grpc.insecure_channel(address) as channel:
            try:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if status.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"{address} did not serve in time")


@pytest.fixture
def cluster(tmp_path: Path, pg_server: PgServer) -> Iterator[tuple[Processes, dict[str, str]]]:
    home = tmp_path / "home"
    home.mkdir()
    url = pg_server.create_database()
    addresses = {
        name: f"127.0.0.1:{free_port()}"
        for name in ("queue-1", "queue-2", "persistence-1", "persistence-2", "workspace", "worker-1", "worker-2")
    }
    env = dict(os.environ)
    env.update(
        AGENTGATE_HOME=str(home),
        AGENTGATE_DATABASE_URL=url,
        AGENTGATE_QUEUE_ADDR=f"{addresses['queue-1']},{addresses['queue-2']}",
        AGENTGATE_PERSISTENCE_ADDR=f"{addresses['persistence-1']},{addresses['persistence-2']}",
        AGENTGATE_WORKSPACE_ADDR=addresses["workspace"],
        AGENTGATE_MAX_CONCURRENT="4",
        AGENTGATE_LEASE_SECONDS="10",
    )
    processes = Processes(home, env)
    try:
        for name in ("persistence-1", "persistence-2"):
            processes.start(name, ["agentgate.persistence", "--address", addresses[name]])
        processes.start("workspace", ["agentgate.workspace", "--address", addresses["workspace"]])
        for name in ("queue-1", "queue-2"):
            processes.start(name, ["agentgate.queue", "--address", addresses[name]])
        for name in ("worker-1", "worker-2"):
            processes.start(
                name,
                ["agentgate.orchestrator", "--address", addresses[name], "--worker-id", name,
                 "--max-concurrent-runs", "2"],
            )
        for address in addresses.values():
            wait_serving(address)
        yield processes, addresses
    except BaseException:
        print(processes.logs())
        raise
    finally:
        processes.stop_all()


def agent_spec(project: Path, log: Path) -> common_pb2.WorkOrderSpec:
    """A scripted agent that logs its start and end (with the time) to `log`."""
    script = (
        "default:\n"
        f"  - run: 'echo start >> {log}'\n"
        "  - sleep: 0.2\n"
        '  - write: {path: done.txt, content: "done\\n"}\n'
        f"  - run: 'echo end >> {log}'\n"
    )
    spec = common_pb2.WorkOrderSpec(
        task_prompt=f"replica test {log.stem}",
        agent=common_pb2.AgentSpec(name="scripted", options={"script": script}),
    )
    spec.source.local_path = str(project)
    spec.harness.loop_strategy.max_iterations = 1
    # The agent appends to a log beside the test, which the sandbox's private /tmp would hide.
    spec.harness.sandbox.mode = common_pb2.SANDBOX_MODE_OFF
    return spec


def test_two_of_each_replica_survive_sigkill_of_a_queue_and_a_persistence_replica(
    cluster: tuple[Processes, dict[str, str]], tmp_path: Path
) -> None:
    processes, addresses = cluster
    project = tmp_path / "project"
    project.mkdir()
    (project / "verify.yaml").write_text(VERIFY)
    token = (processes.home / "auth" / "token").read_text().strip()
    logs = tmp_path / "agent-logs"
    logs.mkdir()
    env = processes.env
    with AgentGateClient(env["AGENTGATE_QUEUE_ADDR"], env["AGENTGATE_PERSISTENCE_ADDR"], token=token) as client:
        submitted = [client.submit(agent_spec(project, logs / f"{i}.log"))[0] for i in range(WORK_ORDERS)]

        def ended() -> int:
            done = client.work_orders(limit=1000)
            return sum(1 for wo in done if wo.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED)

        deadline = time.monotonic() + 120
        while ended() < KILL_AFTER_ENDED:
            assert time.monotonic() < deadline, processes.logs()
            time.sleep(0.2)
        processes.kill("queue-1")
        processes.kill("persistence-1")
        # Mid-way: work orders were still waiting or running when the replicas died.
        assert ended() < WORK_ORDERS
        time.sleep(1.0)
        processes.start("queue-1")
        processes.start("persistence-1")
        wait_serving(addresses["queue-1"])
        wait_serving(addresses["persistence-1"])

        finals = {wo.id: client.wait(wo.id, timeout=180) for wo in submitted}
        listed = [wo.id for wo in client.work_orders(limit=1000)]
        for index, work_order in enumerate(submitted):
            status = finals[work_order.id]
            assert status.work_order.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED, (status, processes.logs())
            assert listed.count(work_order.id) == 1
            assert [run.id for run in client.runs(work_order.id)] == [work_order.run_id]
            events = list(client.events(work_order.id, follow=False))
            assert [e.seq for e in events] == list(range(1, len(events) + 1)), [e.type for e in events]
            ids = [e.event_id for e in events if e.event_id]
            assert len(ids) == len(set(ids)), "an event was stored twice"
            assert sum(e.type in TERMINAL_EVENT_TYPES for e in events) == 1, [e.type for e in events]
            # Attempts of a run never overlap: its agent's starts and ends alternate.
            marks = (logs / f"{index}.log").read_text().split()
            assert marks and marks == ["start", "end"] * (len(marks) // 2), marks

    # The queue's view agrees: one lease at a time per work order, all ended.
    with psycopg.connect(env["AGENTGATE_DATABASE_URL"]) as conn:
        rows = conn.execute(
            "SELECT work_order_id, granted_at, ended_at FROM leases ORDER BY work_order_id, granted_at"
        ).fetchall()
    previous: dict[str, int] = {}
    for work_order_id, granted_at, ended_at in rows:
        assert ended_at is not None
        assert granted_at >= previous.get(work_order_id, 0)
        previous[work_order_id] = ended_at
