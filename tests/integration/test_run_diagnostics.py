"""Never lose diagnostic information (docs/troubleshooting.md), through the four real services in one loop:
whole agent output in agent-N.json, each check's output in verification-N.json, iteration
files naming both, the run's error pointing at them; output cut at 1 MiB on a character
boundary; and a run whose folder becomes unwritable still ending, with warnings naming what
was not saved."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import sys
from pathlib import Path

import grpc
import pytest

from agentgate.persistence.output_limits import DEFAULT_MAX_OUTPUT_BYTES
from agentgate.v1 import common_pb2, persistence_pb2

from .inprocess_suite import InProcessSuite

R = common_pb2.RunResult
T = common_pb2.BuildErrorType
PY = shlex.quote(sys.executable)

# 3072 lines of 100 bytes (300 KiB), some with multi-byte characters: the agent's stdout.
BIG_STDOUT = "".join(f"line {n:05d} {'héllo wörld ' * 6}abcd\n" for n in range(3072))
STDERR = "warning: first\nwarning: second\nwarning: third\n"
FAILING_TESTS = """from calc import add


def test_ok():
    assert add(0, 0) == 0


def test_one():
    assert add(1, 1) == 2


def test_two():
    assert add(2, 2) == 4


def test_three():
    assert add(3, 3) == 6
