"""Network mode "proxy": egress only through our allowlist proxy, refusals reported."""

from __future__ import annotations

import asyncio
import sys

import pytest

from agentgate.workspace.sandbox import Refusal, host_allowed

from .conftest import SandboxFactory, pytestmark  # noqa: F401

PY = sys.executable

CLIENT = """
import socket, sys
host, port = sys.argv[1], sys.argv[2]
s = socket.create_connection(("127.0.0.1", 3128), 5)
s.sendall(f"CONNECT {host}:{port} HTTP/1.1\\r\\nHost: {host}:{port}\\r\\n\\r\\n".encode())
head = s.recv(4096).decode()
print("proxy-said", head.split("\\r\\n")[0])
if " 200 " in head:
    s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    print(data.decode().split("\\r\\n\\r\\n", 1)[-1])
"""

DIRECT = "import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), 3); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print(s.recv(4096).decode())"


async def _http_server() -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 13\r\n\r\nhello-through")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


def test_allowlist_patterns() -> None:
    assert host_allowed("api.anthropic.com", ["api.anthropic.com"])
    assert host_allowed("API.Anthropic.com.", ["api.anthropic.com"])
    assert host_allowed("x.googleapis.com", ["*.googleapis.com"])
    assert not host_allowed("googleapis.com", ["*.googleapis.com"])
    assert not host_allowed("evilanthropic.com", ["*.anthropic.com"])
    assert not host_allowed("api.anthropic.com.evil.io", ["api.anthropic.com"])


@pytest.mark.parametrize("mode", ["off", "on"])
async def test_egress_only_through_the_allowlist(mode: str, make_sandbox: SandboxFactory) -> None:
    server = await _http_server()
    port = server.sockets[0].getsockname()[1]
    refused: list[Refusal] = []
    sandbox = make_sandbox(
        mode, network="proxy", allowed_hosts=("localhost",), allowed_ports=(port,), on_refused=refused.append
    )
    async with server:
        direct = await sandbox.run([PY, "-I", "-c", DIRECT, str(port)])
        if mode == "off":
            assert "hello-through" in direct.stdout  # nothing stands in the way
            return
        assert "hello-through" not in direct.stdout  # no route but the proxy
        denied = await sandbox.run([PY, "-I", "-c", CLIENT, "127.0.0.1", str(port)])
        allowed = await sandbox.run([PY, "-I", "-c", CLIENT, "localhost", str(port)])
    assert "403" in denied.stdout and "hello-through" not in denied.stdout
    assert refused == [Refusal("127.0.0.1", port, "host not in the allowlist")]
    assert "200" in allowed.stdout and "hello-through" in allowed.stdout, allowed


async def test_refused_host_is_reported(make_sandbox: SandboxFactory) -> None:
    refused: list[Refusal] = []
    sandbox = make_sandbox("on", network="proxy", allowed_hosts=("api.anthropic.com",), on_refused=refused.append)
    result = await sandbox.run([PY, "-I", "-c", CLIENT, "evil.example", "443"])
    assert "403" in result.stdout
    assert refused == [Refusal("evil.example", 443, "host not in the allowlist")]
    assert "HTTPS_PROXY=http://127.0.0.1:3128" in (await sandbox.run(["env"])).stdout
