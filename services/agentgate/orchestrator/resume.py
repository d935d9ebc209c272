"""Resume, not restart (docs/results.md): what a new attempt of a run's work order finds of
the attempts before it, so it goes on after their last completed iteration instead of
repeating it.

An iteration counts as completed when its record (iteration-N.json) and its patch
(patch-N.diff, leading to that record's snapshot) are both stored and its decision was to go
on: the iterations 1..K that are so, without a gap, are the resume point. The workspace is
made again from the source plus those K patches, on whichever worker leased the work order.
An iteration whose decision was to stop (the attempt was lost while delivering or
finishing) is run again: what follows a stop (delivery) is not repeatable from records.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentgate.orchestrator.persistence_port import PersistencePort
from agentgate.v1 import common_pb2


@dataclass(frozen=True)
class ResumePoint:
    """What a new attempt continues from."""

    #: The run as the lost attempt left it (tokens, cost, attempts so far).
    run: common_pb2.Run
    #: The completed iterations 1..K, in order.
    completed: list[common_pb2.IterationData] = field(default_factory=list)
    #: Their patches, in order (each against the previous snapshot).
    patches: list[bytes] = field(default_factory=list)

    @property
    def last_iteration(self) -> int:
        """K: the last completed iteration (0 = none)."""
        return len(self.completed)


def completed_prefix(
    iterations: list[common_pb2.IterationData], patches: dict[int, common_pb2.RunPatch]
) -> list[common_pb2.IterationData]:
    """The records of iterations 1..K, in order, where each has its patch (leading to its
    snapshot) and decided to go on; stops at the first gap."""
    by_number = {data.iteration: data for data in iterations}
    done: list[common_pb2.IterationData] = []
    number = 1
    while number in by_number:
        data = by_number[number]
        patch = patches.get(number)
        if patch is None or patch.to_commit != data.snapshot_id or not data.decision.should_continue:
            break
        done.append(data)
        number += 1
    return done


async def load_resume_point(persistence: PersistencePort, run_id: str) -> ResumePoint | None:
    """The resume point of a run (None when persistence has no run by that id)."""
    run = await persistence.get_run(run_id)
    if run is None:
        return None
    iterations = await persistence.list_iterations(run_id)
    patches: dict[int, common_pb2.RunPatch] = {}
    for data in sorted(iterations, key=lambda item: item.iteration):
        if data.iteration != len(patches) + 1 or not data.decision.should_continue:
            break
        patch = await persistence.get_patch(run_id, data.iteration)
        if patch is None:
            break
        patches[data.iteration] = patch
    completed = completed_prefix(iterations, patches)
    return ResumePoint(run, completed, [patches[data.iteration].patch for data in completed])
