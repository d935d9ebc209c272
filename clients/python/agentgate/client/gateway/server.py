"""The gateway's HTTP edge (aiohttp): the dashboard's files, its health, the login, and
every `agentgate.v1` RPC over the Connect protocol, forwarded as bytes to the service that
serves it (routing and framing in `bridge.py`). docs/dashboard.md explains the design.

Each browser call becomes one gRPC call upstream over the suite's usual client channel
(which sends the suite's client token, like the CLI): its deadline (`connect-timeout-ms`)
goes with it, and when the browser goes away (a closed tab, an aborted fetch) aiohttp
cancels the handler, which cancels the upstream call.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from agentgate.client.gateway import bridge
from agentgate.client.gateway.auth import COOKIE, SESSION_TTL_SECONDS, Sessions
from agentgate.common.channels import aio_channel
from agentgate.common.config import MAX_MESSAGE_BYTES, service_address

log = logging.getLogger(__name__)

#: Every response: nothing from elsewhere, no framing, no referrer (so a login URL's spent
#: code is not sent on).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

_ASSET_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")

_NOT_BUILT = (
    "<!doctype html><title>AgentGate</title><p>The dashboard is not built: run <code>make dashboard</code> "
    "(or set AGENTGATE_DASHBOARD_DIR to a built copy).</p>"
)


class Upstreams:
    """One asyncio channel per service, opened on first use in the running loop."""

    def __init__(self, addresses: dict[str, str] | None = None):
        self._addresses = addresses or {}
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, service: str) -> grpc.aio.Channel:
        """The channel to `service` (its AGENTGATE_*_ADDR unless given at construction)."""
        if service not in self._channels:
            self._channels[service] = aio_channel(self._addresses.get(service) or service_address(service))
        return self._channels[service]

    async def close(self) -> None:
        """Closes every channel."""
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


def make_app(sessions: Sessions, static_dir: Path | None, upstreams: Upstreams | None = None) -> web.Application:
    """The gateway's application: `sessions` decides who may call, `static_dir` holds the
    built dashboard (index.html, assets/), `upstreams` reaches the services."""
    upstreams = upstreams or Upstreams()
    bridge.load_contracts()
    app = web.Application(client_max_size=MAX_MESSAGE_BYTES, middlewares=[_security_headers])

    async def close_upstreams(_: web.Application) -> None:
        await upstreams.close()

    app.on_cleanup.append(close_upstreams)

    async def index(request: web.Request) -> web.StreamResponse:
        page = static_dir / "index.html" if static_dir else None
        if page is None or not page.is_file():
            return web.Response(text=_NOT_BUILT, content_type="text/html", status=503)
        return web.FileResponse(page, headers={"Cache-Control": "no-cache"})

    async def asset(request: web.Request) -> web.StreamResponse:
        # Vite's hashed file names: one plain name, no folders (so no way out of assets/).
        name = request.match_info["name"]
        path = static_dir / "assets" / name if static_dir and _ASSET_NAME.fullmatch(name) else None
        if path is None or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "public, max-age=31536000, immutable"})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "SERVING"})

    async def issue_code(request: web.Request) -> web.Response:
        if not sessions.token_ok(request.headers.get("Authorization")):
            return web.json_response({"error": "send the suite's token as 'authorization: Bearer <token>'"}, status=401)
        return web.json_response({"code": sessions.issue_code()})

    async def login(request: web.Request) -> web.Response:
        # Raises a redirect that sets the cookie.
        session = sessions.spend_code(request.query.get("code", ""))
        if session is None:
            return web.Response(
                text="This login link was used already or has expired: run `agentgate dashboard` again.",
                status=401,
            )
        response = web.HTTPSeeOther("/")
        response.set_cookie(
            COOKIE, session, max_age=SESSION_TTL_SECONDS, httponly=True, samesite="Strict", path="/",
            secure=request.secure,
        )
        raise response

    async def call(request: web.Request) -> web.StreamResponse:
        try:
            _authorize(request, sessions)
            found = bridge.route(request.path)
            timeout = bridge.timeout_seconds(request.headers.get("Connect-Timeout-Ms"))
            if found.client_streaming:
                raise bridge.BridgeError(
                    grpc.StatusCode.UNIMPLEMENTED, f"{found.path}: client streaming needs HTTP/2, not bridged"
                )
            wanted = bridge.STREAM_PROTO if found.server_streaming else bridge.UNARY_PROTO
            if request.content_type != wanted:
                raise bridge.BridgeError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"content-type {request.content_type!r}: this gateway speaks {wanted} (binary Connect)",
                )
            body = await request.read()
        except bridge.BridgeError as exc:
            return _unary_error(exc.code, exc.message)
        channel = upstreams.channel(found.service)
        if found.server_streaming:
            return await _server_stream(request, channel, found, body, timeout)
        try:
            unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(found.path)
            reply = await unary(body, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return _unary_error(exc.code(), exc.details() or "", bridge.status_details(exc.trailing_metadata()))
        return web.Response(body=reply, content_type=bridge.UNARY_PROTO)

    app.router.add_get("/", index)
    app.router.add_get("/healthz", health)
    app.router.add_post("/auth/code", issue_code)
    app.router.add_get("/login", login)
    app.router.add_post("/{service}/{method}", call)
    app.router.add_get("/assets/{name}", asset)
    return app


def _authorize(request: web.Request, sessions: Sessions) -> None:
    """The suite's token, or a session cookie from a same-origin page (a cross-site page
    cannot send our content types without a CORS preflight, which is never granted; the
    Origin and Sec-Fetch-Site checks refuse it even so)."""
    if sessions.token_ok(request.headers.get("Authorization")):
        return
    if not sessions.session_ok(request.cookies.get(COOKIE)):
        raise bridge.BridgeError(
            grpc.StatusCode.UNAUTHENTICATED, "not logged in: open the URL `agentgate dashboard` prints"
        )
    origin = request.headers.get("Origin")
    same_origin = origin is None or origin == f"{request.scheme}://{request.host}"
    if not same_origin or request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise bridge.BridgeError(grpc.StatusCode.PERMISSION_DENIED, "cross-origin calls are refused")


def _unary_error(code: grpc.StatusCode, message: str, details: list[dict[str, str]] | None = None) -> web.Response:
    return web.json_response(bridge.error_json(code, message, details), status=bridge.connect_code(code)[1])


async def _server_stream(
    request: web.Request, channel: grpc.aio.Channel, found: bridge.Route, body: bytes, timeout: float | None
) -> web.StreamResponse:
    """Forwards each message of the upstream stream as one envelope as soon as it comes, then
    the end-of-stream frame with the status."""
    response = web.StreamResponse(
        headers={"Content-Type": bridge.STREAM_PROTO, "Cache-Control": "no-store", **SECURITY_HEADERS}
    )
    error: dict[str, Any] | None = None
    try:
        message = bridge.single_message(body)
    except bridge.BridgeError as exc:
        await response.prepare(request)
        await response.write(bridge.end_stream(bridge.error_json(exc.code, exc.message)))
        return response
    method: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(found.path)
    stream = method(message, timeout=timeout)
    await response.prepare(request)
    try:
        async for chunk in stream:
            await response.write(bridge.envelope(chunk))
    except grpc.aio.AioRpcError as exc:
        error = bridge.error_json(exc.code(), exc.details() or "", bridge.status_details(exc.trailing_metadata()))
    finally:
        # The browser went away (the handler is cancelled) or the stream ended: either way
        # the upstream call ends here.
        stream.cancel()
    await response.write(bridge.end_stream(error))
    await response.write_eof()
    return response


@web.middleware
async def _security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    if not response.prepared:
        response.headers.update(SECURITY_HEADERS)
    return response


def login_url(address: str, code: str) -> str:
    """The URL that logs a browser in with `code` (for `agentgate dashboard`)."""
    return f"http://{address}/login?code={code}"
