"""L3 sanity checks: the snapshot's files are of a sane size and free of debug leftovers.

They look at the files of the snapshot as they were before any setup command ran (build
output made in the clean room is not the agent's), and — for debugger statements and
conflict markers — at the lines the run added.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

from agentgate.v1 import common_pb2
from agentgate.workspace.gate.plan import Sanity

CHECK_KIND = "sanity"
MAX_LISTED = 20

#: File names that are leftovers of editors, debuggers, crashes and merges.
DEBUG_FILE_PATTERNS = (
    "*.orig",
    "*.rej",
    "*.swp",
    "*.swo",
    "*~",
    ".DS_Store",
    "core",
    "core.[0-9]*",
    "*.pyc",
    "*.prof",
    "*.hprof",
    "heapdump*",
    "npm-debug.log*",
    "yarn-error.log",
    "debug.log",
)
#: Folders that only hold generated or cached files.
DEBUG_DIRS = ("__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache")

_PY = re.compile(r"^\s*(?:breakpoint\(\)|(?:import (?:i?pdb|pudb)\b)|.*\b(?:i?pdb|pudb)\.set_trace\(\))")
_JS = re.compile(r"^\s*debugger\s*;?\s*(?://.*)?$")
_RB = re.compile(r"^\s*(?:binding\.pry|byebug)\b")
_GO = re.compile(r"\bruntime\.Breakpoint\(\)")
DEBUGGER_STATEMENTS: tuple[tuple[tuple[str, ...], re.Pattern[str]], ...] = (
    ((".py",), _PY),
    ((".js", ".jsx", ".ts", ".tsx", ".mjs", ".cjs", ".vue", ".svelte"), _JS),
    ((".rb",), _RB),
    ((".go",), _GO),
)
CONFLICT_MARKER = re.compile(r"^(?:<{7}|>{7})(?: |$)")


def _check(name: str, passed: bool, output: str, started: float) -> common_pb2.CheckResult:
    return common_pb2.CheckResult(
        name=name,
        kind=CHECK_KIND,
        passed=passed,
        exit_code=0 if passed else 1,
        expected_exit=0,
        output=output,
        duration_seconds=time.monotonic() - started,
    )


def _listed(items: list[str]) -> str:
    shown = "\n".join(items[:MAX_LISTED])
    return shown + (f"\n... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def is_debug_file(path: str) -> bool:
    """True for a leftover file (editor swap, merge .orig, core dump, bytecode, ...)."""
    parts = path.split("/")
    if any(part in DEBUG_DIRS for part in parts[:-1]):
        return True
    return any(fnmatchcase(parts[-1], pattern) for pattern in DEBUG_FILE_PATTERNS)


def debug_statement(path: str, text: str) -> str:
    """What debug leftover `text` (an added line of `path`) is, or ''."""
    if CONFLICT_MARKER.match(text):
        return "merge conflict marker"
    for suffixes, pattern in DEBUGGER_STATEMENTS:
        if path.endswith(suffixes) and pattern.search(text):
            return "debugger statement"
    return ""


def sanity_checks(
    sanity: Sanity,
    files: Mapping[str, int],
    added_lines: Iterable[tuple[str, int, str]] = (),
) -> list[common_pb2.CheckResult]:
    """The L3 checks over `files` (path → size in bytes) and the change's added lines."""
    checks = []
    if sanity.max_file_mb is not None:
        started = time.monotonic()
        limit = sanity.max_file_mb * 1024 * 1024
        big = sorted((p for p, size in files.items() if size > limit), key=lambda p: -files[p])
        described = [f"{p} ({files[p] / 1024 / 1024:.1f} MB)" for p in big]
        output = (
            f"files larger than {sanity.max_file_mb:g} MB:\n{_listed(described)}"
            if big
            else f"no file is larger than {sanity.max_file_mb:g} MB ({len(files)} files)"
        )
        checks.append(_check("sanity:max_file_mb", not big, output, started))
    if sanity.forbid_debug_artifacts:
        started = time.monotonic()
        problems = [f"{p}: debug artifact file" for p in sorted(files) if is_debug_file(p)]
        for path, number, text in added_lines:
            what = debug_statement(path, text)
            if what:
                problems.append(f"{path}:{number}: {what}: {text.strip()[:120]}")
        output = (
            f"debug artifacts:\n{_listed(problems)}"
            if problems
            else "no debug artifacts (leftover files, debugger statements, conflict markers)"
        )
        checks.append(_check("sanity:debug_artifacts", not problems, output, started))
    return checks
