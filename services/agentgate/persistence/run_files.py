"""The files of a run under $AGENTGATE_HOME/runs/{run_id}/ (docs/troubleshooting.md).

Every JSON file is written atomically (temp file in the same folder, then os.replace), so a
reader never sees half a file. Writes run in a worker thread to keep the event loop free.
A failed write is logged and counted, never raised: the SQLite index is the record that
matters. The outcome of a write says which file and why, so the caller can tell the run (a
`persistence:warning`); a full disk reads "no space left on device while writing
runs/{run_id}/{file}", which ends the run (docs/troubleshooting.md, "Disk full").

Reading is forgiving: a missing file is None, a file from an older version reads with
defaults for the fields it lacks, and a damaged file is logged and read as None.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import Message

from agentgate.common.errors import disk_full_message, is_disk_full
from agentgate.common.messages import from_json, to_json
from agentgate.persistence.ids import is_valid_id
from agentgate.v1 import common_pb2, events_pb2

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

RUN_FILE = "run.json"
EVENTS_FILE = "events.jsonl"
#: The run's change so far against its source, replaced at each iteration (docs/results.md).
CUMULATIVE_PATCH_FILE = "patch.diff"


def attempt_scoped(stem: str, extension: str, attempt: int) -> str:
    """`{stem}{extension}` for the work order's first attempt (0 or 1: the names of runs
    that never lost a worker stay as they were), `{stem}.attempt-{A}{extension}` for a later
    one, so an iteration a new attempt runs again never overwrites the first's file
    (docs/results.md)."""
    return f"{stem}.attempt-{attempt}{extension}" if attempt > 1 else f"{stem}{extension}"


def agent_result_file(iteration: int, attempt: int = 1) -> str:
    """File name of iteration N's agent result (of the work order's attempt `attempt`)."""
    return attempt_scoped(f"agent-{iteration}", ".json", attempt)


def verification_file(iteration: int, attempt: int = 1) -> str:
    """File name of iteration N's verification report."""
    return attempt_scoped(f"verification-{iteration}", ".json", attempt)


def iteration_file(iteration: int, attempt: int = 1) -> str:
    """File name of iteration N's data."""
    return attempt_scoped(f"iteration-{iteration}", ".json", attempt)


def patch_file(iteration: int, attempt: int = 1) -> str:
    """File name of iteration N's patch (its change against the previous snapshot)."""
    return attempt_scoped(f"patch-{iteration}", ".diff", attempt)


#: Prefixes of the per-iteration files ({prefix}-{N}.json).
AGENT_PREFIX = "agent"
VERIFICATION_PREFIX = "verification"
ITERATION_PREFIX = "iteration"


