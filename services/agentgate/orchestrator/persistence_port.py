"""The orchestrator's port to the persistence service (docs/architecture.md): every record
a run keeps (the run, its iterations, agent results, verification reports) and its event
log.

A save never fails a run: a failed call, or a record kept in the index whose file could
not be written (the service says so in the trailing metadata, see
common/persistence_warnings.py), comes back as a `Saved` with the problem, for the run
loop to count and report. Events are appended in order by `PersistenceSubscriber`, the
run emitter's own subscriber.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message

from agentgate.common.errors import is_disk_full_message
from agentgate.common.events import AGENT_OUTPUT
from agentgate.common.persistence_warnings import warning_from_metadata
from agentgate.orchestrator.subscribers import EmittedEvent, EventSubscriber
from agentgate.v1 import common_pb2, events_pb2, persistence_pb2, persistence_pb2_grpc

log = logging.getLogger(__name__)

RPC_TIMEOUT_SECONDS = 30.0
#: A batch is sent as several AppendEvents calls when its events would not fit one message
#: comfortably (200 agent:output lines of 64 KiB would pass the 16 MiB message limit).
MAX_APPEND_BYTES = 4 * 1024 * 1024
APPEND_TIMEOUT_SECONDS = 10.0
APPEND_ATTEMPTS = 5


@dataclass(frozen=True)
class Saved:
    """What a save came to: the file it wrote, and why something was not kept ('' when all
    went well)."""

    file: str = ""
    problem: str = ""


class PersistencePort(Protocol):
    """What a run asks of persistence."""

    async def create_run(self, run: common_pb2.Run) -> Saved:
        """Creates the run record; one that exists already (a new lease of the same work
        order after a lost worker: same run, new attempt) is replaced."""
        ...

    async def update_run(self, run: common_pb2.Run) -> Saved:
        """Replaces the run record."""
        ...

    async def save_iteration(self, iteration: common_pb2.IterationData) -> Saved:
        """Stores one iteration's record."""
        ...

    async def save_agent_result(self, result: common_pb2.AgentResult) -> Saved:
        """Stores an agent execution's full result."""
        ...

    async def save_verification_report(self, report: common_pb2.VerificationReport) -> Saved:
        """Stores a verification report."""
        ...

    async def save_patch(self, patch: common_pb2.RunPatch, cumulative: common_pb2.RunPatch) -> Saved:
        """Stores an iteration's patch and the run's cumulative one."""
        ...

    async def get_run(self, run_id: str) -> common_pb2.Run | None:
        """The stored run (None when there is none, or persistence cannot say)."""
        ...

    async def list_iterations(self, run_id: str) -> list[common_pb2.IterationData]:
        """The stored iteration records of a run, in order ([] when it cannot say)."""
        ...

    async def get_patch(self, run_id: str, iteration: int) -> common_pb2.RunPatch | None:
        """Iteration N's stored patch (None when absent, or persistence cannot say)."""
        ...

    async def get_agent_result(self, run_id: str, iteration: int) -> common_pb2.AgentResult | None:
        """Iteration N's stored agent result (None when absent)."""
        ...

    async def get_verification_report(self, run_id: str, iteration: int) -> common_pb2.VerificationReport | None:
        """Iteration N's stored verification report (None when absent)."""
        ...

    def event_subscriber(self, run_id: str) -> EventSubscriber:
        """The subscriber that appends the run's events to its event log."""
        ...


