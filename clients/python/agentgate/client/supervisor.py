"""Starting, checking and stopping the service processes (`agentgate up/down/ps/health`).

Each service runs as `python -m agentgate.<service>` (the gateway, part of the client, as
`python -m agentgate.client.gateway`), its own session (so a Ctrl-C in the
terminal reaches only the supervisor, which then stops them in order), logging to
`$AGENTGATE_HOME/logs/<instance>.log`, with a pid file `$AGENTGATE_HOME/run/<instance>.pid`
that records its pid and address.

An *instance* is one process: `queue`, `workspace`, `persistence`, one
`orchestrator-<i>` per worker (i = 1..N), and the dashboard's HTTP `gateway`
(AGENTGATE_GATEWAY_ADDR, default 127.0.0.1:50080; docs/dashboard.md), started last and
checked by its `/healthz`. Worker 1 listens on the orchestrator's address
(AGENTGATE_ORCHESTRATOR_ADDR, default 127.0.0.1:50052); workers 2..N each get a free port
on the same host, picked when they start and recorded in their pid file (that is where
`ps` and `health` find them).

Credentials: before starting anything, `up` makes (or keeps) the client token and the
service key under `$AGENTGATE_HOME/auth/` (mode 0600; see agentgate.common.security). The
services are told where those files are (AGENTGATE_TOKEN_FILE, AGENTGATE_SERVICE_KEY_FILE)
and read them at start; no secret is put in their environment, where /proc/<pid>/environ
would show it. An AGENTGATE_TOKEN of the caller becomes the stored client token.

What `up` was asked for (workers, per-worker runs, queue limits) is kept in
`$AGENTGATE_HOME/run/suite.json`, so a later `up --detach` brings back a service that died
with the same settings, and a supervised `up` restarts it the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentgate.common import security
from agentgate.common.channels import sync_channel
from agentgate.common.config import (
    GATEWAY,
    GATEWAY_ADDRESS_ENV,
    SERVICES,
    agentgate_home,
    gateway_address,
    service_address,
)
from agentgate.common.pids import pid_alive
from agentgate.v1 import queue_pb2, queue_pb2_grpc

# Start order: what others call first.
START_ORDER = ("persistence", "workspace", "queue", "orchestrator")
STOP_ORDER = (GATEWAY, "orchestrator", "queue", "workspace", "persistence")
#: The order of `ps` and `health`.
DISPLAY_ORDER = (*SERVICES, GATEWAY)
#: The module a process runs where it is not `agentgate.<service>`.
MODULES = {GATEWAY: "agentgate.client.gateway"}

WORKER_PREFIX = "orchestrator-"
_WORKER_NAME = re.compile(r"^orchestrator-([1-9][0-9]*)$")


@dataclass
class ServiceStatus:
    """What `ps`/`health` report for one instance."""

    name: str
    address: str
    pid: int | None
    health: str
    service: str = ""


@dataclass(frozen=True)
class SuiteConfig:
    """What `up` was asked for; None = the service's own default (flag > env > default)."""

    workers: int = 1
    max_concurrent_runs: int | None = None
    max_concurrent: int | None = None
    max_queue_size: int | None = None
    #: postgresql://... for the queue's and persistence's state (docs/deployment.md).
    database_url: str | None = None

    def merged(self, **flags: int | str | None) -> SuiteConfig:
        """This config with every flag that was given (not None) replacing its value."""
        given: dict[str, Any] = {key: value for key, value in flags.items() if value is not None}
        return replace(self, **given)

    def args_for(self, service: str) -> list[str]:
        """Command-line flags for one service's process."""
        database = _flags(("--database-url", self.database_url))
        if service == "queue":
            return [
                *_flags(("--max-concurrent", self.max_concurrent), ("--max-queue-size", self.max_queue_size)),
                *database,
            ]
        if service == "persistence":
            return database
        if service == "orchestrator":
            return _flags(("--max-concurrent-runs", self.max_concurrent_runs))
        return []


def _flags(*pairs: tuple[str, int | str | None]) -> list[str]:
    return [part for flag, value in pairs if value is not None for part in (flag, str(value))]


def worker_name(index: int) -> str:
    """`orchestrator-<index>` (index from 1)."""
    return f"{WORKER_PREFIX}{index}"


def worker_index(instance: str) -> int | None:
    """The worker number of `orchestrator-<i>`, None for any other instance."""
    match = _WORKER_NAME.match(instance)
    return int(match.group(1)) if match else None


def service_of(instance: str) -> str:
    """The service an instance runs: `orchestrator-2` -> `orchestrator`."""
    return "orchestrator" if worker_index(instance) is not None else instance


