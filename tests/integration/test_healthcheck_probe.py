"""The container health probe, run exactly as compose runs it (through docker/entrypoint.sh),
against a real service."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

from agentgate.common.config import ServiceSettings
from agentgate.common.server import start_server
from agentgate.persistence.server import PersistenceApp


def free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


ENTRYPOINT = Path(__file__).resolve().parents[2] / "docker" / "entrypoint.sh"


async def probe(*args: str) -> tuple[int, str]:
    env = dict(os.environ)
    # The image's `python` is the one with agentgate installed; here it is the venv's.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    process = await asyncio.create_subprocess_exec(
        "sh", str(ENTRYPOINT), "healthcheck", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode()


async def test_probe_exits_zero_only_while_the_service_is_serving(home: Path):
    address = free_address()
    running = await start_server(PersistenceApp(ServiceSettings("persistence", address, home)), address)
    try:
        code, out = await probe("--address", address)
        assert (code, out.strip()) == (0, f"{address} SERVING")
        code, out = await probe("--address", address, "--service", "agentgate.v1.PersistenceService")
        assert code == 0
        code, out = await probe("--address", address, "--service", "agentgate.v1.Nothing", "--timeout", "1")
        assert code == 1 and ("NOT_FOUND" in out or "SERVICE_UNKNOWN" in out), out
    finally:
        await running.stop(grace=0.5)
    code, out = await probe("--address", address, "--timeout", "1")
    assert code == 1 and "UNREACHABLE" in out
