"""Bounded work on untrusted input (docs/security.md): a YAML alias bomb, a JSON Schema that
takes exponential time, and a regex that backtracks end promptly, with an error naming the
check, through the real workspace service (and, for the agent-written bomb, a real run).
Each shows first that the same input keeps the unbounded code busy."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from agentgate.v1 import common_pb2
from agentgate.workspace.gate.plan import MAX_REGEX_CHARS
from tests.integration.inprocess_suite import InProcessSuite
from tests.integration.workspace_client import WorkspaceClient, failed_checks, git, workspace_service, write_files

PY = shlex.quote(sys.executable)
#: A regex that backtracks exponentially on "aaaa...!" and the value that makes it.
EVIL_REGEX = "^(a+)+$"
EVIL_VALUE = "a" * 40 + "!"


def bomb(depth: int, indent: str = "") -> str:
    """A JSON Schema in YAML whose aliases nest `depth` levels of 9: 9^depth schemas to
    validate, from a dozen lines."""
    lines = [f"{indent}l0: &l0 {{type: string}}"]
    for i in range(1, depth + 1):
        lines.append(f"{indent}l{i}: &l{i} {{anyOf: [{', '.join([f'*l{i - 1}'] * 9)}]}}")
    lines.append(f"{indent}type: object")
    lines.append(f"{indent}properties: {{v: *l{depth}}}")
    return "\n".join(lines) + "\n"


def still_busy_after(seconds: float, code: str) -> bool:
    """Whether `code` (Python) is still running after `seconds` in a child process: the
    control that shows an input keeps the unbounded code busy."""

    async def main() -> bool:
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
        try:
            await asyncio.wait_for(process.wait(), seconds)
            return False
        except TimeoutError:
            process.kill()
            await process.wait()
            return True

    return asyncio.run(main())


@pytest.fixture
async def client(home: Path) -> AsyncIterator[WorkspaceClient]:
    async with workspace_service(home) as running:
        yield running


def repo(root: Path, files: dict[str, str]) -> Path:
    write_files(root, files)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    return root


def test_the_unbounded_checks_would_run_on() -> None:
    # The controls of the tests below, run directly: schema_problems is what the gate ran
    # in a thread, re is what it used for a plan's regex.
    schema_bomb = (
        "import pathlib, tempfile\n"
        "from agentgate.workspace.gate.static_checks import schema_problems\n"
        "from agentgate.workspace.gate.plan import RequiredSchema, SchemaRule\n"
        "room = pathlib.Path(tempfile.mkdtemp())\n"
        f"(room / 'schema.yaml').write_text({bomb(7)!r})\n"
        "(room / 'data.json').write_text('{\"v\": 5}')\n"
        "schema_problems(room, RequiredSchema('data.json', 'json', [SchemaRule('json_schema', value='schema.yaml')]))\n"
    )
    assert still_busy_after(3, schema_bomb)
    assert still_busy_after(3, f"import re; re.search({EVIL_REGEX!r}, {EVIL_VALUE!r})")


async def test_inline_alias_bomb_is_refused_at_once(client: WorkspaceClient, tmp_path: Path) -> None:
    workspace = await client.prepare(repo(tmp_path / "p", {"data.yaml": "v: 5\n"}))
    plan = (
        "contracts:\n  required_schemas:\n    - file: data.yaml\n      schema: yaml\n      rules:\n"
        "        - json_schema:\n" + bomb(7, indent=" " * 12)
    )
    started = time.monotonic()
    report = await client.verify(workspace, gate_plan_yaml=plan)
    assert time.monotonic() - started < 5
    [check] = failed_checks(report)
    assert check.name == "gate-plan" and "expands to more than 100000 values" in check.output


async def test_long_regex_is_refused(client: WorkspaceClient, tmp_path: Path) -> None:
    workspace = await client.prepare(repo(tmp_path / "p", {"data.json": "{}"}))
    pattern = "a" * (MAX_REGEX_CHARS + 1)
    plan = (
        "contracts: {required_schemas: [{file: data.json, schema: json, rules: "
        f"[{{matches_regex: {{field: v, pattern: {pattern}}}}}]}}]}}"
    )
    [check] = failed_checks(await client.verify(workspace, gate_plan_yaml=plan))
    assert check.name == "gate-plan" and f"longer than {MAX_REGEX_CHARS} characters" in check.output


async def test_backtracking_regexes_end_at_max_runtime(client: WorkspaceClient, tmp_path: Path) -> None:
    files = {"data.json": json.dumps({"v": EVIL_VALUE}), "say.py": f"print({EVIL_VALUE!r})\n"}
    workspace = await client.prepare(repo(tmp_path / "p", files))
    plan = (
        "policy: {max_runtime: 2}\n"
        "contracts: {required_schemas: [{file: data.json, schema: json, rules: "
        f"[{{matches_regex: {{field: v, pattern: '{EVIL_REGEX}'}}}}]}}]}}\n"
    )
    started = time.monotonic()
    [check] = failed_checks(await client.verify(workspace, gate_plan_yaml=plan))
    assert time.monotonic() - started < 10
    assert check.name == "schema:data.json" and "schema:data.json: stopped after 2.0s" in check.output

    plan = (
        "policy: {max_runtime: 3}\n"
        f"blackbox: [{{name: say, command: '{sys.executable} say.py', "
        f"assertions: [{{type: matches_regex, pattern: '{EVIL_REGEX}'}}]}}]\n"
    )
    started = time.monotonic()
    [check] = failed_checks(await client.verify(workspace, gate_plan_yaml=plan))
    assert time.monotonic() - started < 10
    assert check.name == "say" and "say: assertions: stopped after" in check.output


async def test_cancelled_verify_kills_the_schema_check(client: WorkspaceClient, tmp_path: Path) -> None:
    workspace = await client.prepare(repo(tmp_path / "p", {"data.json": json.dumps({"v": EVIL_VALUE})}))
    plan = (
        "contracts: {required_schemas: [{file: data.json, schema: json, rules: "
        f"[{{matches_regex: {{field: v, pattern: '{EVIL_REGEX}'}}}}]}}]}}\n"
    )
    call = asyncio.ensure_future(client.verify(workspace, gate_plan_yaml=plan))
    # No max_runtime: only the cancel can stop it before STATIC_CHECK_TIMEOUT_SECONDS.
    await asyncio.sleep(1.5)
    assert _static_check_children(), "the schema check should be running in its child"
    call.cancel()
    with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
        await call
    for _ in range(50):  # the kill is asynchronous: up to 5 s
        if not _static_check_children():
            break
        await asyncio.sleep(0.1)
    assert not _static_check_children()


def _static_check_children() -> list[int]:
    """Processes of this test's (in-process) workspace service running a static check."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"agentgate.workspace.gate.static_checks" in cmdline:
            found.append(int(entry.name))
    return found