def check_health(address: str | None, timeout: float = 2.0) -> str:
    """SERVING, NOT_SERVING, ... or UNREACHABLE (also when there is no address yet)."""
    if not address:
        return "UNREACHABLE"
    channel = sync_channel(address)
    try:
        response = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]  # stubs: HealthStub has no methods
            health_pb2.HealthCheckRequest(), timeout=timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    except grpc.RpcError:
        return "UNREACHABLE"
    finally:
        channel.close()


def gateway_call(address: str, path: str, timeout: float, method: str = "GET", token: str | None = None) -> Any:
    """The JSON answer of the gateway at `address` to `path` (docs/dashboard.md), straight to
    it (never through an HTTP proxy of the environment). Raises OSError (HTTPError for a
    refusal) or ValueError."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://{address}{path}", method=method, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=timeout) as response:
        return json.loads(response.read())


def check_gateway_health(address: str | None, timeout: float = 2.0) -> str:
    """SERVING when the gateway's `/healthz` answers so, else UNREACHABLE."""
    if not address:
        return "UNREACHABLE"
    try:
        status = gateway_call(address, "/healthz", timeout).get("status")
    except (OSError, ValueError, AttributeError):
        return "UNREACHABLE"
    return status if isinstance(status, str) else "UNREACHABLE"


def queue_limits(address: str, timeout: float = 2.0) -> tuple[int, int] | None:
    """(max_concurrent, max_queue_size) of the queue serving at `address`, None when it
    does not answer."""
    channel = sync_channel(address)
    try:
        stats = queue_pb2_grpc.QueueServiceStub(channel).GetQueueStats(
            queue_pb2.GetQueueStatsRequest(), timeout=timeout
        )
        return stats.max_concurrent, stats.max_queue_size
    except grpc.RpcError:
        return None
    finally:
        channel.close()


