"""Leader election, failover and recovery on a simulated three-node cluster."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from fantasma import ClusterSettings, JobContext, JobHandler, JobStatus, Trigger
from fantasma_testing import DEFAULT_START, AdvanceTime, SimulatedScheduler
from fantasma_testing.cluster import Cluster, ClusterNode
from tests.cluster.support import (
    EVERY_10_S,
    Chore,
    ChoreHandler,
    Tick,
    TickHandler,
    seconds,
)

START = DEFAULT_START

BuildCluster = Callable[..., Cluster]


def sync_scheduler(node: ClusterNode) -> SimulatedScheduler:
    scheduler = node.scheduler
    assert isinstance(scheduler, SimulatedScheduler)
    return scheduler


def leader_of(nodes: Cluster) -> ClusterNode:
    leader = nodes.leader
    assert leader is not None, "no node holds the leader lease"
    return leader


def tick_fire_times(nodes: Cluster) -> list[datetime | None]:
    return [run.fire_time for run in nodes.runs if run.name == "tick"]


def start_ticking(nodes: Cluster, cron: str = EVERY_10_S) -> None:
    nodes.register(TickHandler)
    nodes.register(ChoreHandler)
    sync_scheduler(nodes[0]).schedule("tick", Tick(), Trigger.recurring("tick", cron))


def acquired_at(nodes: Cluster, term: int) -> datetime:
    for action in nodes.leader_actions:
        if action.kind == "acquire" and action.term == term:
            return action.at
    raise AssertionError(f"no node acquired term {term}: {nodes.leader_actions}")


# Election


def test_one_leader_elected(cluster: BuildCluster, advance_time: AdvanceTime) -> None:
    nodes = cluster(n=3)

    advance_time(seconds=1)

    assert [node.app.is_leader for node in nodes].count(True) == 1
    assert nodes.leader is not None
    assert nodes.term == 1


def test_no_leader_before_time_moves(cluster: BuildCluster) -> None:
    nodes = cluster(n=3)

    assert nodes.leader is None
    assert nodes.term is None


# Failover


def test_takeover_at_lease_expiry(
    cluster: BuildCluster, advance_time: AdvanceTime
) -> None:
    """Renewed at 00:00:03, a leader killed at 00:00:05 is replaced at 00:00:13."""
    nodes = cluster(n=3)
    advance_time(seconds=5)
    old_leader = leader_of(nodes)

    nodes.kill(old_leader)
    advance_time(seconds=20)

    assert leader_of(nodes) is not old_leader
    assert nodes.term == 2
    assert acquired_at(nodes, 2) == START + seconds(13)


def test_takeover_within_bound(
    cluster: BuildCluster, advance_time: AdvanceTime
) -> None:
    """Killed right after a renewal, the worst case, a leader is replaced in 11 s."""
    nodes = cluster(n=3)
    advance_time(seconds=3)
    killed_at = advance_time(seconds=0)

    nodes.kill(leader_of(nodes))
    advance_time(seconds=30)

    takeover = acquired_at(nodes, 2) - killed_at
    assert takeover == ClusterSettings().takeover_bound - seconds(1)
    assert takeover <= seconds(15)


def test_queued_jobs_run_during_failover(
    cluster: BuildCluster, advance_time: AdvanceTime
) -> None:
    nodes = cluster(n=3)
    nodes.register(ChoreHandler)
    advance_time(seconds=4)
    leader = leader_of(nodes)
    follower = next(node for node in nodes if node is not leader)
    for second in range(5, 15):
        sync_scheduler(follower).schedule(
            "chore", Chore(str(second)), Trigger.at(START + seconds(second))
        )

    nodes.kill(leader)
    advance_time(seconds=20)

    runs = nodes.runs
    assert [run.started_at for run in runs] == [
        START + seconds(second) for second in range(5, 15)
    ]
    assert {run.node_id for run in runs} <= {node.node_id for node in nodes} - {
        leader.node_id
    }


def test_missed_occurrence_caught_up(
    cluster: BuildCluster, advance_time: AdvanceTime
) -> None:
    """00:00:10 falls due while no node leads; the new leader runs it at 00:00:13."""
    nodes = cluster(n=3)
    start_ticking(nodes)
    advance_time(seconds=5)

    nodes.kill(leader_of(nodes))
    advance_time(seconds=30)

    assert [(run.fire_time, run.started_at) for run in nodes.runs] == [
        (START + seconds(10), START + seconds(13)),
        (START + seconds(20), START + seconds(20)),
        (START + seconds(30), START + seconds(30)),
    ]


def test_failover_collapses_missed_seconds(
    cluster: BuildCluster, advance_time: AdvanceTime
) -> None:
    """An every-second job during a failover from 00:00:05.5 to 00:00:13.

    00:00:06 was enqueued before the leader died and runs on time. At
    00:00:13 the new leader finds 07 to 11 missed (older than the 1 s
    grace): 07 runs as the one catch-up run, 08 to 11 are dropped, and 12
    is within the grace, so it runs too.
    """
    nodes = cluster(n=3)
    start_ticking(nodes, "* * * * * *")
    advance_time(seconds=5.5)

    nodes.kill(leader_of(nodes))
    advance_time(to=START + seconds(16))

    runs = [(run.fire_time, run.started_at) for run in nodes.runs]
    assert runs[:6] == [(START + seconds(s), START + seconds(s)) for s in range(1, 7)]
    assert runs[6:] == [
        (START + seconds(7), START + seconds(13)),
        (START + seconds(12), START + seconds(13)),
        (START + seconds(13), START + seconds(13)),
        (START + seconds(14), START + seconds(14)),
        (START + seconds(15), START + seconds(15)),
        (START + seconds(16), START + seconds(16)),
    ]


def test_occurrences_run_once_through_failovers(
    cluster: BuildCluster, advance_time: AdvanceTime
) -> None:
    """Ten failovers in ten minutes: no fire time runs twice."""
    nodes = cluster(n=3)
    start_ticking(nodes)
    advance_time(seconds=1)
    for _ in range(10):
        old_leader = leader_of(nodes)
        nodes.kill(old_leader)
        advance_time(seconds=30)
        nodes.restart(old_leader)
        advance_time(seconds=30)

    fire_times = tick_fire_times(nodes)
    assert len(fire_times) == len(set(fire_times))
    assert nodes.term == 11


# Pause and partition


def test_paused_leader_yields_on_resume(
    cluster: BuildCluster, advance_time: AdvanceTime
) -> None:
    nodes = cluster(n=3)
    start_ticking(nodes)
    advance_time(seconds=4)
    old_leader = leader_of(nodes)

    nodes.pause(old_leader)
    advance_time(seconds=30)
    nodes.resume(old_leader)
    advance_time(seconds=30)

    assert old_leader.app.lease is None
    assert leader_of(nodes) is not old_leader
    assert nodes.term == 2


def test_resumed_leader_checks_lease_first(
    cluster: BuildCluster, advance_time: AdvanceTime
) -> None:
    """Back from a pause with occurrences due, a node renews before it enqueues.

    The follower that takes over in term 2 is cut off at once, so the
    every-second schedule is overdue when the old leader resumes at
    00:00:30. Its first pass must find its term-1 lease gone before it
    touches the schedule. It leads in a term of its own two heartbeats
    later: the heartbeat its peer wrote during the pause looks like a clock
    running behind until the row stops changing.
    """
    nodes = cluster(n=2)
    start_ticking(nodes, "* * * * * *")
    advance_time(seconds=4)
    old_leader = leader_of(nodes)
    nodes.on_leadership(lambda node, term: nodes.partition(node) if term == 2 else None)
    nodes.pause(old_leader)
    advance_time(seconds=26)
    resumed_at = advance_time(seconds=0)

    nodes.resume(old_leader)
    advance_time(seconds=5)

    stale_work = [
        action
        for action in nodes.leader_actions
        if action.node_id == old_leader.node_id
        and action.at >= resumed_at
        and action.term != 3
    ]
    attempted = [
        action
        for action in nodes.rejected_writes
        if action.node_id == old_leader.node_id
    ]
    assert stale_work == []
    assert attempted == []
    assert nodes.leader is old_leader
    assert nodes.term == 3


def test_partitioned_leader_replaced(
    cluster: BuildCluster, advance_time: AdvanceTime
) -> None:
    nodes = cluster(n=3)
    start_ticking(nodes)
    advance_time(seconds=4)
    old_leader = leader_of(nodes)

    nodes.partition(old_leader)
    advance_time(seconds=30)

    assert old_leader.app.is_leader is False
    assert leader_of(nodes) is not old_leader
    assert nodes.term == 2


def test_healed_node_runs_jobs_again(
    cluster: BuildCluster, advance_time: AdvanceTime
) -> None:
    nodes = cluster(n=3)
    start_ticking(nodes)
    advance_time(seconds=4)
    old_leader = leader_of(nodes)
    nodes.partition(old_leader)
    advance_time(seconds=30)
    healed_at = advance_time(seconds=0)

    nodes.heal(old_leader)
    advance_time(minutes=10)

    fire_times = tick_fire_times(nodes)
    assert len(fire_times) == len(set(fire_times))
    assert any(run.started_at > healed_at for run in old_leader.runs)
    assert old_leader.app.lease is None


# Crashes and restarts


def test_crash_mid_job_reruns_job(
    cluster: BuildCluster, advance_time: AdvanceTime
) -> None:
    """A node dies inside a handler: the job runs again after its 30 s lease."""
    nodes = cluster(n=3)
    attempts: list[int] = []

    class CrashOnceHandler(JobHandler[Chore]):
        async def handle(self, data: Chore, context: JobContext) -> None:
            attempts.append(context.attempt)
            if context.attempt == 1:
                nodes.kill(next(n for n in nodes if n.node_id == context.node_id))

    nodes.register(CrashOnceHandler)
    advance_time(seconds=1)
    job_id = sync_scheduler(nodes[0]).schedule(
        "chore", Chore("crash"), Trigger.after(seconds=1)
    )

    advance_time(minutes=2)
    survivor = next(node for node in nodes if node.state == "running")
    job = sync_scheduler(survivor).get_job(job_id)

    assert attempts == [1, 2]
    assert job.status is JobStatus.SUCCEEDED
    assert [run.attempt for run in nodes.runs] == [2]
    assert any(job_id in action.job_ids for action in nodes.leader_actions)


def test_restart_same_id_keeps_term(
    cluster: BuildCluster, advance_time: AdvanceTime
) -> None:
    nodes = cluster(n=3)
    advance_time(seconds=4)
    old_leader = leader_of(nodes)

    nodes.restart(old_leader)
    advance_time(seconds=1)

    assert nodes.leader is old_leader
    assert nodes.term == 1
    assert old_leader.restarts == 1


def test_restart_new_id_waits_for_expiry(
    cluster: BuildCluster, advance_time: AdvanceTime
) -> None:
    nodes = cluster(n=1)
    advance_time(seconds=4)

    nodes.restart(0, node_id="node-0-again")
    advance_time(seconds=8)
    term_before_expiry = nodes.term
    advance_time(seconds=3)

    assert term_before_expiry == 1
    assert nodes.leader is nodes[0]
    assert nodes[0].node_id == "node-0-again"
    assert acquired_at(nodes, 2) == START + seconds(13)


# Replay


@pytest.mark.parametrize("n", [1, 2])
def test_small_clusters_elect_leader(
    cluster: BuildCluster, advance_time: AdvanceTime, n: int
) -> None:
    nodes = cluster(n=n)
    start_ticking(nodes)

    advance_time(minutes=1)

    assert nodes.term == 1
    assert tick_fire_times(nodes) == [START + seconds(10 * k) for k in range(1, 7)]


def test_cluster_built_once(cluster: BuildCluster) -> None:
    cluster(n=2)

    with pytest.raises(
        RuntimeError, match=r"^the cluster fixture builds one cluster per test$"
    ):
        cluster(n=2)


def test_job_lease_option(cluster: BuildCluster) -> None:
    nodes = cluster(n=2, job_lease=timedelta(minutes=5))

    assert nodes.job_lease == timedelta(minutes=5)
