"""An attacking agent (run by the `command` driver, from its workspace): tries each attack of
issue 22 and writes what worked to `results.json` in its working directory, the workspace.
Each result is True when the attack succeeded. Settings come from `attack.json`, written by
the test into the project.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

CONFIG = json.loads(Path("attack.json").read_text())
results: dict[str, object] = {}


def attempt(name: str):
    def wrap(function):
        try:
            results[name] = function()
        except Exception as error:  # an attack that fails is a result, not a crash
            results[name] = False
            results[f"{name}_error"] = f"{type(error).__name__}: {error}"
        return function

    return wrap


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


@attempt("environ_token")
def steal_token() -> bool:
    """Reads every /proc/<pid>/environ it can for the services' token."""
    for pid in _pids():
        try:
            if CONFIG["token"].encode() in Path(f"/proc/{pid}/environ").read_bytes():
                return True
        except OSError:
            continue
    return False


@attempt("signal_service")
def signal_service() -> bool:
    """Signal 0 (permission check, harmless) to a service process found by its command line."""
    for pid in _pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"agentgate.persistence" in cmdline:
            os.kill(pid, 0)
            return True
    return False


@attempt("write_outside")
def write_outside() -> bool:
    Path(CONFIG["outside"], "from-agent").write_text("pwned")
    return True


@attempt("read_other_run")
def read_other_run() -> bool:
    return CONFIG["other_run_secret"] in Path(CONFIG["other_run_file"]).read_text()


@attempt("read_databases")
def read_databases() -> bool:
    home = Path(CONFIG["agentgate_home"])
    found = [p for p in home.glob("*.db") if p.read_bytes()[:15] == b"SQLite format 3"]
    return len(found) >= 2


@attempt("loopback_port")
def loopback_port() -> bool:
    with socket.create_connection(("127.0.0.1", CONFIG["loopback_port"]), timeout=3) as sock:
        return sock.recv(16) == b"hello"


@attempt("processes")
def many_processes() -> int:
    """Starts up to `processes` sleeping children (a bounded fork bomb); how many started."""
    children = []
    try:
        for _ in range(CONFIG["processes"]):
            children.append(subprocess.Popen(["sleep", "30"]))
    except OSError:
        pass
    finally:
        for child in children:
            child.kill()
            child.wait()
    return len(children)


@attempt("proxy_refused")
def refused_host() -> bool:
    """Outside the allowlist through the sandbox's proxy (only when there is one)."""
    if not os.environ.get("HTTPS_PROXY"):
        return False
    try:
        urllib.request.urlopen(f"https://{CONFIG['refused_host']}/", timeout=5)
    except (urllib.error.URLError, OSError):
        return True
    return False


@attempt("daemon")
def daemon() -> bool:
    """A double-forked, setsid daemon that keeps appending to daemon.log in the workspace."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            Path("daemon.pid").write_text(str(os.getpid()))
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            deadline = time.time() + 60
            while time.time() < deadline:
                with open("daemon.log", "a") as log:
                    log.write(f"{time.time()}\n")
                time.sleep(0.1)
        os._exit(0)
    time.sleep(0.3)
    return Path("daemon.log").exists()


Path("results.json").write_text(json.dumps(results, indent=1))
print(json.dumps(results))
sys.exit(0)
