"""Whether a model CLI could reach its endpoint from where it runs: inside an agent sandbox
of this service, through the allowlist proxy, as the CLI itself would (docs/agents.md,
"Checking a setup"). No request is sent (a CONNECT through the proxy, or a bare TCP connect
when the sandbox is off), so no key is needed and nothing is billed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from agentgate.common.errors import FailedPrecondition
from agentgate.workspace.drivers.stream import endpoint_of
from agentgate.workspace.processes import run_process
from agentgate.workspace.sandbox.service import agent_sandbox

#: Seconds one probe may take (an endpoint that drops packets answers nothing).
PROBE_TIMEOUT_SECONDS = 15.0
#: The service's own interpreter, which every sandbox can read (sandbox/spec.py).
_PYTHON = os.path.realpath(sys.executable)

# Run inside the sandbox with `python -I -S` (stdlib only): a CONNECT to the endpoint through
# the proxy the sandbox gives every agent (HTTPS_PROXY); prints the proxy's status line.
_PROBE_SOURCE = r"""
import os, socket, sys
from urllib.parse import urlsplit
host, port = sys.argv[1], sys.argv[2]
proxy = urlsplit(os.environ["HTTPS_PROXY"])
s = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
line = s.makefile("rb").readline().decode("latin-1").strip()
print(line)
sys.exit(0 if line.split()[1:2] == ["200"] else 1)
"""


def direct_reachability(host: str, port: int, timeout: float = 2.0) -> str:
    """Whether a TCP connection from this service to host:port opens: blocking, call off-loop."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return f"reachable (sandbox off): {host}:{port}"
    except OSError as exc:
        return f"unreachable (sandbox off): {host}:{port} ({exc.strerror or type(exc).__name__})"


async def sandbox_reachability(url: str, *, driver: str, agentgate_home: Path) -> str:
    """Whether an agent execution of `driver` in this service's sandbox could reach `url`,
    in words ("reachable from the sandbox: host:port" or "unreachable ...: why")."""
    endpoint = endpoint_of(url)
    if endpoint is None:
        return f"not an http(s) endpoint: {url!r}"
    host, port = endpoint
    scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="endpoint-probe-", dir=agentgate_home))
    try:
        folders = [scratch / name for name in ("workspace", "files", "prompt")]
        for folder in folders:
            folder.mkdir()
        workspace, files, prompt = folders
        try:
            sandbox = agent_sandbox(
                workspace=workspace, agentgate_home=agentgate_home, files_dir=files, prompt_dir=prompt, driver=driver
            )
        except FailedPrecondition as error:
            # No bubblewrap: no agent of this driver can run here either (the message says why).
            return f"not checked: {error}"
        if sandbox is None:
            return await asyncio.to_thread(direct_reachability, host, port)
        # The same widening a driver makes for its configured endpoint (docs/sandbox.md).
        sandbox = sandbox.widened(endpoints=[endpoint])
        done = await run_process(
            [_PYTHON, "-I", "-S", "-c", _PROBE_SOURCE, host, str(port)],
            cwd=workspace,
            sandbox=sandbox,
            timeout=PROBE_TIMEOUT_SECONDS,
        )
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
    if done.exit_code == 0:
        return f"reachable from the sandbox: {host}:{port}"
    if done.timed_out:
        return f"unreachable from the sandbox: {host}:{port} (no answer in {PROBE_TIMEOUT_SECONDS:g} s)"
    # The proxy's status line, else the last line of the probe's error.
    lines = (done.stdout.strip() or done.stderr.strip() or "no answer").splitlines()
    return f"unreachable from the sandbox: {host}:{port} ({lines[-1]})"
