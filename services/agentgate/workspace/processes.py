"""Child processes for agents and gate checks: own process group, scrubbed environment,
streamed output, timeout with SIGTERM then SIGKILL, and cleanup on cancellation.

Everything here is asyncio: the event loop is never blocked while a child runs.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import inspect
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentgate.workspace.sandbox import Sandbox

STDOUT = "stdout"
STDERR = "stderr"

#: Variables a child inherits from the service; everything else must be given explicitly,
#: so tokens and keys in the service's environment never reach an agent or a check.
INHERITED_ENV_VARS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")

DEFAULT_KILL_GRACE_SECONDS = 5.0
#: The prefix of a process no step of a run waits for (a patch export, the trash's deletion):
#: a lower scheduling priority, so the steps that do wait get the processor first.
LOW_PRIORITY = ("nice", "-n", "10")
#: Default cap of captured output per stream (the gRPC message limit is 16 MiB for both).
DEFAULT_CAPTURE_BYTES = 4 * 1024 * 1024
#: A line longer than this is delivered in pieces, so one huge line cannot exhaust memory.
MAX_LINE_CHARS = 64 * 1024
_READ_CHUNK = 64 * 1024
#: After the leader exits, how long the pipes may stay open (a child that left the group).
_DRAIN_SECONDS = 2.0

OutputCallback = Callable[[str, str], "Awaitable[None] | None"]


@dataclass(frozen=True)
class ProcessResult:
    """How a child process ended.

    `exit_code` follows the shell convention: a death by signal N is 128 + N.
    """

    exit_code: int
    stdout: str
    stderr: str
    duration_seconds: float
    timed_out: bool
    #: Bytes the child wrote to each stream, before any cut, and whether the text was cut.
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    #: Stopped by the caller's `stop` event (a budget), not by its timeout.
    stopped: bool = False
    #: Sandbox limits the child ran into ("processes", "memory", "disk"; see docs/sandbox.md).
    limits_hit: tuple[str, ...] = ()


def scrubbed_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: the few INHERITED_ENV_VARS plus `extra`, nothing else."""
    env = {name: os.environ[name] for name in INHERITED_ENV_VARS if name in os.environ}
    env.setdefault("PATH", os.defpath)
    if extra:
        env.update(extra)
    return env


def exit_code_of(returncode: int) -> int:
    """asyncio's returncode (negative for a signal) in the shell convention (128 + signal)."""
    return 128 - returncode if returncode < 0 else returncode


class OutputCapture:
    """Collects the bytes of a stream up to `limit`, keeping its head or its tail.

    When bytes are dropped the text carries a marker saying how many, cut on a UTF-8
    character boundary so the result is always valid text.
    """

    def __init__(self, limit: int, keep: str = "head"):
        if keep not in ("head", "tail"):
            raise ValueError(f"keep must be head or tail, got {keep!r}")
        self.limit = limit
        self.keep = keep
        self.total = 0
        self._buffer = bytearray()

    def add(self, data: bytes) -> None:
        """Appends a chunk."""
        self.total += len(data)
        if self.keep == "head":
            room = self.limit - len(self._buffer)
            if room > 0:
                self._buffer += data[:room]
        else:
            self._buffer += data
            # Trim lazily (at twice the limit) so a chatty stream does not copy on every chunk.
            if len(self._buffer) > 2 * self.limit:
                del self._buffer[: len(self._buffer) - self.limit]

    def text(self) -> str:
        """The kept text, with a truncation marker when something was dropped."""
        if self.total <= self.limit:
            return bytes(self._buffer).decode("utf-8", errors="replace")
        if self.keep == "head":
            kept = bytes(self._buffer[: self.limit]).decode("utf-8", errors="ignore")
            return kept + f"\n[TRUNCATED - exceeded {self.limit} bytes]"
        kept = bytes(self._buffer[-self.limit :]).decode("utf-8", errors="ignore")
        return f"[TRUNCATED - {self.total - self.limit} earlier bytes dropped]\n" + kept