def _problem(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"


class GrpcPersistence:
    """`PersistencePort` over the persistence service's gRPC stub."""

    def __init__(self, stub: persistence_pb2_grpc.PersistenceServiceAsyncStub):
        self._stub = stub

    async def _save(self, call: Callable[..., Any], request: Message, wait_for_ready: bool = False) -> Saved:
        try:
            pending = call(request, timeout=RPC_TIMEOUT_SECONDS, wait_for_ready=wait_for_ready)
            response = await pending
            problem = warning_from_metadata(await pending.trailing_metadata())
        except grpc.aio.AioRpcError as exc:
            return Saved(problem=_problem(exc))
        return Saved(getattr(response, "file", ""), problem)

    async def create_run(self, run: common_pb2.Run) -> Saved:
        """CreateRun, or UpdateRun when the run exists."""
        try:
            pending = self._stub.CreateRun(persistence_pb2.CreateRunRequest(run=run), timeout=RPC_TIMEOUT_SECONDS)
            await pending
            return Saved(problem=warning_from_metadata(await pending.trailing_metadata()))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                return Saved(problem=_problem(exc))
        return await self.update_run(run)

    async def update_run(self, run: common_pb2.Run) -> Saved:
        """UpdateRun. Each one replaces the whole run, so the last one must land: when
        persistence is restarting it waits for it (up to the deadline) rather than leave a
        stale state."""
        return await self._save(self._stub.UpdateRun, persistence_pb2.UpdateRunRequest(run=run), wait_for_ready=True)

    async def save_iteration(self, iteration: common_pb2.IterationData) -> Saved:
        """SaveIteration."""
        return await self._save(self._stub.SaveIteration, persistence_pb2.SaveIterationRequest(iteration=iteration))

    async def save_agent_result(self, result: common_pb2.AgentResult) -> Saved:
        """SaveAgentResult."""
        return await self._save(self._stub.SaveAgentResult, persistence_pb2.SaveAgentResultRequest(result=result))

    async def save_verification_report(self, report: common_pb2.VerificationReport) -> Saved:
        """SaveVerificationReport."""
        return await self._save(
            self._stub.SaveVerificationReport, persistence_pb2.SaveVerificationReportRequest(report=report)
        )

    async def save_patch(self, patch: common_pb2.RunPatch, cumulative: common_pb2.RunPatch) -> Saved:
        """SavePatch."""
        request = persistence_pb2.SavePatchRequest(patch=patch, cumulative=cumulative)
        return await self._save(self._stub.SavePatch, request)

    async def _read(self, call: Callable[..., Any], request: Message, field: str) -> Any:
        """A read a resumed run needs; None when absent or when persistence cannot answer
        (logged: the run then starts over rather than wait)."""
        try:
            response = await call(request, timeout=RPC_TIMEOUT_SECONDS, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                log.warning("could not read %s: %s", type(request).__name__, _problem(exc))
            return None
        return getattr(response, field)

    async def get_run(self, run_id: str) -> common_pb2.Run | None:
        """GetRun."""
        found: common_pb2.Run | None = await self._read(
            self._stub.GetRun, persistence_pb2.GetRunRequest(run_id=run_id), "run"
        )
        return found

    async def list_iterations(self, run_id: str) -> list[common_pb2.IterationData]:
        """ListIterations."""
        found = await self._read(
            self._stub.ListIterations, persistence_pb2.ListIterationsRequest(run_id=run_id), "iterations"
        )
        return list(found) if found is not None else []

    async def get_patch(self, run_id: str, iteration: int) -> common_pb2.RunPatch | None:
        """GetPatch."""
        found: common_pb2.RunPatch | None = await self._read(
            self._stub.GetPatch, persistence_pb2.GetPatchRequest(run_id=run_id, iteration=iteration), "patch"
        )
        return found

    async def get_agent_result(self, run_id: str, iteration: int) -> common_pb2.AgentResult | None:
        """GetAgentResult."""
        request = persistence_pb2.GetAgentResultRequest(run_id=run_id, iteration=iteration)
        found: common_pb2.AgentResult | None = await self._read(self._stub.GetAgentResult, request, "result")
        return found

    async def get_verification_report(self, run_id: str, iteration: int) -> common_pb2.VerificationReport | None:
        """GetVerificationReport."""
        request = persistence_pb2.GetVerificationReportRequest(run_id=run_id, iteration=iteration)
        found: common_pb2.VerificationReport | None = await self._read(
            self._stub.GetVerificationReport, request, "report"
        )
        return found

    def event_subscriber(self, run_id: str) -> PersistenceSubscriber:
        """AppendEvents for the run's events."""
        return PersistenceSubscriber(self._stub, run_id)


def append_chunks(
    events: Sequence[events_pb2.RunEvent], limit: int = MAX_APPEND_BYTES
) -> list[list[events_pb2.RunEvent]]:
    """Splits events, in order, into runs whose serialized size stays under `limit` (an
    event larger than `limit` goes alone)."""
    chunks: list[list[events_pb2.RunEvent]] = []
    size = 0
    for event in events:
        n = event.ByteSize()
        if not chunks or (chunks[-1] and size + n > limit):
            chunks.append([])
            size = 0
        chunks[-1].append(event)
        size += n
    return chunks


class AppendFailed(RuntimeError):
    """A batch of events could not be appended to the persistence service."""


class PersistenceSubscriber:
    """Appends a run's events to the persistence service, which assigns their seq."""

    name = "persistence"

    def __init__(self, persistence: persistence_pb2_grpc.PersistenceServiceAsyncStub, run_id: str):
        self._persistence = persistence
        self.run_id = run_id
        #: Told the status message when a batch found the disk full: the run must end, not
        #: go on producing events nobody can store (set by the run, see run_loop).
        self.on_disk_full: Callable[[str], None] | None = None
        self.disk_full = False

    async def handle(self, batch: Sequence[EmittedEvent]) -> None:
        """Appends the batch, in order, in calls of at most MAX_APPEND_BYTES. Once the disk
        was found full, the agent output still buffered is left out: the room persistence
        keeps aside is for the run's end (the other events are few and small)."""
        events = [item.event for item in batch]
        if self.disk_full:
            events = [event for event in events if event.type != AGENT_OUTPUT]
        for chunk in append_chunks(events):
            await self._append(chunk)

    async def _append(self, events: list[events_pb2.RunEvent]) -> None:
        """One AppendEvents call; retried while persistence is UNAVAILABLE (restarting),
        since an event lost here is a gap a user would notice in `watch`. Each event gets
        an `event_id`: a replica that died after storing the batch (docs/deployment.md)
        makes the retry, here or in the channel, store nothing twice."""
        for event in events:
            event.event_id = event.event_id or uuid.uuid4().hex
        request = persistence_pb2.AppendEventsRequest(events=events)
        for attempt in range(APPEND_ATTEMPTS):
            try:
                await self._persistence.AppendEvents(request, timeout=APPEND_TIMEOUT_SECONDS)
                return
            except grpc.aio.AioRpcError as exc:
                # Only UNAVAILABLE: after a deadline the batch may have been stored, and
                # sending it again would duplicate events.
                if is_disk_full_message(exc.details() or ""):
                    self.disk_full = True
                    if self.on_disk_full is not None:
                        self.on_disk_full(exc.details() or "")
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == APPEND_ATTEMPTS - 1:
                    raise AppendFailed(
                        f"could not persist {len(events)} events of {self.run_id}: {_problem(exc)}"
                    ) from exc
                await asyncio.sleep(0.2 * 2**attempt)

    async def aclose(self) -> None:
        """Nothing to release: the channel belongs to the worker."""
