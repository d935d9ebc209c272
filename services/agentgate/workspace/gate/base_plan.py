"""The gate's trusted inputs: the plan and the detection inputs of the base commit, and the
paths an agent may not change (docs/verify-yaml.md, "Where the plan comes from").

The agent writes everything in its snapshot, so a plan read from the snapshot would be the
agent's to weaken (`tests: [{command: "true"}]`, `security: {enabled: false}`, an
allowlist entry for its own secret). The base commit is where the work order started: its
`verify.yaml`, and the files plan detection reads, are read from git objects, never from a
file the agent can still edit. The agent changing those files (or CI configuration, or
globs the profile adds) is what `protected_changes` reports.
"""

from __future__ import annotations

import asyncio
import fnmatch
import tempfile
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from agentgate.workspace import git as gitops
from agentgate.workspace.gate.detection import (
    MAX_MANIFEST_BYTES,
    WORKFLOW_DIR,
    DetectedPlan,
    detect_gate_plan,
    detection_inputs,
)
from agentgate.workspace.gate.plan import GATE_PLAN_FILES

#: Paths protected whatever the profile says (it can allow them with
#: `allow_protected_changes`): the plan files, AgentGate's folder, CI configuration.
#: gitignore-like globs: a leading "/" anchors at the root, a trailing "/" takes the folder.
DEFAULT_PROTECTED_PATHS = (
    *(f"/{name}" for name in GATE_PLAN_FILES),
    "/.agentgate/",
    f"/{WORKFLOW_DIR}/",
    "/.gitlab-ci.yml",
    "/.circleci/",
    "/.travis.yml",
    "/azure-pipelines.yml",
    "/bitbucket-pipelines.yml",
    "/Jenkinsfile",
    "/.buildkite/",
)
#: git modes of a regular file (a symlink, 120000, is never followed).
_REGULAR = ("100644", "100755")
_SYMLINK = "120000"


@dataclass(frozen=True)
class _Entry:
    path: str
    oid: str
    size: int


async def _regular_files(
    repo: Path, commit: str, paths: Iterable[str] = (), with_symlinks: bool = False
) -> list[_Entry]:
    """The regular files of `commit` (under `paths`, or all; `with_symlinks`: and its
    symlinks, sized by their target's length as lstat does), from git's tree objects."""
    modes = (*_REGULAR, _SYMLINK) if with_symlinks else _REGULAR
    listing = (await gitops.git("ls-tree", "-r", "-z", "-l", commit, "--", *paths, cwd=repo, git_dir=repo)).stdout
    entries = []
    for record in listing.split("\0"):
        if not record:
            continue
        meta, _, path = record.partition("\t")
        mode, kind, oid, size = meta.split()
        if kind == "blob" and mode in modes:
            entries.append(_Entry(path, oid, int(size)))
    return entries


async def snapshot_file_sizes(repo: Path, commit: str) -> dict[str, int]:
    """Size of every file and symlink of `commit` (what a clean room of it holds before
    any command runs), read from the tree in one git process: no walk of the room."""
    return {entry.path: entry.size for entry in await _regular_files(repo, commit, with_symlinks=True)}


async def _blob(repo: Path, oid: str) -> str:
    return (await gitops.git("cat-file", "blob", oid, cwd=repo, git_dir=repo)).stdout


#: Plans read from base commits: a commit id names its content, so what a base commit's
#: plan is never changes, and every Verify of a run (and the prompt's summary at prepare
#: time) asks for the same one. Kept for the last MEMO_SIZE (repository, commit) pairs.
MEMO_SIZE = 256
_memo: OrderedDict[tuple[str, Path, str], Any] = OrderedDict()


async def _remembered(kind: str, repo: Path, commit: str, read: Callable[[], Awaitable[Any]]) -> Any:
    key = (kind, repo, commit)
    if key in _memo:
        _memo.move_to_end(key)
        return _memo[key]
    value = await read()
    _memo[key] = value
    while len(_memo) > MEMO_SIZE:
        _memo.popitem(last=False)
    return value


async def committed_plan_file(repo: Path, commit: str) -> tuple[str, str] | None:
    """The plan file of `commit` (its path and text), the first of GATE_PLAN_FILES it has."""
    return cast(tuple[str, str] | None, await _remembered("file", repo, commit, lambda: _plan_file(repo, commit)))


async def _plan_file(repo: Path, commit: str) -> tuple[str, str] | None:
    entries = {e.path: e for e in await _regular_files(repo, commit, GATE_PLAN_FILES)}
    for name in GATE_PLAN_FILES:
        if name in entries:
            return name, await _blob(repo, entries[name].oid)
    return None


async def detect_at_commit(repo: Path, commit: str) -> DetectedPlan | None:
    """The plan detected from the files of `commit` (see plan_detection).

    Only the files detection reads are written to a scratch folder, from git objects; the
    ones whose presence alone counts (test files) are written empty.
    """
    return cast(DetectedPlan | None, await _remembered("detected", repo, commit, lambda: _detect_at(repo, commit)))


async def _detect_at(repo: Path, commit: str) -> DetectedPlan | None:
    wanted = []
    for entry in await _regular_files(repo, commit):
        use = detection_inputs(entry.path)
        if use is not None and entry.size <= MAX_MANIFEST_BYTES:
            wanted.append((entry, use == "content"))
    contents = {entry.path: (await _blob(repo, entry.oid) if read else "") for entry, read in wanted}
    with tempfile.TemporaryDirectory(prefix="agentgate-detect-") as scratch:
        return await asyncio.to_thread(_detect_in, Path(scratch), contents)


def _detect_in(scratch: Path, contents: dict[str, str]) -> DetectedPlan | None:
    for path, text in contents.items():
        target = scratch / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return detect_gate_plan(scratch)


def path_matches(path: str, pattern: str) -> bool:
    """gitignore-like: a leading "/" anchors the glob at the root (else a glob without "/"
    matches a name at any depth); a trailing "/" matches the folder and all below it."""
    anchored, folder = pattern.startswith("/"), pattern.endswith("/")
    body = pattern.strip("/")
    if not body:
        return False
    parts = path.split("/")
    # A folder glob is matched against every folder above the file; a file glob, the file.
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts))] if folder else [path]
    for candidate in candidates:
        if anchored or "/" in body:
            if fnmatch.fnmatchcase(candidate, body):
                return True
        elif fnmatch.fnmatchcase(candidate.rsplit("/", 1)[-1], body):
            return True
    return False


def protected_changes(changed: Iterable[str], extra: Iterable[str], allowed: Iterable[str]) -> list[tuple[str, str]]:
    """The changed paths that are protected (DEFAULT_PROTECTED_PATHS and `extra`) and not
    `allowed`, each with the glob that protects it."""
    protected = [*DEFAULT_PROTECTED_PATHS, *extra]
    allowed = list(allowed)
    found = []
    for path in changed:
        guard = next((p for p in protected if path_matches(path, p)), None)
        if guard is not None and not any(path_matches(path, a) for a in allowed):
            found.append((path, guard))
    return found
