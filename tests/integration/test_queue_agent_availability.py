"""Submitting to an agent driver that cannot run on this machine is refused with
FAILED_PRECONDITION saying what is missing; nothing is stored."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from agentgate.v1 import common_pb2, queue_pb2

from ..agent_standin import install_standin
from .test_queue_service import Cluster, make_spec
from .test_queue_service import cluster as cluster  # noqa: F401 - fixture


def claude_spec(tmp_path: Path) -> common_pb2.WorkOrderSpec:
    spec = make_spec(tmp_path)
    spec.agent.CopyFrom(common_pb2.AgentSpec(name="claude-code", options={"max_turns": "5"}))
    return spec


async def test_unavailable_driver_is_refused_until_its_cli_is_installed(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await cluster.start_persistence()
    queue = await cluster.start_queue(agent_check=None)  # the real driver registry
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin:/bin")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await queue.Submit(queue_pb2.SubmitRequest(spec=claude_spec(tmp_path)))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == (
        "spec.agent.name: agent driver 'claude-code' is not available here: the claude executable is not on PATH"
    )
    stats = await queue.GetQueueStats(queue_pb2.GetQueueStatsRequest())
    assert stats.waiting == 0

    # Invalid options are still INVALID_ARGUMENT, checked first.
    bad = claude_spec(tmp_path)
    bad.agent.options["max_turns"] = "0"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await queue.Submit(queue_pb2.SubmitRequest(spec=bad))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    install_standin(bin_dir, "claude")
    accepted = await queue.Submit(queue_pb2.SubmitRequest(spec=claude_spec(tmp_path)))
    assert accepted.work_order.status == common_pb2.WORK_ORDER_STATUS_PENDING


async def test_availability_check_can_be_turned_off(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For a queue on another machine than its workers, whose PATH says nothing."""
    await cluster.start_persistence()
    queue = await cluster.start_queue(agent_check=None)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("AGENTGATE_CHECK_AGENT_AVAILABILITY", "0")
    accepted = await queue.Submit(queue_pb2.SubmitRequest(spec=claude_spec(tmp_path)))
    assert accepted.work_order.status == common_pb2.WORK_ORDER_STATUS_PENDING
