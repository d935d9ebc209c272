"""The workspace reports how many bytes an agent wrote to each stream, before any cut, so
persistence can record it (docs/troubleshooting.md)."""

from __future__ import annotations

import sys
from pathlib import Path

from agentgate.workspace.drivers.api import AgentInvocation, result_from_process
from agentgate.workspace.processes import run_process


async def test_byte_counts_and_cut_flags_reach_the_agent_result(tmp_path: Path) -> None:
    code = "import sys; sys.stdout.write('é' * 3000); sys.stderr.write('warn\\n')"
    process = await run_process([sys.executable, "-c", code], cwd=tmp_path, capture_limit=1024)
    assert (process.stdout_bytes, process.stderr_bytes) == (6000, 5)
    assert process.stdout_truncated and not process.stderr_truncated
    assert process.stdout.endswith("[TRUNCATED - exceeded 1024 bytes]")
    invocation = AgentInvocation(
        run_id="run-1", workspace_id="ws-1", workspace=tmp_path, iteration=2, attempt=1, prompt="p",
        options={}, timeout_seconds=10, files_dir=tmp_path, prompt_dir=tmp_path,
    )
    result = result_from_process(invocation, "command", process)
    assert (result.stdout_bytes, result.stderr_bytes) == (6000, 5)
    assert result.stdout_truncated and not result.stderr_truncated
    assert result.stderr == "warn\n"
