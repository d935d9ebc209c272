"""Bad input (docs/security.md), property-based: random, malformed, hostile, boundary and oversized
requests to every RPC of the four real services (one event loop, in a thread of its own).

Each call must end with a proper status — never UNKNOWN, never INTERNAL (an exception that
escaped) — and afterwards every service still answers SERVING, every SQLite file passes
`PRAGMA integrity_check`, a work order that ran before is still readable exactly as it was,
no file appeared outside $AGENTGATE_HOME and no injected command ran.

AGENTGATE_FUZZ_EXAMPLES raises the examples per RPC (and draws new ones on every run);
by default the same modest, reproducible set runs, so the suite stays fast and stable.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentgate.common import security
from agentgate.common.config import MAX_MESSAGE_BYTES
from agentgate.orchestrator.server import OrchestratorServicer
from agentgate.persistence.server import PersistenceServicer
from agentgate.queue.server import QueueServicer
from agentgate.v1 import (
    common_pb2,
    events_pb2,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    persistence_pb2,
    persistence_pb2_grpc,
    queue_pb2,
    queue_pb2_grpc,
    workspace_pb2,
    workspace_pb2_grpc,
)
from agentgate.workspace.server import WorkspaceServicer
from tests.credentials import service_credential

from .inprocess_suite import InProcessSuite
from .proto_strategies import request_bytes

EXAMPLES = int(os.environ.get("AGENTGATE_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 30,
    deadline=None,
    derandomize=not EXAMPLES,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

SERVICES = {
    "queue": (queue_pb2.DESCRIPTOR.services_by_name["QueueService"], QueueServicer,
              queue_pb2_grpc.QueueServiceServicer),
    "orchestrator": (orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"], OrchestratorServicer,
                     orchestrator_pb2_grpc.OrchestratorServiceServicer),
    "workspace": (workspace_pb2.DESCRIPTOR.services_by_name["WorkspaceService"], WorkspaceServicer,
                  workspace_pb2_grpc.WorkspaceServiceServicer),
    "persistence": (persistence_pb2.DESCRIPTOR.services_by_name["PersistenceService"], PersistenceServicer,
                    persistence_pb2_grpc.PersistenceServiceServicer),
}
METHODS = [(name, method) for name, (service, _, _) in SERVICES.items() for method in service.methods]

#: What a service may answer to a request it does not like (or does).
PROPER = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ABORTED,
}
#: Calls that wait by design (long polls, live streams, agents, checks) may run out of time.
WAITING_METHODS = {"Lease", "WatchPosition", "StreamEvents", "RunAgent", "Verify", "PrepareForRun", "CreateWorkspace"}
UNARY_TIMEOUT = 10.0
STREAM_TIMEOUT = 1.0


@dataclass
class World:
    """The running suite, a work order that ran before the fuzzing, and what it looked like."""

    home: Path
    outside: Path
    outside_before: set[str]
    marker: Path
    suite: InProcessSuite
    loop: asyncio.AbstractEventLoop
    channels: dict[str, grpc.Channel]
    work_order: common_pb2.WorkOrder
    run: common_pb2.Run
    events: list[events_pb2.RunEvent]
    seeds: dict[str, Message]

    def call(self, service: str, method: MethodDescriptor, payload: bytes) -> grpc.StatusCode:
        """Sends raw request bytes; returns the status the call ended with."""
        path = f"/{method.containing_service.full_name}/{method.name}"
        channel = self.channels[service]
        try:
            if method.server_streaming:
                call = channel.unary_stream(path)(payload, timeout=STREAM_TIMEOUT)
                for count, _ in enumerate(call):
                    if count >= 20:
                        call.cancel()
                        return grpc.StatusCode.OK
                return call.code()
            timeout = STREAM_TIMEOUT if method.name in WAITING_METHODS else UNARY_TIMEOUT
            channel.unary_unary(path)(payload, timeout=timeout)
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[attr-defined]

    def assert_intact(self) -> None:
        """Every service serving, every SQLite file sound, the earlier work order unchanged,
        nothing written outside the home folder, no injected command run."""
        for service, channel in self.channels.items():
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
        # os.walk passes over folders that vanish meanwhile (rooms deleted in the background).
        databases = sorted(Path(top) / name for top, _, files in os.walk(self.home) for name in files if name.endswith(".db"))
        assert {path.name for path in databases} >= {"queue.db", "persistence.db"}
        for path in databases:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)], path
        queue = queue_pb2_grpc.QueueServiceStub(self.channels["queue"])
        persistence = persistence_pb2_grpc.PersistenceServiceStub(self.channels["persistence"])
        request = queue_pb2.GetWorkOrderRequest(work_order_id=self.work_order.id)
        assert queue.GetWorkOrder(request, timeout=5).work_order == self.work_order
        assert persistence.GetRun(persistence_pb2.GetRunRequest(run_id=self.run.id), timeout=5).run == self.run
        replay = persistence.StreamEvents(
            persistence_pb2.StreamEventsRequest(work_order_id=self.work_order.id), timeout=10
        )
        assert [response.event for response in replay] == self.events
        assert {p.name for p in self.outside.iterdir()} == self.outside_before, "a file appeared outside the home"
        assert not self.marker.exists(), "an injected command ran"


FUZZ_RUN = "run-fuzz0001"
FUZZ_WORK_ORDER = "wo-fuzz0001"
BENIGN_SCRIPT = "default:\n  - print: hello\n  - write: {path: notes.txt, content: hi}\n"
GATE_PLAN = 'version: "1"\ntests:\n  - {name: unit, kind: test, command: "grep -q add calc.py"}\n'


def make_seeds(channels: dict[str, grpc.Channel], project: Path, earlier: common_pb2.WorkOrder) -> dict[str, Message]:
    """A valid request for the RPCs with much behind their first checks: the fuzzer changes
    a few fields of it. They act on records and workspaces made here, never on the earlier
    work order (only read-only or refused calls name that one)."""
    persistence = persistence_pb2_grpc.PersistenceServiceStub(channels["persistence"])
    persistence.CreateRun(
        persistence_pb2.CreateRunRequest(run=common_pb2.Run(id=FUZZ_RUN, work_order_id=FUZZ_WORK_ORDER)), timeout=10
    )
    workspace = workspace_pb2_grpc.WorkspaceServiceStub(channels["workspace"])
    source = common_pb2.WorkspaceSource(local_path=str(project))

    def prepare(run_id: str) -> workspace_pb2.Workspace:
        request = workspace_pb2.PrepareForRunRequest(run_id=run_id, source=source, gate_plan_yaml=GATE_PLAN)
        return workspace.PrepareForRun(request, timeout=30).workspace

    ws = prepare("run-fuzzws")
    victim = prepare("run-fuzzvictim")
    # ReleaseLease may delete (its `delete` flag): its own workspace, not the others' seeds'.
    released = prepare("run-fuzzrelease")
    snapshot = workspace.CreateSnapshot(workspace_pb2.CreateSnapshotRequest(workspace_id=ws.id), timeout=30)
    spec = common_pb2.WorkOrderSpec(
        task_prompt="Fix add()", agent=common_pb2.AgentSpec(name="scripted", options={"script": BENIGN_SCRIPT})
    )
    spec.source.CopyFrom(source)
    agent = common_pb2.AgentSpec(name="scripted", options={"script": BENIGN_SCRIPT})
    record = {"run_id": FUZZ_RUN, "iteration": 1}
    event = events_pb2.RunEvent(type="agent:output", work_order_id=FUZZ_WORK_ORDER, run_id=FUZZ_RUN, iteration=1)
    return {
        "queue.Submit": queue_pb2.SubmitRequest(spec=spec),
        "queue.GetWorkOrder": queue_pb2.GetWorkOrderRequest(work_order_id=earlier.id),
        "queue.CancelWorkOrder": queue_pb2.CancelWorkOrderRequest(work_order_id=earlier.id, reason="fuzz"),
        "queue.GetPosition": queue_pb2.GetPositionRequest(work_order_id=earlier.id),
        "queue.WatchPosition": queue_pb2.WatchPositionRequest(work_order_id=earlier.id),
        "persistence.CreateRun": persistence_pb2.CreateRunRequest(
            run=common_pb2.Run(id="run-fuzz0002", work_order_id=FUZZ_WORK_ORDER)
        ),
        "persistence.UpdateRun": persistence_pb2.UpdateRunRequest(
            run=common_pb2.Run(id=FUZZ_RUN, work_order_id=FUZZ_WORK_ORDER, state=common_pb2.RUN_STATE_BUILDING)
        ),
        "persistence.GetRun": persistence_pb2.GetRunRequest(run_id=FUZZ_RUN),
        "persistence.ListRuns": persistence_pb2.ListRunsRequest(work_order_id=FUZZ_WORK_ORDER, page_size=2),
        "persistence.SaveAgentResult": persistence_pb2.SaveAgentResultRequest(
            result=common_pb2.AgentResult(stdout="out", stderr="err", **record)
        ),
        "persistence.SaveVerificationReport": persistence_pb2.SaveVerificationReportRequest(
            report=common_pb2.VerificationReport(**record)
        ),
        "persistence.SaveIteration": persistence_pb2.SaveIterationRequest(
            iteration=common_pb2.IterationData(**record)
        ),
        "persistence.GetAgentResult": persistence_pb2.GetAgentResultRequest(**record),
        "persistence.ListAgentResults": persistence_pb2.ListAgentResultsRequest(run_id=FUZZ_RUN),
        "persistence.GetVerificationReport": persistence_pb2.GetVerificationReportRequest(**record),
        "persistence.ListVerificationReports": persistence_pb2.ListVerificationReportsRequest(run_id=FUZZ_RUN),
        "persistence.GetIteration": persistence_pb2.GetIterationRequest(**record),
        "persistence.ListIterations": persistence_pb2.ListIterationsRequest(run_id=FUZZ_RUN),
        "persistence.AppendEvents": persistence_pb2.AppendEventsRequest(events=[event]),
        "persistence.StreamEvents": persistence_pb2.StreamEventsRequest(work_order_id=FUZZ_WORK_ORDER),
        "workspace.PrepareForRun": workspace_pb2.PrepareForRunRequest(
            run_id="run-fuzz0003", source=source, gate_plan_yaml=GATE_PLAN
        ),
        "workspace.RunAgent": workspace_pb2.RunAgentRequest(
            workspace_id=ws.id, run_id="run-fuzzws", iteration=1, attempt=1, agent=agent, prompt="p", timeout_seconds=5
        ),
        "workspace.CreateSnapshot": workspace_pb2.CreateSnapshotRequest(workspace_id=ws.id, message="m"),
        "workspace.Verify": workspace_pb2.VerifyRequest(
            workspace_id=ws.id, snapshot_id=snapshot.snapshot_id, run_id="run-fuzzws", iteration=1
        ),
        "workspace.GetWorkspace": workspace_pb2.GetWorkspaceRequest(workspace_id=ws.id),
        "workspace.ReleaseLease": workspace_pb2.ReleaseLeaseRequest(workspace_id=released.id),
        "workspace.CreateWorkspace": workspace_pb2.CreateWorkspaceRequest(source=source),
        "workspace.AcquireLease": workspace_pb2.AcquireLeaseRequest(workspace_id=ws.id, lease_seconds=60, holder="fuzz"),
        "workspace.RestoreSnapshot": workspace_pb2.RestoreSnapshotRequest(
            workspace_id=ws.id, snapshot_id=snapshot.snapshot_id
        ),
        "workspace.ListSnapshots": workspace_pb2.ListSnapshotsRequest(workspace_id=ws.id),
        "workspace.GetDiff": workspace_pb2.GetDiffRequest(workspace_id=ws.id),
        "workspace.CleanupRun": workspace_pb2.CleanupRunRequest(run_id="run-fuzzvictim"),
        "workspace.ListWorkspaces": workspace_pb2.ListWorkspacesRequest(page_size=2),
        "workspace.DeleteWorkspace": workspace_pb2.DeleteWorkspaceRequest(workspace_id=victim.id, force=True),
        "workspace.Push": workspace_pb2.PushRequest(workspace_id=ws.id),
    }


def _run_in(loop: asyncio.AbstractEventLoop, coroutine, timeout: float = 120):
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    outside = tmp_path_factory.mktemp("bad-input")
    home = outside / "home"
    home.mkdir()
    project = outside / "project"
    project.mkdir()
    (project / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (project / "verify.yaml").write_text(
        'version: "1"\ntests:\n  - {name: unit, kind: test, command: "grep -q \'a + b\' calc.py"}\n'
    )
    marker = outside / "injected"
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="services", daemon=True)
    thread.start()
    previous_home = os.environ.get("AGENTGATE_HOME")
    os.environ["AGENTGATE_HOME"] = str(home)
    suite = _run_in(loop, InProcessSuite.start(home, lease_seconds=3, max_concurrent=1))
    # Bigger than the servers accept, so oversized requests reach them.
    options = [("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES), ("grpc.max_receive_message_length", -1)]
    # A service credential: hostile input must reach every RPC, the writes included.
    credential = service_credential(home)
    channels = {
        name: security.intercept_sync_channel(grpc.insecure_channel(address, options=options), credential)
        for name, address in suite.addresses.items()
    }
    try:
        spec = common_pb2.WorkOrderSpec(
            task_prompt="Fix add()",
            agent=common_pb2.AgentSpec(
                name="scripted",
                options={"script": "default:\n  - write: {path: calc.py, content: \"def add(a, b):\\n    return a + b\\n\"}\n"},
            ),
        )
        spec.source.local_path = str(project)
        queue = queue_pb2_grpc.QueueServiceStub(channels["queue"])
        work_order = queue.Submit(queue_pb2.SubmitRequest(spec=spec), timeout=10).work_order
        persistence = persistence_pb2_grpc.PersistenceServiceStub(channels["persistence"])
        follow = persistence_pb2.StreamEventsRequest(work_order_id=work_order.id, follow=True)
        events = [response.event for response in persistence.StreamEvents(follow, timeout=60)]
        finished = _run_in(loop, suite.wait_terminal(work_order.id, timeout=30))
        assert finished.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED
        run = persistence.GetRun(persistence_pb2.GetRunRequest(run_id=work_order.run_id), timeout=5).run
        seeds = make_seeds(channels, project, finished)
        world = World(
            home=home,
            outside=outside,
            outside_before={p.name for p in outside.iterdir()},
            marker=marker,
            suite=suite,
            loop=loop,
            channels=channels,
            work_order=finished,
            run=run,
            events=events,
            seeds=seeds,
        )
        world.assert_intact()
        yield world
    finally:
        for channel in channels.values():
            channel.close()
        _run_in(loop, suite.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        if previous_home is None:
            os.environ.pop("AGENTGATE_HOME", None)
        else:
            os.environ["AGENTGATE_HOME"] = previous_home


def _implemented(service: str, method: str) -> bool:
    _, servicer, generated = SERVICES[service]
    return getattr(servicer, method) is not getattr(generated, method)


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s}.{m.name}" for s, m in METHODS])
def test_random_requests_get_a_proper_status(world: World, service: str, method: MethodDescriptor):
    allowed = set(PROPER)
    if method.name in WAITING_METHODS or method.server_streaming:
        allowed.add(grpc.StatusCode.DEADLINE_EXCEEDED)
    if not _implemented(service, method.name):
        allowed.add(grpc.StatusCode.UNIMPLEMENTED)
    seen: dict[grpc.StatusCode, int] = {}

    @FUZZ
    @given(payload=request_bytes(method.input_type, world.marker, world.seeds.get(f"{service}.{method.name}")))
    def one_request(payload: bytes) -> None:
        code = world.call(service, method, payload)
        seen[code] = seen.get(code, 0) + 1
        assert code in allowed, f"{service}.{method.name} answered {code.name} to {payload[:200]!r}"

    one_request()
    assert seen, "no request was sent"
    world.assert_intact()


@pytest.mark.parametrize("service", list(SERVICES))
def test_oversized_requests_are_refused_whole(world: World, service: str):
    """A request over the servers' message limit ends RESOURCE_EXHAUSTED before any handler
    sees it; one just under the limit is handled (with a proper status)."""
    descriptor = SERVICES[service][0]
    method = next(m for m in descriptor.methods if not m.server_streaming)
    # Field 1 as a length-delimited blob: a string or message field of every request type
    # (a scalar field 1 makes it malformed instead, which is fine too).
    huge = b"\x0a" + _varint(MAX_MESSAGE_BYTES + 1) + b"x" * (MAX_MESSAGE_BYTES + 1)
    assert world.call(service, method, huge) == grpc.StatusCode.RESOURCE_EXHAUSTED
    big = b"\x0a" + _varint(MAX_MESSAGE_BYTES - 1024) + b"x" * (MAX_MESSAGE_BYTES - 1024)
    assert world.call(service, method, big) in PROPER | {grpc.StatusCode.UNIMPLEMENTED}
    world.assert_intact()


@given(extra=st.integers(min_value=-2, max_value=2))
@settings(max_examples=5, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_task_prompt_limit_is_256_kib_of_utf8(world: World, extra: int):
    """At most 256 KiB of UTF-8: the limit itself is accepted, one byte more is refused
    naming spec.task_prompt (multi-byte characters count as their bytes)."""
    size = 256 * 1024 + extra
    prompt = "é" * (size // 2) + "x" * (size % 2)  # é is 2 bytes
    assert len(prompt.encode()) == size
    spec = common_pb2.WorkOrderSpec(
        task_prompt=prompt, agent=common_pb2.AgentSpec(name="scripted", options={"script": "default: [{print: hi}]"})
    )
    spec.source.local_path = str(world.outside / "project")
    queue = queue_pb2_grpc.QueueServiceStub(world.channels["queue"])
    try:
        work_order = queue.Submit(queue_pb2.SubmitRequest(spec=spec), timeout=10).work_order
    except grpc.RpcError as exc:
        assert size > 256 * 1024, exc
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert "spec.task_prompt" in exc.details()  # type: ignore[attr-defined]
        return
    assert size <= 256 * 1024 and work_order.spec.task_prompt == prompt


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
