"""The Node.js client (`clients/node`, @grpc/grpc-js on the same protos) against the four
service processes: it submits a work order and prints its events until the run ends."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import Suite
from .helpers import fixing_script, make_project

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = ROOT / "clients" / "node"


def run_node(suite: Suite, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node, "node is not on PATH"
    assert (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir(), (
        "the Node client's dependencies are missing: make clients/node/node_modules/.installed"
    )
    return subprocess.run(
        [node, str(NODE_CLIENT / "submit.js"), *args],
        env=suite.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )


def test_node_client_submits_and_prints_every_event(suite: Suite, tmp_path: Path):
    project = make_project(tmp_path / "project")
    script = fixing_script(tmp_path / "fix.yaml")
    result = run_node(
        suite, "--path", str(project), "--prompt", "Fix add() so the tests pass",
        "--agent", "scripted", "--agent-option-file", f"script={script}", "--max-iterations", "3",
    )
    assert result.returncode == 0, (result.stdout, result.stderr, suite.logs())
    lines = result.stdout.strip().splitlines()
    submitted = re.match(r"submitted (wo-\w+) \(run (run-\w+)\) at position \d+$", lines[0])
    assert submitted, lines[0]
    events = [re.match(r"#(\d+) (\S+)", line) for line in lines[1:-1]]
    assert all(events), lines
    seqs = [int(m.group(1)) for m in events]  # type: ignore[union-attr]
    types = [m.group(2) for m in events]  # type: ignore[union-attr]
    assert seqs == list(range(1, len(seqs) + 1))
    assert types[0] == "work_order:queued" and types[-1] == "run:complete"
    assert types.count("iteration:started") == 2
    assert lines[-1] == f"SUCCEEDED {submitted.group(1)}"
    # What Node printed is what the CLI sees.
    _, status = suite.cli_json("status", submitted.group(1))
    assert status["status"] == "SUCCEEDED" and status["iterations"] == 2


def test_node_client_json_output_and_refusal(suite: Suite, tmp_path: Path):
    project = make_project(tmp_path / "project")
    script = fixing_script(tmp_path / "fix.yaml")
    result = run_node(
        suite, "--path", str(project), "--prompt", "Fix add()", "--agent", "scripted",
        "--agent-option-file", f"script={script}", "--json",
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    events = objects[1:-1]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["run_ended"]["result"] == "RUN_RESULT_SUCCEEDED"
    assert objects[-1]["status"] == "SUCCEEDED"

    refused = run_node(suite, "--path", str(project), "--prompt", "", "--agent", "scripted")
    assert refused.returncode == 2
    assert "spec.task_prompt" in refused.stderr
