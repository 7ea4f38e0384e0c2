"""A leader that stalls mid-pass past its lease cannot write once another node leads."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest

from fantasma import ClusterSettings, Fantasma, MemoryStorage, Trigger
from fantasma_testing import DEFAULT_START, DeterministicExecutor, FakeClock
from fantasma_testing.driver import advance
from tests.cluster.support import Tick, TickHandler, seconds

START = DEFAULT_START
WAIT = 5.0


class StallingStorage(MemoryStorage):
    """Memory storage that holds one node's next occurrence write until released.

    It stands for a process stopped (by a pause, a slow network, a
    debugger) between reading its lease and writing, which the simulated
    cluster cannot do because its passes never interleave.
    """

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self._node_id = node_id
        self.armed = False
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()

    async def materialise_occurrence(self, **arguments: Any) -> bool:
        if self.armed and arguments["lease"].holder == self._node_id:
            self.armed = False
            self.stalled.set()
            await self.release.wait()
        return await super().materialise_occurrence(**arguments)


async def occurrence_fire_times(storage: MemoryStorage) -> list[datetime | None]:
    return [job.fire_time for job in await storage.list_jobs(recurring_id="tick")]


@pytest.mark.asyncio
async def test_stalled_leader_write_rejected() -> None:
    clock = FakeClock(START)
    storage = StallingStorage("stalled")
    node = Fantasma(
        storage,
        clock=clock,
        executor=DeterministicExecutor(),
        node_id="stalled",
        cluster=ClusterSettings(),
    )
    node.register(TickHandler)
    await node.start(background=False)
    await node.schedule("tick", Tick(), Trigger.recurring("tick", "* * * * * *"))
    await advance([node], clock, START + seconds(0.5))
    enqueued_before = await occurrence_fire_times(storage)

    # The node's next pass stalls in its write of 00:00:02, due at 00:00:01.
    clock.set(START + seconds(1))
    storage.armed = True
    stalled_pass = asyncio.create_task(node.run_pending())
    await asyncio.wait_for(storage.stalled.wait(), WAIT)
    # Meanwhile its lease (to 00:00:10) expires and another node takes over.
    clock.set(START + seconds(20))
    takeover = await storage.acquire_leadership(
        node_id="other", now=clock.now(), until=START + seconds(30)
    )
    storage.release.set()
    await asyncio.wait_for(stalled_pass, WAIT)
    enqueued_after = await occurrence_fire_times(storage)
    recurring = await storage.get_recurring("tick")
    await node.stop()

    assert takeover is not None
    assert takeover.term == 2
    assert enqueued_after == enqueued_before
    assert recurring is not None
    assert recurring.next_fire_at == START + seconds(2)
    assert node.lease is None
