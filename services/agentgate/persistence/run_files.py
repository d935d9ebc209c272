"""The files of a run under $AGENTGATE_HOME/runs/{run_id}/ (SPEC §3).

Every JSON file is written atomically (temp file in the same folder, then os.replace), so a
reader never sees half a file. Writes run in a worker thread to keep the event loop free.
A failed write is logged and counted, never raised: the SQLite index is the record that
matters, and a full disk must not fail a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from agentgate.common.messages import to_json
from agentgate.persistence.ids import is_valid_id
from agentgate.v1 import common_pb2, events_pb2

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
EVENTS_FILE = "events.jsonl"


def agent_result_file(iteration: int) -> str:
    """File name of iteration N's agent result."""
    return f"agent-{iteration}.json"


def verification_file(iteration: int) -> str:
    """File name of iteration N's verification report."""
    return f"verification-{iteration}.json"


def iteration_file(iteration: int) -> str:
    """File name of iteration N's data."""
    return f"iteration-{iteration}.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Writes `text` to `path` so that readers see the old or the new file, never a mix.

    The temp file lives in the same folder because os.replace is only atomic within one
    file system. It is fsynced before the rename so a crash cannot leave an empty file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def append_lines(path: Path, lines: Sequence[str]) -> None:
    """Appends whole lines to `path` in one write, so lines of one batch stay together."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(line + "\n" for line in lines)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(data)


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

    async def write_run(self, run: common_pb2.Run) -> bool:
        """Writes run.json; False (and counted) when the write failed."""
        return await self._write_json(run.id, RUN_FILE, run)

    async def write_agent_result(self, result: common_pb2.AgentResult) -> bool:
        """Writes agent-{N}.json; False (and counted) when the write failed."""
        return await self._write_json(result.run_id, agent_result_file(result.iteration), result)

    async def write_verification_report(self, report: common_pb2.VerificationReport) -> bool:
        """Writes verification-{N}.json; False (and counted) when the write failed."""
        return await self._write_json(report.run_id, verification_file(report.iteration), report)

    async def write_iteration(self, iteration: common_pb2.IterationData) -> bool:
        """Writes iteration-{N}.json; False (and counted) when the write failed."""
        return await self._write_json(iteration.run_id, iteration_file(iteration.iteration), iteration)

    async def append_events(self, events: Sequence[events_pb2.RunEvent]) -> bool:
        """Appends events to their runs' events.jsonl, one compact JSON object a line, in
        the order given (the caller passes them in seq order). False when any write failed."""
        by_run: dict[str, list[str]] = {}
        for event in events:
            by_run.setdefault(event.run_id, []).append(to_json(event))
        ok = True
        for run_id, lines in by_run.items():
            ok = await self._guarded(run_id, EVENTS_FILE, append_lines, lines) and ok
        return ok

    async def _write_json(self, run_id: str, name: str, message: Message) -> bool:
        return await self._guarded(run_id, name, atomic_write_text, to_json(message, indent=2) + "\n")

    async def _guarded(self, run_id: str, name: str, writer: Callable[[Path, Any], None], payload: Any) -> bool:
        try:
            path = self.run_dir(run_id) / name
            await asyncio.to_thread(writer, path, payload)
            return True
        except (OSError, ValueError) as exc:
            self.write_failures += 1
            log.error("could not write %s of run %s: %s", name, run_id, exc)
            return False
