"""The workspace service waits for its child processes by pidfd on Python 3.11."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

from agentgate.workspace import __main__ as workspace_main


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12 waits by pidfd itself; the helper does nothing there")
def test_children_are_reaped_without_a_thread_each() -> None:
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())  # a fresh policy: no watcher yet
    try:
        workspace_main._wait_for_children_by_pidfd()
        assert isinstance(asyncio.get_child_watcher(), asyncio.PidfdChildWatcher)

        async def spawn_and_count() -> tuple[int, bytes, int]:
            process = await asyncio.create_subprocess_exec(
                "sh", "-c", "sleep 0.2; echo done", stdout=asyncio.subprocess.PIPE
            )
            await asyncio.sleep(0.05)
            waiting = sum(1 for thread in threading.enumerate() if thread.name.startswith("waitpid-"))
            out, _ = await process.communicate()
            return waiting, out, process.returncode or 0

        waiting, out, code = asyncio.run(spawn_and_count())
        # The default (ThreadedChildWatcher) would have one "waitpid-N" thread here.
        assert (waiting, out, code) == (0, b"done\n", 0)
    finally:
        asyncio.set_event_loop_policy(None)
