"""A full disk ends the run clearly (docs/troubleshooting.md, "Disk full"): the four real
services in one loop, with persistence's home, or the whole $AGENTGATE_HOME of the suite, on
a real small tmpfs that the agent's output fills.

The run must end FAILED as a SYSTEM_ERROR saying "no space left on device while writing
<file>", the work order FAILED, the agent (which would otherwise run on) stopped, and what
was written before the disk filled still readable.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentgate.v1 import common_pb2

from .inprocess_suite import InProcessSuite

R = common_pb2.RunResult
T = common_pb2.BuildErrorType
#: Persistence alone: its database, its reserve and a little room. The whole suite: the
#: three databases, two reserves, the workspace (a copy of the project and its git data).
DISK_SIZES = {"persistence": "2m", "suite": "4m"}


@pytest.fixture(params=["persistence", "suite"])
def small_disk(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Path]:
    """A small tmpfs, unmounted afterwards. Mounting needs root (CAP_SYS_ADMIN); without
    it the test is skipped, saying so (CI runs as root)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root: run as root (CI does) to test a full disk")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZES[request.param]}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): a full disk is not tested")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
async def suite(home: Path, small_disk: Path, request: pytest.FixtureRequest) -> AsyncIterator[InProcessSuite]:
    if request.node.callspec.params["small_disk"] == "suite":
        running = await InProcessSuite.start(small_disk)
    else:
        running = await InProcessSuite.start(home, homes={"persistence": small_disk})
    yield running
    await running.stop()


def project(root: Path) -> Path:
    root.mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (root / "verify.yaml").write_text('version: "1"\ntests:\n  - {name: unit, kind: test, command: "true"}\n')
    return root


# Quiet work first (so the run, its first events and files are written), then 8 MB of
# output (8000 lines of 1000 bytes, made by a command: the script itself is stored with the
# run) on a disk of 2 or 4 MiB, then a long sleep: an agent the run must stop.
SCRIPT = """default:
  - print: before the disk filled
  - sleep: 1
  - run: yes "$(head -c 1000 /dev/zero | tr '\\0' y)" | head -n 8000
  - sleep: 60
"""


async def test_a_full_disk_fails_the_run_and_its_work_order_and_keeps_what_was_written(
    suite: InProcessSuite, small_disk: Path, home: Path, tmp_path: Path
) -> None:
    script = tmp_path / "fill-the-disk.yaml"
    script.write_text(SCRIPT)
    env = {**os.environ, "AGENTGATE_HOME": str(suite.home)}
    env.update({f"AGENTGATE_{name.upper()}_ADDR": address for name, address in suite.addresses.items()})
    # `agentgate exec` as a user runs it: it follows the run's events to its end.
    cli = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "agentgate"), "exec", "--json",
        "--path", str(project(tmp_path / "project")), "--prompt", "fill the disk",
        "--agent", "scripted", "--agent-option", f"script={script}", "--max-iterations", "2",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    # Well before the agent's 60 s sleep would end: the run stopped it.
    stdout, stderr = await asyncio.wait_for(cli.communicate(), 45)
    assert cli.returncode == 1, (cli.returncode, stdout, stderr)
    out = json.loads(stdout)
    assert (out["status"], out["result"]) == ("FAILED", "FAILED_SYSTEM"), json.dumps(out)
    assert "No space left on device while writing " in out["error"], out

    final = await suite.wait_terminal(out["work_order_id"], timeout=5)
    assert final.status == common_pb2.WORK_ORDER_STATUS_FAILED
    assert "No space left on device while writing " in final.error, final.error
    run = await suite.run(out["run_id"])
    assert (run.state, run.result) == (common_pb2.RUN_STATE_FAILED, R.RUN_RESULT_FAILED_SYSTEM)
    assert run.build_error.type == T.BUILD_ERROR_TYPE_SYSTEM_ERROR
    assert run.build_error.message.startswith("No space left on device while writing ")
    assert run.iteration_count == 1  # no second iteration on a full disk

    events = await suite.events(out["work_order_id"])  # follows: ends only at the terminal event
    types = [e.type for e in events]
    assert "run:started" in types and types[-1] == "run:failed", types[-5:]
    assert "No space left on device" in events[-1].run_ended.error
    assert any(e.agent_output.text == "before the disk filled" for e in events)

    # What was written before the disk filled is intact: whole JSON lines and files.
    folder = small_disk / "runs" / out["run_id"]  # persistence's home in both cases
    parsed = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines() if line]
    assert "run:started" in [e["type"] for e in parsed]
    assert any(e.get("agent_output", {}).get("text") == "before the disk filled" for e in parsed), parsed[:5]
    assert json.loads((folder / "run.json").read_text())["id"] == out["run_id"]

    # The agent is gone (its command line names its script under this test's home).
    await asyncio.sleep(0.5)
    pgrep = await asyncio.create_subprocess_exec(
        "pgrep", "-f", str(suite.home / "agent-files"), stdout=asyncio.subprocess.PIPE
    )
    survivors, _ = await pgrep.communicate()
    assert survivors.strip() == b"", survivors


@pytest.mark.parametrize("small_disk", ["suite"], indirect=True)
async def test_a_workspace_that_fills_the_disk_fails_the_run_with_the_disk_message(
    suite: InProcessSuite, tmp_path: Path
) -> None:
    # The agent's file fits the workspace; git's copy of it for the snapshot does not.
    script = "default:\n  - run: head -c 1500000 /dev/urandom > big.bin\n"
    spec = common_pb2.WorkOrderSpec(
        task_prompt="fill the disk", agent=common_pb2.AgentSpec(name="scripted", options={"script": script})
    )
    spec.source.local_path = str(project(tmp_path / "project"))
    work_order = await suite.submit(spec)
    final = await suite.wait_terminal(work_order.id, timeout=45)
    assert final.status == common_pb2.WORK_ORDER_STATUS_FAILED
    assert final.error.startswith("No space left on device while writing the snapshot: "), final.error
    run = await suite.run(work_order.run_id)
    assert (run.state, run.result) == (common_pb2.RUN_STATE_FAILED, R.RUN_RESULT_FAILED_SYSTEM)
    assert run.build_error.type == T.BUILD_ERROR_TYPE_SYSTEM_ERROR
    assert (await suite.events(work_order.id))[-1].type == "run:failed"
