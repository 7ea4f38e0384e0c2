"""The simulated cluster from async tests and on the SQL backends."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest

from fantasma import Trigger
from fantasma_testing import AsyncAdvanceTime, AsyncSimulatedScheduler
from fantasma_testing.cluster import Cluster
from tests.cluster.support import Tick, TickHandler, fire_times
from tests.dbs import MYSQL_ADMIN_URL, POSTGRES_ADMIN_URL

BuildCluster = Callable[..., Cluster]


async def fail_over_once(nodes: Cluster, advance_time: AsyncAdvanceTime) -> datetime:
    """Tick every 10 s, kill the leader at 00:00:05 and run to 00:01:00."""
    nodes.register(TickHandler)
    scheduler = nodes[0].scheduler
    assert isinstance(scheduler, AsyncSimulatedScheduler)
    start = scheduler.now()
    await scheduler.schedule(
        "tick", Tick(), Trigger.recurring("tick", "*/10 * * * * *")
    )
    await advance_time(seconds=5)
    leader = nodes.leader
    assert leader is not None
    nodes.kill(leader)
    await advance_time(seconds=55)
    return start


@pytest.mark.asyncio
async def test_async_failover(
    cluster: BuildCluster, advance_time: AsyncAdvanceTime
) -> None:
    nodes = cluster(n=3)

    start = await fail_over_once(nodes, advance_time)

    assert nodes.term == 2
    assert [run.fire_time for run in nodes.runs] == fire_times(
        "*/10 * * * * *", start, nodes.simulation.now()
    )


@pytest.mark.asyncio
@pytest.mark.postgres
@pytest.mark.fantasma(storage=POSTGRES_ADMIN_URL)
async def test_postgres_failover(
    cluster: BuildCluster, advance_time: AsyncAdvanceTime
) -> None:
    nodes = cluster(n=3)

    start = await fail_over_once(nodes, advance_time)

    assert nodes.term == 2
    assert [run.fire_time for run in nodes.runs] == fire_times(
        "*/10 * * * * *", start, nodes.simulation.now()
    )


@pytest.mark.asyncio
@pytest.mark.mysql
@pytest.mark.fantasma(storage=MYSQL_ADMIN_URL)
async def test_mariadb_failover(
    cluster: BuildCluster, advance_time: AsyncAdvanceTime
) -> None:
    nodes = cluster(n=3)

    start = await fail_over_once(nodes, advance_time)

    assert nodes.term == 2
    assert [run.fire_time for run in nodes.runs] == fire_times(
        "*/10 * * * * *", start, nodes.simulation.now()
    )
