"""The queue with real processes: `agentgate up --detach --workers 2 --max-concurrent 2
--max-queue-size 8`, slow scripted agents, and processes killed with SIGKILL.

The tests share one suite and run in file order; each starts from an idle queue (and
cancels what it left). Leases last 2 seconds (AGENTGATE_LEASE_SECONDS) so a lost worker
is found out quickly. Long agents wait for a gate file the test creates, so no check
depends on how fast a loaded machine runs the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agentgate.v1 import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc, queue_pb2, queue_pb2_grpc

from .conftest import AGENTGATE, Suite, suite_env

pytestmark = pytest.mark.slow

LEASE_SECONDS = 2
MAX_CONCURRENT = 2
MAX_QUEUE_SIZE = 8
PENDING = common_pb2.WORK_ORDER_STATUS_PENDING
RUNNING = common_pb2.WORK_ORDER_STATUS_RUNNING
SUCCEEDED = common_pb2.WORK_ORDER_STATUS_SUCCEEDED
TERMINAL = {
    SUCCEEDED,
    common_pb2.WORK_ORDER_STATUS_FAILED,
    common_pb2.WORK_ORDER_STATUS_CANCELED,
    common_pb2.WORK_ORDER_STATUS_TIMED_OUT,
}
T = TypeVar("T")


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    home = tmp_path_factory.mktemp("queue-suite-home")
    env = suite_env(home)
    env["AGENTGATE_LEASE_SECONDS"] = str(LEASE_SECONDS)
    running = Suite(home=home, env=env)
    up = running.cli(
        "up", "--detach", "--workers", "2", "--max-concurrent", str(MAX_CONCURRENT),
        "--max-queue-size", str(MAX_QUEUE_SIZE), timeout=90,
    )
    if up.returncode != 0:
        running.cli("down")
        raise AssertionError(f"agentgate up failed:\n{up.stdout}\n{up.stderr}\n{running.logs()}")
    yield running
    down = running.cli("down", timeout=60)
    assert down.returncode == 0, down.stderr


@pytest.fixture
def queue(suite: Suite) -> Iterator[queue_pb2_grpc.QueueServiceStub]:
    channel = suite.channel(suite.address("queue"))
    stub = queue_pb2_grpc.QueueServiceStub(channel)
    # Every test starts from an idle queue.
    wait_for(lambda: _idle(stub), timeout=60, what="an idle queue")
    yield stub
    # A failed test may leave gated agents waiting: cancel them for the next test.
    left = stub.ListWorkOrders(queue_pb2.ListWorkOrdersRequest(statuses=[PENDING, RUNNING]), timeout=10)
    for found in left.work_orders:
        with contextlib.suppress(grpc.RpcError):
            stub.CancelWorkOrder(queue_pb2.CancelWorkOrderRequest(work_order_id=found.id), timeout=10)
    channel.close()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "README.md").write_text("queue test project\n")
    (root / "verify.yaml").write_text('version: "1"\ntests:\n  - {name: done, kind: test, command: "test -f done.txt"}\n')
    return root


def _idle(stub: queue_pb2_grpc.QueueServiceStub) -> bool:
    try:
        stats = stub.GetQueueStats(queue_pb2.GetQueueStatsRequest(), timeout=2)
    except grpc.RpcError:
        return False
    return stats.waiting == 0 and stats.running == 0


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Polls `check` until it returns something truthy; fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except grpc.RpcError:
            value = None  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def script(tmp_path: Path, name: str, sleep: float = 0.2, gate: Path | None = None) -> Path:
    """An agent that records its pid in `<name>.pids` (one line per attempt), waits until
    the file `gate` exists (when given), sleeps, then writes the file verification checks."""
    path = tmp_path / f"{name}.yaml"
    pids = tmp_path / f"{name}.pids"
    wait = f"  - run: 'while [ ! -e {gate} ]; do sleep 0.05; done'\n" if gate else ""
    path.write_text(
        "default:\n"
        f"  - run: 'echo $PPID >> {pids}'\n"
        f"{wait}"
        f"  - sleep: {sleep}\n"
        '  - write: {path: done.txt, content: "done\\n"}\n'
    )
    return path


def spec(project: Path, agent_script: Path, priority: int = 0, max_wait: int = 0) -> common_pb2.WorkOrderSpec:
    built = common_pb2.WorkOrderSpec(
        task_prompt=f"queue test {agent_script.stem}",
        # Through the API the option holds the script itself (the CLI reads the file).
        agent=common_pb2.AgentSpec(name="scripted", options={"script": agent_script.read_text()}),
        priority=priority,
        max_queue_wait_seconds=max_wait,
    )
    built.source.local_path = str(project)
    built.harness.loop_strategy.max_iterations = 1
    # These agents record their host pid next to the test so it can prove the queue and the
    # orchestrator stop them (cancel, a killed worker); the sandbox's PID namespace and
    # private /tmp hide exactly that, by design. So these work orders opt out explicitly, as
    # a user can; that every process ends with its execution inside the sandbox is proven
    # in tests/security/.
    built.harness.sandbox.mode = common_pb2.SANDBOX_MODE_OFF
    return built


def submit(
    stub, project: Path, tmp_path: Path, name: str, priority: int = 0, gate: Path | None = None
) -> common_pb2.WorkOrder:
    request = queue_pb2.SubmitRequest(spec=spec(project, script(tmp_path, name, gate=gate), priority))
    return stub.Submit(request, timeout=10).work_order


def work_order(stub, work_order_id: str) -> common_pb2.WorkOrder:
    return stub.GetWorkOrder(queue_pb2.GetWorkOrderRequest(work_order_id=work_order_id), timeout=5).work_order


def position(stub, work_order_id: str) -> queue_pb2.GetPositionResponse:
    return stub.GetPosition(queue_pb2.GetPositionRequest(work_order_id=work_order_id), timeout=5)


def all_ended(stub, ids: list[str], timeout: float) -> list[common_pb2.WorkOrder]:
    def ended() -> list[common_pb2.WorkOrder] | None:
        found = [work_order(stub, i) for i in ids]
        return found if all(w.status in TERMINAL for w in found) else None

    return wait_for(ended, timeout, f"{len(ids)} work orders to end", interval=0.2)


def pids(tmp_path: Path, name: str) -> list[int]:
    path = tmp_path / f"{name}.pids"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def ps(suite: Suite) -> dict[str, dict]:
    result = suite.cli("ps", "--json", check=True)
    return {row["name"]: row for row in json.loads(result.stdout)}


def error_reasons(error: grpc.RpcError) -> list[str]:
    """The ErrorInfo reasons in a status's details."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    reasons = []
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reasons.append(info.reason)
    return reasons