@dataclass(frozen=True)
class WriteOutcome:
    """How a file write went: truthy when the file was written, else `error` says why."""

    run_id: str
    file: str
    error: str = ""
    #: The write failed for want of room (the error says so too).
    disk_full: bool = False

    def __bool__(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class AppendOutcome:
    """How an events.jsonl append went, per run: truthy when every write succeeded."""

    outcomes: tuple[WriteOutcome, ...] = ()

    @property
    def failed(self) -> list[WriteOutcome]:
        """The runs whose events.jsonl could not be appended to."""
        return [outcome for outcome in self.outcomes if not outcome]

    def __bool__(self) -> bool:
        return not self.failed


def atomic_write_text(path: Path, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically (see `atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes `data` to `path` so that readers see the old or the new file, never a mix.

    The temp file lives in the same folder because os.replace is only atomic within one
    file system. It is fsynced before the rename so a crash cannot leave an empty file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def append_lines(path: Path, lines: Sequence[str]) -> None:
    """Appends whole lines to `path` in one write, so lines of one batch stay together. A
    write cut short (a full disk takes what fits) is taken back: the file keeps whole
    lines, and the lines before stay readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = memoryview("".join(line + "\n" for line in lines).encode("utf-8"))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


class RunFiles:
    """Writes the observability files of runs below `home/runs`."""

    def __init__(self, home: Path):
        self.root = home / "runs"
        #: Writes that failed (disk full, permissions, ...) since start.
        self.write_failures = 0

    def run_dir(self, run_id: str) -> Path:
        """The folder of one run. Refuses unsafe ids so nothing escapes `root`."""
        if not is_valid_id(run_id):
            raise ValueError(f"unsafe run id {run_id!r}")
        return self.root / run_id

    async def write_run(self, run: common_pb2.Run) -> WriteOutcome:
        """Writes run.json; a failed outcome (counted) when the write failed."""
        return await self._write_json(run.id, RUN_FILE, run)

    async def write_agent_result(self, result: common_pb2.AgentResult) -> WriteOutcome:
        """Writes agent-{N}.json; a failed outcome (counted) when the write failed."""
        name = agent_result_file(result.iteration, result.run_attempt)
        return await self._write_json(result.run_id, name, result)

    async def write_verification_report(self, report: common_pb2.VerificationReport) -> WriteOutcome:
        """Writes verification-{N}.json; a failed outcome (counted) when the write failed."""
        name = verification_file(report.iteration, report.run_attempt)
        return await self._write_json(report.run_id, name, report)

    async def write_iteration(self, iteration: common_pb2.IterationData) -> WriteOutcome:
        """Writes iteration-{N}.json; a failed outcome (counted) when the write failed."""
        name = iteration_file(iteration.iteration, iteration.run_attempt)
        return await self._write_json(iteration.run_id, name, iteration)

    async def write_patch(self, patch: common_pb2.RunPatch, name: str) -> WriteOutcome:
        """Writes a patch's bytes as they are (a `git apply`-able file) under `name`."""
        return await self._guarded(patch.run_id, name, atomic_write_bytes, patch.patch)

    async def append_events(self, events: Sequence[events_pb2.RunEvent]) -> AppendOutcome:
        """Appends events to their runs' events.jsonl, one compact JSON object a line, in
        the order given (the caller passes them in seq order). Falsy when any write failed."""
        by_run: dict[str, list[str]] = {}
        for event in events:
            by_run.setdefault(event.run_id, []).append(to_json(event))
        outcomes = [await self._guarded(run_id, EVENTS_FILE, append_lines, lines) for run_id, lines in by_run.items()]
        return AppendOutcome(tuple(outcomes))

    async def _write_json(self, run_id: str, name: str, message: Message) -> WriteOutcome:
        return await self._guarded(run_id, name, atomic_write_text, to_json(message, indent=2) + "\n")

    async def _guarded(
        self, run_id: str, name: str, writer: Callable[[Path, Any], None], payload: Any
    ) -> WriteOutcome:
        try:
            path = self.run_dir(run_id) / name
            await asyncio.to_thread(writer, path, payload)
            return WriteOutcome(run_id, name)
        except (OSError, ValueError) as exc:
            self.write_failures += 1
            log.error("could not write %s of run %s: %s", name, run_id, exc)
            if is_disk_full(exc):
                return WriteOutcome(run_id, name, disk_full_message(f"runs/{run_id}/{name}"), disk_full=True)
            return WriteOutcome(run_id, name, f"{type(exc).__name__}: {exc}")

    # -- reading ---------------------------------------------------------------------

    async def read(self, run_id: str, name: str, message_type: type[M]) -> M | None:
        """The message stored in `name` of a run, or None when the file is missing or damaged.
        Unknown fields are ignored and missing ones take their defaults, so files written
        by older or newer versions still read."""
        try:
            path = self.run_dir(run_id) / name
        except ValueError:
            return None
        try:
            # Reading and parsing megabytes of JSON: in a worker thread.
            return await asyncio.to_thread(_load, path, message_type)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            log.warning("could not read %s of run %s: %s", name, run_id, exc)
            return None
        except Exception as exc:  # noqa: BLE001 - json_format raises several kinds; a damaged file is absent
            log.warning("ignoring damaged %s of run %s: %s", name, run_id, exc)
            return None

    async def iterations_on_disk(self, run_id: str, prefix: str) -> list[int]:
        """The N of every `{prefix}-{N}.json` in a run's folder, sorted ([] when none)."""
        try:
            folder = self.run_dir(run_id)
        except ValueError:
            return []
        return await asyncio.to_thread(_iterations_in, folder, prefix)

    async def delete_run(self, run_id: str) -> None:
        """Deletes a run's folder (`agentgate gc --runs`); our own files, written by this
        service only, so a plain recursive delete."""
        await asyncio.to_thread(shutil.rmtree, self.run_dir(run_id), ignore_errors=True)

    async def run_dir_exists(self, run_id: str) -> bool:
        """True when the run has a folder (it may have been written before an index loss)."""
        try:
            folder = self.run_dir(run_id)
        except ValueError:
            return False
        return await asyncio.to_thread(folder.is_dir)


def _load(path: Path, message_type: type[M]) -> M:
    """The message in a JSON file; OSError when unreadable, ValueError (or json_format's
    ParseError) when it is not a JSON object of that message."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if not text.lstrip().startswith("{"):
        raise ValueError("not a JSON object")
    return from_json(text, message_type())


def _iterations_in(folder: Path, prefix: str) -> list[int]:
    found: list[int] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    start = f"{prefix}-"
    for name in names:
        if name.startswith(start) and name.endswith(".json"):
            number = name[len(start) : -len(".json")]
            if number.isdigit() and int(number) >= 1:
                found.append(int(number))
    return sorted(found)
