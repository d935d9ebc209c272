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


# A client inside that uses HTTP_PROXY for an http:// URL, as claude and codex do for a
# custom http:// base URL: an absolute-URI POST with a body to the proxy, twice on one
# kept-alive connection (urllib opens a new one per request; http.client does not).
PLAIN_CLIENT = """
import http.client, os, sys
url = sys.argv[1]
print("no_proxy", os.environ["NO_PROXY"])
conn = http.client.HTTPConnection("127.0.0.1", 3128, timeout=10)
for body in (b"first-body", b"second-body"):
    try:
        conn.request("POST", url, body=body, headers={"Connection": "keep-alive"})
        response = conn.getresponse()
        print(response.status, response.getheader("Connection"), response.read().decode())
    except Exception as error:
        print("error", type(error).__name__)
    conn.close()  # told `Connection: close`, the next request needs a new connection
"""


async def _echo_server(seen: list[bytes]) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        body = await reader.readexactly(length)
        seen.append(head + body)
        reply = b"echo:" + body
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: %d\r\n\r\n%s" % (len(reply), reply))
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


async def test_a_drivers_endpoint_on_the_hosts_loopback_through_the_proxy(make_sandbox: SandboxFactory) -> None:
    """A driver's configured endpoint (host, port) is allowed through the proxy on its own
    port — and only that pair: the same host on another port stays refused. Its loopback
    host is out of NO_PROXY, so clients send it to the proxy; requests are forwarded
    origin-form, one per connection (`Connection: close` both ways)."""
    seen: list[bytes] = []
    server = await _echo_server(seen)
    port = server.sockets[0].getsockname()[1]
    refused: list[Refusal] = []
    base = make_sandbox("on", network="proxy", allowed_hosts=("api.anthropic.com",), on_refused=refused.append)
    sandbox = base.widened(endpoints=[("127.0.0.1", port)])
    async with server:
        result = await sandbox.run([PY, "-I", "-c", PLAIN_CLIENT, f"http://127.0.0.1:{port}/v1/messages?beta=true"])
        other = await sandbox.run([PY, "-I", "-c", CLIENT, "127.0.0.1", str(port + 1 if port < 65535 else port - 1)])
        unwidened = await base.run([PY, "-I", "-c", PLAIN_CLIENT, f"http://127.0.0.1:{port}/v1/messages"])
    lines = result.stdout.splitlines()
    assert lines[0] == "no_proxy localhost,::1", result  # 127.0.0.1 goes to the proxy
    assert lines[1:] == ["200 close echo:first-body", "200 close echo:second-body"], result
    assert all(request.startswith(b"POST /v1/messages?beta=true HTTP/1.1\r\n") for request in seen), seen
    assert all(b"Connection: close\r\n" in request and b"keep-alive" not in request for request in seen), seen
    assert "403" in other.stdout  # the endpoint is a pair, not the host
    assert "403" in unwidened.stdout and "no_proxy localhost,127.0.0.1,::1" in unwidened.stdout
    # The other port once, the unwidened sandbox's two requests.
    assert [r.reason for r in refused] == ["host not in the allowlist"] * 3