def max_overlap(work_orders: list[common_pb2.WorkOrder]) -> int:
    """Most work orders running at one moment, from their started/finished times."""
    edges = []
    for w in work_orders:
        edges.append((w.started_at.ToNanoseconds(), 1))
        edges.append((w.finished_at.ToNanoseconds(), -1))
    running = peak = 0
    for _, step in sorted(edges):
        running += step
        peak = max(peak, running)
    return peak


# -- the tests -------------------------------------------------------------------------


def test_ps_and_health_list_every_worker(suite: Suite) -> None:
    rows = ps(suite)
    assert list(rows) == ["queue", "orchestrator-1", "orchestrator-2", "workspace", "persistence", "gateway"]
    for row in rows.values():
        assert row["health"] == "SERVING" and row["pid"], row
    assert rows["orchestrator-1"]["address"] == suite.address("orchestrator")
    assert rows["gateway"]["address"] == suite.address("gateway")
    assert rows["orchestrator-2"]["address"] not in {suite.address(s) for s in ("queue", "orchestrator")}
    health = json.loads(suite.cli("health", "--json", check=True).stdout)
    assert {name: value["status"] for name, value in health.items()} == {name: "SERVING" for name in rows}
    # Each worker is its own orchestrator process with the runs-per-worker default.
    for name in ("orchestrator-1", "orchestrator-2"):
        with suite.channel(rows[name]["address"]) as channel:
            status = orchestrator_pb2_grpc.OrchestratorServiceStub(channel).GetWorkerStatus(
                orchestrator_pb2.GetWorkerStatusRequest(), timeout=5
            )
        assert status.max_concurrent_runs == 2 and not status.active_runs
    # `up --detach` again changes nothing: every pid stays.
    again = suite.cli("up", "--detach", check=True)
    assert "SERVING" in again.stdout
    assert {name: row["pid"] for name, row in ps(suite).items()} == {name: row["pid"] for name, row in rows.items()}


