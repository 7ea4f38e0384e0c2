"""A wall-clock jump on one node neither duplicates nor loses occurrences."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from fantasma import Trigger
from fantasma_testing import DEFAULT_START, AdvanceTime, SimulatedScheduler
from fantasma_testing.cluster import Cluster, ClusterNode
from tests.cluster.support import EVERY_10_S, Tick, TickHandler, seconds

START = DEFAULT_START
HOUR = timedelta(hours=1)

BuildCluster = Callable[..., Cluster]


def start_ticking(nodes: Cluster, cron: str = EVERY_10_S) -> None:
    nodes.register(TickHandler)
    scheduler = nodes[0].scheduler
    assert isinstance(scheduler, SimulatedScheduler)
    scheduler.schedule("tick", Tick(), Trigger.recurring("tick", cron))


def leader_of(nodes: Cluster) -> ClusterNode:
    leader = nodes.leader
    assert leader is not None, "no node holds the leader lease"
    return leader


def follower_of(nodes: Cluster) -> ClusterNode:
    leader = leader_of(nodes)
    return next(node for node in nodes if node is not leader)


def tick_fire_times(nodes: Cluster) -> list[datetime | None]:
    return [run.fire_time for run in nodes.runs]


def every_10_s(until: timedelta) -> list[datetime | None]:
    count = int(until / seconds(10))
    return [START + seconds(10 * k) for k in range(1, count + 1)]


def work_after(nodes: Cluster, node: ClusterNode, since: datetime) -> list[str]:
    return [
        action.kind
        for action in nodes.leader_actions
        if action.node_id == node.node_id and action.at >= since
    ]


@pytest.mark.parametrize("jump", [5 * 60, HOUR.total_seconds(), 24 * 3600])
def test_fast_follower_steals_nothing(
    cluster: BuildCluster, advance_time: AdvanceTime, jump: float
) -> None:
    nodes = cluster(n=3)
    start_ticking(nodes)
    jumped_at = advance_time(seconds=10.5)
    old_leader = leader_of(nodes)
    fast = follower_of(nodes)

    nodes.jump_clock(fast, seconds(jump))
    advance_time(minutes=5)

    assert nodes.leader is old_leader
    assert nodes.term == 1
    assert work_after(nodes, fast, jumped_at) == []
    assert tick_fire_times(nodes) == every_10_s(timedelta(minutes=5, seconds=10))


@pytest.mark.parametrize("jump", [5 * 60, HOUR.total_seconds(), 24 * 3600])
def test_fast_leader_steps_down(
    cluster: BuildCluster, advance_time: AdvanceTime, jump: float
) -> None:
    nodes = cluster(n=3)
    start_ticking(nodes)
    jumped_at = advance_time(seconds=10.5)
    fast = leader_of(nodes)

    nodes.jump_clock(fast, seconds(jump))
    advance_time(minutes=5)

    assert leader_of(nodes) is not fast
    assert nodes.term == 2
    assert work_after(nodes, fast, jumped_at) == ["release"]
    assert tick_fire_times(nodes) == every_10_s(timedelta(minutes=5, seconds=10))


@pytest.mark.parametrize("jump", [-5 * 60, -HOUR.total_seconds()])
def test_slow_leader_replaced(
    cluster: BuildCluster, advance_time: AdvanceTime, jump: float
) -> None:
    """A leader set back renews into the past by the others' clocks; they take over."""
    nodes = cluster(n=3)
    start_ticking(nodes)
    jumped_at = advance_time(seconds=10.5)
    slow = leader_of(nodes)

    nodes.jump_clock(slow, seconds(jump))
    advance_time(minutes=5)

    assert leader_of(nodes) is not slow
    assert nodes.term == 2
    assert set(work_after(nodes, slow, jumped_at)) <= {"materialise"}
    assert tick_fire_times(nodes) == every_10_s(timedelta(minutes=5, seconds=10))


@pytest.mark.parametrize("jump", [-5 * 60, -HOUR.total_seconds()])
def test_slow_follower_harmless(
    cluster: BuildCluster, advance_time: AdvanceTime, jump: float
) -> None:
    nodes = cluster(n=3)
    start_ticking(nodes)
    jumped_at = advance_time(seconds=10.5)
    old_leader = leader_of(nodes)
    slow = follower_of(nodes)

    nodes.jump_clock(slow, seconds(jump))
    advance_time(minutes=5)

    assert nodes.leader is old_leader
    assert work_after(nodes, slow, jumped_at) == []
    assert tick_fire_times(nodes) == every_10_s(timedelta(minutes=5, seconds=10))


def test_fast_node_leads_once_fixed(
    cluster: BuildCluster, advance_time: AdvanceTime
) -> None:
    nodes = cluster(n=3)
    start_ticking(nodes)
    advance_time(seconds=10.5)
    fast = follower_of(nodes)
    nodes.jump_clock(fast, HOUR)
    advance_time(minutes=1)

    nodes.jump_clock(fast, -HOUR)
    advance_time(minutes=1)
    for node in nodes:
        if node is not fast:
            nodes.kill(node)
    advance_time(minutes=1)

    assert nodes.leader is fast
    assert tick_fire_times(nodes) == every_10_s(timedelta(minutes=3, seconds=10))


def test_fast_node_restarts_as_follower(
    cluster: BuildCluster, advance_time: AdvanceTime
) -> None:
    """A process that starts with a fast clock looks twice before it takes over."""
    nodes = cluster(n=3)
    start_ticking(nodes)
    advance_time(seconds=10.5)
    fast = follower_of(nodes)
    nodes.jump_clock(fast, HOUR)
    nodes.restart(fast)
    restarted_at = advance_time(seconds=0)

    nodes.kill(leader_of(nodes))
    advance_time(minutes=2)

    assert leader_of(nodes) is not fast
    assert work_after(nodes, fast, restarted_at) == []
    fire_times = tick_fire_times(nodes)
    assert len(fire_times) == len(set(fire_times))


def test_two_nodes_fast_follower(
    cluster: BuildCluster, advance_time: AdvanceTime
) -> None:
    nodes = cluster(n=2)
    start_ticking(nodes)
    advance_time(seconds=10.5)
    old_leader = leader_of(nodes)

    nodes.jump_clock(follower_of(nodes), HOUR)
    advance_time(minutes=5)

    assert nodes.leader is old_leader
    assert tick_fire_times(nodes) == every_10_s(timedelta(minutes=5, seconds=10))


def test_small_skew_drops_no_future_fire(
    cluster: BuildCluster, advance_time: AdvanceTime
) -> None:
    """A new leader whose clock is 0.8 s fast collapses only fire times already past.

    The leader dies at 00:00:05.5. The follower's clock reaches the lease's
    expiry, 00:00:13, at 00:00:12.2 real time. It enqueues 00:00:07 as the
    catch-up run, and 00:00:12 and 00:00:13 are within the 1 s grace by its
    clock, so neither is dropped although 00:00:13 has not come yet.
    """
    nodes = cluster(n=2)
    start_ticking(nodes, "* * * * * *")
    advance_time(seconds=5.5)
    fast = follower_of(nodes)
    nodes.jump_clock(fast, seconds(0.8))

    nodes.kill(leader_of(nodes))
    advance_time(to=START + seconds(20))

    fire_times = tick_fire_times(nodes)
    assert nodes.leader is fast
    assert [START + seconds(s) for s in range(12, 21)] == [
        fire for fire in fire_times if fire is not None and fire >= START + seconds(12)
    ]
