"""Attacks an agent or a check would try, each shown to work with `sandbox: off` and to fail
inside the sandbox (bubblewrap, real processes). See docs/sandbox.md."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agentgate.workspace.sandbox import LIMIT_DISK, LIMIT_MEMORY, LIMIT_PIDS, Limits

from .conftest import OTHER_RUN_SECRET, SECRET_KEY, Layout, SandboxFactory, pytestmark  # noqa: F401

PY = sys.executable
BOTH = pytest.mark.parametrize("mode", ["off", "on"])


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def _victim() -> subprocess.Popen[bytes]:
    """A stand-in for a service process, holding a token in its environment."""
    return subprocess.Popen([PY, "-c", "import time; time.sleep(60)"], env={"AGENTGATE_TOKEN": "tok-s3cret-victim"})


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _host_only_account() -> str:
    names = [line.split(":")[0] for line in Path("/etc/passwd").read_text().splitlines() if line]
    return next(name for name in names if name not in ("root", "nobody"))


def _forks_fine() -> bool:
    return subprocess.run(["true"]).returncode == 0


@BOTH
async def test_reading_a_service_process_environment(mode: str, make_sandbox: SandboxFactory) -> None:
    victim = _victim()
    try:
        result = await make_sandbox(mode).run(sh(f"cat /proc/{victim.pid}/environ; kill -0 {victim.pid} && echo signalled"))
    finally:
        victim.kill()
        victim.wait()
    if mode == "off":
        assert "tok-s3cret-victim" in result.stdout and "signalled" in result.stdout
    else:
        assert "tok-s3cret-victim" not in result.stdout and "signalled" not in result.stdout
        assert result.exit_code != 0


@BOTH
async def test_writing_outside_the_writable_dir(mode: str, layout: Layout, make_sandbox: SandboxFactory) -> None:
    # A hidden folder, and one that is visible read-only (a toolchain of the home).
    targets = [layout.outside / "planted", layout.services_home / ".pyenv" / "bin" / "planted"]
    script = "; ".join(f"echo planted > {target}" for target in targets) + "; echo done > inside.txt"
    result = await make_sandbox(mode).run(sh(script))
    assert (layout.writable / "inside.txt").read_text() == "done\n"  # the writable dir works in both modes
    if mode == "off":
        assert all(target.exists() for target in targets)
    else:
        assert not any(target.exists() for target in targets)
        assert "Directory nonexistent" in result.stderr and "Read-only file system" in result.stderr


@BOTH
async def test_reading_hidden_home_folders(mode: str, layout: Layout, make_sandbox: SandboxFactory) -> None:
    home = layout.services_home
    result = await make_sandbox(mode).run(
        sh(f"cat {home}/.ssh/id_ed25519 {home}/.config/gh/hosts.yml; echo; {home}/.pyenv/bin/tool; echo home=$HOME")
    )
    assert "toolchain-ok" in result.stdout  # the toolchain folders stay readable
    if mode == "off":
        assert SECRET_KEY in result.stdout and "gho_fake" in result.stdout
    else:
        assert SECRET_KEY not in result.stdout and "gho_fake" not in result.stdout
        assert f"home={home}" in result.stdout  # HOME: a private folder at the same path


@BOTH
async def test_reading_another_runs_folder(mode: str, layout: Layout, make_sandbox: SandboxFactory) -> None:
    result = await make_sandbox(mode).run(
        sh(f"cat {layout.run_dir}/prompt.md; echo; cat {layout.other_run_dir}/result.json; ls {layout.agentgate_home}")
    )
    assert "my prompt" in result.stdout  # the run's own folder is readable
    if mode == "off":
        assert OTHER_RUN_SECRET in result.stdout and "persistence.db" in result.stdout
    else:
        assert OTHER_RUN_SECRET not in result.stdout and "persistence.db" not in result.stdout
        # ... and read-only.
        denied = await make_sandbox(mode).run(sh(f"echo x > {layout.run_dir}/prompt.md"))
        assert denied.exit_code != 0 and (layout.run_dir / "prompt.md").read_text() == "my prompt"


@BOTH
async def test_committed_symlinks_followed_by_a_check(mode: str, layout: Layout, make_sandbox: SandboxFactory) -> None:
    host_only = _host_only_account()
    (layout.writable / "users.txt").symlink_to("/etc/passwd")
    (layout.writable / "key.txt").symlink_to(layout.services_home / ".ssh" / "id_ed25519")
    result = await make_sandbox(mode).run(sh("cat users.txt; cat key.txt"))
    if mode == "off":
        assert f"\n{host_only}:" in result.stdout and SECRET_KEY in result.stdout
    else:
        assert f"\n{host_only}:" not in result.stdout and SECRET_KEY not in result.stdout
        assert result.stdout.startswith("root:")  # a synthesized passwd: root and nobody only


@BOTH
async def test_connecting_to_a_loopback_port_of_the_host(mode: str, make_sandbox: SandboxFactory) -> None:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"service-port-reached\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    script = f"import socket; s = socket.create_connection(('127.0.0.1', {port}), 3); print(s.recv(100).decode())"
    async with server:
        result = await make_sandbox(mode).run([PY, "-I", "-c", script])
    if mode == "off":
        assert "service-port-reached" in result.stdout
    else:
        assert "service-port-reached" not in result.stdout
        assert "Connection refused" in result.stderr


SURVIVOR = """
stop={stop}
setsid sh -c 'while [ ! -e {stop} ]; do echo x >> {log1}; sleep 0.1; done' </dev/null >/dev/null 2>&1 &
sh -c "setsid sh -c 'while [ ! -e {stop} ]; do echo x >> {log2}; sleep 0.1; done' </dev/null >/dev/null 2>&1 &" &
sleep 0.5
{tail}
"""


async def _still_writing(path: Path) -> bool:
    before = _size(path)
    await asyncio.sleep(1.0)
    return _size(path) > before


@BOTH
@pytest.mark.parametrize("ending", ["exit", "timeout"])
async def test_setsid_and_double_forked_survivors(
    mode: str, ending: str, layout: Layout, make_sandbox: SandboxFactory
) -> None:
    stop = layout.outside / "stop"
    logs = [layout.writable / "survivor-setsid.log", layout.writable / "survivor-daemon.log"]
    tail = "exit 0" if ending == "exit" else "sleep 60"
    script = SURVIVOR.format(stop=stop, log1=logs[0], log2=logs[1], tail=tail)
    try:
        result = await make_sandbox(mode).run(sh(script), timeout=2.0 if ending == "timeout" else None, kill_grace=0.5)
        assert result.timed_out == (ending == "timeout")
        assert all(path.exists() for path in logs)  # both loops did run
        writing = [await _still_writing(path) for path in logs]
        if mode == "off":
            assert writing == [True, True]
        else:
            assert writing == [False, False]
    finally:
        stop.touch()  # ends the survivors of the unsandboxed run
        await asyncio.sleep(0.3)


async def test_timeout_gives_the_command_sigterm_then_kills(make_sandbox: SandboxFactory) -> None:
    script = "trap 'echo got-term; exit 7' TERM; echo started; while true; do sleep 0.05; done"
    result = await make_sandbox("on").run(sh(script), timeout=1.0, kill_grace=2.0)
    assert result.timed_out and "got-term" in result.stdout and result.exit_code == 7
    stubborn = await make_sandbox("on").run(sh("trap '' TERM; while true; do sleep 0.05; done"), timeout=0.5, kill_grace=0.5)
    assert stubborn.timed_out and stubborn.duration_seconds < 5


FORKS = """
import os, time
started = 0
for _ in range(100):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    started += 1
print("started", started)
"""


@BOTH
async def test_process_limit(mode: str, make_sandbox: SandboxFactory) -> None:
    # Bounded: 100 sleepers, enough to exceed a limit of 20, harmless without one (they are
    # in the command's process group, which ends with it).
    result = await make_sandbox(mode, Limits(max_processes=20)).run([PY, "-I", "-c", FORKS], timeout=20)
    started = int(result.stdout.split()[-1])
    if mode == "off":
        assert started == 100
    else:
        assert started < 20
        assert LIMIT_PIDS in result.limits_hit


async def test_fork_bomb_is_contained(make_sandbox: SandboxFactory) -> None:
    # The real thing, only ever inside the sandbox: held by the pids limit, ended by the timeout.
    result = await make_sandbox("on", Limits(max_processes=32)).run(
        ["bash", "-c", "bomb() { bomb | bomb & }; bomb; sleep 2; echo alive"], timeout=3, kill_grace=0.5
    )
    assert LIMIT_PIDS in result.limits_hit
    assert result.duration_seconds < 10
    # The machine still forks fine.
    assert _forks_fine()


@BOTH
async def test_disk_limit_one_big_file(mode: str, layout: Layout, make_sandbox: SandboxFactory) -> None:
    result = await make_sandbox(mode, Limits(max_disk_mb=4)).run(sh("head -c 12000000 /dev/zero > big.bin"))
    size = (layout.writable / "big.bin").stat().st_size
    if mode == "off":
        assert size == 12_000_000
    else:
        assert size <= 4 * 1024 * 1024 and result.exit_code != 0


@BOTH
async def test_disk_limit_many_files(mode: str, layout: Layout, make_sandbox: SandboxFactory) -> None:
    script = "for i in $(seq 40); do head -c 1000000 /dev/urandom > part$i.bin; sleep 0.05; done; echo wrote-all"
    result = await make_sandbox(mode, Limits(max_disk_mb=8)).run(sh(script), timeout=30)
    written = len(list(layout.writable.glob("part*.bin")))
    if mode == "off":
        assert written == 40 and "wrote-all" in result.stdout
    else:
        assert LIMIT_DISK in result.limits_hit and "wrote-all" not in result.stdout
        assert written < 40


@BOTH
async def test_disk_limit_growing_files_that_were_there(mode: str, layout: Layout, make_sandbox: SandboxFactory) -> None:
    # What the watcher counts is what changed since the start (ctime): files that existed
    # before, each grown below the one-file limit, count as much as new ones.
    for i in range(40):
        (layout.writable / f"old{i}.bin").write_bytes(b"x")
    script = "for i in $(seq 0 39); do head -c 1000000 /dev/urandom >> old$i.bin; sleep 0.05; done; echo grew-all"
    result = await make_sandbox(mode, Limits(max_disk_mb=8)).run(sh(script), timeout=30)
    grown = sum(1 for i in range(40) if _size(layout.writable / f"old{i}.bin") > 1)
    if mode == "off":
        assert grown == 40 and "grew-all" in result.stdout
    else:
        assert LIMIT_DISK in result.limits_hit and "grew-all" not in result.stdout
        assert grown < 40


async def test_disk_limit_counts_only_what_the_execution_wrote(layout: Layout, make_sandbox: SandboxFactory) -> None:
    # 24 MB already in the folder, a limit of 8: an execution writing 2 MB and running for
    # several measurements is not stopped (the folder's earlier contents are not its own).
    for i in range(24):
        (layout.writable / f"earlier{i}.bin").write_bytes(os.urandom(1_000_000))
    result = await make_sandbox("on", Limits(max_disk_mb=8)).run(
        sh("head -c 2000000 /dev/urandom > mine.bin; sleep 1.6; echo finished"), timeout=30
    )
    assert result.exit_code == 0 and "finished" in result.stdout and LIMIT_DISK not in result.limits_hit


async def test_private_tmp_is_bounded_and_thrown_away(layout: Layout, make_sandbox: SandboxFactory) -> None:
    result = await make_sandbox("on", Limits(max_disk_mb=2)).run(
        sh("echo kept > /tmp/note; head -c 5000000 /dev/zero > /tmp/fill; echo rc=$?; cat /tmp/note; touch ~/x && echo home-writable")
    )
    assert "rc=0" not in result.stdout and "kept" in result.stdout and "home-writable" in result.stdout
    again = await make_sandbox("on").run(sh("ls /tmp ~"))
    assert "note" not in again.stdout and "x" not in again.stdout.split()


def test_missing_bubblewrap_says_how_to_install(layout: Layout, make_sandbox: SandboxFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentgate.workspace.sandbox import SandboxUnavailable

    monkeypatch.setenv("PATH", str(layout.outside))
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap socat"):
        make_sandbox("on")
    assert not make_sandbox("off").enabled  # the explicit opt-out needs nothing
    only_bwrap = layout.outside / "only-bwrap"
    only_bwrap.mkdir()
    (only_bwrap / "bwrap").symlink_to(shutil.which("bwrap") or "/usr/bin/bwrap")
    monkeypatch.setenv("PATH", str(only_bwrap))
    make_sandbox("on")  # a check's sandbox needs no socat
    with pytest.raises(SandboxUnavailable, match="needs socat.*apt-get install bubblewrap socat"):
        make_sandbox("on", network="proxy")
    monkeypatch.setenv("PATH", str(layout.outside))
    old = layout.outside / "bwrap"
    old.write_text("#!/bin/sh\necho bubblewrap 0.4.1\n")
    old.chmod(0o755)
    with pytest.raises(SandboxUnavailable, match="0.8.0 or later.*found 0.4.1"):
        make_sandbox("on")


async def test_nothing_of_the_services_is_visible(make_sandbox: SandboxFactory) -> None:
    result = await make_sandbox("on").run(
        sh("ls /proc | grep -c '^[0-9]'; grep Cap[EPB] /proc/self/status; unshare -U true && echo nested; hostname")
    )
    lines = result.stdout.split("\n")
    assert int(lines[0]) <= 4  # bubblewrap's init, sh, ls, grep
    assert all(line.split()[1] == "0000000000000000" for line in lines[1:4])
    assert "nested" not in result.stdout
    assert "agentgate-sandbox" in result.stdout
    assert os.getpid() > 0 and signal.SIGTERM  # (the test process itself is untouched)


HOG = "chunks = []\nfor _ in range(32):\n    chunks.append(bytearray(8 * 1024 * 1024))\nprint('allocated', len(chunks) * 8, 'MiB')"


@BOTH
async def test_memory_limit(mode: str, make_sandbox: SandboxFactory) -> None:
    # 256 MiB against a 64 MiB limit: bounded, harmless without the limit.
    result = await make_sandbox(mode, Limits(memory_mb=64)).run([PY, "-I", "-c", HOG], timeout=60)
    if mode == "off":
        assert "allocated 256 MiB" in result.stdout
    else:
        assert "allocated" not in result.stdout and result.exit_code != 0
        assert LIMIT_MEMORY in result.limits_hit or "MemoryError" in result.stderr


SERVICE = """
import asyncio, sys
from pathlib import Path
from agentgate.workspace.sandbox import Sandbox, SandboxSpec
writable, home, mode, script = sys.argv[1:5]
spec = SandboxSpec(writable_dir=Path(writable), mode=mode, services_home=Path(home))
asyncio.run(Sandbox(spec).run(["sh", "-c", script]))
"""


def _start_service(layout: Layout, mode: str, script: str) -> subprocess.Popen[bytes]:
    """A stand-in for the workspace service, running one execution."""
    args = [PY, "-c", SERVICE, str(layout.writable), str(layout.services_home), mode, script]
    return subprocess.Popen(args)


def _kill(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait()


@BOTH
async def test_an_execution_does_not_outlive_a_crashed_service(mode: str, layout: Layout, make_sandbox: SandboxFactory) -> None:
    stop = layout.outside / "stop"
    log = layout.writable / "orphan.log"
    service = _start_service(layout, mode, f"while [ ! -e {stop} ]; do echo x >> {log}; sleep 0.1; done")
    try:
        for _ in range(100):
            if _size(log) > 0:
                break
            await asyncio.sleep(0.1)
        assert _size(log) > 0
        _kill(service)  # the service dies without cleaning up
        await asyncio.sleep(0.3)
        assert await _still_writing(log) == (mode == "off")
    finally:
        stop.touch()
        _kill(service)


@BOTH
async def test_writing_a_host_sysctl(mode: str, make_sandbox: SandboxFactory) -> None:
    # Writes kernel.panic's current value back: harmless, and proves the write is possible.
    result = await make_sandbox(mode).run(sh("v=$(cat /proc/sys/kernel/panic); echo $v > /proc/sys/kernel/panic && echo wrote"))
    if mode == "off":
        assert "wrote" in result.stdout
    else:
        assert "wrote" not in result.stdout and "Read-only file system" in result.stderr


async def test_toolchains_checks_call_keep_working(layout: Layout, make_sandbox: SandboxFactory) -> None:
    # The services' venv (this repository's .venv/bin/pytest) is shown by default ...
    pytest_bin = Path(sys.prefix) / "bin" / "pytest"
    result = await make_sandbox("on").run([str(pytest_bin), "--version"])
    assert result.exit_code == 0, result.stderr
    # ... and a profile's extra read-only path, here a venv elsewhere, when named.
    tool = layout.outside / "venv" / "bin" / "tool"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\necho extra-ok\n")
    tool.chmod(0o755)
    hidden = await make_sandbox("on").run([str(tool)])
    shown = await make_sandbox("on", extra_read_only=(layout.outside / "venv",)).run([str(tool)])
    assert hidden.exit_code != 0 and "extra-ok" in shown.stdout
    denied = await make_sandbox("on", extra_read_only=(layout.outside / "venv",)).run(sh(f"echo x > {tool}"))
    assert denied.exit_code != 0 and "Read-only" in denied.stderr
