"""Seeded random faults on a simulated cluster, checked after every step.

Each seed drives two to four nodes through random faults and clock moves,
over an every-10-seconds schedule, a daily one at 03:00 and one-off jobs.
The faults are kills (also from inside a running handler), pauses,
partitions (also of a leader right after it takes the lease), restarts with
the same or a new id, and wall-clock jumps of minutes to hours on one node
at a time. After every step (the checks of the job table every 25 steps in
the run of several days):

- No occurrence is enqueued twice: (recurring id, fire time) is unique
  across the storage's jobs.
- Leadership is exclusive: every accepted piece of leader work in a term
  comes from one node, and terms never go back.
- Nothing is lost silently: each accepted schedule step moves the schedule
  from where the previous one left it. The fire times a step passes over
  without enqueueing were dropped by the misfire policy, so each must be
  older than the grace period by the clock of the node that dropped it,
  and already past in real time.
- No job succeeds twice.
- Progress. The nodes can lead while a healthy node exists (running,
  connected and with a right clock), or two of them while a connected
  node's clock is slow. After a minute in which they could lead and no
  fault happened, no fire time is dropped any more, every schedule's
  position is less than a minute old, and every job due more than a minute
  ago has succeeded. A minute covers an 11 s failover, two heartbeats of
  clock checks and the 30 s lease of a job whose node died running it.

At the end every fault is repaired, and every job, one-off jobs included,
must have succeeded.

One node at a time has a wrong clock, and a fault that would leave it
connected without a healthy peer is skipped: alone, a node cannot tell
that its own clock is wrong. On failure the message names the seed and
duration and lists the events, and ``replay(seed, duration)`` runs the
same steps again.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest

from fantasma import (
    ClusterSettings,
    Cron,
    JobContext,
    JobHandler,
    JobId,
    JobStatus,
    MemoryStorage,
    RecurringJob,
    RunOutcome,
    Trigger,
)
from fantasma.jobs import Job
from fantasma_testing import SimulatedScheduler, Simulation
from fantasma_testing.cluster import Cluster, ClusterNode, LeaderAction, NodeState
from tests.cluster.support import DAILY_3AM, EVERY_10_S, Tick, TickHandler

SETTINGS = ClusterSettings()
WINDOW = timedelta(minutes=1)
SHORT_RUN = timedelta(hours=4)
LONG_RUN = timedelta(days=5)
SEEDS = range(50)


@dataclass
class Errand:
    """Data of a one-off job; ``crash`` kills the node running its first attempt."""

    label: str
    crash: bool = False


@dataclass
class World:
    """One seeded run: the cluster, its random source and what happened."""

    seed: int
    nodes: Cluster
    rng: random.Random
    events: list[str] = field(default_factory=list)
    errands: list[JobId] = field(default_factory=list)
    able_since: datetime | None = None
    disrupted: bool = False
    partition_next_leader: bool = False

    @property
    def simulation(self) -> Simulation:
        return self.nodes.simulation

    def now(self) -> datetime:
        return self.simulation.now()

    def log(self, text: str) -> None:
        self.events.append(f"{self.now().isoformat()} {text}")


# Conditions on the cluster


def is_healthy(node: ClusterNode) -> bool:
    return is_connected(node) and not node.clock.offset


def is_connected(node: ClusterNode) -> bool:
    return node.state == "running" and not node.partitioned


def clocks_checkable(nodes: Cluster) -> bool:
    """Whether every connected node with a wrong clock has a healthy peer."""
    skewed = any(is_connected(node) and node.clock.offset for node in nodes)
    return not skewed or any(is_healthy(node) for node in nodes)


def checkable_after(
    nodes: Cluster,
    node: ClusterNode,
    *,
    state: NodeState | None = None,
    partitioned: bool | None = None,
    offset: timedelta | None = None,
) -> bool:
    """Whether :func:`clocks_checkable` would hold after changing one node."""
    before = (node.state, node.partitioned, node.clock.offset)
    node.state = before[0] if state is None else state
    node.partitioned = before[1] if partitioned is None else partitioned
    node.clock.offset = before[2] if offset is None else offset
    try:
        return clocks_checkable(nodes)
    finally:
        node.state, node.partitioned, node.clock.offset = before


def can_lead(nodes: Cluster) -> bool:
    """Whether some node with a right clock can hold the lease."""
    healthy = sum(is_healthy(node) for node in nodes)
    slow_peer = any(
        is_connected(node) and node.clock.offset < timedelta(0) for node in nodes
    )
    return healthy >= 2 or (healthy == 1 and not slow_peer)


# Faults


def build_world(seed: int) -> World:
    simulation = Simulation(seed=seed)
    nodes = Cluster(
        simulation,
        MemoryStorage(),
        n=2 + seed % 3,
        settings=SETTINGS,
        job_lease=timedelta(seconds=30),
        asynchronous=False,
    )
    world = World(seed, nodes, random.Random(seed))

    class ErrandHandler(JobHandler[Errand]):
        async def handle(self, data: Errand, context: JobContext) -> None:
            if data.crash and context.attempt == 1:
                crash_running_node(world, context.node_id)

    def partition_new_leader(node: ClusterNode, term: int) -> None:
        if not world.partition_next_leader:
            return
        world.partition_next_leader = False
        if checkable_after(nodes, node, partitioned=True):
            world.log(f"partition {node.node_id} right after it took term {term}")
            nodes.partition(node)
            world.disrupted = True

    nodes.register(TickHandler)
    nodes.register(ErrandHandler)
    nodes.on_leadership(partition_new_leader)
    return world


def crash_running_node(world: World, node_id: str) -> None:
    node = next(node for node in world.nodes if node.node_id == node_id)
    # A node with a wrong clock claims jobs with leases by that clock, so a
    # crash would block the job for as long as the clock is off.
    if node.clock.offset or not checkable_after(world.nodes, node, state="killed"):
        return
    world.log(f"kill {node_id} inside a handler")
    world.nodes.kill(node)
    world.disrupted = True


def scheduler_of(node: ClusterNode) -> SimulatedScheduler:
    scheduler = node.scheduler
    assert isinstance(scheduler, SimulatedScheduler)
    return scheduler


def disrupt(world: World, text: str) -> None:
    world.log(text)
    world.disrupted = True


def random_step(world: World, end: datetime) -> None:
    """Apply one random fault or move the clock.

    A fault that would leave a node with a wrong clock without a healthy
    peer to compare with is skipped.
    """
    rng = world.rng
    nodes = world.nodes
    node = rng.choice(list(nodes))
    roll = rng.random()
    if roll < 0.40:
        advance(world, end, rng.uniform(0.5, 60))
    elif roll < 0.47:
        advance(world, end, rng.uniform(60, 1800))
    elif roll < 0.51:
        if node.state == "running" and checkable_after(nodes, node, state="killed"):
            disrupt(world, f"kill {node.node_id}")
            nodes.kill(node)
    elif roll < 0.55:
        if node.state == "running" and checkable_after(nodes, node, state="paused"):
            disrupt(world, f"pause {node.node_id}")
            nodes.pause(node)
    elif roll < 0.61:
        if node.state == "paused" and checkable_after(nodes, node, state="running"):
            disrupt(world, f"resume {node.node_id}")
            nodes.resume(node)
    elif roll < 0.65:
        if not node.partitioned and checkable_after(nodes, node, partitioned=True):
            disrupt(world, f"partition {node.node_id}")
            nodes.partition(node)
    elif roll < 0.70:
        if node.partitioned and checkable_after(nodes, node, partitioned=False):
            disrupt(world, f"heal {node.node_id}")
            nodes.heal(node)
    elif roll < 0.75:
        if checkable_after(nodes, node, state="running"):
            base_id = node.node_id.split("~")[0]
            new_id = f"{base_id}~{node.restarts + 1}" if rng.random() < 0.5 else None
            disrupt(world, f"restart {node.node_id} as {new_id or node.node_id}")
            nodes.restart(node, node_id=new_id)
    elif roll < 0.79:
        jump_clock(world, node)
    elif roll < 0.90:
        schedule_errand(world)
    elif roll < 0.92:
        world.log("partition the next node to take the lease")
        world.partition_next_leader = True
    else:
        advance(world, end, rng.uniform(0, 5))


def advance(world: World, end: datetime, seconds: float) -> None:
    target = min(world.now() + timedelta(seconds=seconds), end)
    world.simulation.run_sync(world.simulation.advance(target))


def jump_clock(world: World, node: ClusterNode) -> None:
    nodes = world.nodes
    skewed = next((other for other in nodes if other.clock.offset), None)
    if skewed is not None:
        disrupt(world, f"set the clock of {skewed.node_id} right")
        nodes.jump_clock(skewed, -skewed.clock.offset)
        return
    minutes = world.rng.choice([1, 5, 30, 60, 360])
    jump = timedelta(minutes=minutes * world.rng.choice([-1, 1]))
    if checkable_after(nodes, node, offset=jump):
        disrupt(world, f"jump the clock of {node.node_id} by {jump}")
        nodes.jump_clock(node, jump)


def schedule_errand(world: World) -> None:
    senders = [node for node in world.nodes if is_connected(node)]
    if not senders:
        return
    sender = world.rng.choice(senders)
    delay = timedelta(seconds=world.rng.uniform(0, 120))
    crash = world.rng.random() < 0.2
    label = f"errand-{len(world.errands)}"
    job_id = scheduler_of(sender).schedule(
        label, Errand(label, crash), Trigger.after(delay)
    )
    world.log(f"schedule {label} through {sender.node_id} in {delay} (crash={crash})")
    world.errands.append(job_id)


def repair_everything(world: World) -> None:
    nodes = world.nodes
    world.partition_next_leader = False
    for node in nodes:
        if node.clock.offset:
            nodes.jump_clock(node, -node.clock.offset)
        if node.partitioned:
            nodes.heal(node)
        if node.state == "paused":
            nodes.resume(node)
        elif node.state == "killed":
            nodes.restart(node)
    disrupt(world, "repair every node")


def update_able_since(world: World) -> None:
    """Restart the quiet period after a fault; end it while no node can lead."""
    if not can_lead(world.nodes):
        world.able_since = None
    elif world.disrupted or world.able_since is None:
        world.able_since = world.now()
    world.disrupted = False


# Checks


class Checker:
    """The invariants of the module docstring, checked step by step.

    Leader work and runs are checked as they are appended, so a run of
    days costs no more per step than a run of hours. The storage's jobs
    are scanned every ``scan_every`` steps and at the end.
    """

    def __init__(self, world: World, *, scan_every: int) -> None:
        self.world = world
        self.scan_every = scan_every
        self.steps = 0
        self.crons = {"tick": Cron(EVERY_10_S), "daily": Cron(DAILY_3AM)}
        self.positions = {
            recurring.id: recurring.next_fire_at for recurring in self.schedules()
        }
        self.actions_seen = 0
        self.runs_seen = 0
        self.holders: dict[int, str] = {}
        self.last_term = 0
        self.successes: set[JobId] = set()

    def schedules(self) -> list[RecurringJob]:
        simulation = self.world.simulation
        return simulation.run_sync(self.world.nodes.storage.list_recurring())

    def jobs(self) -> list[Job]:
        simulation = self.world.simulation
        return simulation.run_sync(self.world.nodes.storage.list_jobs())

    def after_step(self, able_before: datetime | None) -> None:
        self.steps += 1
        self.check_leader_work(able_before)
        self.check_single_success()
        if self.steps % self.scan_every == 0:
            self.check_storage()

    def check_leader_work(self, able_before: datetime | None) -> None:
        actions = self.world.nodes.leader_actions
        for action in actions[self.actions_seen :]:
            self.check_exclusive(action)
            if action.kind == "materialise":
                dropped = self.check_step(action)
                quiet_for = None if able_before is None else action.at - able_before
                assert not dropped or quiet_for is None or quiet_for < WINDOW, (
                    f"fire times {dropped} dropped after the nodes could lead "
                    f"for {quiet_for}: {action}"
                )
        self.actions_seen = len(actions)

    def check_exclusive(self, action: LeaderAction) -> None:
        if action.term is None:
            return
        holder = self.holders.setdefault(action.term, action.node_id)
        assert holder == action.node_id, (
            f"term {action.term} has two leaders, {holder} and {action.node_id}: "
            f"{action}"
        )
        assert action.term >= self.last_term, (
            f"leader work of term {action.term} after term {self.last_term}: {action}"
        )
        self.last_term = action.term

    def check_step(self, action: LeaderAction) -> list[datetime]:
        """Check one accepted schedule step; return the fire times it dropped."""
        recurring_id = action.recurring_id
        assert recurring_id is not None
        assert action.expected_next_fire_at is not None
        assert action.next_fire_at is not None
        assert action.expected_next_fire_at == self.positions[recurring_id], (
            f"{recurring_id} moved from {action.expected_next_fire_at}, not "
            f"from its stored position {self.positions[recurring_id]}: {action}"
        )
        assert action.fire_time in (None, action.expected_next_fire_at), action
        self.positions[recurring_id] = action.next_fire_at
        dropped = []
        fire = action.expected_next_fire_at
        while fire < action.next_fire_at:
            if fire != action.fire_time:
                dropped.append(fire)
            fire = self.crons[recurring_id].next_after(fire)
        for fire in dropped:
            assert fire < action.node_time - SETTINGS.misfire_grace, (
                f"{recurring_id} fire time {fire} dropped although it was within "
                f"the grace period by the dropping node's clock: {action}"
            )
            assert fire < action.at, (
                f"{recurring_id} fire time {fire} dropped before it came: {action}"
            )
        return dropped

    def check_single_success(self) -> None:
        runs = self.world.nodes.runs
        for run in runs[self.runs_seen :]:
            if run.outcome is not RunOutcome.SUCCEEDED:
                continue
            assert run.job_id not in self.successes, (
                f"job {run.job_id} succeeded twice: {run}"
            )
            self.successes.add(run.job_id)
        self.runs_seen = len(runs)

    def check_storage(self) -> None:
        jobs = self.jobs()
        keys = Counter(
            (job.recurring_id, job.fire_time) for job in jobs if job.recurring_id
        )
        twice = sorted(key for key, count in keys.items() if count > 1)
        assert twice == [], f"occurrences enqueued twice: {twice}"
        self.check_progress(jobs)

    def check_progress(self, jobs: list[Job]) -> None:
        world = self.world
        if world.disrupted:
            # A fault inside the last step, from a handler or a new leader.
            return
        if world.able_since is None or world.now() - world.able_since < WINDOW:
            return
        horizon = world.now() - WINDOW
        for recurring in self.schedules():
            assert recurring.next_fire_at > horizon, (
                f"schedule {recurring.id} is stuck at {recurring.next_fire_at} "
                f"although the nodes could lead since {world.able_since}"
            )
        unfinished = [
            job.id
            for job in jobs
            if job.due_at <= horizon and job.status is not JobStatus.SUCCEEDED
        ]
        assert unfinished == [], (
            f"jobs due before {horizon} that have not succeeded: {unfinished}"
        )


# Running


def replay(seed: int, duration: timedelta, *, scan_every: int = 1) -> World:
    """Run one seeded scenario for ``duration`` of simulated time, checking each step.

    Raises:
        AssertionError: An invariant failed; the message names the seed and
            lists every event up to the failure.
    """
    world = build_world(seed)
    simulation = world.simulation
    try:
        scheduler = scheduler_of(world.nodes[0])
        scheduler.schedule("tick", Tick(), Trigger.recurring("tick", EVERY_10_S))
        scheduler.schedule("daily", Tick(), Trigger.recurring("daily", DAILY_3AM))
        checker = Checker(world, scan_every=scan_every)
        end = world.now() + duration
        world.able_since = world.now()
        while world.now() < end:
            able_before = world.able_since
            random_step(world, end)
            checker.after_step(able_before)
            update_able_since(world)

        repair_everything(world)
        update_able_since(world)
        simulation.run_sync(simulation.advance(world.now() + 2 * WINDOW))
        checker.after_step(world.able_since)
        checker.check_storage()
        succeeded = {
            job.id for job in checker.jobs() if job.status is JobStatus.SUCCEEDED
        }
        unfinished = [job_id for job_id in world.errands if job_id not in succeeded]
        assert unfinished == [], f"one-off jobs that never succeeded: {unfinished}"
    except AssertionError as error:
        events = "\n".join(world.events)
        raise AssertionError(
            f"{error}\n\nreplay(seed={seed}, duration={duration!r}); events:\n{events}"
        ) from None
    finally:
        simulation.close_sync()
    return world


@pytest.mark.parametrize("seed", SEEDS)
def test_random_faults(seed: int) -> None:
    world = replay(seed, SHORT_RUN)

    assert world.events != []


def test_random_faults_for_days() -> None:
    world = replay(1_000, LONG_RUN, scan_every=25)

    daily_runs = [run for run in world.nodes.runs if run.name == "daily"]
    assert len(daily_runs) >= 3
