"""The supervisor's bookkeeping (instances, settings, pid files), without processes."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from agentgate.client.supervisor import (
    SuiteConfig,
    Supervisor,
    free_port,
    service_of,
    worker_index,
    worker_name,
)


@pytest.fixture
def supervisor(home: Path, monkeypatch: pytest.MonkeyPatch) -> Supervisor:
    monkeypatch.setenv("AGENTGATE_ORCHESTRATOR_ADDR", "127.0.0.1:46002")
    return Supervisor(home)


def test_instance_names() -> None:
    assert [worker_name(i) for i in (1, 12)] == ["orchestrator-1", "orchestrator-12"]
    assert [worker_index(n) for n in ("orchestrator-3", "orchestrator", "orchestrator-0", "queue")] == [
        3,
        None,
        None,
        None,
    ]
    assert [service_of(n) for n in ("orchestrator-2", "queue", "persistence")] == ["orchestrator", "queue", "persistence"]


def test_config_flags_become_service_arguments() -> None:
    config = SuiteConfig().merged(workers=3, max_concurrent_runs=1, max_concurrent=None, max_queue_size=8)
    assert config == SuiteConfig(workers=3, max_concurrent_runs=1, max_concurrent=None, max_queue_size=8)
    assert config.args_for("queue") == ["--max-queue-size", "8"]
    assert config.args_for("orchestrator") == ["--max-concurrent-runs", "1"]
    assert config.args_for("workspace") == []
    assert SuiteConfig().args_for("queue") == []
    # `up --database-url`: the queue and persistence keep their state in PostgreSQL.
    on_pg = config.merged(database_url="postgresql://db/agentgate")
    assert on_pg.args_for("queue") == ["--max-queue-size", "8", "--database-url", "postgresql://db/agentgate"]
    assert on_pg.args_for("persistence") == ["--database-url", "postgresql://db/agentgate"]
    assert on_pg.args_for("orchestrator") == ["--max-concurrent-runs", "1"]


def test_settings_are_kept_between_ups_until_down(supervisor: Supervisor) -> None:
    assert supervisor.load_config() == SuiteConfig()
    supervisor.configure(workers=3, max_concurrent=4, max_concurrent_runs=None, max_queue_size=None)
    # A later `up` without flags keeps them; a flag changes only its own setting.
    assert supervisor.configure(workers=None, max_queue_size=9) == SuiteConfig(3, None, 4, 9)
    assert Supervisor(supervisor.home).load_config() == SuiteConfig(3, None, 4, 9)
    assert supervisor.instance_names() == [
        "persistence",
        "workspace",
        "queue",
        "orchestrator-1",
        "orchestrator-2",
        "orchestrator-3",
        "gateway",
    ]
    supervisor.forget_config()
    assert supervisor.load_config() == SuiteConfig()


@pytest.mark.parametrize(
    "text", ["not json", "[1]", '{"workers": 0}', '{"workers": "x"}', '{"max_concurrent": "x"}']
)
def test_a_damaged_settings_file_means_defaults(supervisor: Supervisor, text: str) -> None:
    supervisor.run_dir.mkdir(parents=True)
    supervisor.config_file.write_text(text)
    assert supervisor.load_config() == SuiteConfig()


def test_orders_for_start_stop_and_display(supervisor: Supervisor) -> None:
    names = supervisor.instance_names(workers=2)
    # The gateway starts last (it calls the others) and stops first.
    assert names == ["persistence", "workspace", "queue", "orchestrator-1", "orchestrator-2", "gateway"]
    assert supervisor.stop_order(names) == [
        "gateway", "orchestrator-2", "orchestrator-1", "queue", "workspace", "persistence"
    ]
    assert supervisor.display_order(names) == [
        "queue", "orchestrator-1", "orchestrator-2", "workspace", "persistence", "gateway"
    ]


def test_worker_addresses_and_pids_come_from_pid_files(supervisor: Supervisor) -> None:
    supervisor.configure(workers=2)
    # Worker 1 is on the orchestrator's address; worker 2 has none until it starts.
    assert supervisor.address("orchestrator-1") == "127.0.0.1:46002"
    assert supervisor.address("orchestrator-2") is None
    supervisor.run_dir.mkdir(parents=True, exist_ok=True)
    supervisor.pid_file("orchestrator-2").write_text(json.dumps({"pid": os.getpid(), "address": "127.0.0.1:47000"}))
    assert supervisor.address("orchestrator-2") == "127.0.0.1:47000"
    assert supervisor.read_pid("orchestrator-2") == os.getpid()
    # A pid file left by a larger --workers is still known (so `down` stops it) and,
    # while its process lives, is a surplus worker.
    supervisor.pid_file("orchestrator-5").write_text(json.dumps({"pid": os.getpid(), "address": "127.0.0.1:47001"}))
    supervisor.pid_file("orchestrator-4").write_text(json.dumps({"pid": 2**22 + 12345, "address": "x"}))
    assert supervisor.recorded_workers() == ["orchestrator-2", "orchestrator-4", "orchestrator-5"]
    assert supervisor.surplus_workers() == ["orchestrator-5"]
    assert supervisor.read_pid("orchestrator-4") is None
    assert set(supervisor.known_instances()) == {
        "persistence",
        "workspace",
        "queue",
        "orchestrator-1",
        "orchestrator-2",
        "orchestrator-4",
        "orchestrator-5",
        "gateway",
    }
    supervisor.pid_file("queue").write_text("garbage")
    assert supervisor.read_pid("queue") is None


def test_free_port_avoids_the_suites_ports() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        port = free_port("127.0.0.1", {taken})
    assert port != taken and 0 < port < 65536


def test_a_zombie_that_is_not_our_child_is_not_alive() -> None:
    """A detached service that exited waits for init to reap it; `down` must not wait for
    that (init may reap seconds later): /proc says it is a zombie."""
    import subprocess
    import sys
    import time

    from agentgate.common.pids import pid_alive

    # A child that forks a grandchild which exits at once, and never reaps it: the
    # grandchild is a zombie whose parent is not this process.
    parent = subprocess.Popen(
        [sys.executable, "-c", "import os, time\npid = os.fork()\nif pid == 0:\n    os._exit(0)\n"
         "print(pid, flush=True)\ntime.sleep(30)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        zombie = int(parent.stdout.readline())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(f"/proc/{zombie}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.01)
        assert not pid_alive(zombie)
        assert pid_alive(parent.pid)
    finally:
        parent.kill()
        parent.wait()
