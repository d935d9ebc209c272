"""Auth on by default (docs/security.md, "Authentication"): every service refuses a call
without a credential, the client token cannot write run records, and a worker may write only
the run it holds a lease on. Each attack is first shown to work with authentication off
(`ServerSecurity(insecure_no_auth=True)`, what every service did before), then held.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentgate.common import security
from agentgate.common.channels import aio_channel
from agentgate.common.config import ServiceSettings
from agentgate.common.server import RunningServer, start_server
from agentgate.persistence.server import PersistenceApp
from agentgate.queue.server import QueueApp
from agentgate.v1 import (
    common_pb2,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    persistence_pb2,
    persistence_pb2_grpc,
    queue_pb2,
    queue_pb2_grpc,
    workspace_pb2,
    workspace_pb2_grpc,
)
from tests.credentials import service_credential, worker_credential

from ..integration.inprocess_suite import InProcessSuite

RUN = common_pb2.RunState
AGENTGATE = str(Path(sys.executable).parent / "agentgate")


def spec(project: Path) -> common_pb2.WorkOrderSpec:
    project.mkdir(exist_ok=True)
    work = common_pb2.WorkOrderSpec(task_prompt="Fix add()", agent=common_pb2.AgentSpec(name="scripted", options={"script": "default: []\n"}))
    work.source.local_path = str(project)
    return work


# -- the credential files --------------------------------------------------------------


def test_token_and_service_key_files_are_private_from_creation_and_reused(tmp_path: Path) -> None:
    old = os.umask(0)  # the most permissive umask: the mode must still be 0600
    try:
        token_file, key_file = security.ensure_credentials(tmp_path / "home")
    finally:
        os.umask(old)
    for path in (token_file, key_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert len(path.read_text().strip()) == 64
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    assert token_file.read_text() != key_file.read_text()
    first = token_file.read_text()
    security.ensure_credentials(tmp_path / "home")
    assert token_file.read_text() == first  # a later `up` keeps the token
    assert [p.name for p in token_file.parent.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_a_loosened_token_file_is_tightened(tmp_path: Path) -> None:
    token_file, _ = security.ensure_credentials(tmp_path)
    token_file.chmod(0o644)
    security.ensure_credentials(tmp_path)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


# -- every service refuses a call without a credential ------------------------------------


@pytest.fixture
async def suite(home: Path) -> AsyncIterator[InProcessSuite]:
    started = await InProcessSuite.start(home)
    yield started
    await started.stop()


async def test_every_service_refuses_a_call_without_a_token(suite: InProcessSuite, tmp_path: Path) -> None:
    calls = {
        "queue": lambda ch: queue_pb2_grpc.QueueServiceStub(ch).Submit(
            queue_pb2.SubmitRequest(spec=spec(tmp_path / "p")), timeout=5
        ),
        "orchestrator": lambda ch: orchestrator_pb2_grpc.OrchestratorServiceStub(ch).GetWorkerStatus(
            orchestrator_pb2.GetWorkerStatusRequest(), timeout=5
        ),
        "workspace": lambda ch: workspace_pb2_grpc.WorkspaceServiceStub(ch).GetWorkspace(
            workspace_pb2.GetWorkspaceRequest(workspace_id="ws-0000000000000000"), timeout=5
        ),
        "persistence": lambda ch: persistence_pb2_grpc.PersistenceServiceStub(ch).GetRun(
            persistence_pb2.GetRunRequest(run_id="run-1"), timeout=5
        ),
    }
    for name, call in calls.items():
        for credential, said in ((None, "no token"), ("wrong-token", "not accepted")):
            interceptors = security.aio_client_interceptors(credential) if credential else []
            async with grpc.aio.insecure_channel(suite.addresses[name], interceptors=interceptors) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(channel)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
                assert said in refused.value.details() and "auth/token" in refused.value.details()
                # Health stays open: probes need no token.
                health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert health.status == health_pb2.HealthCheckResponse.SERVING
    # Nothing was stored by the refused Submit; the client token (read from the home) works.
    listed = await suite.queue.ListWorkOrders(queue_pb2.ListWorkOrdersRequest(), timeout=5)
    assert list(listed.work_orders) == []


# -- the client token cannot forge run records ------------------------------------------


@dataclass
class Pair:
    """A queue and a persistence service of one home."""

    home: Path
    servers: list[RunningServer]
    addresses: dict[str, str]
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def _channel(self, name: str, credential: str | None) -> grpc.aio.Channel:
        self.channels.append(aio_channel(self.addresses[name], credential=credential))
        return self.channels[-1]

    def persistence(self, credential: str | None) -> persistence_pb2_grpc.PersistenceServiceStub:
        return persistence_pb2_grpc.PersistenceServiceStub(self._channel("persistence", credential))

    def queue(self, credential: str | None) -> queue_pb2_grpc.QueueServiceStub:
        return queue_pb2_grpc.QueueServiceStub(self._channel("queue", credential))

    async def stop(self) -> None:
        for channel in self.channels:
            await channel.close()
        for server in reversed(self.servers):
            await server.stop(0)


async def start_pair(home: Path, insecure: bool = False) -> Pair:
    servers: list[RunningServer] = []
    persistence = PersistenceApp(ServiceSettings("persistence", "127.0.0.1:0", home))
    chosen = security.ServerSecurity(insecure_no_auth=True) if insecure else None
    servers.append(await start_server(persistence, "127.0.0.1:0", chosen))
    persistence_address = f"127.0.0.1:{servers[0].port}"
    queue = QueueApp(ServiceSettings("queue", "127.0.0.1:0", home), persistence_address=persistence_address)
    servers.append(await start_server(queue, "127.0.0.1:0", chosen))
    return Pair(home, servers, {"persistence": persistence_address, "queue": f"127.0.0.1:{servers[1].port}"})


@pytest.fixture
async def pair(home: Path) -> AsyncIterator[Pair]:
    started = await start_pair(home)
    yield started
    await started.stop()


@pytest.fixture
async def open_pair(tmp_path: Path) -> AsyncIterator[Pair]:
    started = await start_pair(tmp_path / "open-home", insecure=True)
    yield started
    await started.stop()


async def lease_as(pair: Pair, worker: str, project: Path) -> queue_pb2.LeaseResponse:
    """Submits a work order with the client token and leases it as `worker`."""
    await pair.queue(None).Submit(queue_pb2.SubmitRequest(spec=spec(project)), timeout=5)
    lease = await pair.queue(worker_credential(worker, pair.home)).Lease(
        queue_pb2.LeaseRequest(worker_id=worker, wait_seconds=2), timeout=10
    )
    assert lease.leased and lease.lease_token
    return lease


def forged_success(run_id: str, work_order_id: str) -> persistence_pb2.UpdateRunRequest:
    return persistence_pb2.UpdateRunRequest(
        run=common_pb2.Run(
            id=run_id, work_order_id=work_order_id, state=RUN.RUN_STATE_SUCCEEDED,
            result=common_pb2.RUN_RESULT_SUCCEEDED,
        )
    )


async def create_run(pair: Pair, worker: str, lease: queue_pb2.LeaseResponse) -> None:
    stub = pair.persistence(worker_credential(worker, pair.home))
    run = common_pb2.Run(id=lease.work_order.run_id, work_order_id=lease.work_order.id, state=RUN.RUN_STATE_BUILDING)
    await stub.CreateRun(
        persistence_pb2.CreateRunRequest(run=run), timeout=5, metadata=[(security.LEASE_METADATA, lease.lease_token)]
    )


async def state_of(pair: Pair, run_id: str) -> int:
    found = await pair.persistence(None).GetRun(persistence_pb2.GetRunRequest(run_id=run_id), timeout=5)
    return found.run.state


async def test_without_auth_anyone_marks_a_run_succeeded(open_pair: Pair, tmp_path: Path) -> None:
    # The attack of the issue, against services as they were: no credential at all.
    stub = persistence_pb2_grpc.PersistenceServiceStub(grpc.aio.insecure_channel(open_pair.addresses["persistence"]))
    await stub.CreateRun(
        persistence_pb2.CreateRunRequest(run=common_pb2.Run(id="run-x", work_order_id="wo-x", state=RUN.RUN_STATE_BUILDING)),
        timeout=5,
    )
    await stub.UpdateRun(forged_success("run-x", "wo-x"), timeout=5)
    assert (await stub.GetRun(persistence_pb2.GetRunRequest(run_id="run-x"), timeout=5)).run.state == RUN.RUN_STATE_SUCCEEDED


async def test_the_client_token_reads_and_submits_but_cannot_write_run_records(pair: Pair, tmp_path: Path) -> None:
    lease = await lease_as(pair, "worker-a", tmp_path / "p1")
    await create_run(pair, "worker-a", lease)
    client = pair.persistence(None)
    run_id, work_order_id = lease.work_order.run_id, lease.work_order.id
    refused_calls = [
        client.UpdateRun(forged_success(run_id, work_order_id), timeout=5),
        client.CreateRun(persistence_pb2.CreateRunRequest(run=common_pb2.Run(id="run-new", work_order_id="wo-new")), timeout=5),
        client.AppendEvents(persistence_pb2.AppendEventsRequest(), timeout=5),
        client.SaveIteration(persistence_pb2.SaveIterationRequest(), timeout=5),
        pair.queue(None).Lease(queue_pb2.LeaseRequest(worker_id="thief", wait_seconds=0.1), timeout=5),
        pair.queue(None).Complete(
            queue_pb2.CompleteRequest(lease_id=lease.lease_id, status=common_pb2.WORK_ORDER_STATUS_SUCCEEDED), timeout=5
        ),
    ]
    for call in refused_calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "only a worker" in refused.value.details()
    assert await state_of(pair, run_id) == RUN.RUN_STATE_BUILDING  # the read works, nothing changed


async def test_a_worker_cannot_write_a_run_leased_to_another(pair: Pair, tmp_path: Path) -> None:
    lease_a = await lease_as(pair, "worker-a", tmp_path / "pa")
    lease_b = await lease_as(pair, "worker-b", tmp_path / "pb")
    await create_run(pair, "worker-a", lease_a)
    await create_run(pair, "worker-b", lease_b)
    run_b, order_b = lease_b.work_order.run_id, lease_b.work_order.id
    worker_a = pair.persistence(worker_credential("worker-a", pair.home))
    expired = security.sign_lease(
        security.load_service_key(pair.home),
        security.LeaseGrant(run_b, "worker-a", lease_b.lease_id, int(time.time()) - 60),
    )
    attempts = {
        "its own lease token": (lease_a.lease_token, "holds no lease on run"),
        "the other worker's lease token": (lease_b.lease_token, "belongs to worker 'worker-b'"),
        "no lease token": (None, "only with the lease token"),
        "a forged lease token": (lease_b.lease_token[:-4] + "0000", "not valid"),
        "an expired lease token": (expired, "has expired"),
    }
    for what, (token, said) in attempts.items():
        metadata = [(security.LEASE_METADATA, token)] if token else []
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await worker_a.UpdateRun(forged_success(run_b, order_b), timeout=5, metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, what
        assert said in refused.value.details(), what
    # Nor may it lease in another worker's name.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pair.queue(worker_credential("worker-a", pair.home)).Lease(
            queue_pb2.LeaseRequest(worker_id="worker-b", wait_seconds=0.1), timeout=5
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await state_of(pair, run_b) == RUN.RUN_STATE_BUILDING
    # The holder of the lease may, and a heartbeat renews its token.
    worker_b = pair.persistence(worker_credential("worker-b", pair.home))
    metadata = [(security.LEASE_METADATA, lease_b.lease_token)]
    await worker_b.UpdateRun(forged_success(run_b, order_b), timeout=5, metadata=metadata)
    assert await state_of(pair, run_b) == RUN.RUN_STATE_SUCCEEDED
    beat = await pair.queue(worker_credential("worker-b", pair.home)).Heartbeat(
        queue_pb2.HeartbeatRequest(lease_id=lease_b.lease_id), timeout=5, metadata=metadata
    )
    renewed = security.verify_lease(security.load_service_key(pair.home), beat.lease_token)
    assert renewed is not None and (renewed.run_id, renewed.worker_id) == (run_b, "worker-b")


async def test_a_credential_of_another_suite_is_refused(pair: Pair, tmp_path: Path) -> None:
    other_home = tmp_path / "other"
    stub = pair.persistence(worker_credential("worker-a", other_home))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetRun(persistence_pb2.GetRunRequest(run_id="run-1"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert service_credential(pair.home) != service_credential(other_home)


# -- `agentgate up`: the token never enters the services' environment ------------------------


def test_up_makes_a_private_token_and_keeps_it_out_of_the_services_environment(tmp_path: Path) -> None:
    from ..e2e.conftest import SERVICES, free_port

    home = tmp_path / "home"
    env = dict(os.environ)
    env["AGENTGATE_HOME"] = str(home)
    for service in SERVICES:
        env[f"AGENTGATE_{service.upper()}_ADDR"] = f"127.0.0.1:{free_port()}"
    env["AGENTGATE_GATEWAY_ADDR"] = f"127.0.0.1:{free_port()}"
    env.pop("AGENTGATE_TOKEN", None)
    up = subprocess.run([AGENTGATE, "up", "--detach"], env=env, capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        token_file = home / "auth" / "token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        secrets = [token_file.read_text().strip().encode(), (home / "auth" / "service.key").read_text().strip().encode()]
        pids = [int(__import__("json").loads(p.read_text())["pid"]) for p in (home / "run").glob("*.pid")]
        assert len(pids) == 5  # the four services and the dashboard gateway
        for pid in pids:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"AGENTGATE_TOKEN_FILE=" in environ  # told where the file is ...
            assert not any(secret in environ for secret in secrets)  # ... never what is in it
        # The CLI finds the token by itself; without it the services refuse.
        listed = subprocess.run([AGENTGATE, "list", "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        no_token = dict(env, AGENTGATE_TOKEN_FILE=str(tmp_path / "missing"))
        refused = subprocess.run([AGENTGATE, "list"], env=no_token, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stdout + refused.stderr
        # A second `up` reuses the token.
        again = subprocess.run([AGENTGATE, "up", "--detach"], env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and token_file.read_text().strip().encode() == secrets[0]
    finally:
        subprocess.run([AGENTGATE, "down"], env=env, capture_output=True, text=True, timeout=120)


def test_secrets_read_from_files_are_still_redacted(tmp_path: Path) -> None:
    from agentgate.common.redaction import default_redactor

    loaded = security.ServerSecurity.load(env={}, home=tmp_path)
    text = f"token={loaded.token} key={loaded.service_key.decode()}"
    redacted = default_redactor().redact_text(text)
    assert loaded.token not in redacted and loaded.service_key.decode() not in redacted
