"""The plain logic behind resume and `agentgate diff/apply` (docs/results.md): which
iterations a new attempt continues from, attempt-scoped file names, and the file names
`apply` reads out of git's complaints."""

from __future__ import annotations

from agentgate.client.results import _failed_files, colorize
from agentgate.orchestrator.resume import completed_prefix
from agentgate.persistence.run_files import agent_result_file, attempt_scoped, patch_file
from agentgate.v1 import common_pb2


def record(n: int, go_on: bool = True) -> common_pb2.IterationData:
    return common_pb2.IterationData(
        iteration=n, snapshot_id=f"s{n}", decision=common_pb2.LoopDecision(should_continue=go_on)
    )


def patch(n: int, to: str = "") -> common_pb2.RunPatch:
    return common_pb2.RunPatch(iteration=n, to_commit=to or f"s{n}")


def test_completed_prefix_stops_at_a_gap_a_missing_patch_or_a_stop() -> None:
    patches = {1: patch(1), 2: patch(2), 3: patch(3)}
    assert [d.iteration for d in completed_prefix([record(1), record(2), record(3)], patches)] == [1, 2, 3]
    assert [d.iteration for d in completed_prefix([record(1), record(3)], patches)] == [1]
    assert [d.iteration for d in completed_prefix([record(1), record(2)], {1: patch(1)})] == [1]
    # A patch of another attempt (another snapshot) does not belong to this record.
    assert completed_prefix([record(1)], {1: patch(1, "other")}) == []
    # A stop is run again: what follows it (delivery) is not replayed.
    assert [d.iteration for d in completed_prefix([record(1), record(2, go_on=False)], patches)] == [1]
    assert completed_prefix([], patches) == []


def test_attempt_scoped_names_keep_the_first_attempts_names() -> None:
    assert agent_result_file(2) == agent_result_file(2, 0) == agent_result_file(2, 1) == "agent-2.json"
    assert agent_result_file(2, 2) == "agent-2.attempt-2.json"
    assert patch_file(3, 4) == "patch-3.attempt-4.diff"
    assert attempt_scoped("iteration-1", ".json", 1) == "iteration-1.json"


def test_failed_files_from_git_messages() -> None:
    stderr = (
        b"error: patch failed: calc.py:1\n"
        b"error: calc.py: patch does not apply\n"
        b"error: NOTES.md: already exists in working directory\n"
        b"error: Your local changes to the following files would be overwritten by checkout:\n"
        b"\tsrc/a b.py\n"
        b"Please commit your changes or stash them before you switch branches.\n"
    )
    assert set(_failed_files(stderr)) >= {"calc.py", "NOTES.md", "src/a b.py"}


def test_colorize_only_marks_lines() -> None:
    patch_text = b"diff --git a/x b/x\n@@ -1 +1 @@\n-old\n+new\n context\n"
    colored = colorize(patch_text)
    assert b"\x1b[32m+new\x1b[0m\n" in colored and b"\x1b[31m-old\x1b[0m\n" in colored
    assert colored.replace(b"\x1b[1m", b"").replace(b"\x1b[36m", b"").replace(b"\x1b[32m", b"").replace(
        b"\x1b[31m", b""
    ).replace(b"\x1b[0m", b"") == patch_text
