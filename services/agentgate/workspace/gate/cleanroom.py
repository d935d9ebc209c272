"""Clean rooms: fresh directories holding exactly the tracked files of one snapshot.

Verification runs there, never in the agent's workspace, so files ignored by git (build
output, caches, virtual environments) and any agent-side state cannot make a check pass.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from agentgate.workspace import git as gitops
from agentgate.workspace.workspaces import remove_tree


async def create_clean_room(git_dir: Path, commit: str, root: Path, run_id: str, iteration: int) -> Path:
    """Makes `root/{run_id}-{iteration}-{random}` with the files of `commit` of the
    workspace's trusted git directory `git_dir` and returns it.

    The files are written from the commit's tree through a temporary index outside the
    workspace, by one `git --work-tree=ROOM read-tree -u --reset` (reading the tree into
    the empty index and checking out every entry into the room: one process instead of
    `read-tree` + `checkout-index`): the workspace's own index and files are not touched,
    no `.git` is placed in the clean room, and unlike `git archive` no file is dropped by
    an `export-ignore` attribute (test folders often carry one). The snapshot's
    `.gitattributes` may name a filter, but no filter is configured where this git looks
    (docs/security.md, "Git"), so none runs.
    """
    name = f"{run_id}-{iteration}-{secrets.token_hex(4)}"
    room = root / name
    await asyncio.to_thread(room.mkdir, parents=True)
    index = root / f".{name}.index"
    env = {"GIT_INDEX_FILE": str(index)}
    try:
        await gitops.git("read-tree", "-u", "--reset", commit, cwd=room, git_dir=git_dir, work_tree=room, env=env)
    except BaseException:
        await asyncio.to_thread(remove_tree, room)
        raise
    finally:
        await asyncio.to_thread(index.unlink, missing_ok=True)
    return room


async def remove_clean_room(room: Path) -> None:
    """Deletes a clean room (also the read-only parts a check may have made)."""
    await asyncio.to_thread(remove_tree, room)
