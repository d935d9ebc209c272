"""The run's background saves: in order, one at a time, replaced while waiting, never lost."""

from __future__ import annotations

import asyncio

from agentgate.orchestrator.ordered_saves import OrderedSaves


async def test_saves_run_in_order_one_at_a_time_and_flush_waits_for_them() -> None:
    saves = OrderedSaves("test")
    log: list[str] = []
    running = 0
    release = asyncio.Event()

    def save(name: str, wait: bool = False):  # type: ignore[no-untyped-def]
        async def run() -> None:
            nonlocal running
            running += 1
            assert running == 1, "two saves ran at once"
            if wait:
                await release.wait()
            await asyncio.sleep(0)
            log.append(name)
            running -= 1

        return run

    saves.submit(save("create", wait=True), replaceable=False)
    saves.submit(save("update-1"))
    saves.submit(save("iteration-1"), replaceable=False)
    saves.submit(save("update-2"))
    saves.submit(save("update-3"))  # replaces update-2, which has not started
    assert not saves.idle
    release.set()
    await saves.flush()
    assert saves.idle
    assert log == ["create", "update-1", "iteration-1", "update-3"]


async def test_a_failed_save_does_not_stop_later_ones() -> None:
    saves = OrderedSaves("test")
    log: list[str] = []

    async def broken() -> None:
        raise RuntimeError("persistence is down")

    async def fine() -> None:
        log.append("fine")

    saves.submit(broken, replaceable=False)
    saves.submit(fine)
    await saves.flush()
    assert log == ["fine"]


async def test_cancelling_the_flushing_caller_does_not_lose_the_save() -> None:
    saves = OrderedSaves("test")
    done = asyncio.Event()
    gate = asyncio.Event()

    async def slow() -> None:
        await gate.wait()
        done.set()

    saves.submit(slow)
    waiter = asyncio.create_task(saves.flush())
    await asyncio.sleep(0)
    waiter.cancel()
    gate.set()
    await saves.flush()
    assert done.is_set()


async def test_a_save_submitted_after_the_queue_drained_still_runs() -> None:
    saves = OrderedSaves("test")
    log: list[int] = []

    def save(n: int):  # type: ignore[no-untyped-def]
        async def run() -> None:
            log.append(n)

        return run

    saves.submit(save(1))
    await saves.flush()
    saves.submit(save(2))
    await saves.flush()
    assert log == [1, 2]
