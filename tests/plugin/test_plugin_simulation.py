"""Simulation: several nodes on one fake clock, seeded order, and shutdown."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from plugin_support import Flaky, FlakyHandler, Note, NoteHandler, write_project

from fantasma import ClusterSettings, Fantasma, MemoryStorage, Trigger
from fantasma_testing import FakeClock, Simulation, SimulationError, assert_not_run

START = datetime(2030, 1, 1, tzinfo=UTC)

# Short leases, as a cluster test would use: a node that stops renewing loses
# leadership within seconds.
CLUSTER = ClusterSettings(
    lease_period=timedelta(seconds=10),
    renew_interval=timedelta(seconds=3),
    heartbeat_interval=timedelta(seconds=3),
    lookahead=timedelta(0),
)


def _two_nodes(seed: int) -> tuple[Simulation, Fantasma, Fantasma]:
    simulation = Simulation(seed=seed)
    storage = MemoryStorage()
    first = simulation.create_node(storage, node_id="node-a", cluster=CLUSTER)
    second = simulation.create_node(storage, node_id="node-b", cluster=CLUSTER)
    for node in (first, second):
        node.register(NoteHandler)
    return simulation, first, second


def _node_order(seed: int) -> list[str]:
    """Return which node ran each of 40 jobs due a second apart, under ``seed``."""
    simulation, first, _ = _two_nodes(seed)

    async def scenario() -> None:
        await simulation.start()
        await first.schedule_many(
            [
                ("note", Note(str(number)), Trigger.after(seconds=number))
                for number in range(40)
            ]
        )
        await simulation.advance_by(timedelta(minutes=1))
        await simulation.close()

    asyncio.run(scenario())
    return [run.node_id for run in simulation.runs()]


def test_same_seed_same_interleaving() -> None:
    assert _node_order(7) == _node_order(7)


def test_other_seed_other_interleaving() -> None:
    assert _node_order(7) != _node_order(8)


def test_both_nodes_take_jobs() -> None:
    assert set(_node_order(7)) == {"node-a", "node-b"}


def test_excluded_node_does_no_passes() -> None:
    simulation, first, second = _two_nodes(0)
    simulation.exclude(second)

    simulation.run_sync(simulation.start())
    simulation.run_sync(
        first.schedule_many([("note", Note(str(n)), Trigger.now()) for n in range(10)])
    )
    simulation.run_sync(simulation.advance_by(timedelta(minutes=1)))
    simulation.close_sync()

    assert {run.node_id for run in simulation.runs()} == {"node-a"}
    assert simulation.live_nodes == (first,)
    assert not simulation.is_live(second)


def test_excluded_leader_loses_lease() -> None:
    simulation, first, second = _two_nodes(0)
    simulation.run_sync(simulation.drain())
    leader, follower = (first, second) if first.is_leader else (second, first)

    simulation.exclude(leader)
    simulation.run_sync(simulation.advance_by(timedelta(seconds=15)))

    assert follower.is_leader
    simulation.include(leader)
    simulation.run_sync(simulation.advance_by(timedelta(seconds=5)))
    assert not leader.is_leader
    simulation.close_sync()


def test_runs_of_removed_node_ignored() -> None:
    simulation, first, second = _two_nodes(0)
    simulation.run_sync(simulation.start())
    simulation.remove_node(second)

    simulation.run_sync(second.schedule("note", Note("x"), Trigger.now()))
    simulation.run_sync(second.run_pending())
    simulation.run_sync(second.stop())
    simulation.close_sync()

    assert simulation.runs().count == 0
    assert simulation.nodes == (first,)


def test_retry_jitter_follows_seed() -> None:
    def retry_due_times(seed: int) -> list[datetime]:
        simulation = Simulation(seed=seed)
        node = simulation.create_node(MemoryStorage(), node_id="node-a")

        class JitteredHandler(FlakyHandler):
            retry_jitter = 0.5

        node.register(JitteredHandler)
        simulation.run_sync(simulation.start())
        simulation.run_sync(node.schedule("flaky", Flaky(succeed_on=3), Trigger.now()))
        simulation.run_sync(simulation.advance_by(timedelta(hours=1)))
        simulation.close_sync()
        return simulation.runs().due_times

    assert retry_due_times(3) == retry_due_times(3)
    assert retry_due_times(3) != retry_due_times(4)


def test_close_stops_nodes_before_cleanups() -> None:
    simulation, first, _ = _two_nodes(0)
    storage = first.storage
    seen: list[list[str]] = []

    async def record_nodes() -> None:
        seen.append([node.node_id for node in await storage.list_nodes()])

    simulation.add_cleanup(record_nodes)
    simulation.run_sync(simulation.drain())
    simulation.close_sync()

    assert seen == [[]]
    assert simulation.closed


def test_closed_simulation_rejects_use() -> None:
    simulation = Simulation()
    simulation.close_sync()

    with pytest.raises(
        SimulationError,
        match=r"^this simulation is closed: its nodes stopped when the test ended$",
    ):
        simulation.run_sync(simulation.drain())


def test_other_loop_rejected() -> None:
    simulation = Simulation()
    asyncio.run(simulation.drain())

    with pytest.raises(
        SimulationError,
        match=r"^this simulation runs on another event loop: a test and its "
        r"fixtures must drive it from one loop$",
    ):
        asyncio.run(simulation.drain())


def test_node_on_other_clock_rejected() -> None:
    simulation = Simulation()
    node = Fantasma(MemoryStorage(), clock=FakeClock(), node_id="stray")

    with pytest.raises(
        ValueError,
        match=r"^node 'stray' reads another clock; build it with "
        r"clock=simulation\.clock$",
    ):
        simulation.add_node(node)


def test_duplicate_node_id_rejected() -> None:
    simulation = Simulation()
    simulation.create_node(MemoryStorage(), node_id="node-a")

    with pytest.raises(
        ValueError, match=r"^the simulation already has a node with id 'node-a'$"
    ):
        simulation.create_node(MemoryStorage(), node_id="node-a")


def test_several_nodes_named_in_failures() -> None:
    simulation, first, _ = _two_nodes(1)
    simulation.run_sync(simulation.start())
    simulation.run_sync(
        first.schedule_many(
            [("note", Note(str(n)), Trigger.after(seconds=n)) for n in range(8)]
        )
    )
    simulation.run_sync(simulation.advance_by(timedelta(minutes=1)))
    simulation.close_sync()

    with pytest.raises(AssertionError) as failure:
        assert_not_run(simulation.runs(), "note")

    nodes_named = {line.split()[-1] for line in str(failure.value).splitlines()[2:]}
    assert nodes_named == {"node-a", "node-b"}


def test_fixture_simulation_drives_added_nodes(pytester: pytest.Pytester) -> None:
    write_project(
        pytester,
        """
        from fantasma import Trigger

        from handlers import Poll, PollHandler


        def test_second_node(
            fantasma_simulation, fantasma_storage, fantasma_scheduler, advance_time
        ):
            extra = fantasma_simulation.create_node(fantasma_storage, node_id="extra")
            extra.register(PollHandler)
            fantasma_scheduler.register(PollHandler)
            fantasma_scheduler.schedule("poll", Poll(), Trigger.after(minutes=1))

            advance_time(minutes=1)

            assert fantasma_scheduler.runs("poll").count == 1
            assert len(fantasma_simulation.nodes) == 2
        """,
    )

    result = pytester.runpytest()

    result.assert_outcomes(passed=1)