async def _deliver(callback: OutputCallback | None, stream: str, line: str) -> None:
    if callback is None:
        return
    outcome = callback(stream, line)
    if inspect.isawaitable(outcome):
        await outcome


async def _pump(
    reader: asyncio.StreamReader,
    stream: str,
    capture: OutputCapture,
    callback: OutputCallback | None,
) -> None:
    """Reads a pipe to its end: captures the bytes and hands each line to the callback."""
    # An incremental decoder so a multi-byte character split between two reads stays whole.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    while True:
        chunk = await reader.read(_READ_CHUNK)
        if not chunk:
            break
        capture.add(chunk)
        pending += decoder.decode(chunk)
        while True:
            newline = pending.find("\n")
            if newline < 0:
                break
            line, pending = pending[:newline], pending[newline + 1 :]
            await _deliver(callback, stream, line.removesuffix("\r"))
        while len(pending) > MAX_LINE_CHARS:
            await _deliver(callback, stream, pending[:MAX_LINE_CHARS])
            pending = pending[MAX_LINE_CHARS:]
    pending += decoder.decode(b"", final=True)
    if pending:
        await _deliver(callback, stream, pending)


async def _feed(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Writes stdin and closes it; a child that stops reading early is not an error."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, OSError):
        writer.close()
        await writer.wait_closed()


class _ExitProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """The stream protocol of `create_subprocess_exec`, plus an event set the moment the
    leader is reaped (`Process.wait()` also waits for the pipes to close)."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop):
        super().__init__(limit=limit, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


#: Stream buffer limit, as create_subprocess_exec's default.
_STREAM_LIMIT = 64 * 1024


async def _spawn(argv: Sequence[str], **kwargs: Any) -> tuple[asyncio.subprocess.Process, asyncio.Event]:
    """`asyncio.create_subprocess_exec`, also returning an event set when the leader exits."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(
        lambda: _ExitProtocol(_STREAM_LIMIT, loop), *argv, **kwargs
    )
    return asyncio.subprocess.Process(transport, protocol, loop), protocol.exited


async def _wait_for_exit(
    process: asyncio.subprocess.Process, timeout: float | None, exited: asyncio.Event | None = None
) -> bool:
    """Waits until the leader has exited (True) or `timeout` passed (False).

    `Process.wait()` also waits for the pipes to close, which a grandchild holding them
    would delay forever; the returncode is set as soon as the leader itself is reaped.
    With `exited` (from `_spawn`) the wait ends the moment it is; polling (5-50 ms steps)
    added up to 50 ms to every agent and check.
    """
    if exited is not None:
        if process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exited.wait(), timeout)
        return process.returncode is not None
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    delay = 0.005
    while process.returncode is None:
        if deadline is not None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            delay = min(delay, remaining)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


async def _wait_for_exit_or_stop(
    process: asyncio.subprocess.Process,
    timeout: float | None,
    exited: asyncio.Event,
    stop: asyncio.Event | None,
) -> bool:
    """`_wait_for_exit`, ended early (False) when `stop` is set."""
    if stop is None:
        return await _wait_for_exit(process, timeout, exited)
    waiting = asyncio.ensure_future(_wait_for_exit(process, timeout, exited))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiting, stopping):
            task.cancel()
    return process.returncode is not None


