"""Tests for batch writes that lock many job rows at once on PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio
from sqlalchemy import text

from fantasma.jobs import JobStatus
from fantasma.storage.sql import SqlStorage
from fantasma_testing.contract import LEASE_DURATION, NOW, make_job

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

# Enough waiting jobs that PostgreSQL reads running jobs through the id
# index, in id order, rather than in table order.
_WAITING_JOBS = 30_000
_BATCH = 2_000
_ROUNDS = 15


@pytest_asyncio.fixture
async def storages(server_url: str) -> AsyncIterator[tuple[SqlStorage, SqlStorage]]:
    first = SqlStorage(server_url)
    second = SqlStorage(server_url)
    await first.start()
    await second.start()
    yield first, second
    await first.close()
    await second.close()


async def test_extend_and_finish_race(storages: tuple[SqlStorage, SqlStorage]) -> None:
    """A node's lease extension and its batch finish never deadlock each other."""
    first, second = storages
    waiting = [make_job(due_at=NOW + timedelta(days=1)) for _ in range(_WAITING_JOBS)]
    await first.add_jobs(waiting)
    if first.engine.dialect.name == "postgresql":
        async with first.engine.connect() as connection:
            await connection.execute(text(f"ANALYZE {first.tables.jobs.name}"))
            await connection.commit()
    shuffle = random.Random(7).shuffle
    failures: list[BaseException] = []
    unfinished = 0

    for _ in range(_ROUNDS):
        await first.add_jobs([make_job() for _ in range(_BATCH)])
        claimed = await first.claim_jobs(
            node_id="node-a", now=NOW, limit=_BATCH, lease_until=NOW + LEASE_DURATION
        )
        ids = [job.id for job in claimed]
        shuffle(ids)
        results = await asyncio.gather(
            first.extend_job_leases(
                node_id="node-a", job_ids=ids, lease_until=NOW + 2 * LEASE_DURATION
            ),
            second.finish_jobs(
                ids, node_id="node-a", now=NOW, status=JobStatus.SUCCEEDED
            ),
            return_exceptions=True,
        )
        failures.extend(
            result for result in results if isinstance(result, BaseException)
        )
        running = await first.list_jobs(statuses=[JobStatus.RUNNING])
        unfinished += len(running)

    assert failures == []
    assert unfinished == 0
