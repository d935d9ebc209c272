"""The dashboard gateway (docs/dashboard.md) in front of real queue and persistence servers:
routing by method path from the generated descriptors, Connect framing, bytes passed through
untouched, deadlines passed on, and who may call (token, one-time code, session cookie,
same origin only)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from agentgate.client.gateway import bridge
from agentgate.client.gateway.auth import COOKIE, Sessions
from agentgate.client.gateway.server import Upstreams, make_app
from agentgate.common.channels import aio_channel
from agentgate.common.config import ServiceSettings
from agentgate.common.security import ServerSecurity, client_token
from agentgate.common.server import start_server
from agentgate.persistence.server import PersistenceApp
from agentgate.queue.server import QueueApp
from agentgate.v1 import common_pb2, events_pb2, persistence_pb2, persistence_pb2_grpc, queue_pb2
from tests.credentials import service_credential
from tests.integration.inprocess_suite import free_address

REPO = Path(__file__).resolve().parents[2]
QUEUE = "/agentgate.v1.QueueService/"
PERSISTENCE = "/agentgate.v1.PersistenceService/"


class Gateway:
    """A gateway on a free port in front of a queue and a persistence (no orchestrator, so a
    submitted work order stays PENDING)."""

    def __init__(self, url: str, token: str, home: Path, addresses: dict[str, str], dist: Path):
        self.url, self.token, self.home, self.addresses, self.dist = url, token, home, addresses, dist

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
async def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    home = tmp_path / "home"
    monkeypatch.setenv("AGENTGATE_HOME", str(home))
    security = ServerSecurity.load(home=home)
    addresses = {"persistence": free_address(), "queue": free_address()}
    servers = [
        await start_server(
            PersistenceApp(ServiceSettings("persistence", addresses["persistence"], home)),
            addresses["persistence"],
            security,
        ),
    ]
    servers.append(
        await start_server(
            QueueApp(ServiceSettings("queue", addresses["queue"], home), persistence_address=addresses["persistence"]),
            addresses["queue"],
            security,
        )
    )
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><p>dashboard</p>")
    (dist / "assets" / "app.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("not to be served")
    runner = web.AppRunner(make_app(Sessions(client_token()), dist, Upstreams(addresses)), handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Gateway(f"http://127.0.0.1:{port}", client_token(), home, addresses, dist)
    finally:
        await runner.cleanup()
        for server in reversed(servers):
            await server.stop(grace=0.5)


def _spec(tmp_path: Path) -> bytes:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    spec = common_pb2.WorkOrderSpec(
        task_prompt="fix it",
        source=common_pb2.WorkspaceSource(local_path=str(project)),
        agent=common_pb2.AgentSpec(name="scripted", options={"script": "default:\n  - print: hi\n"}),
    )
    return queue_pb2.SubmitRequest(spec=spec).SerializeToString()


def _frames(body: bytes) -> list[tuple[int, bytes]]:
    frames = []
    while body:
        flags, length = struct.unpack_from(">BI", body)
        frames.append((flags, body[5 : 5 + length]))
        body = body[5 + length :]
    return frames


def test_every_rpc_in_the_protos_is_routed_from_the_descriptors() -> None:
    # The gateway has no list of its own: what the .proto files declare is what it routes,
    # each to the service named after the proto service.
    declared = set()
    for proto in (REPO / "protos" / "agentgate" / "v1").glob("*.proto"):
        service = None
        for line in proto.read_text().splitlines():
            if match := re.match(r"\s*service (\w+)", line):
                service = match.group(1)
            elif match := re.match(r"\s*rpc (\w+)\(", line):
                declared.add(f"/agentgate.v1.{service}/{match.group(1)}")
    routed = {route.path: route for route in bridge.routes()}
    assert set(routed) == declared
    assert routed[QUEUE + "Submit"].service == "queue"
    assert routed[PERSISTENCE + "StreamEvents"].server_streaming
    assert routed["/agentgate.v1.WorkspaceService/GetDiff"].service == "workspace"
    for path in ("/grpc.health.v1.Health/Check", "/agentgate.v1.QueueService/Nope", "/x", "/agentgate.v1.X/Y/Z"):
        with pytest.raises(bridge.BridgeError):
            bridge.route(path)


async def test_unary_calls_pass_bytes_through_and_errors_become_connect_errors(
    gateway: Gateway, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as http:
        headers = {**gateway.auth(), "Content-Type": "application/proto"}
        # A field this gateway's stubs do not know (number 999) goes through: the gateway never
        # decodes, so what a newer .proto adds reaches the service and the browser untouched.
        unknown_field = b"\xb8\x3e\x01"
        async with http.post(gateway.url + QUEUE + "Submit", data=_spec(tmp_path) + unknown_field, headers=headers) as r:
            assert r.status == 200 and r.content_type == "application/proto", await r.text()
            submitted = queue_pb2.SubmitResponse.FromString(await r.read())
        assert submitted.work_order.id.startswith("wo-") and submitted.position == 1
        body = queue_pb2.GetWorkOrderRequest(work_order_id=submitted.work_order.id).SerializeToString()
        async with http.post(gateway.url + QUEUE + "GetWorkOrder", data=body, headers=headers) as r:
            assert queue_pb2.GetWorkOrderResponse.FromString(await r.read()).work_order.status == (
                common_pb2.WORK_ORDER_STATUS_PENDING
            )
        # A service's error, with its BadRequest details, as a Connect error.
        bad = queue_pb2.SubmitRequest(spec=common_pb2.WorkOrderSpec()).SerializeToString()
        async with http.post(gateway.url + QUEUE + "Submit", data=bad, headers=headers) as r:
            error = await r.json()
        assert r.status == 400 and error["code"] == "invalid_argument"
        assert error["details"][0]["type"] == "google.rpc.BadRequest"
        # The client token may not do a worker's calls: the service says so, not the gateway.
        async with http.post(gateway.url + QUEUE + "Lease", data=b"", headers=headers) as r:
            assert r.status == 403 and (await r.json())["code"] == "permission_denied"
        async with http.post(gateway.url + QUEUE + "Nope", data=b"", headers=headers) as r:
            assert r.status == 501
        async with http.post(gateway.url + QUEUE + "GetQueueStats", data=b"", headers={**headers, "Content-Type": "application/json"}) as r:
            assert r.status == 400 and "application/proto" in (await r.json())["message"]


async def test_server_streams_are_enveloped_and_deadlines_go_downstream(gateway: Gateway, tmp_path: Path) -> None:
    channel = aio_channel(gateway.addresses["persistence"], credential=service_credential(gateway.home))
    persistence = persistence_pb2_grpc.PersistenceServiceStub(channel)
    events = [
        events_pb2.RunEvent(type="agent:output", work_order_id="wo-s", run_id="run-s", agent_output=events_pb2.AgentOutput(text=f"line {n}"))
        for n in range(3)
    ]
    await persistence.AppendEvents(persistence_pb2.AppendEventsRequest(events=events), timeout=10)
    await channel.close()
    stream_headers = {**gateway.auth(), "Content-Type": "application/connect+proto"}
    request = persistence_pb2.StreamEventsRequest(work_order_id="wo-s", follow=True).SerializeToString()
    async with aiohttp.ClientSession() as http:
        # The run never ends, so only the deadline the browser gave ends the stream.
        started = time.monotonic()
        async with http.post(
            gateway.url + PERSISTENCE + "StreamEvents",
            data=bridge.envelope(request),
            headers={**stream_headers, "Connect-Timeout-Ms": "500"},
        ) as r:
            assert r.status == 200 and r.content_type == "application/connect+proto"
            frames = _frames(await r.read())
        elapsed = time.monotonic() - started
        assert [persistence_pb2.StreamEventsResponse.FromString(data).event.seq for _, data in frames[:-1]] == [1, 2, 3]
        flags, last = frames[-1]
        assert flags == bridge.FLAG_END_STREAM
        assert json.loads(last)["error"]["code"] == "deadline_exceeded"
        assert 0.4 < elapsed < 5
        # Replay only: the stream ends by itself with an empty end frame.
        replay = persistence_pb2.StreamEventsRequest(work_order_id="wo-s", after_seq=2).SerializeToString()
        async with http.post(gateway.url + PERSISTENCE + "StreamEvents", data=bridge.envelope(replay), headers=stream_headers) as r:
            frames = _frames(await r.read())
        assert len(frames) == 2 and json.loads(frames[-1][1]) == {}
        # Not one enveloped message: refused in the end frame.
        async with http.post(gateway.url + PERSISTENCE + "StreamEvents", data=b"\x00\x00", headers=stream_headers) as r:
            assert json.loads(_frames(await r.read())[-1][1])["error"]["code"] == "invalid_argument"


async def test_a_browser_logs_in_once_and_only_same_origin_calls_pass(gateway: Gateway) -> None:
    call = gateway.url + QUEUE + "GetQueueStats"
    proto = {"Content-Type": "application/proto"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(call, data=b"", headers=proto) as r:
            assert r.status == 401 and (await r.json())["code"] == "unauthenticated"
        async with http.post(gateway.url + "/auth/code", headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        async with http.post(gateway.url + "/auth/code", headers=gateway.auth()) as r:
            code = (await r.json())["code"]
        async with http.get(f"{gateway.url}/login?code={code}", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/"
            cookie = r.cookies[COOKIE]
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
            assert gateway.token not in cookie.value
        # Spent: the URL left in the history logs nobody in.
        async with http.get(f"{gateway.url}/login?code={code}", allow_redirects=False) as r:
            assert r.status == 401
        async with http.post(call, data=b"", headers={**proto, "Origin": gateway.url}) as r:
            assert r.status == 200
        # Another site's page riding on the cookie: refused (the same call passes from our origin).
        async with http.post(call, data=b"", headers={**proto, "Origin": "http://evil.example"}) as r:
            assert r.status == 403
        async with http.post(call, data=b"", headers={**proto, "Sec-Fetch-Site": "cross-site"}) as r:
            assert r.status == 403
    # A forged or tampered session is no session.
    async with aiohttp.ClientSession(cookies={COOKIE: "9999999999.abc.def"}) as http:
        async with http.post(call, data=b"", headers=proto) as r:
            assert r.status == 401


async def test_files_health_and_headers(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/") as r:
            assert r.status == 200 and "dashboard" in await r.text()
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
            assert r.headers["Referrer-Policy"] == "no-referrer"
        async with http.get(gateway.url + "/assets/app.js") as r:
            assert r.status == 200
        for path in ("/assets/..%2F..%2Fsecret.txt", "/assets/.hidden", "/assets/..%5Csecret.txt"):
            async with http.get(gateway.url + path) as r:
                assert r.status == 404, path
        async with http.get(gateway.url + "/healthz") as r:
            assert await r.json() == {"status": "SERVING"}
    (gateway.dist / "index.html").unlink()
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/") as r:
        assert r.status == 503 and "make dashboard" in await r.text()


def test_sessions_expire_and_codes_are_single_use() -> None:
    now = [1000.0]
    sessions = Sessions("token-1", clock=lambda: now[0])
    code = sessions.issue_code()
    now[0] += 121
    assert sessions.spend_code(code) is None  # expired
    session = sessions.spend_code(sessions.issue_code())
    assert session is not None and sessions.session_ok(session)
    assert not Sessions("token-2", clock=lambda: now[0]).session_ok(session)  # another token
    expiry, nonce, signature = session.split(".")
    assert not sessions.session_ok(f"{int(expiry) + 10}.{nonce}.{signature}")  # tampered
    now[0] += 8 * 24 * 3600
    assert not sessions.session_ok(session)
    assert sessions.token_ok("Bearer token-1") and not sessions.token_ok("Bearer token-2")
    assert not sessions.token_ok(None) and not sessions.token_ok("token-1")


async def _agentgate(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "agentgate"), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_agentgate_dashboard_prints_a_login_url_that_works_once(gateway: Gateway) -> None:
    env = {**os.environ, "AGENTGATE_GATEWAY_ADDR": gateway.url.removeprefix("http://")}
    code, out, err = await _agentgate("dashboard", "--json", env=env)
    assert code == 0, err
    url = json.loads(out)["url"]
    assert url.startswith(f"{gateway.url}/login?code=") and gateway.token not in url
    async with aiohttp.ClientSession() as http:
        async with http.get(url, allow_redirects=False) as r:
            assert r.status == 303 and COOKIE in r.cookies
    # Another suite's token is refused; no gateway at all says how to start one.
    code, _, err = await _agentgate("dashboard", env={**env, "AGENTGATE_TOKEN": "not-this-suites"})
    assert code == 1 and "refused the token" in err
    code, _, err = await _agentgate("dashboard", env={**env, "AGENTGATE_GATEWAY_ADDR": free_address()})
    assert code == 3 and "agentgate up" in err


def test_a_field_added_to_an_event_reaches_the_dashboards_stubs_with_no_gateway_change(tmp_path: Path) -> None:
    """docs/dashboard.md: a new field of RunEvent, after `make protos`'s own script, is in
    the TypeScript the dashboard imports (`RunEventSchema`, which renders every field of an
    event). The gateway takes no part: it routes by method path and forwards bytes, unknown
    fields included (test above), so nothing of it is regenerated or edited."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    (root / "clients" / "web").mkdir(parents=True)
    for name in ("buf.yaml", "scripts/gen_web_stubs.sh", "clients/web/buf.gen.yaml"):
        (root / name).write_bytes((REPO / name).read_bytes())
    (root / "scripts/gen_web_stubs.sh").chmod(0o755)
    (root / "clients/web/node_modules").symlink_to(REPO / "clients/web/node_modules")
    shutil.copytree(REPO / "protos", root / "protos")
    events = root / "protos/agentgate/v1/events.proto"
    text = events.read_text()
    head, brace, rest = text.partition("message RunEvent {\n")
    events.write_text(head + brace + "  string dashboard_probe_note = 900;\n" + rest)

    out = tmp_path / "gen"
    subprocess.run([str(root / "scripts/gen_web_stubs.sh"), str(out)], check=True, capture_output=True, timeout=120)
    generated = (out / "agentgate/v1/events_pb.ts").read_text()
    assert "dashboardProbeNote" in generated
    assert "dashboardProbeNote" not in (REPO / "clients/web/src/gen/agentgate/v1/events_pb.ts").read_text()