async def test_agent_written_schema_bomb_ends_at_max_runtime(home: Path, tmp_path: Path) -> None:
    # The plan is trusted (the base commit's), but the schema file it names is in the
    # snapshot, and the agent rewrites it into a bomb.
    plan = (
        "policy: {max_runtime: 3}\n"
        "contracts: {required_schemas: [{file: data.json, schema: json, rules: [{json_schema: schema.yaml}]}]}\n"
    )
    root = tmp_path / "project"
    write_files(root, {"verify.yaml": plan, "data.json": '{"v": "x"}', "schema.yaml": "type: object\n"})
    script = tmp_path / "agent-bin" / "agent.py"  # named read-only for the sandbox below
    script.parent.mkdir()
    script.write_text(f"open('schema.yaml', 'w').write({bomb(7)!r})\nopen('data.json', 'w').write('{{\"v\": 5}}')\n")
    spec = common_pb2.WorkOrderSpec(
        task_prompt="Tighten the schema",
        agent=common_pb2.AgentSpec(name="command", options={"command": f"{PY} {shlex.quote(str(script))}"}),
    )
    spec.source.local_path = str(root)
    spec.harness.loop_strategy.max_iterations = 1
    spec.harness.sandbox.read_only_paths.append(str(script.parent))
    suite = await InProcessSuite.start(home)
    try:
        work_order = await suite.submit(spec)
        started = time.monotonic()
        final = await suite.wait_terminal(work_order.id, timeout=60)
        assert time.monotonic() - started < 30
        assert final.status == common_pb2.WORK_ORDER_STATUS_FAILED
        report = suite.run_file(work_order.run_id, "verification-1.json")
    finally:
        await suite.stop()
    checks = {c["name"]: c.get("output", "") for level in report["levels"] for c in level.get("checks", [])}
    assert "schema:data.json: stopped after" in checks["schema:data.json"]


async def test_schema_child_does_not_import_the_agents_code(client: WorkspaceClient, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hijack = f"open({str(marker)!r}, 'w').write('ran')\n"
    files = {
        "data.json": "{}",
        "agentgate/__init__.py": "",
        "agentgate/workspace/__init__.py": "",
        "agentgate/workspace/gate/static_checks.py": hijack,
    }
    root = repo(tmp_path / "p", files)
    # The control: started the obvious way, in the room, Python imports the room's module.
    control = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentgate.workspace.gate.static_checks", cwd=root, stdin=asyncio.subprocess.DEVNULL
    )
    await control.wait()
    assert marker.read_text() == "ran"
    marker.unlink()

    workspace = await client.prepare(root)
    plan = "contracts: {required_schemas: [{file: data.json, schema: json, rules: [{has_field: a}]}]}"
    [check] = failed_checks(await client.verify(workspace, gate_plan_yaml=plan))
    assert check.name == "schema:data.json" and "field 'a' is missing" in check.output
    assert not marker.exists()
