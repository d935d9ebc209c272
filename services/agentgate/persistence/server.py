"""The gRPC edge of the persistence service: PersistenceService on top of the SQLite index
(store), the run files and the event log.

Expected failures are raised as the errors of `agentgate.common.errors` (InvalidArgument
with field violations, NotFound, AlreadyExists, ResourceExhausted, Unavailable); the request
guard every server runs turns them, and anything unexpected (INTERNAL), into statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from agentgate.common.config import MAX_MESSAGE_BYTES, ServiceSettings, env_int
from agentgate.common.database import Listener
from agentgate.common.database import database_url as database_url_setting
from agentgate.common.disk_reserve import DiskReserve, reserve_path
from agentgate.common.disk_usage import tree_bytes
from agentgate.common.errors import (
    AlreadyExists,
    DiskFull,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from agentgate.common.events import TERMINAL_EVENT_TYPES
from agentgate.common.patches import MAX_PATCH_BYTES, patch_too_large
from agentgate.common.persistence_warnings import warning_metadata
from agentgate.common.redaction import Redactor
from agentgate.common.timeutil import now_timestamp
from agentgate.common.wellformed import unrepresentable
from agentgate.harness.statuses import TERMINAL_RUN_STATES
from agentgate.persistence import validation
from agentgate.persistence.event_log import (
    DEFAULT_SUBSCRIBER_QUEUE,
    EventLog,
    EventLogClosed,
    SubscriberTooSlow,
)
from agentgate.persistence.output_limits import DEFAULT_MAX_OUTPUT_BYTES
from agentgate.persistence.pagination import (
    BadPageToken,
    decode_page_token,
    effective_page_size,
    encode_page_token,
)
from agentgate.persistence.reader import AGENT_RESULTS, ITERATIONS, VERIFICATION_REPORTS, M, RecordKind, RunReader
from agentgate.persistence.records import RecordPreparer
from agentgate.persistence.run_files import (
    CUMULATIVE_PATCH_FILE,
    RunFiles,
    WriteOutcome,
    agent_result_file,
    iteration_file,
    patch_file,
    verification_file,
)
from agentgate.persistence.settings import max_output_bytes as max_output_bytes_setting
from agentgate.persistence.store import EVENTS_CHANNEL, PersistenceStore
from agentgate.persistence.streaming import stream_events
from agentgate.persistence.tasks import run_to_completion
from agentgate.persistence.wire import WireCache, add_persistence_service
from agentgate.v1 import common_pb2, events_pb2, persistence_pb2, persistence_pb2_grpc

log = logging.getLogger(__name__)

#: A run saved in one of these states is a run's last write, which the disk reserve is for.
FINAL_RUN_STATES = TERMINAL_RUN_STATES

SUBSCRIBER_QUEUE_ENV = "AGENTGATE_PERSISTENCE_SUBSCRIBER_QUEUE"
#: How far ahead of this service's clock a DeleteRuns cutoff may be (the client's clock).
DELETE_RUNS_CLOCK_SKEW_NS = 300 * 1_000_000_000

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp")


def representable(
    method: Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    """Refuses a request that JSON cannot hold (INVALID_ARGUMENT naming the fields) before
    `method` runs: what is stored goes into JSON files."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        _require(unrepresentable(request))
        return await method(self, request, context)

    return wrapper


