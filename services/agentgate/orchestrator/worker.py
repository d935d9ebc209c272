"""The worker: leases work orders from the queue, runs them, heartbeats and completes them."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from agentgate.common.security import LeaseHolder, current_lease
from agentgate.orchestrator.persistence_port import PersistencePort
from agentgate.orchestrator.run_loop import RunExecutor
from agentgate.orchestrator.subscribers import SubscriberChannel
from agentgate.orchestrator.workspace_port import WorkspacePort
from agentgate.v1 import common_pb2, queue_pb2, queue_pb2_grpc

log = logging.getLogger(__name__)

LEASE_WAIT_SECONDS = 20.0
COMPLETE_ATTEMPTS = 10
#: Heartbeats go out at least this often (and at least three times per lease): the
#: answer is how a worker learns of a cancel, and a cancel must stop the agent within
#: seconds. The queue answers most of them from a read (see QueueStore.heartbeat).
MAX_HEARTBEAT_INTERVAL_SECONDS = 1.0
MIN_HEARTBEAT_INTERVAL_SECONDS = 0.2


def heartbeat_interval(lease_seconds: float) -> float:
    """Seconds between heartbeats for a lease of `lease_seconds`."""
    return min(max(lease_seconds / 3, MIN_HEARTBEAT_INTERVAL_SECONDS), MAX_HEARTBEAT_INTERVAL_SECONDS)


@dataclass
class ActiveRun:
    """A run this worker is executing."""

    executor: RunExecutor
    lease_id: str
    lease_seconds: int
    #: The queue's signed proof of the lease, renewed by each heartbeat; every call made for
    #: the run sends it (see `current_lease`).
    lease: LeaseHolder
    task: asyncio.Task[object] | None = None


class Worker:
    """Leases up to `max_concurrent_runs` work orders at a time and drives each to its end."""

    def __init__(
        self,
        worker_id: str,
        queue: queue_pb2_grpc.QueueServiceAsyncStub,
        workspace: WorkspacePort,
        persistence: PersistencePort,
        max_concurrent_runs: int = 2,
        subscribers: Sequence[SubscriberChannel] = (),
        profiles_dir: Path | None = None,
    ):
        self.worker_id = worker_id
        #: Where harness profile files live (None: $AGENTGATE_HOME/profiles).
        self.profiles_dir = profiles_dir
        #: Event subscribers shared by all runs (metrics, audit); see event_subscribers.
        self.subscribers = list(subscribers)
        self._queue = queue
        self._workspace = workspace
        self._persistence = persistence
        self.max_concurrent_runs = max_concurrent_runs
        self.active: dict[str, ActiveRun] = {}
        self.runs_completed = 0
        self._slot_free = asyncio.Event()
        self._stopping = False
        self._lease_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts leasing in the background."""
        self._lease_task = asyncio.create_task(self._lease_loop(), name="lease-loop")

    async def stop(self) -> None:
        """Stops leasing and interrupts the runs in progress (their leases expire and the
        queue hands them out again)."""
        self._stopping = True
        if self._lease_task:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
        tasks = [run.task for run in self.active.values() if run.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _lease_loop(self) -> None:
        backoff = 0.5
        while not self._stopping:
            if len(self.active) >= self.max_concurrent_runs:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            try:
                response = await self._queue.Lease(
                    queue_pb2.LeaseRequest(worker_id=self.worker_id, wait_seconds=LEASE_WAIT_SECONDS),
                    timeout=LEASE_WAIT_SECONDS + 10,
                )
                backoff = 0.5
            except grpc.aio.AioRpcError as exc:
                log.debug("lease failed (%s); retrying in %.1fs", exc.code().name, backoff)
                await asyncio.sleep(backoff)
                # Capped low: a restarted queue should get its workers back within seconds.
                backoff = min(backoff * 2, 2.0)
                continue
            if response.leased:
                self._start_run(response)

    def _start_run(self, lease: queue_pb2.LeaseResponse) -> None:
        work_order = lease.work_order
        executor = RunExecutor(
            work_order,
            self._workspace,
            self._persistence,
            worker_id=self.worker_id,
            subscribers=self.subscribers,
            profiles_dir=self.profiles_dir,
        )
        active = ActiveRun(
            executor=executor,
            lease_id=lease.lease_id,
            lease_seconds=lease.lease_seconds or 30,
            lease=LeaseHolder(lease.lease_token),
        )
        self.active[work_order.id] = active
        # The run's tasks (and the tasks they start) inherit this context, hence its lease.
        context = contextvars.copy_context()
        context.run(current_lease.set, active.lease)
        active.task = asyncio.create_task(self._drive(active), name=f"run-{work_order.run_id}", context=context)
        log.info("leased %s (run %s)", work_order.id, work_order.run_id)

    async def _drive(self, active: ActiveRun) -> None:
        executor = active.executor
        work_order_id = executor.work_order.id
        run_task = asyncio.create_task(executor.execute())
        heartbeat = asyncio.create_task(self._heartbeat(active, run_task))
        try:
            outcome = await run_task
            await self._complete(active.lease_id, outcome.status, outcome.error)
        except asyncio.CancelledError:
            if executor.cancel_requested:
                await self._complete(active.lease_id, common_pb2.WORK_ORDER_STATUS_CANCELED, "Canceled by request")
            elif not run_task.done():
                run_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run_task
        finally:
            heartbeat.cancel()
            self.active.pop(work_order_id, None)
            self.runs_completed += 1
            self._slot_free.set()

    async def _heartbeat(self, active: ActiveRun, run_task: asyncio.Task[object]) -> None:
        interval = heartbeat_interval(active.lease_seconds)
        while not run_task.done():
            await asyncio.sleep(interval)
            try:
                response = await self._queue.Heartbeat(
                    queue_pb2.HeartbeatRequest(lease_id=active.lease_id), timeout=max(interval, 2.0)
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    # The lease is gone (expired, or the work order ended): someone else owns it now.
                    log.warning("lease of %s lost; stopping its run", active.executor.work_order.id)
                    run_task.cancel()
                    return
                continue
            if response.lease_token:
                active.lease.token = response.lease_token
            if response.cancel_requested:
                log.info("%s canceled by request; stopping its run", active.executor.work_order.id)
                active.executor.cancel_requested = True
                run_task.cancel()
                return

    async def _complete(self, lease_id: str, status: common_pb2.WorkOrderStatus.ValueType, error: str) -> None:
        # The queue may be restarting; the outcome must reach it, so retry for a while.
        for attempt in range(COMPLETE_ATTEMPTS):
            try:
                await self._queue.Complete(
                    queue_pb2.CompleteRequest(lease_id=lease_id, status=status, error=error), timeout=10
                )
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    log.warning("complete of lease %s refused: %s", lease_id, exc.details())
                    return
                await asyncio.sleep(min(0.5 * 2**attempt, 5.0))
        log.error("could not complete lease %s: queue unreachable", lease_id)
