"""The allowlist proxy: the only way out of a sandbox in network mode "proxy".

An asyncio HTTP proxy on a unix socket (bind-mounted into the sandbox, where a forwarder on
127.0.0.1 relays to it, see forwarder.py). It accepts `CONNECT host:port` (HTTPS and any
TLS) and plain `GET http://host/...` requests, only to allowed hosts; every refusal is
handed to `on_refused`, which the caller turns into an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from agentgate.workspace.sandbox import defaults

log = logging.getLogger(__name__)

#: A request head larger than this is refused (no legitimate CONNECT needs more).
MAX_HEAD_BYTES = 16 * 1024
_HEAD_TIMEOUT = 30.0
_PIPE_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Refusal:
    """One refused connection: the host and port asked for, and why."""

    host: str
    port: int
    reason: str


RefusalCallback = Callable[[Refusal], "Awaitable[None] | None"]


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """Whether `host` matches an allowed name: exact (case-insensitive) or a `*.domain`
    pattern (which matches subdomains only, not the domain itself)."""
    host = host.lower().rstrip(".")
    for pattern in allowed:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and fnmatch.fnmatchcase(host, pattern):
                return True
        elif host == pattern:
            return True
    return False


def _split_host_port(authority: str, default_port: int) -> tuple[str, int]:
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, sep, port = authority.rpartition(":")
        if not sep:
            host, port = authority, ""
    return host, int(port) if port else default_port


class AllowlistProxy:
    """An HTTP CONNECT proxy allowing only `allowed_hosts` (names, `*.domain` patterns) on
    `allowed_ports`; listening on the unix socket `socket_path` once `start()`ed.

    Host names are resolved here, outside the sandbox, so the sandbox needs no DNS.
    """

    def __init__(
        self,
        socket_path: Path | str,
        allowed_hosts: Iterable[str],
        *,
        allowed_ports: Iterable[int] | None = defaults.PROXY_ALLOWED_PORTS,
        allowed_endpoints: Iterable[tuple[str, int]] = (),
        on_refused: RefusalCallback | None = None,
    ):
        self.socket_path = Path(socket_path)
        self.allowed_hosts = tuple(allowed_hosts)
        self.allowed_ports = None if allowed_ports is None else frozenset(allowed_ports)
        #: Exact (host, port) pairs allowed whatever `allowed_ports` says: a driver's
        #: configured model endpoint (e.g. a gateway on a port of its own).
        self.allowed_endpoints = frozenset((host.lower().rstrip("."), int(port)) for host, port in allowed_endpoints)
        self.on_refused = on_refused
        self.refusals: list[Refusal] = []
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listens on the socket (mode 0666: the sandbox's uid may differ)."""
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.socket_path))
        os.chmod(self.socket_path, 0o666)

    async def close(self) -> None:
        """Stops listening and cuts every open tunnel."""
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def __aenter__(self) -> AllowlistProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def allows(self, host: str, port: int) -> str:
        """"" when (host, port) may be reached, else the reason it may not."""
        if (host.lower().rstrip("."), port) in self.allowed_endpoints:
            return ""
        if not host_allowed(host, self.allowed_hosts):
            return "host not in the allowlist"
        if self.allowed_ports is not None and port not in self.allowed_ports:
            return f"port {port} not allowed"
        return ""

    async def _refuse(self, writer: asyncio.StreamWriter, host: str, port: int, reason: str) -> None:
        refusal = Refusal(host, port, reason)
        self.refusals.append(refusal)
        log.info("sandbox proxy refused %s:%s (%s)", host, port, reason)
        with contextlib.suppress(Exception):
            writer.write(f"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                         f"agentgate sandbox: {host}:{port} refused: {reason}\n".encode())
            await writer.drain()
        if self.on_refused is not None:
            outcome = self.on_refused(refusal)
            if inspect.isawaitable(outcome):
                await outcome

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except Exception:  # one bad client must never stop the proxy
            log.exception("sandbox proxy connection failed")
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT)
        if len(head) > MAX_HEAD_BYTES:
            return
        request_line, _, rest = head.decode("latin-1").partition("\r\n")
        parts = request_line.split()
        if len(parts) != 3:
            return
        method, target, version = parts
        if method.upper() == "CONNECT":
            host, port = _split_host_port(target, 443)
            forward = b""
        else:
            url = urlsplit(target)
            if url.scheme != "http" or not url.hostname:
                await self._refuse(writer, target, 0, "only CONNECT and absolute http:// URLs")
                return
            host, port = url.hostname, url.port or 80
            path = url.path or "/"
            if url.query:
                path += "?" + url.query
            # Forward the request as an origin-form request; drop proxy-only and hop-by-hop
            # connection headers and ask for `Connection: close`: one request per connection,
            # so a kept-alive client can never send its next request (maybe for another
            # host) into this tunnel.
            kept = [line for line in rest.split("\r\n") if line and not _hop_by_hop(line)]
            kept.append("Connection: close")
            forward = (f"{method} {path} {version}\r\n" + "".join(k + "\r\n" for k in kept) + "\r\n").encode("latin-1")
        reason = self.allows(host, port)
        log.debug("sandbox proxy: %s %s:%s%s", method, host, port, f" refused ({reason})" if reason else "")
        if reason:
            await self._refuse(writer, host, port, reason)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, port), _HEAD_TIMEOUT)
        except (OSError, TimeoutError) as error:
            with contextlib.suppress(Exception):
                writer.write(f"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n{error}\n".encode())
                await writer.drain()
            return
        try:
            if forward:
                up_writer.write(forward)
                # The body goes up while the response comes down; the exchange ends with
                # the response (the upstream closes: `Connection: close`).
                upload = asyncio.ensure_future(_pipe(reader, up_writer))
                try:
                    await _relay_response_head(up_reader, writer)
                    await _pipe(up_reader, writer)
                finally:
                    upload.cancel()
                    await asyncio.gather(upload, return_exceptions=True)
            else:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            with contextlib.suppress(Exception):
                up_writer.close()


def _hop_by_hop(header_line: str) -> bool:
    name = header_line.partition(":")[0].strip().lower()
    return name.startswith("proxy-") or name in ("connection", "keep-alive")


async def _relay_response_head(up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Passes on the upstream's response head of a plain-HTTP request with `Connection:
    close` in place of its own connection headers: the client opens a new connection (and
    so a new, checked request to the proxy) for its next request."""
    head = await up_reader.readuntil(b"\r\n\r\n")
    status, _, rest = head.decode("latin-1").partition("\r\n")
    kept = [line for line in rest.split("\r\n") if line and not _hop_by_hop(line)]
    kept.append("Connection: close")
    writer.write((status + "\r\n" + "".join(k + "\r\n" for k in kept) + "\r\n").encode("latin-1"))
    await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(_PIPE_CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
