"""The gRPC edge of the persistence service: PersistenceService on top of the SQLite index
(store), the run files and the event log.

Every RPC turns expected failures into their status (INVALID_ARGUMENT with field
violations, NOT_FOUND, ALREADY_EXISTS, RESOURCE_EXHAUSTED) and anything unexpected into
INTERNAL, so no request can take the service down.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from agentgate.common.config import ServiceSettings, env_int
from agentgate.common.errors import FieldViolation, InvalidArgument, invalid_argument_status
from agentgate.common.timeutil import now_timestamp
from agentgate.persistence import validation
from agentgate.persistence.event_log import (
    DEFAULT_SUBSCRIBER_QUEUE,
    EventLog,
    EventLogClosed,
    SubscriberTooSlow,
)
from agentgate.persistence.pagination import (
    BadPageToken,
    decode_page_token,
    effective_page_size,
    encode_page_token,
)
from agentgate.persistence.run_files import (
    RunFiles,
    agent_result_file,
    iteration_file,
    verification_file,
)
from agentgate.persistence.store import PersistenceStore
from agentgate.persistence.streaming import stream_events
from agentgate.persistence.tasks import run_to_completion
from agentgate.v1 import common_pb2, persistence_pb2, persistence_pb2_grpc

log = logging.getLogger(__name__)

SUBSCRIBER_QUEUE_ENV = "AGENTGATE_PERSISTENCE_SUBSCRIBER_QUEUE"

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class RpcFailure(Exception):
    """An expected failure of a request, sent to the client as `code` with `message`."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