def _signal_group(pid: int, sig: int) -> None:
    # The child leads its own group (start_new_session), so its pgid is its pid; the group
    # may already be gone, which is fine.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def run_process(
    argv: Sequence[str],
    *,
    cwd: Path | str,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    on_output: OutputCallback | None = None,
    timeout: float | None = None,
    kill_grace: float = DEFAULT_KILL_GRACE_SECONDS,
    merge_stderr: bool = False,
    capture_limit: int = DEFAULT_CAPTURE_BYTES,
    capture_keep: str = "head",
    sandbox: Sandbox | None = None,
    stop: asyncio.Event | None = None,
) -> ProcessResult:
    """Runs `argv` in `cwd` as the leader of a new process group and waits for it.

    - `env`: extra variables on top of the scrubbed environment (see `scrubbed_env`).
    - `stdin`: bytes fed to the child, then closed; None = no stdin (/dev/null).
    - `on_output(stream, line)`: called for each line ("stdout"/"stderr", without its
      newline) while the child runs; may be a coroutine function.
    - `timeout`: seconds; then SIGTERM to the whole group, SIGKILL after `kill_grace`.
    - `merge_stderr`: stderr goes into stdout (exact interleaving; `stderr` is then "").
    - `capture_limit` / `capture_keep`: how much of each stream the result keeps.
    - `sandbox`: run `argv` inside it (bubblewrap, see docs/sandbox.md); every process of
      the execution ends with it, and `limits_hit` says which of its limits were reached.
    - `stop`: when set while the child runs, SIGTERM to the group, SIGKILL after
      `kill_grace`, as for the timeout (a driver's budget meter, drivers/budget.py);
      the result then has `stopped` true.

    When the leader exits, anything it left running in its group is killed: leftovers
    would hold the pipes open and outlive the run. If the awaiting task is cancelled, the
    group is killed before the cancellation propagates.
    """
    started = time.monotonic()
    child_env = scrubbed_env(env)
    prepared = None
    if sandbox is not None:
        prepared = await sandbox.prepare(argv, cwd=cwd, env=child_env)
        argv, child_env = prepared.argv, prepared.env
    try:
        process, exited = await _spawn(
            argv,
            cwd=str(cwd),
            env=child_env,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except BaseException:
        if prepared is not None:
            await prepared.finish()
        raise

    def signal_child(sig: int) -> None:
        if prepared is not None:
            prepared.signal(process.pid, sig)
        else:
            _signal_group(process.pid, sig)

    if prepared is not None:
        prepared.started(process.pid)
    out_capture = OutputCapture(capture_limit, capture_keep)
    err_capture = OutputCapture(capture_limit, capture_keep)
    helpers: list[asyncio.Task[None]] = []
    assert process.stdout is not None
    helpers.append(asyncio.create_task(_pump(process.stdout, STDOUT, out_capture, on_output)))
    if process.stderr is not None:
        helpers.append(asyncio.create_task(_pump(process.stderr, STDERR, err_capture, on_output)))
    feeder: asyncio.Task[None] | None = None
    if stdin is not None and process.stdin is not None:
        feeder = asyncio.create_task(_feed(process.stdin, stdin))

    timed_out = stopped = False
    try:
        if not await _wait_for_exit_or_stop(process, timeout, exited, stop):
            stopped = stop is not None and stop.is_set()
            timed_out = not stopped
            signal_child(signal.SIGTERM)
            if not await _wait_for_exit(process, kill_grace, exited):
                signal_child(signal.SIGKILL)
                await _wait_for_exit(process, None, exited)
        signal_child(signal.SIGKILL)
        # The pipes reach EOF once every writer is gone; a process that escaped the group
        # could keep them open forever, so the wait is bounded.
        _, still_reading = await asyncio.wait(helpers, timeout=_DRAIN_SECONDS)
        for task in still_reading:
            task.cancel()
        for task in helpers:
            error = task.exception() if task.done() and not task.cancelled() else None
            if error is not None:
                raise error
    except BaseException:
        # Cancellation (or any failure) must not leave the agent running.
        signal_child(signal.SIGKILL)
        for task in helpers:
            task.cancel()
        raise
    finally:
        if feeder is not None and not feeder.done():
            feeder.cancel()
        limits_hit = await prepared.finish() if prepared is not None else []

    assert process.returncode is not None
    return ProcessResult(
        exit_code=exit_code_of(process.returncode),
        stdout=out_capture.text(),
        stderr=err_capture.text(),
        duration_seconds=time.monotonic() - started,
        timed_out=timed_out,
        stopped=stopped,
        stdout_bytes=out_capture.total,
        stderr_bytes=err_capture.total,
        stdout_truncated=out_capture.total > out_capture.limit,
        stderr_truncated=err_capture.total > err_capture.limit,
        limits_hit=tuple(limits_hit),
    )