def _require(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(violations)


# What a list answer may hold: the message limit less room for the envelope.
LIST_BUDGET_BYTES = MAX_MESSAGE_BYTES - 256 * 1024


def _require_fits(records: list[Any], run_id: str, getter: str) -> None:
    """A list too big for one message (many iterations of megabytes of output each) is
    RESOURCE_EXHAUSTED naming the per-iteration call to use instead, never a broken stream."""
    total = sum(record.ByteSize() for record in records)
    if total > LIST_BUDGET_BYTES:
        raise ResourceExhausted(
            f"the {len(records)} records of run {run_id!r} total {total} bytes, over the "
            f"{LIST_BUDGET_BYTES}-byte message budget; read them one by one with {getter}",
        )


def _report_file_failure(context: grpc.aio.ServicerContext, outcome: WriteOutcome) -> None:
    """A file that could not be written: the call still succeeds (the index holds the
    record), and trailing metadata tells the caller which file and why."""
    if not outcome:
        context.set_trailing_metadata(
            warning_metadata(f"{outcome.file} not written ({outcome.error}); the record is kept in the index")
        )


class PersistenceServicer(persistence_pb2_grpc.PersistenceServiceServicer):
    """PersistenceService: runs, iteration records and the event log (docs/troubleshooting.md, docs/observability.md).

    Every record is prepared before it is stored: secrets redacted, agent output cut to
    the configured size (see `records`). Reads come from the SQLite index, the source of
    truth, with the run files as fallback (see `reader`).
    """

    def __init__(
        self,
        store: PersistenceStore,
        files: RunFiles,
        event_log: EventLog,
        preparer: RecordPreparer | None = None,
        reserve: DiskReserve | None = None,
    ):
        self.store = store
        self.files = files
        self.event_log = event_log
        #: Room for the final writes of runs on a full disk (see common/disk_reserve.py); None: no reserve.
        self.reserve = reserve
        self.preparer = preparer or RecordPreparer(Redactor(), DEFAULT_MAX_OUTPUT_BYTES)
        self.reader = RunReader(store, files)
        # StreamEvents sends each event's serialized response to every follower (see wire).
        self.wire = WireCache()
        # One writer of run-level records at a time, so that for every run.json /
        # agent-N.json the file on disk is the version the index holds, even when two
        # updates of one run race.
        self._record_lock = asyncio.Lock()

    @representable
    async def CreateRun(
        self, request: persistence_pb2.CreateRunRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.CreateRunResponse:
        """Stores a new run and writes run.json. ALREADY_EXISTS when the id is taken.
        created_at is stamped now when the caller left it unset."""
        _require(validation.check_new_run(request.run))
        run = self.preparer.run(request.run)
        if not run.HasField("created_at"):
            run.created_at.CopyFrom(now_timestamp())

        async def create() -> WriteOutcome:
            async with self._record_lock:
                if not await self.store.insert_run(run):
                    raise AlreadyExists(f"run {run.id!r} already exists")
                return await self.files.write_run(run)

        _report_file_failure(context, await self._disk_guarded(create, final=False))
        return persistence_pb2.CreateRunResponse(run=run)

    @representable
    async def UpdateRun(
        self, request: persistence_pb2.UpdateRunRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.UpdateRunResponse:
        """Replaces a stored run and rewrites run.json. NOT_FOUND when unknown.
        An empty work_order_id or created_at keeps the stored one; the work order of a
        run cannot change (INVALID_ARGUMENT run.work_order_id)."""
        _require(validation.check_run_update(request.run))
        run = self.preparer.run(request.run)

        async def update() -> WriteOutcome:
            async with self._record_lock:
                stored = await self.store.get_run(run.id)
                if stored is None:
                    raise NotFound(f"run {run.id!r} not found")
                if not run.work_order_id:
                    run.work_order_id = stored.work_order_id
                elif run.work_order_id != stored.work_order_id:
                    raise InvalidArgument(
                        [
                            FieldViolation(
                                "run.work_order_id", f"cannot change (run belongs to {stored.work_order_id!r})"
                            )
                        ]
                    )
                if not run.HasField("created_at"):
                    run.created_at.CopyFrom(stored.created_at)
                if not await self.store.replace_run(run):
                    raise NotFound(f"run {run.id!r} not found")
                return await self.files.write_run(run)

        _report_file_failure(context, await self._disk_guarded(update, final=run.state in FINAL_RUN_STATES))
        return persistence_pb2.UpdateRunResponse(run=run)

    @representable
    async def GetRun(
        self, request: persistence_pb2.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.GetRunResponse:
        """Returns a run from the index (else its run.json). NOT_FOUND when unknown."""
        _require(validation.check_run_id(request.run_id))
        run = await self.reader.run(request.run_id)
        if run is None:
            raise NotFound(f"run {request.run_id!r} not found")
        return persistence_pb2.GetRunResponse(run=run)

    async def DeleteRuns(
        self, request: persistence_pb2.DeleteRunsRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.DeleteRunsResponse:
        """Deletes the records, events and files of terminal runs that finished before
        `finished_before` (`agentgate gc --runs`); a run still going on is never touched.
        With `dry_run`, only says which runs and how many bytes."""
        if not request.HasField("finished_before"):
            raise InvalidArgument([FieldViolation("finished_before", "a time is required")])
        try:
            cutoff = request.finished_before.ToNanoseconds()
            request.finished_before.ToDatetime()  # checks the range of a Timestamp
        except ValueError as exc:
            raise InvalidArgument([FieldViolation("finished_before", str(exc))]) from None
        if cutoff > time.time_ns() + DELETE_RUNS_CLOCK_SKEW_NS:
            # A cutoff ahead of now is a mistake (a clock or a unit), not "every run".
            raise InvalidArgument([FieldViolation("finished_before", "must not be in the future")])
        run_ids = await self.store.terminal_runs_finished_before(cutoff, TERMINAL_RUN_STATES)
        folders = [self.files.run_dir(run_id) for run_id in run_ids]
        size = sum([await asyncio.to_thread(tree_bytes, folder) for folder in folders])
        if not request.dry_run:
            for run_id in run_ids:
                # Files first: a run whose row outlived its files is listed without them,
                # one whose files outlived the row would come back from run.json.
                await self.files.delete_run(run_id)
                await self.store.delete_run(run_id)
            log.info("deleted %d finished run(s) (%d bytes)", len(run_ids), size)
        return persistence_pb2.DeleteRunsResponse(run_ids=run_ids, bytes=size)

    async def GetRunFilesDiskUsage(
        self, request: persistence_pb2.GetRunFilesDiskUsageRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.GetRunFilesDiskUsageResponse:
        """Bytes used by the run files (runs/), measured off the event loop."""
        size = await asyncio.to_thread(tree_bytes, self.files.root)
        return persistence_pb2.GetRunFilesDiskUsageResponse(usage=common_pb2.DiskUsage(run_files_bytes=size))

    @representable
    async def ListRuns(
        self, request: persistence_pb2.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.ListRunsResponse:
        """Lists runs newest first, optionally of one work order and of some states (from
        the index only). page_size 0 = 50, capped at 1000; negative is INVALID_ARGUMENT.
        next_page_token is empty on the last page; a token only fits the filters it was
        made for."""
        _require(validation.check_list_runs(request.page_size, request.states))
        cursor = None
        if request.page_token:
            try:
                cursor = decode_page_token(request.page_token, request.work_order_id, request.states)
            except BadPageToken as exc:
                raise InvalidArgument([FieldViolation("page_token", str(exc))]) from None
        runs, next_cursor = await self.store.list_runs(
            request.work_order_id, effective_page_size(request.page_size), cursor, request.states
        )
        token = encode_page_token(next_cursor) if next_cursor is not None else ""
        return persistence_pb2.ListRunsResponse(runs=runs, next_page_token=token)

    @representable
    async def SaveAgentResult(
        self, request: persistence_pb2.SaveAgentResultRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.SaveAgentResultResponse:
        """Stores iteration N's full agent result as agent-{N}.json (replacing an earlier
        one) and indexes it: secrets redacted, stdout and stderr cut to the configured size
        with stdout_bytes/stderr_bytes and the *_truncated flags set. NOT_FOUND when the run
        is unknown. A file that could not be written is named in the trailing metadata."""
        _require(validation.check_iteration_record(request.result.run_id, request.result.iteration, "result"))
        # Redacting and cutting megabytes of output takes a while: off the event loop.
        result = await asyncio.to_thread(self.preparer.agent_result, request.result)
        file = agent_result_file(result.iteration, result.run_attempt)
        outcome = await self._save(
            result.run_id, self.store.save_agent_result(result, file), self.files.write_agent_result, result
        )
        _report_file_failure(context, outcome)
        return persistence_pb2.SaveAgentResultResponse(file=file)

    @representable
    async def SaveVerificationReport(
        self, request: persistence_pb2.SaveVerificationReportRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.SaveVerificationReportResponse:
        """Stores iteration N's verification report as verification-{N}.json and indexes
        it, secrets redacted. NOT_FOUND when the run is unknown."""
        _require(validation.check_iteration_record(request.report.run_id, request.report.iteration, "report"))
        report = await asyncio.to_thread(self.preparer.message, request.report)
        file = verification_file(report.iteration, report.run_attempt)
        outcome = await self._save(
            report.run_id,
            self.store.save_verification_report(report, file),
            self.files.write_verification_report,
            report,
        )
        _report_file_failure(context, outcome)
        return persistence_pb2.SaveVerificationReportResponse(file=file)

    @representable
    async def SaveIteration(
        self, request: persistence_pb2.SaveIterationRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.SaveIterationResponse:
        """Stores iteration N's data as iteration-{N}.json and indexes it, secrets
        redacted. NOT_FOUND when the run is unknown."""
        _require(
            validation.check_iteration_record(request.iteration.run_id, request.iteration.iteration, "iteration")
        )
        iteration = self.preparer.message(request.iteration)
        file = iteration_file(iteration.iteration, iteration.run_attempt)
        outcome = await self._save(
            iteration.run_id, self.store.save_iteration(iteration, file), self.files.write_iteration, iteration
        )
        _report_file_failure(context, outcome)
        return persistence_pb2.SaveIterationResponse(file=file)

    @representable
    async def SavePatch(
        self, request: persistence_pb2.SavePatchRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.SavePatchResponse:
        """Stores iteration N's patch as patch-{N}.diff (attempt-scoped, never overwritten)
        and the run's cumulative patch as patch.diff (replaced), both indexed in one
        transaction. The bytes are kept as they are: a redacted patch would no longer apply.
        RESOURCE_EXHAUSTED above MAX_PATCH_BYTES; NOT_FOUND when the run is unknown."""
        patch, cumulative = request.patch, request.cumulative
        _require(validation.check_patches(patch, cumulative))
        for what, item in (("patch", patch), ("cumulative", cumulative)):
            if len(item.patch) > MAX_PATCH_BYTES:
                raise ResourceExhausted(patch_too_large(f"{what}.patch of run {patch.run_id!r}", len(item.patch)))
        stored_cumulative = common_pb2.RunPatch()
        stored_cumulative.CopyFrom(cumulative)
        stored_cumulative.run_id, stored_cumulative.iteration = patch.run_id, 0
        file = patch_file(patch.iteration, patch.run_attempt)

        async def write_files(_: object) -> WriteOutcome:
            first = await self.files.write_patch(patch, file)
            second = await self.files.write_patch(stored_cumulative, CUMULATIVE_PATCH_FILE)
            return first if not first else second

        index = self.store.save_patches([(patch, file), (stored_cumulative, CUMULATIVE_PATCH_FILE)])
        _report_file_failure(context, await self._save(patch.run_id, index, write_files, None))
        return persistence_pb2.SavePatchResponse(file=file, cumulative_file=CUMULATIVE_PATCH_FILE)

    @representable
    async def GetPatch(
        self, request: persistence_pb2.GetPatchRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.GetPatchResponse:
        """Iteration N's patch, or (iteration 0) the run's cumulative one, from the index.
        NOT_FOUND naming what is missing."""
        _require(validation.check_run_id(request.run_id))
        if request.iteration < 0:
            violation = FieldViolation("iteration", f"must be 0 (cumulative) or more, got {request.iteration}")
            raise InvalidArgument([violation])
        found = await self.store.patch(request.run_id, request.iteration)
        if found is None:
            name = patch_file(request.iteration) if request.iteration else CUMULATIVE_PATCH_FILE
            raise await self._absent(request.run_id, name)
        return persistence_pb2.GetPatchResponse(patch=found)

    async def _save(
        self,
        run_id: str,
        index: Coroutine[Any, Any, bool],
        write_file: Callable[[Any], Awaitable[WriteOutcome]],
        message: Any,
    ) -> WriteOutcome:
        """Index first (the record that matters), then the file; the file write failing is
        logged and counted by RunFiles and returned, never raised."""

        async def save() -> WriteOutcome:
            async with self._record_lock:
                if not await index:
                    raise NotFound(f"run {run_id!r} not found")
                return await write_file(message)

        if self.reserve is not None and not await self.reserve.allow_write():
            index.close()  # never awaited: nothing was written
            raise DiskFull(self.store.file)
        return await run_to_completion(save())

    async def _disk_guarded(self, write: Callable[[], Coroutine[Any, Any, WriteOutcome]], final: bool) -> WriteOutcome:
        """Runs `write` (an index write, then its file; repeatable) to completion. A `final`
        write (a run's last state) that meets a full disk is tried once more after the
        disk reserve is released, so the run does not read BUILDING forever; another write
        is refused while the reserve is spent and cannot be put back (see common/disk_reserve.py)."""
        if self.reserve is None:
            return await run_to_completion(write())
        if not final:
            if not await self.reserve.allow_write():
                raise DiskFull(self.store.file)
            return await run_to_completion(write())
        try:
            outcome = await run_to_completion(write())
        except DiskFull:
            if not await self.reserve.release():
                raise
            return await run_to_completion(write())
        if outcome.disk_full and await self.reserve.release():
            return await run_to_completion(write())
        return outcome

    # -- reading iteration records -----------------------------------------------------

    @representable
    async def GetAgentResult(
        self, request: persistence_pb2.GetAgentResultRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.GetAgentResultResponse:
        """Iteration N's agent result. NOT_FOUND when the run or the result is absent."""
        found = await self._get_record(AGENT_RESULTS, request.run_id, request.iteration, agent_result_file)
        return persistence_pb2.GetAgentResultResponse(result=found)

    @representable
    async def ListAgentResults(
        self, request: persistence_pb2.ListAgentResultsRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.ListAgentResultsResponse:
        """Every agent result of a run, by iteration. NOT_FOUND when the run is unknown."""
        found = await self._list_records(AGENT_RESULTS, request.run_id, "GetAgentResult")
        return persistence_pb2.ListAgentResultsResponse(results=found)

    @representable
    async def GetVerificationReport(
        self, request: persistence_pb2.GetVerificationReportRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.GetVerificationReportResponse:
        """Iteration N's verification report. NOT_FOUND when the run or the report is absent
        (e.g. the agent failed, so nothing was verified)."""
        found = await self._get_record(VERIFICATION_REPORTS, request.run_id, request.iteration, verification_file)
        return persistence_pb2.GetVerificationReportResponse(report=found)

    @representable
    async def ListVerificationReports(
        self, request: persistence_pb2.ListVerificationReportsRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.ListVerificationReportsResponse:
        """Every verification report of a run, by iteration. NOT_FOUND when the run is unknown."""
        found = await self._list_records(VERIFICATION_REPORTS, request.run_id, "GetVerificationReport")
        return persistence_pb2.ListVerificationReportsResponse(reports=found)

    @representable
    async def GetIteration(
        self, request: persistence_pb2.GetIterationRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.GetIterationResponse:
        """Iteration N's data. NOT_FOUND when the run or the iteration is absent."""
        found = await self._get_record(ITERATIONS, request.run_id, request.iteration, iteration_file)
        return persistence_pb2.GetIterationResponse(iteration=found)

    @representable
    async def ListIterations(
        self, request: persistence_pb2.ListIterationsRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.ListIterationsResponse:
        """Every iteration of a run, in order. NOT_FOUND when the run is unknown."""
        found = await self._list_records(ITERATIONS, request.run_id, "GetIteration")
        return persistence_pb2.ListIterationsResponse(iterations=found)

    async def _get_record(
        self, kind: RecordKind[M], run_id: str, iteration: int, file_name: Callable[[int], str]
    ) -> M:
        """One record of a run by iteration; NOT_FOUND naming what is missing."""
        _require(validation.check_record_request(run_id, iteration))
        found = await self.reader.record(kind, run_id, iteration)
        if found is None:
            raise await self._absent(run_id, file_name(iteration))
        return found

    async def _list_records(self, kind: RecordKind[M], run_id: str, get_rpc: str) -> list[M]:
        """Every record of a kind for a run; NOT_FOUND when the run is unknown, and
        RESOURCE_EXHAUSTED (pointing at `get_rpc`) when they do not fit one message."""
        _require(validation.check_run_id(run_id))
        found = await self.reader.records(kind, run_id)
        if found is None:
            raise NotFound(f"run {run_id!r} not found")
        _require_fits(found, run_id, get_rpc)
        return found

    async def _absent(self, run_id: str, file: str) -> NotFound:
        """NOT_FOUND saying whether the run or only this record is missing."""
        if not await self.reader.run_known(run_id):
            return NotFound(f"run {run_id!r} not found")
        return NotFound(f"run {run_id!r} has no {file}")

    @representable
    async def AppendEvents(
        self, request: persistence_pb2.AppendEventsRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.AppendEventsResponse:
        """Appends events to their work orders' logs in one transaction, assigning each the
        next seq of its work order (from 1, no gaps), then wakes followers and appends to
        events.jsonl. Works before any CreateRun of the run. Returns the seqs in order. An
        event whose `event_id` its work order already holds (a retried call) is not stored
        again: its seq is the stored one."""
        _require(validation.check_events(request.events))
        if not request.events:
            return persistence_pb2.AppendEventsResponse()
        stored = await self._append_events(request.events)
        return persistence_pb2.AppendEventsResponse(seqs=[event.seq for event in stored])

    async def _append_events(self, events: Sequence[events_pb2.RunEvent]) -> list[events_pb2.RunEvent]:
        """EventLog.append, with the disk reserve: a batch holding a terminal event (the end
        of a run) that meets a full disk is tried again after the reserve is released; a
        failed batch was rolled back, so trying again stores nothing twice."""
        if self.reserve is None:
            return await self.event_log.append(events)
        if not any(event.type in TERMINAL_EVENT_TYPES for event in events):
            if not await self.reserve.allow_write():
                raise DiskFull(self.store.file)
            return await self.event_log.append(events)
        try:
            return await self.event_log.append(events)
        except DiskFull:
            if not await self.reserve.release():
                raise
            return await self.event_log.append(events)

    async def StreamEvents(  # type: ignore[override]  # yields pre-serialized bytes (see wire.py)
        self, request: persistence_pb2.StreamEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Replays the events with seq > after_seq of a work order (or of one run), then,
        with follow, streams new ones until a terminal event (run:complete, ...) was sent.
        A follower that falls more than the buffer behind ends with RESOURCE_EXHAUSTED
        and the after_seq to reconnect with; shutdown ends followers with UNAVAILABLE.

        Yields serialized `StreamEventsResponse`s, shared by every follower (registered
        without a response serializer by `wire.add_persistence_service`)."""
        last_sent = request.after_seq
        try:
            work_order_id = await self._stream_target(request)
            events = stream_events(
                self.store, self.event_log, work_order_id, request.after_seq, request.follow, request.run_id
            )
            async with contextlib.aclosing(events):
                async for event in events:
                    yield self.wire.response_bytes(event)
                    last_sent = event.seq
        except SubscriberTooSlow:
            raise ResourceExhausted(f"subscriber too slow; reconnect with after_seq={last_sent}") from None
        except EventLogClosed:
            raise Unavailable(f"persistence is shutting down; reconnect with after_seq={last_sent}") from None

    async def _stream_target(self, request: persistence_pb2.StreamEventsRequest) -> str:
        """The work order to stream. A run id is resolved through the event log or the runs
        table; an unknown work order is NOT_FOUND unless the caller follows it (its first
        event may still be on its way)."""
        _require(validation.check_stream_request(request.work_order_id, request.run_id))
        if request.work_order_id:
            if not request.follow and not await self.store.work_order_known(request.work_order_id):
                raise NotFound(f"work order {request.work_order_id!r} not found")
            return request.work_order_id
        work_order_id = await self.store.work_order_of_run(request.run_id)
        if work_order_id is None:
            raise NotFound(f"run {request.run_id!r} not found")
        return work_order_id


class PersistenceApp:
    """The persistence service as a ServiceApp: opens persistence.db and the run folders
    under `settings.home`, serves PersistenceService, and closes them on stop."""

    service_names = ("agentgate.v1.PersistenceService",)

    def __init__(
        self,
        settings: ServiceSettings,
        subscriber_queue_size: int | None = None,
        max_output_bytes: int | None = None,
        redactor: Redactor | None = None,
        database_url: str | None = None,
    ):
        """`max_output_bytes` None = $AGENTGATE_MAX_OUTPUT_BYTES or 1 MiB; `redactor` None =
        the token patterns plus the token values configured in this process's environment;
        `database_url` None = $AGENTGATE_DATABASE_URL ('' there: persistence.db)."""
        self.settings = settings
        self.database_url = database_url_setting(database_url)
        self._listener: Listener | None = None
        self.subscriber_queue_size = subscriber_queue_size or env_int(
            SUBSCRIBER_QUEUE_ENV, DEFAULT_SUBSCRIBER_QUEUE, minimum=1
        )
        self.max_output_bytes = max_output_bytes_setting(max_output_bytes)
        self.redactor = redactor or Redactor.from_environment()
        self.store: PersistenceStore | None = None
        self.files = RunFiles(settings.home)
        self.event_log: EventLog | None = None
        self.servicer: PersistenceServicer | None = None

    @property
    def file_write_failures(self) -> int:
        """Run files that could not be written since start (logged each time)."""
        return self.files.write_failures

    async def start(self, server: grpc.aio.Server) -> None:
        """Opens the index and registers the servicer on `server`."""
        self.store = await PersistenceStore.open(self.settings.database_path, self.database_url)
        self.event_log = EventLog(self.store, self.files, self.subscriber_queue_size, self.redactor)
        if self.store.shared:
            # Followers here hear events other replicas append (EventLog.hear).
            self._listener = Listener(self.database_url, EVENTS_CHANNEL, self.event_log.hear, self.event_log.catch_up)
            await self._listener.start()
        reserve = DiskReserve(reserve_path(self.settings.home, "persistence"))
        if not await reserve.ensure():
            log.warning("disk full at start: no room for the %d-byte reserve %s", reserve.size, reserve.path)
        self.servicer = PersistenceServicer(
            self.store,
            self.files,
            self.event_log,
            RecordPreparer(self.redactor, self.max_output_bytes),
            reserve,
        )
        add_persistence_service(self.servicer, server)

    async def closing(self) -> None:
        """Ends live streams (UNAVAILABLE, with the seq to resume from) before shutdown."""
        if self.event_log is not None:
            self.event_log.close()

    async def stop(self) -> None:
        """Closes the index (after in-flight calls finished)."""
        await self.closing()
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self.store is not None:
            await self.store.close()
            self.store = None