async def _abort_for(exc: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
    """Aborts the call with the status `exc` stands for (always raises)."""
    if isinstance(exc, InvalidArgument):
        await context.abort_with_status(invalid_argument_status(exc.violations))
    if isinstance(exc, RpcFailure):
        await context.abort(exc.code, exc.message)
    log.exception("%s failed", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"{method}: internal error: {type(exc).__name__}: {exc}")


def unary_rpc(
    method: Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    """Maps the exceptions of a unary RPC to statuses (see the module docstring)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # the service must answer, whatever happened
            await _abort_for(exc, context, method.__name__)
            raise  # unreachable: abort raises

    return wrapper


def _require(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(violations)


class PersistenceServicer(persistence_pb2_grpc.PersistenceServiceServicer):
    """PersistenceService: runs, iteration records and the event log (SPEC §3, §11)."""

    def __init__(self, store: PersistenceStore, files: RunFiles, event_log: EventLog):
        self.store = store
        self.files = files
        self.event_log = event_log
        # One writer of run-level records at a time, so that for every run.json /
        # agent-N.json the file on disk is the version the index holds, even when two
        # updates of one run race.
        self._record_lock = asyncio.Lock()

    @unary_rpc
    async def CreateRun(
        self, request: persistence_pb2.CreateRunRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.CreateRunResponse:
        """Stores a new run and writes run.json. ALREADY_EXISTS when the id is taken.
        created_at is stamped now when the caller left it unset."""
        _require(validation.check_new_run(request.run))
        run = common_pb2.Run()
        run.CopyFrom(request.run)
        if not run.HasField("created_at"):
            run.created_at.CopyFrom(now_timestamp())

        async def create() -> None:
            async with self._record_lock:
                if not await self.store.insert_run(run):
                    raise RpcFailure(grpc.StatusCode.ALREADY_EXISTS, f"run {run.id!r} already exists")
                await self.files.write_run(run)

        await run_to_completion(create())
        return persistence_pb2.CreateRunResponse(run=run)

    @unary_rpc
    async def UpdateRun(
        self, request: persistence_pb2.UpdateRunRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.UpdateRunResponse:
        """Replaces a stored run and rewrites run.json. NOT_FOUND when unknown.
        An empty work_order_id or created_at keeps the stored one; the work order of a
        run cannot change (INVALID_ARGUMENT run.work_order_id)."""
        _require(validation.check_run_update(request.run))
        run = common_pb2.Run()
        run.CopyFrom(request.run)

        async def update() -> None:
            async with self._record_lock:
                stored = await self.store.get_run(run.id)
                if stored is None:
                    raise RpcFailure(grpc.StatusCode.NOT_FOUND, f"run {run.id!r} not found")
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
                    raise RpcFailure(grpc.StatusCode.NOT_FOUND, f"run {run.id!r} not found")
                await self.files.write_run(run)

        await run_to_completion(update())
        return persistence_pb2.UpdateRunResponse(run=run)

    @unary_rpc
    async def GetRun(
        self, request: persistence_pb2.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.GetRunResponse:
        """Returns a run from the index. NOT_FOUND when unknown."""
        _require(validation.check_run_id(request.run_id))
        run = await self.store.get_run(request.run_id)
        if run is None:
            raise RpcFailure(grpc.StatusCode.NOT_FOUND, f"run {request.run_id!r} not found")
        return persistence_pb2.GetRunResponse(run=run)

    @unary_rpc
    async def ListRuns(
        self, request: persistence_pb2.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.ListRunsResponse:
        """Lists runs newest first, optionally of one work order. page_size 0 = 50, capped
        at 1000; negative is INVALID_ARGUMENT. next_page_token is empty on the last page."""
        if request.page_size < 0:
            raise InvalidArgument([FieldViolation("page_size", f"must not be negative, got {request.page_size}")])
        cursor = None
        if request.page_token:
            try:
                cursor = decode_page_token(request.page_token, request.work_order_id)
            except BadPageToken as exc:
                raise InvalidArgument([FieldViolation("page_token", str(exc))]) from None
        runs, next_cursor = await self.store.list_runs(
            request.work_order_id, effective_page_size(request.page_size), cursor
        )
        token = encode_page_token(next_cursor) if next_cursor is not None else ""
        return persistence_pb2.ListRunsResponse(runs=runs, next_page_token=token)

    @unary_rpc
    async def SaveAgentResult(
        self, request: persistence_pb2.SaveAgentResultRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.SaveAgentResultResponse:
        """Stores iteration N's full agent result as agent-{N}.json (replacing an earlier
        one) and indexes it. NOT_FOUND when the run is unknown."""
        result = request.result
        _require(validation.check_iteration_record(result.run_id, result.iteration, "result"))
        file = agent_result_file(result.iteration)
        await self._save(
            result.run_id, self.store.save_agent_result(result, file), self.files.write_agent_result, result
        )
        return persistence_pb2.SaveAgentResultResponse(file=file)

    @unary_rpc
    async def SaveVerificationReport(
        self, request: persistence_pb2.SaveVerificationReportRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.SaveVerificationReportResponse:
        """Stores iteration N's verification report as verification-{N}.json and indexes
        it. NOT_FOUND when the run is unknown."""
        report = request.report
        _require(validation.check_iteration_record(report.run_id, report.iteration, "report"))
        file = verification_file(report.iteration)
        await self._save(
            report.run_id,
            self.store.save_verification_report(report, file),
            self.files.write_verification_report,
            report,
        )
        return persistence_pb2.SaveVerificationReportResponse(file=file)

    @unary_rpc
    async def SaveIteration(
        self, request: persistence_pb2.SaveIterationRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.SaveIterationResponse:
        """Stores iteration N's data as iteration-{N}.json and indexes it. NOT_FOUND when
        the run is unknown."""
        iteration = request.iteration
        _require(validation.check_iteration_record(iteration.run_id, iteration.iteration, "iteration"))
        file = iteration_file(iteration.iteration)
        await self._save(
            iteration.run_id, self.store.save_iteration(iteration, file), self.files.write_iteration, iteration
        )
        return persistence_pb2.SaveIterationResponse(file=file)

    async def _save(
        self, run_id: str, index: Awaitable[bool], write_file: Callable[[Any], Awaitable[bool]], message: Any
    ) -> None:
        """Index first (the record that matters), then the file; the file write failing is
        only logged and counted by RunFiles."""

        async def save() -> None:
            async with self._record_lock:
                if not await index:
                    raise RpcFailure(grpc.StatusCode.NOT_FOUND, f"run {run_id!r} not found")
                await write_file(message)

        await run_to_completion(save())

    @unary_rpc
    async def AppendEvents(
        self, request: persistence_pb2.AppendEventsRequest, context: grpc.aio.ServicerContext
    ) -> persistence_pb2.AppendEventsResponse:
        """Appends events to their work orders' logs in one transaction, assigning each the
        next seq of its work order (from 1, no gaps), then wakes followers and appends to
        events.jsonl. Works before any CreateRun of the run. Returns the seqs in order."""
        _require(validation.check_events(request.events))
        if not request.events:
            return persistence_pb2.AppendEventsResponse()
        stored = await self.event_log.append(request.events)
        return persistence_pb2.AppendEventsResponse(seqs=[event.seq for event in stored])

    async def StreamEvents(
        self, request: persistence_pb2.StreamEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[persistence_pb2.StreamEventsResponse]:
        """Replays the events with seq > after_seq of a work order (or of one run), then,
        with follow, streams new ones until a terminal event (run:complete, ...) was sent.
        A follower that falls more than the buffer behind ends with RESOURCE_EXHAUSTED
        and the after_seq to reconnect with; shutdown ends followers with UNAVAILABLE."""
        last_sent = request.after_seq
        try:
            work_order_id = await self._stream_target(request)
            events = stream_events(
                self.store, self.event_log, work_order_id, request.after_seq, request.follow, request.run_id
            )
            async with contextlib.aclosing(events):
                async for event in events:
                    yield persistence_pb2.StreamEventsResponse(event=event)
                    last_sent = event.seq
        except grpc.aio.AbortError:
            raise
        except SubscriberTooSlow:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"subscriber too slow; reconnect with after_seq={last_sent}"
            )
        except EventLogClosed:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"persistence is shutting down; reconnect with after_seq={last_sent}"
            )
        except Exception as exc:  # the service must answer, whatever happened
            await _abort_for(exc, context, "StreamEvents")

    async def _stream_target(self, request: persistence_pb2.StreamEventsRequest) -> str:
        """The work order to stream. A run id is resolved through the event log or the runs
        table; an unknown work order is NOT_FOUND unless the caller follows it (its first
        event may still be on its way)."""
        _require(validation.check_stream_request(request.work_order_id, request.run_id))
        if request.work_order_id:
            if not request.follow and not await self.store.work_order_known(request.work_order_id):
                raise RpcFailure(grpc.StatusCode.NOT_FOUND, f"work order {request.work_order_id!r} not found")
            return request.work_order_id
        work_order_id = await self.store.work_order_of_run(request.run_id)
        if work_order_id is None:
            raise RpcFailure(grpc.StatusCode.NOT_FOUND, f"run {request.run_id!r} not found")
        return work_order_id


class PersistenceApp:
    """The persistence service as a ServiceApp: opens persistence.db and the run folders
    under `settings.home`, serves PersistenceService, and closes them on stop."""

    service_names = ("agentgate.v1.PersistenceService",)

    def __init__(self, settings: ServiceSettings, subscriber_queue_size: int | None = None):
        self.settings = settings
        self.subscriber_queue_size = subscriber_queue_size or env_int(
            SUBSCRIBER_QUEUE_ENV, DEFAULT_SUBSCRIBER_QUEUE, minimum=1
        )
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
        self.store = await PersistenceStore.open(self.settings.database_path)
        self.event_log = EventLog(self.store, self.files, self.subscriber_queue_size)
        self.servicer = PersistenceServicer(self.store, self.files, self.event_log)
        persistence_pb2_grpc.add_PersistenceServiceServicer_to_server(self.servicer, server)

    async def closing(self) -> None:
        """Ends live streams (UNAVAILABLE, with the seq to resume from) before shutdown."""
        if self.event_log is not None:
            self.event_log.close()

    async def stop(self) -> None:
        """Closes the index (after in-flight calls finished)."""
        await self.closing()
        if self.store is not None:
            await self.store.close()
            self.store = None
