"""The branch a run works on: `agentgate/{run_id}` by default, or a configured pattern.

The rules are git's own (`git check-ref-format --branch`), checked in Python so the queue
can refuse a bad pattern at submit without running git.
"""

from __future__ import annotations

import re

DEFAULT_BRANCH_PATTERN = "agentgate/{run_id}"
RUN_ID_PLACEHOLDER = "{run_id}"

# Control characters, space and ~ ^ : ? * [ \ are never allowed in a ref.
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def branch_problem(name: str) -> str:
    """Why `name` is not a valid branch name ('' when it is)."""
    if not name:
        return "is empty"
    if len(name) > 200:
        return "is longer than 200 characters"
    if name.startswith("-"):
        return "must not start with '-'"
    if name == "@" or "@{" in name:
        return "must not be '@' or contain '@{'"
    if _FORBIDDEN.search(name):
        return "must not contain spaces, control characters or any of ~ ^ : ? * [ \\"
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return "must not start or end with '/' or contain '//'"
    if ".." in name or name.endswith("."):
        return "must not contain '..' or end with '.'"
    for component in name.split("/"):
        if component.startswith(".") or component.endswith(".lock"):
            return "no part may start with '.' or end with '.lock'"
    return ""


def branch_pattern_problem(pattern: str) -> str:
    """Why `pattern` cannot name run branches ('' when it can; '' is the default pattern)."""
    if not pattern:
        return ""
    if RUN_ID_PLACEHOLDER not in pattern:
        # Without the run id every run would push to the same branch.
        return f"must contain {RUN_ID_PLACEHOLDER} so that every run has its own branch"
    problem = branch_problem(pattern.replace(RUN_ID_PLACEHOLDER, "run-0"))
    return f"does not make a valid branch name: it {problem}" if problem else ""


def branch_for(run_id: str, pattern: str = "") -> str:
    """The branch of run `run_id` under `pattern` (default agentgate/{run_id})."""
    return (pattern or DEFAULT_BRANCH_PATTERN).replace(RUN_ID_PLACEHOLDER, run_id)