def free_port(host: str, avoid: set[int]) -> int:
    """A port free on `host` now, not one of `avoid` (the suite's fixed ports)."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    for _ in range(100):
        with socket.socket(family) as sock:
            sock.bind((bare, 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port
    raise OSError(f"no free port found on {host}")


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


class Supervisor:
    """Knows where each instance's pid file, log and address are."""

    def __init__(self, home: Path | None = None):
        self.home = home or agentgate_home()
        self.run_dir = self.home / "run"
        self.log_dir = self.home / "logs"
        self.config_file = self.run_dir / "suite.json"

    # -- what the suite is made of -------------------------------------------------

    def load_config(self) -> SuiteConfig:
        """The settings of the last `up` (defaults when none was recorded)."""
        try:
            raw = json.loads(self.config_file.read_text())
        except (OSError, ValueError):
            return SuiteConfig()
        if not isinstance(raw, dict):
            return SuiteConfig()
        values = {f.name: raw.get(f.name, f.default) for f in fields(SuiteConfig)}
        # Hand-edited or damaged: every value must be a positive integer (or unset).
        for key, value in values.items():
            if not (value is None and key != "workers") and not (type(value) is int and value >= 1):
                return SuiteConfig()
        return SuiteConfig(**values)

    def configure(self, **flags: int | str | None) -> SuiteConfig:
        """Merges the flags given to `up` into the recorded settings and records them."""
        config = self.load_config().merged(**flags)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(asdict(config)))
        return config

    def forget_config(self) -> None:
        """After `down`: the next `up` starts from the defaults."""
        self.config_file.unlink(missing_ok=True)

    def instance_names(self, workers: int | None = None) -> list[str]:
        """Every instance the suite should have, in start order."""
        count = workers if workers is not None else self.load_config().workers
        names: list[str] = []
        for service in START_ORDER:
            if service == "orchestrator":
                names.extend(worker_name(i) for i in range(1, count + 1))
            else:
                names.append(service)
        names.append(GATEWAY)
        return names

    def recorded_workers(self) -> list[str]:
        """Workers that have a pid file (running or not), by number."""
        found = [(worker_index(path.stem), path.stem) for path in self.run_dir.glob(f"{WORKER_PREFIX}*.pid")]
        return [name for index, name in sorted(found, key=lambda pair: pair[0] or 0) if index is not None]

    def known_instances(self) -> list[str]:
        """The configured instances plus any other worker with a pid file (e.g. left from a
        larger `--workers`), plus an `orchestrator.pid` from before workers were numbered."""
        names = self.instance_names()
        names += [name for name in self.recorded_workers() if name not in names]
        if self.pid_file("orchestrator").exists():
            names.append("orchestrator")
        return names

    def surplus_workers(self) -> list[str]:
        """Running workers numbered above the configured count (to stop when scaling down)."""
        workers = self.load_config().workers
        return [
            name
            for name in self.recorded_workers()
            if (worker_index(name) or 0) > workers and self.read_pid(name) is not None
        ]

    def stop_order(self, names: list[str]) -> list[str]:
        """`names` in the order to stop them: workers (highest first), queue, workspace,
        persistence."""
        def key(name: str) -> tuple[int, int]:
            return STOP_ORDER.index(service_of(name)), -(worker_index(name) or 0)

        return sorted(names, key=key)

    def display_order(self, names: list[str]) -> list[str]:
        """`names` in the order `ps` and `health` list them (queue, workers, workspace,
        persistence)."""
        return sorted(names, key=lambda name: (DISPLAY_ORDER.index(service_of(name)), worker_index(name) or 0))

    # -- one instance ---------------------------------------------------------------

    def pid_file(self, instance: str) -> Path:
        """Where an instance's pid and address are recorded."""
        return self.run_dir / f"{instance}.pid"

    def _record(self, instance: str) -> dict[str, Any]:  # parsed JSON: callers check the values
        try:
            info = json.loads(self.pid_file(instance).read_text())
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def read_pid(self, instance: str) -> int | None:
        """The live pid of an instance started here, or None."""
        try:
            pid = int(self._record(instance)["pid"])
        except (KeyError, TypeError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def address(self, instance: str) -> str | None:
        """Where an instance listens: the service's address, except workers 2..N, whose
        address is in their pid file (None before the first start)."""
        if instance == GATEWAY:
            return gateway_address()
        index = worker_index(instance)
        if index is None or index == 1:
            return service_address(service_of(instance))
        recorded = self._record(instance).get("address")
        return recorded if isinstance(recorded, str) and recorded else None

    def status(self) -> list[ServiceStatus]:
        """Pid, address and health of every instance."""
        rows = []
        for name in self.display_order(self.known_instances()):
            address = self.address(name)
            health = self.health(name)
            rows.append(ServiceStatus(name, address or "-", self.read_pid(name), health, service_of(name)))
        return rows

    def health(self, instance: str, timeout: float = 2.0) -> str:
        """The health of one instance: gRPC health for the services, `/healthz` for the gateway."""
        if instance == GATEWAY:
            return check_gateway_health(self.address(instance), timeout)
        return check_health(self.address(instance), timeout)

    def ensure_credentials(self) -> tuple[Path, Path]:
        """Makes (or keeps) the client token and service key files of this home; the
        caller's AGENTGATE_TOKEN, when set, becomes the stored client token."""
        return security.ensure_credentials(self.home, os.environ.get(security.TOKEN_ENV, "").strip() or None)

    def service_env(self) -> dict[str, str]:
        """The environment the services get: ours, with this home and addresses fixed, and
        this Python's bin folder first on PATH so checks find the same tools. Secrets are
        passed as file names, never as values."""
        env = dict(os.environ)
        env.pop(security.TOKEN_ENV, None)
        token_file, key_file = self.ensure_credentials()
        env[security.TOKEN_FILE_ENV] = str(token_file)
        env[security.SERVICE_KEY_FILE_ENV] = str(key_file)
        env["AGENTGATE_HOME"] = str(self.home)
        for name in SERVICES:
            env[f"AGENTGATE_{name.upper()}_ADDR"] = service_address(name)
        env[GATEWAY_ADDRESS_ENV] = gateway_address()
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        return env

    def _new_worker_address(self) -> str:
        base = service_address("orchestrator")
        host = base.rpartition(":")[0]
        fixed = {_port(service_address(name)) for name in SERVICES} | {_port(gateway_address())}
        return f"{host}:{free_port(host, fixed)}"

    def start(self, instance: str, extra_args: list[str] | None = None) -> subprocess.Popen[bytes]:
        """Starts one instance (not waiting for it to serve), with the recorded settings."""
        service = service_of(instance)
        index = worker_index(instance)
        args = [*self.load_config().args_for(service), *(extra_args or [])]
        address = gateway_address() if instance == GATEWAY else service_address(service)
        if index is not None and index > 1:
            # A fresh port each start: the old one may have been taken meanwhile.
            address = self._new_worker_address()
            args += ["--address", address]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{instance}.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", MODULES.get(service, f"agentgate.{service}"), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.service_env(),
                start_new_session=True,
            )
        finally:
            log.close()
        self.pid_file(instance).write_text(
            json.dumps({"pid": process.pid, "address": address, "service": service})
        )
        return process

    def wait_serving(self, instances: list[str], timeout: float = 30.0) -> dict[str, str]:
        """Waits until each instance answers SERVING; returns the last health of each."""
        deadline = time.monotonic() + timeout
        health = {name: "UNREACHABLE" for name in instances}
        while time.monotonic() < deadline:
            for name in instances:
                if health[name] != "SERVING":
                    health[name] = self.health(name, timeout=1.0)
            if all(value == "SERVING" for value in health.values()):
                break
            time.sleep(0.1)
        return health

    def stop(self, instance: str, timeout: float = 15.0) -> bool:
        """SIGTERM, then SIGKILL after `timeout`; True when a process was stopped."""
        pid = self.read_pid(instance)
        self.pid_file(instance).unlink(missing_ok=True)
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return True
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        return True
