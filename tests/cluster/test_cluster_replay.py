"""The seed alone decides a simulated cluster's interleaving, so a failure replays."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from fantasma import ClusterSettings, MemoryStorage, Trigger
from fantasma_testing import AdvanceTime, SimulatedScheduler, Simulation
from fantasma_testing.cluster import Cluster
from tests.cluster.support import Chore, ChoreHandler, Tick, TickHandler

RunLog = list[tuple[str, datetime | None, str, datetime]]

BuildCluster = Callable[..., Cluster]


def run_log(seed: int) -> RunLog:
    """Run three nodes with a failover for ten minutes; return who ran what, when."""
    simulation = Simulation(seed=seed)
    nodes = Cluster(
        simulation,
        MemoryStorage(),
        n=3,
        settings=ClusterSettings(),
        job_lease=timedelta(seconds=30),
        asynchronous=False,
    )
    try:
        nodes.register(TickHandler)
        nodes.register(ChoreHandler)
        scheduler = nodes[0].scheduler
        assert isinstance(scheduler, SimulatedScheduler)
        scheduler.schedule("tick", Tick(), Trigger.recurring("tick", "*/10 * * * * *"))
        for number in range(20):
            scheduler.schedule(
                "chore", Chore(str(number)), Trigger.after(seconds=15 * number)
            )
        simulation.run_sync(simulation.advance_by(timedelta(minutes=2)))
        leader = nodes.leader
        assert leader is not None
        nodes.kill(leader)
        simulation.run_sync(simulation.advance_by(timedelta(minutes=8)))
        return [
            (run.name, run.fire_time, run.node_id, run.started_at) for run in nodes.runs
        ]
    finally:
        simulation.close_sync()


def test_same_seed_same_runs() -> None:
    assert run_log(7) == run_log(7)


def test_other_seed_other_interleaving() -> None:
    """The same runs happen at the same times, on other nodes."""
    reference = run_log(7)
    others = [run_log(seed) for seed in range(8, 12)]

    assert any(log != reference for log in others)
    assert all(
        sorted((name, fire, at) for name, fire, _, at in log)
        == sorted((name, fire, at) for name, fire, _, at in reference)
        for log in others
    )


def test_every_node_runs_jobs(cluster: BuildCluster, advance_time: AdvanceTime) -> None:
    nodes = cluster(n=3)
    nodes.register(TickHandler)
    scheduler = nodes[1].scheduler
    assert isinstance(scheduler, SimulatedScheduler)
    scheduler.schedule("tick", Tick(), Trigger.recurring("tick", "*/10 * * * * *"))

    advance_time(minutes=10)

    assert all(node.runs.count > 0 for node in nodes)
    assert sum(node.runs.count for node in nodes) == 60


@pytest.mark.fantasma(seed=3)
def test_marker_seed_reaches_cluster(
    cluster: BuildCluster, advance_time: AdvanceTime
) -> None:
    nodes = cluster(n=3)

    advance_time(seconds=1)

    assert nodes.simulation.seed == 3
    assert nodes.leader is not None
