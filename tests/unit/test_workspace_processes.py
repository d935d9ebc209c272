"""Child processes: process groups, timeouts, streamed output, scrubbed environment."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from agentgate.workspace.processes import OutputCapture, run_process


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def wait_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def read_pid(path: Path, seconds: float = 5.0) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(lambda: path.read_text() if path.exists() else "")
        if text.strip():
            return int(text)
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} was never written")


async def test_output_lines_stream_to_the_callback_while_running(tmp_path: Path) -> None:
    seen: list[tuple[str, str, float]] = []
    started = time.monotonic()

    def on_output(stream: str, line: str) -> None:
        seen.append((stream, line, time.monotonic() - started))

    result = await run_process(
        ["sh", "-c", "echo one; echo oops >&2; sleep 0.6; printf 'two\\nlast-no-newline'"],
        cwd=tmp_path,
        on_output=on_output,
    )
    assert result.exit_code == 0 and not result.timed_out
    assert [(s, line) for s, line, _ in seen if s == "stdout"] == [
        ("stdout", "one"),
        ("stdout", "two"),
        ("stdout", "last-no-newline"),
    ]
    assert [line for s, line, _ in seen if s == "stderr"] == ["oops"]
    # "one" arrived before the sleep ended: streamed, not delivered at the end.
    first = next(t for s, line, t in seen if line == "one")
    assert first < 0.5 <= result.duration_seconds
    assert result.stdout == "one\ntwo\nlast-no-newline"
    assert result.stderr == "oops\n"


async def test_async_callbacks_are_awaited(tmp_path: Path) -> None:
    lines: list[str] = []

    async def on_output(stream: str, line: str) -> None:
        await asyncio.sleep(0)
        lines.append(line)

    await run_process(["sh", "-c", "echo a; echo b"], cwd=tmp_path, on_output=on_output)
    assert lines == ["a", "b"]


async def test_environment_is_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "ghp_do_not_leak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "also-secret")
    result = await run_process(["sh", "-c", "env"], cwd=tmp_path, env={"GIVEN": "yes"})
    names = {line.split("=", 1)[0] for line in result.stdout.splitlines() if "=" in line}
    assert "SECRET_TOKEN" not in names
    assert "AWS_SECRET_ACCESS_KEY" not in names
    assert "ghp_do_not_leak" not in result.stdout
    assert "GIVEN=yes" in result.stdout.splitlines()
    assert "PATH" in names


async def test_stdin_and_cwd(tmp_path: Path) -> None:
    result = await run_process(["sh", "-c", "pwd; cat"], cwd=tmp_path, stdin=b"hello\nworld\n")
    assert result.stdout.splitlines() == [str(tmp_path), "hello", "world"]


async def test_large_stdin_not_read_does_not_hang(tmp_path: Path) -> None:
    result = await run_process(["true"], cwd=tmp_path, stdin=b"x" * (1024 * 1024), timeout=10)
    assert result.exit_code == 0 and not result.timed_out


async def test_timeout_kills_the_whole_group_including_grandchildren(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    started = time.monotonic()
    result = await run_process(
        ["sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"],
        cwd=tmp_path,
        timeout=0.5,
        kill_grace=2,
    )
    assert result.timed_out
    assert result.exit_code == 128 + 15  # SIGTERM, in the shell convention
    assert time.monotonic() - started < 5
    grandchild = await read_pid(pidfile)
    assert await wait_gone(grandchild), "the grandchild sleep survived the timeout"


async def test_sigkill_after_grace_when_sigterm_is_ignored(tmp_path: Path) -> None:
    started = time.monotonic()
    result = await run_process(
        ["sh", "-c", "trap '' TERM; echo ready; sleep 30; sleep 30"],
        cwd=tmp_path,
        timeout=0.3,
        kill_grace=0.5,
    )
    elapsed = time.monotonic() - started
    assert result.timed_out
    assert result.exit_code == 128 + 9
    assert 0.7 <= elapsed < 5
    assert result.stdout == "ready\n"


async def test_leftover_background_process_is_killed_when_the_leader_exits(tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    started = time.monotonic()
    # The background sleep keeps stdout open; without cleanup this would hang 30 s.
    result = await run_process(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; echo done"], cwd=tmp_path)
    assert result.exit_code == 0 and result.stdout == "done\n"
    assert time.monotonic() - started < 5
    assert await wait_gone(await read_pid(pidfile))


async def test_cancelling_the_awaiting_task_kills_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    task = asyncio.create_task(
        run_process(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"], cwd=tmp_path, timeout=60)
    )
    grandchild = await read_pid(pidfile)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_gone(grandchild)


async def test_exit_codes_and_signals(tmp_path: Path) -> None:
    assert (await run_process(["sh", "-c", "exit 3"], cwd=tmp_path)).exit_code == 3
    killed = await run_process(["sh", "-c", "kill -KILL $$"], cwd=tmp_path)
    assert killed.exit_code == 137 and not killed.timed_out


async def test_merged_output_keeps_the_tail(tmp_path: Path) -> None:
    result = await run_process(
        ["sh", "-c", "i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done; echo err >&2"],
        cwd=tmp_path,
        merge_stderr=True,
        capture_limit=1000,
        capture_keep="tail",
    )
    assert result.stderr == ""
    assert result.stdout.startswith("[TRUNCATED - ")
    assert result.stdout.endswith("line-2999\nerr\n")
    assert "line-0\n" not in result.stdout


def test_output_capture_head_cuts_on_character_boundary() -> None:
    capture = OutputCapture(limit=5, keep="head")
    capture.add("aaaé€".encode())  # é is 2 bytes: the 5-byte cut falls inside €
    assert capture.text() == "aaaé\n[TRUNCATED - exceeded 5 bytes]"
    small = OutputCapture(limit=100)
    small.add(b"fine")
    assert small.text() == "fine"


async def test_home_and_path_are_inherited(tmp_path: Path) -> None:
    result = await run_process(["sh", "-c", 'echo "$HOME"'], cwd=tmp_path)
    assert result.stdout.strip() == os.environ.get("HOME", "")
