"""`python -m agentgate.persistence` as a real OS process: serves, keeps data, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentgate.common.channels import aio_channel
from agentgate.common.events import RUN_STARTED, make_event
from agentgate.v1 import common_pb2, persistence_pb2, persistence_pb2_grpc
from tests.credentials import service_credential
from tests.ports import free_port


async def wait_serving(channel: grpc.aio.Channel, process: asyncio.subprocess.Process) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    async with asyncio.timeout(20):
        while True:
            assert process.returncode is None, "service exited early"
            try:
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service="agentgate.v1.PersistenceService"), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)


async def test_process_serves_and_stops_on_sigterm(home: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentgate.persistence",
        "--address",
        address,
        "--home",
        str(home),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aio_channel(address, credential=service_credential(home)) as channel:
            await wait_serving(channel, process)
            stub = persistence_pb2_grpc.PersistenceServiceStub(channel)
            await stub.CreateRun(persistence_pb2.CreateRunRequest(run=common_pb2.Run(id="r1", work_order_id="w1")))
            reply = await stub.AppendEvents(
                persistence_pb2.AppendEventsRequest(events=[make_event(RUN_STARTED, "w1", "r1")])
            )
            assert list(reply.seqs) == [1]
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 15)
        assert process.returncode == 0, stderr.decode()
        assert b"shutting down" in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert (home / "persistence.db").exists()
    assert json.loads((home / "runs" / "r1" / "run.json").read_text())["work_order_id"] == "w1"
    assert (home / "runs" / "r1" / "events.jsonl").read_text().count("\n") == 1


async def run_to_exit(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentgate.persistence",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 15)
    return process.returncode, stderr.decode()


async def test_bad_configuration_exits_2_naming_the_key(home: Path) -> None:
    code, stderr = await run_to_exit("--subscriber-queue", "0", "--home", str(home))
    assert code == 2 and "--subscriber-queue" in stderr
    env = {**os.environ, "AGENTGATE_PERSISTENCE_ADDR": "not-an-address"}
    code, stderr = await run_to_exit("--home", str(home), env=env)
    assert code == 2 and "AGENTGATE_PERSISTENCE_ADDR" in stderr
