"""Tests for the worker's batched outcome writes and for jobs claimed ahead of a slot.

These run a node's own loop on the system clock with the AsyncioExecutor,
because both behaviours only appear when jobs end while a storage write is
in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest

from fantasma import (
    Fantasma,
    JobContext,
    JobHandler,
    JobId,
    JobStatus,
    MemoryStorage,
    RunOutcome,
    Trigger,
)
from tests.helpers import QUIET_CLUSTER, WAIT, collect_runs, signal_on_runs


@dataclass
class Tick:
    number: int


class TickHandler(JobHandler[Tick]):
    async def handle(self, data: Tick, context: JobContext) -> None:
        pass


class CountingHandler(JobHandler[Tick]):
    """Sets ``returned`` once ``expected`` handler calls have returned."""

    expected = 0
    calls = 0
    returned = asyncio.Event()

    async def handle(self, data: Tick, context: JobContext) -> None:
        CountingHandler.calls += 1
        if CountingHandler.calls >= CountingHandler.expected:
            CountingHandler.returned.set()


class GatedStorage(MemoryStorage):
    """Memory storage whose single-job finish waits for a gate, counting batch calls.

    Holding the first write open makes every job that ends meanwhile queue
    for the worker's batch write.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.first_finish_waiting = asyncio.Event()
        self.batches: list[list[JobId]] = []

    async def finish_job(
        self,
        job_id: JobId,
        *,
        node_id: str,
        now: datetime,
        status: JobStatus,
        error: str | None = None,
    ) -> bool:
        self.first_finish_waiting.set()
        await self.gate.wait()
        return await super().finish_job(
            job_id, node_id=node_id, now=now, status=status, error=error
        )

    async def finish_jobs(
        self,
        job_ids: Collection[JobId],
        *,
        node_id: str,
        now: datetime,
        status: JobStatus,
        error: str | None = None,
    ) -> set[JobId]:
        self.batches.append(list(job_ids))
        finished: set[JobId] = set()
        for job_id in job_ids:
            if await MemoryStorage.finish_job(
                self, job_id, node_id=node_id, now=now, status=status, error=error
            ):
                finished.add(job_id)
        return finished


def _app(
    storage: MemoryStorage,
    handler: type[JobHandler[Tick]] = TickHandler,
    *,
    concurrency: int = 10,
) -> Fantasma:
    app = Fantasma(
        storage,
        concurrency=concurrency,
        poll_interval=timedelta(seconds=60),
        cluster=QUIET_CLUSTER,
        shutdown_grace=timedelta(seconds=WAIT),
    )
    app.register(handler)
    return app


@pytest.mark.asyncio
async def test_successes_share_one_write() -> None:
    storage = GatedStorage()
    CountingHandler.expected = 5
    CountingHandler.calls = 0
    CountingHandler.returned = asyncio.Event()
    app = _app(storage, CountingHandler)
    runs = collect_runs(app)
    all_reported = signal_on_runs(app, count=5)

    async with app:
        await app.schedule_many(
            ("tick", Tick(number), Trigger.now()) for number in range(5)
        )
        # The first success to end keeps its write open on the gate, so the
        # other four end while it is in flight.
        await asyncio.wait_for(CountingHandler.returned.wait(), WAIT)
        await asyncio.wait_for(storage.first_finish_waiting.wait(), WAIT)
        storage.gate.set()
        await asyncio.wait_for(all_reported.wait(), WAIT)
        stored = await app.list_jobs()

    assert [len(batch) for batch in storage.batches] == [4]
    assert len(runs) == 5
    assert {run.outcome for run in runs} == {RunOutcome.SUCCEEDED}
    assert {job.status for job in stored} == {JobStatus.SUCCEEDED}


@pytest.mark.asyncio
async def test_stop_leaves_no_job_claimed() -> None:
    """Jobs claimed ahead of a free slot still run, or go back, when the node stops."""
    storage = MemoryStorage()
    app = _app(storage, concurrency=2)
    some_ran = signal_on_runs(app, count=10)

    await app.start()
    try:
        await app.schedule_many(
            ("tick", Tick(number), Trigger.now()) for number in range(200)
        )
        await asyncio.wait_for(some_ran.wait(), WAIT)
    finally:
        await app.stop()
    running = await storage.list_jobs(statuses=[JobStatus.RUNNING])

    assert running == []