"""


@pytest.fixture
async def suite(home: Path):
    running = await InProcessSuite.start(home)
    yield running
    await running.stop()


def project(root: Path, verify: str) -> Path:
    root.mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (root / "test_calc.py").write_text(FAILING_TESTS)
    (root / "verify.yaml").write_text(verify)
    return root


def agent_script(path: Path, body: str) -> Path:
    """A Python agent outside the workspace, in a folder of its own that the work order names
    read-only for the sandbox (as a user's agent script outside the toolchain folders would
    be); it also leaves a note so the iteration has a change."""
    path = path.parent / "agent-bin" / path.name
    path.parent.mkdir(exist_ok=True)
    path.write_text("import sys\nopen('NOTES.md', 'a').write('looked\\n')\n" + body)
    return path


def command_spec(root: Path, script: Path, max_iterations: int = 1) -> common_pb2.WorkOrderSpec:
    spec = common_pb2.WorkOrderSpec(
        task_prompt="Fix add()",
        agent=common_pb2.AgentSpec(name="command", options={"command": f"{PY} {shlex.quote(str(script))}"}),
    )
    spec.source.local_path = str(root)
    spec.harness.loop_strategy.max_iterations = max_iterations
    spec.harness.sandbox.read_only_paths.append(str(script.parent))
    return spec


def run_file(home: Path, run_id: str, name: str) -> dict:
    # Strict decoding: a file that is not valid UTF-8 fails here.
    return json.loads((home / "runs" / run_id / name).read_bytes().decode("utf-8"))


async def test_whole_output_each_check_and_an_error_naming_both_files(suite: InProcessSuite, tmp_path: Path) -> None:
    verify = (
        'version: "1"\n'
        "contracts:\n  required_files: [calc.py]\n"
        "tests:\n"
        f"  - {{name: style, kind: lint, command: \"{sys.executable} -c 'print(42 * 2)'\"}}\n"
        f"  - {{name: unit, kind: test, command: \"{sys.executable} -m pytest -q -p no:cacheprovider test_calc.py\"}}\n"
    )
    root = project(tmp_path / "project", verify)
    script = agent_script(
        tmp_path / "agent.py",
        f"sys.stdout.buffer.write({BIG_STDOUT.encode()!r})\nsys.stderr.write({STDERR!r})\n",
    )
    work_order = await suite.submit(command_spec(root, script))
    final = await suite.wait_terminal(work_order.id, timeout=90)
    assert final.status == common_pb2.WORK_ORDER_STATUS_FAILED
    run_id = work_order.run_id

    agent = run_file(suite.home, run_id, "agent-1.json")
    assert agent["stdout"] == BIG_STDOUT and agent["stderr"] == STDERR
    assert agent["stdout_bytes"] == str(len(BIG_STDOUT.encode())) == "307200"
    assert agent["stderr_bytes"] == str(len(STDERR))
    assert agent["stdout_truncated"] is False and agent["exit_code"] == 0

    report = run_file(suite.home, run_id, "verification-1.json")
    checks = {check["name"]: check for level in report["levels"] for check in level["checks"]}
    assert checks["required_file:calc.py"]["passed"] is True and "present" in checks["required_file:calc.py"]["output"]
    assert checks["style"]["passed"] is True and checks["style"]["output"].strip() == "84"
    assert checks["unit"]["passed"] is False and "3 failed, 1 passed" in checks["unit"]["output"]
    assert report["levels_run"] and report["settings"] is not None

    iteration = run_file(suite.home, run_id, "iteration-1.json")
    assert iteration["agent_result_file"] == "agent-1.json"
    assert iteration["verification_file"] == "verification-1.json"
    assert iteration["error_type"] == "ITERATION_ERROR_TYPE_VERIFICATION_FAILED"
    assert iteration["error_message"] == "Test execution failed (3 failed)"
    assert iteration["error_details"]["count"] == "3 failed"
    assert iteration["error_details"]["build_error_type"] == "test_failed"

    run = await suite.run(run_id)
    assert run.result == R.RUN_RESULT_FAILED_VERIFICATION
    assert run.error == "Test execution failed (3 failed). Details: agent-1.json, verification-1.json"
    assert run.build_error.type == T.BUILD_ERROR_TYPE_TEST_FAILED
    assert (run.build_error.agent_result_file, run.build_error.verification_file) == (
        "agent-1.json",
        "verification-1.json",
    )
    assert run_file(suite.home, run_id, "run.json")["error"] == run.error
    assert run.persistence_warnings == 0
    # The read API gives the same as the files.
    stored = await suite.persistence.GetAgentResult(persistence_pb2.GetAgentResultRequest(run_id=run_id, iteration=1))
    assert stored.result.stdout == BIG_STDOUT


async def test_three_mebibytes_of_stdout_are_cut_inside_a_character(suite: InProcessSuite, tmp_path: Path) -> None:
    root = project(tmp_path / "project", 'version: "1"\ncontracts:\n  required_files: [calc.py]\n')
    # 3-byte characters: the 1 MiB cut (1048576 = 3 * 349525 + 1) falls inside one.
    script = agent_script(tmp_path / "agent.py", "sys.stdout.write('€' * 1048576)\nsys.stdout.flush()\n")
    work_order = await suite.submit(command_spec(root, script))
    final = await suite.wait_terminal(work_order.id, timeout=90)
    assert final.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED
    agent = run_file(suite.home, work_order.run_id, "agent-1.json")
    marker = f"[TRUNCATED - exceeded {DEFAULT_MAX_OUTPUT_BYTES} bytes]"
    assert agent["stdout"].endswith(marker)
    assert agent["stdout"] == "€" * 349525 + "\n" + marker
    assert "\ufffd" not in agent["stdout"]
    assert agent["stdout_bytes"] == str(3 * 1048576)
    assert agent["stdout_truncated"] is True and agent["stderr_truncated"] is False


async def test_run_folder_unwritable_mid_run_still_ends_and_warnings_name_the_files(
    suite: InProcessSuite, tmp_path: Path
) -> None:
    root = project(tmp_path / "project", 'version: "1"\ncontracts:\n  required_files: [calc.py]\n')
    runs = suite.home / "runs"
    # While the agent runs, the run's folder is moved away and a plain file left in its
    # place (by the test: the sandbox keeps the agent itself out of $AGENTGATE_HOME): every
    # later write there fails, for root as well (permissions would not stop root).
    script = agent_script(
        tmp_path / "agent.py",
        "import os, time\n"
        "print('ready', flush=True)\n"
        "gate = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'gate')\n"
        "while not os.path.exists(gate):\n    time.sleep(0.05)\n"
        "print('done')\n",
    )
    work_order = await suite.submit(command_spec(root, script))
    run_id = work_order.run_id

    async def agent_ready() -> None:
        request = persistence_pb2.StreamEventsRequest(work_order_id=work_order.id)
        while True:
            # NOT_FOUND until the run's first event is stored.
            with contextlib.suppress(grpc.aio.AioRpcError):
                texts = [r.event.agent_output.text.strip() async for r in suite.persistence.StreamEvents(request)]
                if "ready" in texts:
                    return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(agent_ready(), 60)
    (runs / run_id).rename(runs / f"moved-{run_id}")
    (runs / run_id).write_text("not a folder")
    (script.parent / "gate").touch()
    final = await asyncio.wait_for(suite.wait_terminal(work_order.id), 60)
    assert final.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED
    run = await suite.run(run_id)
    assert run.state == common_pb2.RUN_STATE_SUCCEEDED
    assert run.persistence_warnings >= 3
    assert (runs / run_id).is_file()
    replay = suite.persistence.StreamEvents(persistence_pb2.StreamEventsRequest(work_order_id=work_order.id))
    warnings = [r.event.persistence_warning.message async for r in replay if r.event.type == "persistence:warning"]
    for name in ("agent-1.json", "verification-1.json", "iteration-1.json", "run.json", "events.jsonl"):
        assert any(name in message for message in warnings), (name, warnings)
    assert any(message.startswith("could not save agent-1.json: agent-1.json not written (") for message in warnings)
    # Nothing was lost: the index holds every record.
    agent = await suite.persistence.GetAgentResult(persistence_pb2.GetAgentResultRequest(run_id=run_id, iteration=1))
    assert agent.result.stdout == "ready\ndone\n"
    await suite.persistence.GetIteration(persistence_pb2.GetIterationRequest(run_id=run_id, iteration=1))
