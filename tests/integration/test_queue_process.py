"""`python -m agentgate.queue` as a real process: starts, serves, stops on SIGTERM, and
refuses bad configuration naming the key."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentgate.common.channels import aio_channel
from agentgate.v1 import queue_pb2, queue_pb2_grpc
from tests.credentials import service_credential
from tests.ports import free_port


async def test_queue_process_serves_and_stops_on_sigterm(home: Path) -> None:
    port = free_port()
    env = {**os.environ, "AGENTGATE_MAX_CONCURRENT": "4"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentgate.queue",
        "--address",
        f"127.0.0.1:{port}",
        "--home",
        str(home),
        "--persistence-address",
        f"127.0.0.1:{free_port()}",
        "--max-queue-size",
        "5",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aio_channel(f"127.0.0.1:{port}", credential=service_credential(home)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(
                health_pb2.HealthCheckRequest(service="agentgate.v1.QueueService"), timeout=15, wait_for_ready=True
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stats = await queue_pb2_grpc.QueueServiceStub(channel).GetQueueStats(queue_pb2.GetQueueStatsRequest())
            assert (stats.max_concurrent, stats.max_queue_size, stats.accepting) == (4, 5, True)
        assert (home / "queue.db").exists()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_bad_configuration_fails_at_start_naming_the_key(home: Path) -> None:
    env = {**os.environ, "AGENTGATE_MAX_QUEUE_SIZE": "many"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentgate.queue",
        "--home",
        str(home),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=15)
    assert process.returncode == 2
    assert b"AGENTGATE_MAX_QUEUE_SIZE" in stderr
