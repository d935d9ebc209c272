"""Starting, checking and stopping the four service processes (`agentgate up/down/health`).

Each service runs as `python -m agentgate.<service>`, its own session (so a Ctrl-C in the
terminal reaches only the supervisor, which then stops them in order), logging to
`$AGENTGATE_HOME/logs/<service>.log`, with a pid file `$AGENTGATE_HOME/run/<service>.pid`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentgate.common.channels import sync_channel
from agentgate.common.config import SERVICES, agentgate_home, service_address

# Start order: what others call first.
START_ORDER = ("persistence", "workspace", "queue", "orchestrator")
STOP_ORDER = ("orchestrator", "queue", "workspace", "persistence")


@dataclass
class ServiceStatus:
    """What `ps`/`health` report for one service."""

    name: str
    address: str
    pid: int | None
    health: str


def check_health(address: str, timeout: float = 2.0) -> str:
    """SERVING, NOT_SERVING, ... or UNREACHABLE."""
    channel = sync_channel(address)
    try:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    except grpc.RpcError:
        return "UNREACHABLE"
    finally:
        channel.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


class Supervisor:
    """Knows where each service's pid file, log and address are."""

    def __init__(self, home: Path | None = None):
        self.home = home or agentgate_home()
        self.run_dir = self.home / "run"
        self.log_dir = self.home / "logs"

    def pid_file(self, service: str) -> Path:
        """Where a service's pid and address are recorded."""
        return self.run_dir / f"{service}.pid"

    def read_pid(self, service: str) -> int | None:
        """The live pid of a service started here, or None."""
        try:
            info = json.loads(self.pid_file(service).read_text())
            pid = int(info["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return pid if _pid_alive(pid) else None

    def status(self) -> list[ServiceStatus]:
        """Pid, address and health of every service."""
        return [
            ServiceStatus(name, service_address(name), self.read_pid(name), check_health(service_address(name)))
            for name in SERVICES
        ]

    def service_env(self) -> dict[str, str]:
        """The environment the services get: ours, with this home and addresses fixed, and
        this Python's bin folder first on PATH so checks find the same tools."""
        env = dict(os.environ)
        env["AGENTGATE_HOME"] = str(self.home)
        for name in SERVICES:
            env[f"AGENTGATE_{name.upper()}_ADDR"] = service_address(name)
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        return env

    def start(self, service: str, extra_args: list[str] | None = None) -> subprocess.Popen[bytes]:
        """Starts one service process (not waiting for it to serve)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{service}.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", f"agentgate.{service}", *(extra_args or [])],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.service_env(),
                start_new_session=True,
            )
        finally:
            log.close()
        self.pid_file(service).write_text(json.dumps({"pid": process.pid, "address": service_address(service)}))
        return process

    def wait_serving(self, services: list[str], timeout: float = 30.0) -> dict[str, str]:
        """Waits until each service answers SERVING; returns the last health of each."""
        deadline = time.monotonic() + timeout
        health = {name: "UNREACHABLE" for name in services}
        while time.monotonic() < deadline:
            for name in services:
                if health[name] != "SERVING":
                    health[name] = check_health(service_address(name), timeout=1.0)
            if all(value == "SERVING" for value in health.values()):
                break
            time.sleep(0.1)
        return health

    def stop(self, service: str, timeout: float = 15.0) -> bool:
        """SIGTERM, then SIGKILL after `timeout`; True when a process was stopped."""
        pid = self.read_pid(service)
        self.pid_file(service).unlink(missing_ok=True)
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return True
            time.sleep(0.05)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return True