def test_ten_work_orders_wait_in_priority_then_time_order(
    suite: Suite, queue, project: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    first = [submit(queue, project, tmp_path, f"long{i}", gate=gate) for i in range(2)]
    wait_for(lambda: all(work_order(queue, w.id).status == RUNNING for w in first), 30, "2 running")
    priorities = [0, 2, 0, 1, 2, 0, 1, 0]
    waiting = [submit(queue, project, tmp_path, f"p{i}", priority=p) for i, p in enumerate(priorities)]
    ranked = sorted(range(len(waiting)), key=lambda i: (-priorities[i], i))
    expected = [waiting[i].id for i in ranked]
    # The last in line is watched through the CLI until it runs.
    watcher = subprocess.Popen(
        [AGENTGATE, "queue", "position", expected[-1], "--watch", "--json"],
        env=suite.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        stats = queue.GetQueueStats(queue_pb2.GetQueueStatsRequest(), timeout=5)
        assert (stats.running, stats.waiting, stats.max_concurrent, stats.max_queue_size) == (2, 8, 2, 8)
        assert not stats.accepting
        assert [position(queue, i).position for i in expected] == list(range(1, 9))
        assert [position(queue, i).ahead for i in expected] == list(range(0, 8))
        assert {position(queue, w.id).state for w in first} == {"running"}
        # One more is refused: RESOURCE_EXHAUSTED with QUEUE_FULL, and nothing is stored.
        before = queue.ListWorkOrders(queue_pb2.ListWorkOrdersRequest(page_size=1000), timeout=5)
        with pytest.raises(grpc.RpcError) as err:
            submit(queue, project, tmp_path, "one-too-many")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reasons(err.value) == ["QUEUE_FULL"]
        refused = suite.cli(
            "submit", "--path", str(project), "--prompt", "too many", "--agent", "scripted",
            "--agent-option", f"script={script(tmp_path, 'cli-too-many')}",
        )
        assert refused.returncode != 0 and "RESOURCE_EXHAUSTED" in refused.stderr, refused
        code, out = suite.cli_json("queue", "stats")
        assert code == 0
        assert {k: out[k] for k in ("waiting", "running", "max_concurrent", "max_queue_size", "accepting")} == {
            "waiting": 8, "running": 2, "max_concurrent": 2, "max_queue_size": 8, "accepting": False,
        }
        # The two running work orders' workspaces and the run files take room (docs/workspaces.md).
        disk = out["disk_bytes"]
        assert disk["workspaces"] > 0 and disk["gitdirs"] > 0 and disk["run_files"] > 0, disk
        assert disk["total"] >= disk["workspaces"] + disk["gitdirs"] + disk["run_files"], disk
        code, out = suite.cli_json("queue", "position", expected[3])
        assert code == 0 and (out["position"], out["ahead"], out["state"]) == (4, 3, "waiting")
        after = queue.ListWorkOrders(queue_pb2.ListWorkOrdersRequest(page_size=1000), timeout=5)
        assert [w.id for w in after.work_orders] == [w.id for w in before.work_orders]

        gate.touch()  # the two long runs finish; the eight follow as capacity frees
        ended = all_ended(queue, [w.id for w in first + waiting], timeout=90)
        assert {w.status for w in ended} == {SUCCEEDED}, [w.error for w in ended]
        out_text, err_text = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    # They ran in queue order, never more than two at once.
    by_start = sorted(ended[2:], key=lambda w: w.started_at.ToNanoseconds())
    assert [w.id for w in by_start] == expected
    assert max_overlap(ended) <= MAX_CONCURRENT
    # The watcher saw its place fall from 8 to 0.
    assert watcher.returncode == 0, err_text
    seen = [(p["position"], p["state"]) for p in map(json.loads, out_text.splitlines())]
    assert seen[0] == (8, "waiting") and seen[-1] == (0, "running")
    places = [place for place, _ in seen]
    assert places == sorted(places, reverse=True) and len(set(places)) == len(places)
    assert len(seen) >= 5, seen  # not only the first and the last
    # Waits are known now: an average, and the events of the watched one carry its places.
    code, out = suite.cli_json("queue", "stats")
    assert out["average_wait_seconds"] is not None and out["average_wait_seconds"] > 0
    events = suite.cli("watch", expected[-1], "--json", check=True).stdout.splitlines()
    moves = [json.loads(e)["work_order_position"]["position"] for e in events if '"work_order:position"' in e]
    assert moves and moves == sorted(moves, reverse=True) and moves[-1] == 1


def test_max_wait_times_out_and_cancel_stops_a_running_agent(
    suite: Suite, queue, project: Path, tmp_path: Path
) -> None:
    never = tmp_path / "never"  # the blockers only end by being canceled
    blockers = [submit(queue, project, tmp_path, f"block{i}", gate=never) for i in range(2)]
    wait_for(lambda: all(pids(tmp_path, f"block{i}") for i in range(2)), 30, "both agents started")

    # Behind two long runs, with --max-wait 2: TIMED_OUT about 2 seconds later.
    code, out = suite.cli_json(
        "submit", "--path", str(project), "--prompt", "impatient", "--agent", "scripted",
        "--agent-option", f"script={script(tmp_path, 'impatient')}", "--max-wait", "2", "--priority", "3",
    )
    assert code == 0 and out["status"] == "PENDING"
    impatient = wait_for(
        lambda: (w := work_order(queue, out["work_order_id"])).status in TERMINAL and w, 15, "the timeout"
    )
    assert impatient.status == common_pb2.WORK_ORDER_STATUS_TIMED_OUT
    # The queue's own clock: from submit to the end (a CLI process start is not in it).
    waited = (impatient.finished_at.ToNanoseconds() - impatient.created_at.ToNanoseconds()) / 1e9
    print(f"--max-wait 2 -> TIMED_OUT after {waited:.3f}s")
    assert 2.0 <= waited <= 3.0, waited
    assert not pids(tmp_path, "impatient"), "a timed-out work order must never run"
    events = [json.loads(e) for e in suite.cli("watch", impatient.id, "--json", check=True).stdout.splitlines()]
    assert [e["type"] for e in events] == ["work_order:queued", "work_order:timed_out"]

    # Cancel of a running work order: its agent's process is gone within 5 seconds.
    target = blockers[0]
    [agent_pid] = pids(tmp_path, "block0")
    assert alive(agent_pid)
    asked = time.monotonic()
    code, out = suite.cli_json("cancel", target.id)
    assert code == 0 and out["status"] == "RUNNING"  # flagged; its worker stops it
    wait_for(lambda: not alive(agent_pid), 5, "the agent process to be killed")
    killed_after = time.monotonic() - asked
    final = wait_for(lambda: (w := work_order(queue, target.id)).status in TERMINAL and w, 10, "CANCELED")
    assert final.status == common_pb2.WORK_ORDER_STATUS_CANCELED
    code, status = suite.cli_json("status", target.id)
    assert (status["run_state"], status["result"]) == ("CANCELED", "CANCELED")
    types = [json.loads(e)["type"] for e in suite.cli("watch", target.id, "--json", check=True).stdout.splitlines()]
    assert "workspace:released" in types and types[-1] == "run:canceled"
    print(f"cancel -> agent killed in {killed_after:.2f}s")
    assert killed_after < 5

    # The same through the API, timed from the cancel's answer.
    [agent_pid] = pids(tmp_path, "block1")
    queue.CancelWorkOrder(queue_pb2.CancelWorkOrderRequest(work_order_id=blockers[1].id), timeout=5)
    asked = time.monotonic()
    wait_for(lambda: not alive(agent_pid), 5, "the second agent process to be killed", interval=0.01)
    print(f"CancelWorkOrder -> agent killed in {time.monotonic() - asked:.2f}s")
    [ended] = all_ended(queue, [blockers[1].id], timeout=15)
    assert ended.status == common_pb2.WORK_ORDER_STATUS_CANCELED


def test_queue_killed_with_sigkill_keeps_every_work_order_in_order(
    suite: Suite, queue, project: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    running = [submit(queue, project, tmp_path, f"run{i}", gate=gate) for i in range(2)]
    wait_for(lambda: all(pids(tmp_path, f"run{i}") for i in range(2)), 30, "both agents started")
    waiting = [submit(queue, project, tmp_path, f"w{i}", priority=p) for i, p in enumerate([0, 1, 0, 1])]
    order = sorted((w.id for w in waiting), key=lambda i: position(queue, i).position)
    assert [position(queue, i).position for i in order] == [1, 2, 3, 4]
    before = ps(suite)

    os.kill(before["queue"]["pid"], signal.SIGKILL)
    wait_for(lambda: not alive(before["queue"]["pid"]), 5, "the queue to die")
    assert ps(suite)["queue"]["health"] == "UNREACHABLE"
    # `up --detach` brings back the queue alone.
    suite.cli("up", "--detach", check=True)
    after = ps(suite)
    assert after["queue"]["pid"] != before["queue"]["pid"] and after["queue"]["health"] == "SERVING"
    for name in ("orchestrator-1", "orchestrator-2", "workspace", "persistence"):
        assert after[name]["pid"] == before[name]["pid"], name

    # Same work orders, same order; the limits came back with it.
    stats = queue.GetQueueStats(queue_pb2.GetQueueStatsRequest(), timeout=10)
    assert (stats.max_concurrent, stats.max_queue_size) == (MAX_CONCURRENT, MAX_QUEUE_SIZE)
    assert [position(queue, i).position for i in order] == [1, 2, 3, 4]
    gate.touch()
    ended = all_ended(queue, [w.id for w in running + waiting], timeout=90)
    assert {w.status for w in ended} == {SUCCEEDED}, [w.error for w in ended]
    assert [w.id for w in sorted(ended[2:], key=lambda w: w.started_at.ToNanoseconds())] == order
    print("attempts of the runs that were running while the queue was down:", [w.attempts for w in ended[:2]])


def test_orchestrator_killed_mid_run_its_work_order_runs_again(
    suite: Suite, queue, project: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    victim = submit(queue, project, tmp_path, "victim", gate=gate)
    wait_for(lambda: pids(tmp_path, "victim"), 30, "the agent to start")
    others = [submit(queue, project, tmp_path, f"other{i}") for i in range(3)]
    rows = ps(suite)
    holder = None
    for name in ("orchestrator-1", "orchestrator-2"):
        with suite.channel(rows[name]["address"]) as channel:
            status = orchestrator_pb2_grpc.OrchestratorServiceStub(channel).GetWorkerStatus(
                orchestrator_pb2.GetWorkerStatusRequest(), timeout=5
            )
        if victim.id in [run.work_order_id for run in status.active_runs]:
            holder = name
    assert holder is not None
    [first_agent] = pids(tmp_path, "victim")

    os.kill(rows[holder]["pid"], signal.SIGKILL)
    # Attempt 2 starts only once attempt 1's agent is gone: never two at once.
    second_agent = None
    deadline = time.monotonic() + 60
    while second_agent is None and time.monotonic() < deadline:
        found = pids(tmp_path, "victim")
        if len(found) > 1:
            assert not alive(first_agent), "attempt 2 started while attempt 1's agent still ran"
            second_agent = found[1]
        time.sleep(0.02)
    assert second_agent is not None and second_agent != first_agent
    gate.touch()

    ended = all_ended(queue, [victim.id] + [w.id for w in others], timeout=90)
    assert {w.status for w in ended} == {SUCCEEDED}, [w.error for w in ended]
    assert ended[0].attempts == 2
    assert {w.attempts for w in ended[1:]} <= {1, 2}
    events = [json.loads(e) for e in suite.cli("watch", victim.id, "--json", check=True).stdout.splitlines()]
    assert [e["run_started"]["attempt"] for e in events if e["type"] == "run:started"] == [1, 2]
    assert events[-1]["type"] == "run:complete"

    # The dead worker is brought back alone by `up --detach`.
    assert ps(suite)[holder]["pid"] is None
    suite.cli("up", "--detach", check=True)
    now = ps(suite)
    assert now[holder]["pid"] and now[holder]["health"] == "SERVING"
    for name in ("queue", "workspace", "persistence"):
        assert now[name]["pid"] == rows[name]["pid"], name
