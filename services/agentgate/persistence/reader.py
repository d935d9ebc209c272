"""Reading runs and their per-iteration records for the read RPCs.

The SQLite index is the source of truth: it holds every record whole (as its serialized
proto), is written first and in one transaction with the run check, and answers without
touching the disk. The files under `runs/{run_id}/` are the human-readable copy; a reader
falls back to them only when the index has no row, e.g. after the database was lost or a
run folder was copied from another machine. Anything unreadable (a damaged row or file, a
file from an older version) reads as absent or with defaults, never as an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, cast

from google.protobuf.message import DecodeError, Message

from agentgate.persistence.run_files import (
    AGENT_PREFIX,
    ITERATION_PREFIX,
    RUN_FILE,
    VERIFICATION_PREFIX,
    RunFiles,
    agent_result_file,
    iteration_file,
    verification_file,
)
from agentgate.persistence.store import PersistenceStore
from agentgate.v1 import common_pb2

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)


class _Identified(Protocol):
    run_id: str
    iteration: int


@dataclass(frozen=True)
class RecordKind(Generic[M]):
    """One kind of per-iteration record: where it is indexed and which file holds it."""

    table: str
    prefix: str
    message_type: type[M]
    file_name: Callable[[int], str]


AGENT_RESULTS: RecordKind[common_pb2.AgentResult] = RecordKind(
    "agent_results", AGENT_PREFIX, common_pb2.AgentResult, agent_result_file
)
VERIFICATION_REPORTS: RecordKind[common_pb2.VerificationReport] = RecordKind(
    "verification_reports", VERIFICATION_PREFIX, common_pb2.VerificationReport, verification_file
)
ITERATIONS: RecordKind[common_pb2.IterationData] = RecordKind(
    "iterations", ITERATION_PREFIX, common_pb2.IterationData, iteration_file
)


def _parse(message_type: type[M], data: bytes, what: str) -> M | None:
    try:
        return message_type.FromString(data)
    except DecodeError as exc:
        log.warning("ignoring damaged index row of %s: %s", what, exc)
        return None


class RunReader:
    """Answers the read RPCs from the index, falling back to the run folder."""

    def __init__(self, store: PersistenceStore, files: RunFiles):
        self.store = store
        self.files = files

    async def run(self, run_id: str) -> common_pb2.Run | None:
        """The run, or None when neither the index nor run.json has it."""
        data = await self.store.run_data(run_id)
        if data is not None:
            run = _parse(common_pb2.Run, data, f"run {run_id}")
            if run is not None:
                return run
        run = await self.files.read(run_id, RUN_FILE, common_pb2.Run)
        if run is not None and not run.id:
            run.id = run_id
        return run

    async def run_known(self, run_id: str) -> bool:
        """True when the index or the runs folder knows the run."""
        return await self.store.run_data(run_id) is not None or await self.files.run_dir_exists(run_id)

    async def record(self, kind: RecordKind[M], run_id: str, iteration: int) -> M | None:
        """Iteration N's record of `kind`, or None."""
        data = await self.store.record(kind.table, run_id, iteration)
        if data is not None:
            found = _parse(kind.message_type, data, f"{kind.file_name(iteration)} of {run_id}")
            if found is not None:
                return found
        return await self._from_file(kind, run_id, iteration)

    async def records(self, kind: RecordKind[M], run_id: str) -> list[M] | None:
        """Every record of `kind` of a run, by iteration; None when the run is unknown."""
        by_iteration: dict[int, M] = {}
        for iteration, data in await self.store.records(kind.table, run_id):
            found = _parse(kind.message_type, data, f"{kind.file_name(iteration)} of {run_id}")
            if found is not None:
                by_iteration[iteration] = found
        for iteration in await self.files.iterations_on_disk(run_id, kind.prefix):
            if iteration not in by_iteration:
                found = await self._from_file(kind, run_id, iteration)
                if found is not None:
                    by_iteration[iteration] = found
        if not by_iteration and not await self.run_known(run_id):
            return None
        return [by_iteration[n] for n in sorted(by_iteration)]

    async def _from_file(self, kind: RecordKind[M], run_id: str, iteration: int) -> M | None:
        found = await self.files.read(run_id, kind.file_name(iteration), kind.message_type)
        if found is None:
            return None
        # An older file may lack the ids; its name and folder say them.
        ids = cast(_Identified, found)  # every record kind's message has both fields
        if not ids.run_id:
            ids.run_id = run_id
        if not ids.iteration:
            ids.iteration = iteration
        return found
