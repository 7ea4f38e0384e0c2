"""Tests for graceful shutdown on real time: what stop() waits for, cancels and keeps.

Each test runs a node's own loop on the system clock with the AsyncioExecutor
and memory storage, and moves only when an event it waits for is set.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

import pytest

from fantasma import (
    AsyncioExecutor,
    Fantasma,
    JobContext,
    JobHandler,
    JobId,
    JobStatus,
    MemoryStorage,
    Run,
    RunOutcome,
    Trigger,
)
from tests.helpers import QUIET_CLUSTER, WAIT, collect_runs, signal_on_runs


@dataclass
class Work:
    number: int


class ShutdownSignallingExecutor(AsyncioExecutor):
    """The AsyncioExecutor, setting :attr:`shutdown_started` when shutdown begins.

    The node cancels its loop before it shuts the executor down, so once the
    event is set the node claims nothing more.
    """

    def __init__(self, concurrency: int) -> None:
        super().__init__(concurrency)
        self.shutdown_started = asyncio.Event()

    async def shutdown(self, grace: float) -> None:
        self.shutdown_started.set()
        await super().shutdown(grace)


class HeldWork:
    """Handler state: the first attempt of job 1 waits until released.

    With ``follow_up``, job 1 schedules job 3 once released.
    """

    def __init__(self, *, follow_up: bool = False) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.attempts: list[tuple[int, int]] = []
        self.follow_up = follow_up

    def handler(self) -> type[JobHandler[Work]]:
        state = self

        class HeldHandler(JobHandler[Work]):
            async def handle(self, data: Work, context: JobContext) -> None:
                state.attempts.append((data.number, context.attempt))
                if context.attempt == 1 and data.number == 1:
                    state.started.set()
                    await state.release.wait()
                    if state.follow_up:
                        await context.app.schedule("follow-up", Work(3), Trigger.now())

        return HeldHandler


def _node(
    storage: MemoryStorage,
    held: HeldWork,
    *,
    grace: timedelta,
    executor: AsyncioExecutor | None = None,
) -> Fantasma:
    app = Fantasma(
        storage,
        executor=executor or AsyncioExecutor(concurrency=1),
        poll_interval=timedelta(seconds=60),
        cluster=QUIET_CLUSTER,
        shutdown_grace=grace,
    )
    app.register(held.handler())
    return app


async def _stop_with_held_job(
    held: HeldWork, *, release_during_grace: bool
) -> tuple[MemoryStorage, JobId, JobId, list[Run]]:
    """Run job 1 until held, with job 2 waiting for the only slot, then stop.

    With ``release_during_grace``, the grace is 30 s and job 1 is released
    once shutdown has begun. Otherwise the grace is 0.05 s, so job 1 is cut off.
    Returns the storage, both job ids and the runs the node reported.
    """
    storage = MemoryStorage()
    executor = ShutdownSignallingExecutor(concurrency=1)
    grace = timedelta(seconds=30 if release_during_grace else 0.05)
    app = _node(storage, held, grace=grace, executor=executor)
    runs = collect_runs(app)

    await app.start()
    first = await app.schedule("work", Work(1), Trigger.now())
    await asyncio.wait_for(held.started.wait(), WAIT)
    second = await app.schedule("work", Work(2), Trigger.now())

    stopping = asyncio.create_task(app.stop())
    await asyncio.wait_for(executor.shutdown_started.wait(), WAIT)
    if release_during_grace:
        held.release.set()
    await asyncio.wait_for(stopping, WAIT)
    return storage, first, second, runs


async def _status(storage: MemoryStorage, job_id: JobId) -> JobStatus:
    job = await storage.get_job(job_id)
    assert job is not None
    return job.status


# Jobs that finish within the grace period


@pytest.mark.asyncio
async def test_running_job_finishes_within_grace() -> None:
    held = HeldWork()

    storage, first, _, runs = await _stop_with_held_job(held, release_during_grace=True)

    assert [run.outcome for run in runs] == [RunOutcome.SUCCEEDED]
    assert await _status(storage, first) is JobStatus.SUCCEEDED


@pytest.mark.asyncio
async def test_handler_schedules_during_grace() -> None:
    """A job finishing within the grace period can still schedule follow-up work."""
    held = HeldWork(follow_up=True)

    storage, first, _, _ = await _stop_with_held_job(held, release_during_grace=True)
    follow_ups = await storage.list_jobs(name="follow-up")

    assert await _status(storage, first) is JobStatus.SUCCEEDED
    assert [job.status for job in follow_ups] == [JobStatus.SCHEDULED]


@pytest.mark.asyncio
async def test_stop_claims_nothing_new() -> None:
    """Job 1 frees the only slot during shutdown, and job 2 still does not start."""
    held = HeldWork()

    storage, _, second, _ = await _stop_with_held_job(held, release_during_grace=True)
    job = await storage.get_job(second)

    assert held.attempts == [(1, 1)]
    assert job is not None
    assert job.status is JobStatus.SCHEDULED
    assert job.attempts == 0


@pytest.mark.asyncio
async def test_unstarted_job_runs_next_start() -> None:
    held = HeldWork()
    storage, _, second, _ = await _stop_with_held_job(held, release_during_grace=True)

    app = _node(storage, held, grace=timedelta(seconds=1))
    ran = signal_on_runs(app)
    async with app:
        await asyncio.wait_for(ran.wait(), WAIT)

    assert held.attempts == [(1, 1), (2, 1)]
    assert await _status(storage, second) is JobStatus.SUCCEEDED


# Jobs still running when the grace period ends


@pytest.mark.asyncio
async def test_overdue_job_recorded_interrupted() -> None:
    held = HeldWork()

    _, _, _, runs = await _stop_with_held_job(held, release_during_grace=False)

    assert [run.outcome for run in runs] == [RunOutcome.INTERRUPTED]
    assert [run.error for run in runs] == ["cancelled at shutdown"]


@pytest.mark.asyncio
async def test_overdue_job_stays_due() -> None:
    held = HeldWork()

    storage, first, _, _ = await _stop_with_held_job(held, release_during_grace=False)
    job = await storage.get_job(first)

    assert job is not None
    assert job.status is JobStatus.FAILED
    assert job.last_error == "cancelled at shutdown"
    assert job.lease_owner is None
    assert job.attempts == 1


@pytest.mark.asyncio
async def test_interrupted_job_runs_next_start() -> None:
    held = HeldWork()
    storage, first, _, _ = await _stop_with_held_job(held, release_during_grace=False)

    app = _node(storage, held, grace=timedelta(seconds=1))
    both_ran = signal_on_runs(app, count=2)
    async with app:
        await asyncio.wait_for(both_ran.wait(), WAIT)

    assert sorted(held.attempts) == [(1, 1), (1, 2), (2, 1)]
    assert await _status(storage, first) is JobStatus.SUCCEEDED


# Stopping


@pytest.mark.asyncio
async def test_stop_twice_is_harmless() -> None:
    held = HeldWork()
    app = _node(MemoryStorage(), held, grace=timedelta(seconds=1))
    await app.start()

    await app.stop()
    await app.stop()

    assert app.running_job_ids == set()


@pytest.mark.asyncio
async def test_stop_without_start_is_harmless() -> None:
    held = HeldWork()
    app = _node(MemoryStorage(), held, grace=timedelta(seconds=1))

    await app.stop()

    assert app.running_job_ids == set()
