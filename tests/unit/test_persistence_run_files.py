"""The files of a run: atomic JSON writes, events.jsonl, and failures that are counted."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from agentgate.common.events import RUN_STARTED, make_event
from agentgate.persistence import run_files
from agentgate.persistence.run_files import RunFiles, atomic_write_text
from agentgate.v1 import common_pb2


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "run.json"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["run.json"]


def test_atomic_write_failure_keeps_old_file_and_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "run.json"
    atomic_write_text(target, "old")

    def disk_full(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_files.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_concurrent_writers_never_leave_a_torn_file(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    payloads = [json.dumps({"writer": i, "pad": "x" * 50_000}) for i in range(8)]
    threads = [threading.Thread(target=atomic_write_text, args=(target, p)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_text() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


async def test_writes_json_files_of_a_run(tmp_path: Path) -> None:
    files = RunFiles(tmp_path)
    run = common_pb2.Run(id="run-1", work_order_id="wo-1", state=common_pb2.RUN_STATE_BUILDING)
    assert await files.write_run(run)
    result = common_pb2.AgentResult(run_id="run-1", iteration=2, stdout="héllo", exit_code=3)
    assert await files.write_agent_result(result)
    report = common_pb2.VerificationReport(run_id="run-1", iteration=2, passed=True, levels_run=["L0"])
    assert await files.write_verification_report(report)
    iteration = common_pb2.IterationData(run_id="run-1", iteration=2, agent_result_file="agent-2.json")
    assert await files.write_iteration(iteration)

    folder = tmp_path / "runs" / "run-1"
    assert sorted(p.name for p in folder.iterdir()) == [
        "agent-2.json",
        "iteration-2.json",
        "run.json",
        "verification-2.json",
    ]
    run_json = (folder / "run.json").read_text(encoding="utf-8")
    assert run_json.startswith("{\n  ")  # indented for humans
    assert json.loads(run_json)["state"] == "RUN_STATE_BUILDING"
    agent = json.loads((folder / "agent-2.json").read_text(encoding="utf-8"))
    assert agent["stdout"] == "héllo" and agent["exit_code"] == 3 and agent["iteration"] == 2
    assert json.loads((folder / "verification-2.json").read_text())["levels_run"] == ["L0"]
    assert json.loads((folder / "iteration-2.json").read_text())["agent_result_file"] == "agent-2.json"
    assert files.write_failures == 0


async def test_events_are_appended_one_compact_line_each(tmp_path: Path) -> None:
    files = RunFiles(tmp_path)
    first = [make_event(RUN_STARTED, "wo-1", "run-1"), make_event("iteration:started", "wo-1", "run-1", 1)]
    first[0].seq, first[1].seq = 1, 2
    second = make_event("run:complete", "wo-1", "run-1")
    second.seq = 3
    assert await files.append_events(first)
    assert await files.append_events([second])
    lines = (tmp_path / "runs" / "run-1" / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == ["1", "2", "3"]  # uint64 as JSON string
    assert [json.loads(line)["type"] for line in lines] == [RUN_STARTED, "iteration:started", "run:complete"]


async def test_failed_write_is_counted_not_raised(tmp_path: Path) -> None:
    files = RunFiles(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "run-1").write_text("a file where the run folder should be")
    assert not await files.write_run(common_pb2.Run(id="run-1", work_order_id="wo"))
    assert not await files.append_events([make_event(RUN_STARTED, "wo", "run-1")])
    assert files.write_failures == 2
    assert await files.write_run(common_pb2.Run(id="run-2", work_order_id="wo"))
    assert files.write_failures == 2


async def test_unsafe_run_id_never_escapes_the_home(tmp_path: Path) -> None:
    files = RunFiles(tmp_path / "home")
    with pytest.raises(ValueError):
        files.run_dir("../outside")
    assert not await files.write_run(common_pb2.Run(id="../outside", work_order_id="wo"))
    assert files.write_failures == 1
    assert not (tmp_path / "outside").exists()


def test_an_append_cut_short_by_a_full_disk_is_taken_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    target = tmp_path / "events.jsonl"
    run_files.append_lines(target, ['{"seq": 1}'])
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        if len(data) > 4:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_files.os, "write", half_then_full)
    with pytest.raises(OSError):
        run_files.append_lines(target, ['{"seq": 2, "text": "a longer line"}'])
    assert target.read_text() == '{"seq": 1}\n'  # whole lines only


async def test_a_full_disk_names_the_file_the_same_way_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = RunFiles(tmp_path)

    def full(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_files, "atomic_write_text", full)
    outcome = await files.write_run(common_pb2.Run(id="run-1"))
    assert not outcome and outcome.disk_full
    assert outcome.error == "no space left on device while writing runs/run-1/run.json"


async def test_the_disk_reserve_is_released_once_and_put_back_only_with_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentgate.common.disk_reserve import DiskReserve

    reserve = DiskReserve(tmp_path / "persistence.reserve", size=4096)
    assert await reserve.ensure() and reserve.path.stat().st_size == 4096
    assert await reserve.allow_write()
    assert await reserve.release() and not reserve.path.exists()
    assert not await reserve.release()  # nothing left to free
    monkeypatch.setattr(reserve, "_has_room", lambda: False)
    assert not await reserve.allow_write()  # spent, and no room to put it back
    monkeypatch.setattr(reserve, "_has_room", lambda: True)
    assert await reserve.allow_write() and reserve.path.exists()
