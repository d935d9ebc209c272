"""SavePatch / GetPatch and attempt-scoped run files (docs/results.md), through a real
persistence server: patches are kept byte for byte, an iteration run again by a later
attempt never overwrites the first attempt's files, and an oversized patch is refused."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from agentgate.common.patches import MAX_PATCH_BYTES
from agentgate.v1 import common_pb2, persistence_pb2
from tests.integration.test_persistence_service import Service, expect_error, new_run, svc  # noqa: F401

pb = persistence_pb2
PATCH = b"diff --git a/x b/x\n\xff\xfe binary-ish bytes kept as they are\n"


def patch(iteration: int, data: bytes, attempt: int = 1) -> common_pb2.RunPatch:
    return common_pb2.RunPatch(run_id="run-1", iteration=iteration, run_attempt=attempt, patch=data, to_tree="t")


async def test_patches_are_stored_attempt_scoped_and_read_back(svc: Service) -> None:  # noqa: F811
    stub, run_dir = svc.stub, svc.home / "runs" / "run-1"
    await stub.CreateRun(pb.CreateRunRequest(run=new_run()))
    saved = await stub.SavePatch(pb.SavePatchRequest(patch=patch(1, PATCH), cumulative=patch(0, PATCH + b"c")))
    assert (saved.file, saved.cumulative_file) == ("patch-1.diff", "patch.diff")
    assert (run_dir / "patch-1.diff").read_bytes() == PATCH
    assert (run_dir / "patch.diff").read_bytes() == PATCH + b"c"

    # Attempt 2 runs iteration 1 again: its files go beside attempt 1's.
    again = await stub.SavePatch(pb.SavePatchRequest(patch=patch(1, b"second", 2), cumulative=patch(0, b"second")))
    assert again.file == "patch-1.attempt-2.diff"
    assert (run_dir / "patch-1.diff").read_bytes() == PATCH
    assert (run_dir / "patch-1.attempt-2.diff").read_bytes() == b"second"
    assert (await stub.GetPatch(pb.GetPatchRequest(run_id="run-1", iteration=1))).patch.patch == b"second"
    cumulative = (await stub.GetPatch(pb.GetPatchRequest(run_id="run-1"))).patch
    assert (cumulative.iteration, cumulative.patch, cumulative.to_tree) == (0, b"second", "t")

    result = common_pb2.AgentResult(run_id="run-1", iteration=1, success=True)
    assert (await stub.SaveAgentResult(pb.SaveAgentResultRequest(result=result))).file == "agent-1.json"
    result.run_attempt = 2
    assert (await stub.SaveAgentResult(pb.SaveAgentResultRequest(result=result))).file == "agent-1.attempt-2.json"
    data = common_pb2.IterationData(run_id="run-1", iteration=1, run_attempt=2)
    assert (await stub.SaveIteration(pb.SaveIterationRequest(iteration=data))).file == "iteration-1.attempt-2.json"
    report = common_pb2.VerificationReport(run_id="run-1", iteration=1, run_attempt=3)
    saved_report = await stub.SaveVerificationReport(pb.SaveVerificationReportRequest(report=report))
    assert saved_report.file == "verification-1.attempt-3.json"
    assert {p.name for p in run_dir.iterdir()} >= {"agent-1.json", "agent-1.attempt-2.json"}
    # The files of a first attempt are still read as before.
    listed = await stub.ListAgentResults(pb.ListAgentResultsRequest(run_id="run-1"))
    assert [r.iteration for r in listed.results] == [1]


async def test_patch_errors(svc: Service) -> None:  # noqa: F811
    stub = svc.stub
    await expect_error(grpc.StatusCode.NOT_FOUND, stub.SavePatch(pb.SavePatchRequest(patch=patch(1, PATCH))))
    await stub.CreateRun(pb.CreateRunRequest(run=new_run()))
    await expect_error(grpc.StatusCode.INVALID_ARGUMENT, stub.SavePatch(pb.SavePatchRequest(patch=patch(0, PATCH))))
    huge = b"+" * (MAX_PATCH_BYTES + 1)
    error = await expect_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, stub.SavePatch(pb.SavePatchRequest(patch=patch(1, huge)))
    )
    assert "over the limit" in (error.details() or "")
    assert not (svc.home / "runs" / "run-1" / "patch-1.diff").exists()
    missing = await expect_error(grpc.StatusCode.NOT_FOUND, stub.GetPatch(pb.GetPatchRequest(run_id="run-1")))
    assert "patch.diff" in (missing.details() or "")
    await expect_error(grpc.StatusCode.NOT_FOUND, stub.GetPatch(pb.GetPatchRequest(run_id="nope")))


@pytest.mark.parametrize("name", ["agent-1.attempt-2.json"])
def test_attempt_scoped_names_are_not_read_as_iterations(tmp_path: Path, name: str) -> None:
    from agentgate.persistence.run_files import _iterations_in

    (tmp_path / name).write_text("{}")
    (tmp_path / "agent-1.json").write_text("{}")
    assert _iterations_in(tmp_path, "agent") == [1]
