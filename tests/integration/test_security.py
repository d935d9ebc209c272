"""Token auth and TLS on a real service (persistence), reached through the channels every
AgentGate client uses (agentgate.common.channels)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentgate.common.channels import aio_channel, sync_channel
from agentgate.common.config import ServiceSettings
from agentgate.common.security import ServerSecurity
from agentgate.common.server import RunningServer, start_server
from agentgate.persistence.server import PersistenceApp
from agentgate.v1 import persistence_pb2, persistence_pb2_grpc

TOKEN = "test-token-0123456789"
CLIENT_ENV = ("AGENTGATE_TOKEN", "AGENTGATE_TLS_CA", "AGENTGATE_TLS_CLIENT_CERT", "AGENTGATE_TLS_CLIENT_KEY",
              "AGENTGATE_TLS_SERVER_NAME")


@pytest.fixture(autouse=True)
def clean_client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in CLIENT_ENV:
        monkeypatch.delenv(key, raising=False)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate signed
    by it, and a stranger's self-signed certificate."""
    root = tmp_path_factory.mktemp("certs")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=AgentGate test CA",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=root)
    (root / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, ext in (("server", ["-extfile", "server.ext"]), ("client", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=root)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", f"{name}.pem", *ext, cwd=root)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=stranger",
            "-keyout", "stranger.key", "-out", "stranger.pem", cwd=root)
    return root


async def serve(home: Path, security: ServerSecurity) -> RunningServer:
    app = PersistenceApp(ServiceSettings("persistence", "127.0.0.1:0", home))
    return await start_server(app, "127.0.0.1:0", security)


@pytest.fixture
async def token_server(home: Path) -> AsyncIterator[RunningServer]:
    running = await serve(home, ServerSecurity(token=TOKEN))
    yield running
    await running.stop(grace=0.1)


async def get_run(channel: grpc.aio.Channel) -> grpc.StatusCode:
    stub = persistence_pb2_grpc.PersistenceServiceStub(channel)
    try:
        await stub.GetRun(persistence_pb2.GetRunRequest(run_id="run-none"), timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_token_is_required_except_for_health(token_server: RunningServer, monkeypatch: pytest.MonkeyPatch):
    address = f"127.0.0.1:{token_server.port}"
    async with aio_channel(address) as channel:
        assert await get_run(channel) == grpc.StatusCode.UNAUTHENTICATED
        stream = persistence_pb2_grpc.PersistenceServiceStub(channel).StreamEvents(
            persistence_pb2.StreamEventsRequest(work_order_id="wo-x"), timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stream:
                pass
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "AGENTGATE_TOKEN" in refused.value.details()
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        # Malformed bytes without the token: refused before anything reads them.
        raw = channel.unary_unary("/agentgate.v1.PersistenceService/GetRun")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw(b"\xff\xff", timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    monkeypatch.setenv("AGENTGATE_TOKEN", "wrong-token")
    async with aio_channel(address) as channel:
        assert await get_run(channel) == grpc.StatusCode.UNAUTHENTICATED
    monkeypatch.setenv("AGENTGATE_TOKEN", TOKEN)
    async with aio_channel(address) as channel:
        assert await get_run(channel) == grpc.StatusCode.NOT_FOUND  # got through to the service
        stream = persistence_pb2_grpc.PersistenceServiceStub(channel).StreamEvents(
            persistence_pb2.StreamEventsRequest(work_order_id="wo-x"), timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as answered:
            async for _ in stream:
                pass
        assert answered.value.code() == grpc.StatusCode.NOT_FOUND
    # The blocking channel (CLI, sync client) sends it too, on unary and streaming calls
    # (from a thread: the server runs on this loop).

    def blocking_calls() -> None:
        blocking = sync_channel(address)
        try:
            stub = persistence_pb2_grpc.PersistenceServiceStub(blocking)
            with pytest.raises(grpc.RpcError) as answered:
                stub.GetRun(persistence_pb2.GetRunRequest(run_id="run-none"), timeout=5)
            assert answered.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
            request = persistence_pb2.StreamEventsRequest(work_order_id="wo-x", follow=False)
            with pytest.raises(grpc.RpcError) as answered:
                list(stub.StreamEvents(request, timeout=5))
            assert answered.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        finally:
            blocking.close()

    await asyncio.to_thread(blocking_calls)


async def test_tls_with_token_and_client_certificates(home: Path, certs: Path, monkeypatch: pytest.MonkeyPatch):
    security = ServerSecurity(
        token=TOKEN, tls_cert=certs / "server.pem", tls_key=certs / "server.key", tls_client_ca=certs / "ca.pem"
    )
    running = await serve(home, security)
    address = f"localhost:{running.port}"
    try:
        # Plaintext cannot talk to a TLS port.
        async with aio_channel(address) as channel:
            assert await get_run(channel) == grpc.StatusCode.UNAVAILABLE
        monkeypatch.setenv("AGENTGATE_TOKEN", TOKEN)
        monkeypatch.setenv("AGENTGATE_TLS_CA", str(certs / "ca.pem"))
        # TLS without a client certificate: the server requires one.
        async with aio_channel(address) as channel:
            assert await get_run(channel) == grpc.StatusCode.UNAVAILABLE
        monkeypatch.setenv("AGENTGATE_TLS_CLIENT_CERT", str(certs / "client.pem"))
        monkeypatch.setenv("AGENTGATE_TLS_CLIENT_KEY", str(certs / "client.key"))
        async with aio_channel(address) as channel:
            assert await get_run(channel) == grpc.StatusCode.NOT_FOUND
        # By IP address, checking the certificate's name explicitly.
        monkeypatch.setenv("AGENTGATE_TLS_SERVER_NAME", "localhost")

        def check_by_ip() -> int:
            blocking = sync_channel(f"127.0.0.1:{running.port}")
            try:
                return health_pb2_grpc.HealthStub(blocking).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            finally:
                blocking.close()

        assert await asyncio.to_thread(check_by_ip) == health_pb2.HealthCheckResponse.SERVING
        # A client certificate from another CA is refused.
        monkeypatch.setenv("AGENTGATE_TLS_CLIENT_CERT", str(certs / "stranger.pem"))
        monkeypatch.setenv("AGENTGATE_TLS_CLIENT_KEY", str(certs / "stranger.key"))
        async with aio_channel(address) as channel:
            assert await get_run(channel) == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.stop(grace=0.1)


async def test_non_loopback_address_without_token_is_refused_before_binding(home: Path):
    app = PersistenceApp(ServiceSettings("persistence", "0.0.0.0:0", home))
    with pytest.raises(Exception, match="AGENTGATE_TOKEN"):
        await start_server(app, "0.0.0.0:0", ServerSecurity())
    assert app.store is None, "the service started although it may not listen there"
