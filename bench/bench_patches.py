"""Stored patches (docs/results.md): what keeping each iteration's change durably costs per
iteration, next to the snapshot the iteration makes anyway (the floor).

The real workspace and persistence services as their own processes; one workspace made
from a small git project (50 files). Each round changes a few files (one binary), then
times CreateSnapshot (the floor) and the orchestrator's extra step: two ExportPatch calls
in parallel (the iteration's patch, the cumulative one) and one SavePatch.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib

from agentgate.v1 import common_pb2, persistence_pb2, persistence_pb2_grpc, workspace_pb2, workspace_pb2_grpc


def make_repository(root: Path) -> Path:
    root.mkdir()
    for i in range(50):
        (root / f"module_{i}.py").write_text("".join(f"def f{j}():\n    return {j}\n" for j in range(40)))
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@x"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "start"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)
    return root


async def measure(services: benchlib.Services, project: Path, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"snapshot (floor)": [], "export x2 + save": []}
    async with (
        benchlib.aio_insecure_channel(services.addresses["workspace"]) as ws_channel,
        benchlib.aio_insecure_channel(services.addresses["persistence"]) as p_channel,
    ):
        workspace = workspace_pb2_grpc.WorkspaceServiceStub(ws_channel)
        persistence = persistence_pb2_grpc.PersistenceServiceStub(p_channel)
        run_id = "run-patchbench1"
        run = common_pb2.Run(id=run_id, work_order_id="wo-b")
        await persistence.CreateRun(persistence_pb2.CreateRunRequest(run=run))
        source = common_pb2.WorkspaceSource(local_path=str(project))
        prepared = await workspace.PrepareForRun(workspace_pb2.PrepareForRunRequest(run_id=run_id, source=source))
        ws = prepared.workspace
        previous = ws.base_commit
        for n in range(1, rounds + 1):
            root = Path(ws.path)
            (root / f"module_{n % 50}.py").write_text(f"# round {n}\n" * 200)
            (root / "data.bin").write_bytes(os.urandom(16 * 1024))
            (root / f"new_{n}.txt").write_text("x\n" * 100)
            start = time.perf_counter()
            snapshot = await workspace.CreateSnapshot(workspace_pb2.CreateSnapshotRequest(workspace_id=ws.id))
            middle = time.perf_counter()
            step, total = await asyncio.gather(
                workspace.ExportPatch(workspace_pb2.ExportPatchRequest(
                    workspace_id=ws.id, from_snapshot_id=previous, to_snapshot_id=snapshot.snapshot_id)),
                workspace.ExportPatch(workspace_pb2.ExportPatchRequest(
                    workspace_id=ws.id, to_snapshot_id=snapshot.snapshot_id)),
            )
            await persistence.SavePatch(persistence_pb2.SavePatchRequest(
                patch=common_pb2.RunPatch(run_id=run_id, iteration=n, patch=step.patch),
                cumulative=common_pb2.RunPatch(run_id=run_id, patch=total.patch),
            ))
            end = time.perf_counter()
            previous = snapshot.snapshot_id
            times["snapshot (floor)"].append(middle - start)
            times["export x2 + save"].append(end - middle)
    return times


def main() -> int:
    parser = benchlib.arg_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    rounds = 10 if args.quick else 30
    report = benchlib.Report("stored patches: cost per iteration")
    with tempfile.TemporaryDirectory(prefix="agentgate-patchbench-") as tmp, benchlib.Services() as services:
        project = make_repository(Path(tmp) / "project")
        services.start("workspace", "persistence")
        times: dict[str, Any] = asyncio.run(measure(services, project, rounds))
    for step, values in times.items():
        stats = benchlib.summary(values)
        report.row(step=step, n=stats.pop("n"), **{f"{key}_ms": benchlib.ms(value) for key, value in stats.items()})
    report.note(f"{rounds} iterations, each changing 3 files (one 16 KiB binary)")
    report.print()
    report.save(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
