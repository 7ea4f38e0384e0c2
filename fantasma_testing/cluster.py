"""Simulated cluster: nodes on one storage that a test can crash, pause and cut off."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, final

import pytest

from fantasma import (
    ClusterSettings,
    Fantasma,
    JobHandler,
    LeaderLease,
    Run,
    Storage,
    StorageUnavailableError,
)
from fantasma.jobs import JobId
from fantasma_testing._node_storage import NodeCrashed, NodeStorage
from fantasma_testing.clock import FakeClock
from fantasma_testing.driver import SimulationError
from fantasma_testing.executor import DeterministicExecutor
from fantasma_testing.simulated_scheduler import (
    AsyncSimulatedScheduler,
    SimulatedScheduler,
)
from fantasma_testing.simulation import Runs, Simulation

__all__ = [
    "Cluster",
    "ClusterNode",
    "LeaderAction",
    "NodeClock",
    "NodeState",
    "cluster",
]

logger = logging.getLogger(__name__)

NodeState = Literal["running", "paused", "killed"]
"""Whether a simulated node does passes (running), skips them (paused), or is gone."""

_NEVER = datetime.max.replace(tzinfo=UTC)
_ERROR_BACKOFF = timedelta(seconds=1)


@final
class NodeClock:
    """A node's own wall clock: the simulation's fake time plus an offset.

    It satisfies the :class:`fantasma.Clock` protocol. A test moves the
    offset with :meth:`Cluster.jump_clock` to simulate a wall-clock jump on
    one node while the others keep the simulation's time.
    """

    def __init__(self, base: FakeClock) -> None:
        self._base = base
        self.offset = timedelta(0)

    @property
    def base(self) -> FakeClock:
        """The simulation's clock, which this clock follows."""
        return self._base

    def now(self) -> datetime:
        return self._base.now() + self.offset

    async def sleep_until(
        self, deadline: datetime, wake: asyncio.Event | None = None
    ) -> bool:
        return await self._base.sleep_until(deadline - self.offset, wake)


@final
@dataclass(frozen=True, slots=True)
class LeaderAction:
    """One piece of leader work that the storage accepted, as the cluster saw it.

    ``kind`` is one of:

    - ``"acquire"``: a lease taken, with its new term.
    - ``"release"``: a lease given up.
    - ``"materialise"``: one schedule moved from ``expected_next_fire_at``
      to ``next_fire_at``, enqueueing ``fire_time``, or nothing when it is
      ``None``.
    - ``"requeue"``: the jobs in ``job_ids``, whose lease expired, were
      released. ``term`` is that of the lease the node held, if any.

    ``at`` is the simulation's time and ``node_time`` the node's own clock.
    """

    kind: str
    node_id: str
    term: int | None
    at: datetime
    node_time: datetime
    recurring_id: str | None = None
    fire_time: datetime | None = None
    expected_next_fire_at: datetime | None = None
    next_fire_at: datetime | None = None
    job_ids: tuple[JobId, ...] = ()


class _SimulatedNode(Fantasma):
    """A scheduler node whose passes stop when the cluster kills, pauses or cuts it.

    The simulation's driver calls :meth:`run_pending`, which returns wake-up
    times by the simulation's clock even when the node's own clock is
    offset.
    """

    def __init__(self, storage: NodeStorage, member: ClusterNode, **options: Any):
        super().__init__(storage, **options)
        self._member = member

    async def run_pending(self) -> datetime:
        member = self._member
        if member.app is not self or member.state != "running":
            return _NEVER
        clock = member.clock
        try:
            wake = await super().run_pending()
        except NodeCrashed:
            return _NEVER
        except StorageUnavailableError:
            if not member.partitioned:
                raise
            # What the real node loop does: back off and try again.
            return clock.base.now() + _ERROR_BACKOFF
        return wake - clock.offset


@final
class ClusterNode:
    """One node slot of a simulated cluster, across the restarts of its process.

    ``app`` is the current process's :class:`fantasma.Fantasma`;
    :meth:`Cluster.restart` replaces it. ``scheduler`` wraps ``app`` like
    the ``fantasma_scheduler`` fixture does (plain calls in sync tests,
    awaited ones in async tests), for scheduling through this node.
    """

    def __init__(self, cluster: Cluster, index: int, node_id: str) -> None:
        self.cluster = cluster
        self.index = index
        self.node_id = node_id
        self.state: NodeState = "running"
        self.partitioned = False
        self.clock = NodeClock(cluster.simulation.clock)
        self.restarts = 0
        self._runs: list[Run] = []
        self.app: Fantasma = self._build_app()
        self.scheduler: SimulatedScheduler | AsyncSimulatedScheduler = (
            self._build_scheduler()
        )

    def _build_app(self) -> Fantasma:
        cluster = self.cluster
        app = _SimulatedNode(
            NodeStorage(cluster.storage, self),
            self,
            clock=self.clock,
            executor=DeterministicExecutor(),
            node_id=self.node_id,
            job_lease=cluster.job_lease,
            cluster=cluster.settings,
            seed=cluster.simulation.seed + 1000 * self.restarts + self.index,
        )
        for handler in cluster.handlers:
            app.register(handler)
        app.add_run_listener(self._runs.append)
        return app

    def _build_scheduler(self) -> SimulatedScheduler | AsyncSimulatedScheduler:
        simulation = self.cluster.simulation
        if self.cluster.asynchronous:
            return AsyncSimulatedScheduler(self.app, simulation)
        return SimulatedScheduler(self.app, simulation)

    @property
    def runs(self) -> Runs:
        """Runs this slot's processes reported, in the order they finished."""
        return Runs(list(self._runs))

    @property
    def is_leader(self) -> bool:
        """Whether this node holds the stored lease, unexpired at the simulated time."""
        return self.cluster.leader is self

    def __repr__(self) -> str:
        flags: list[str] = [self.state]
        if self.partitioned:
            flags.append("partitioned")
        if self.clock.offset:
            flags.append(f"clock {self.clock.offset:+}")
        return f"<ClusterNode {self.node_id} {' '.join(flags)}>"


class Cluster:
    """Scheduler nodes sharing one storage and the test's simulation.

    The ``cluster`` fixture builds it; index it for a :class:`ClusterNode`.
    Every method takes a node index or a :class:`ClusterNode` and acts at
    once, also from inside a handler while time advances. Nothing here
    moves time: ``advance_time`` lets every running node act, in the order
    the test's seed draws.
    """

    def __init__(
        self,
        simulation: Simulation,
        storage: Storage,
        *,
        n: int,
        settings: ClusterSettings,
        job_lease: timedelta,
        asynchronous: bool,
    ) -> None:
        if n < 1:
            raise ValueError(f"a cluster needs at least one node, got n={n!r}")
        self.simulation = simulation
        self.storage = storage
        self.settings = settings
        self.job_lease = job_lease
        self.asynchronous = asynchronous
        self.handlers: list[type[JobHandler[Any]]] = []
        self.leader_actions: list[LeaderAction] = []
        self.rejected_writes: list[LeaderAction] = []
        self._stored_lease: LeaderLease | None = None
        self._leadership_callbacks: list[Callable[[ClusterNode, int], None]] = []
        self._storage_started = False
        self._nodes = [ClusterNode(self, index, f"node-{index}") for index in range(n)]
        for node in self._nodes:
            simulation.add_node(node.app)
        self._start_if_sync()

    # Nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def __getitem__(self, index: int) -> ClusterNode:
        return self._nodes[index]

    def __iter__(self) -> Iterator[ClusterNode]:
        return iter(self._nodes)

    def _node(self, node: int | ClusterNode) -> ClusterNode:
        if isinstance(node, ClusterNode):
            if node.cluster is not self:
                raise ValueError(f"{node!r} belongs to another cluster")
            return node
        return self._nodes[node]

    # Setup

    def register(self, handler_class: type[JobHandler[Any]]) -> None:
        """Register a handler class on every node, including later restarts."""
        self.handlers.append(handler_class)
        for node in self._nodes:
            node.app.register(handler_class)

    def on_leadership(self, callback: Callable[[ClusterNode, int], None]) -> None:
        """Call ``callback(node, term)`` whenever a node takes the lease in a new term.

        It runs inside the node's pass, right after the storage accepted the
        lease and before the node does any leader work, so it can cut off
        or kill a new leader at the worst moment.
        """
        self._leadership_callbacks.append(callback)

    # Faults

    def kill(self, node: int | ClusterNode) -> None:
        """Crash a node's process: no more passes, and nothing is cleaned up.

        Its heartbeat row, leader lease and claimed jobs stay in storage,
        as a killed process leaves them. Called from a handler running on
        that node, the pass ends at the node's next storage call, so the
        job stays claimed and runs again once its lease expires.
        """
        member = self._node(node)
        if member.state == "killed":
            return
        member.state = "killed"
        self._forget(member)
        logger.info("simulated crash of node %s", member.node_id)

    def pause(self, node: int | ClusterNode) -> None:
        """Stop a node's passes, as a stopped process or a long pause would.

        Its clock and state stay as they are until :meth:`resume`.
        """
        member = self._running(node, "pause")
        member.state = "paused"
        self._exclude(member)

    def resume(self, node: int | ClusterNode) -> None:
        """Let a paused node do passes again, with whatever state it had."""
        member = self._node(node)
        if member.state != "paused":
            raise SimulationError(
                f"cannot resume node {member.node_id!r}: it is {member.state}, "
                "not paused"
            )
        member.state = "running"
        if member.app in self.simulation.nodes:
            self.simulation.include(member.app)

    def restart(self, node: int | ClusterNode, *, node_id: str | None = None) -> None:
        """Replace a node's process with a fresh one, killing the old one first.

        The new process keeps the node id unless ``node_id`` gives a new one.
        With the same id it can renew the old process's unexpired lease
        without a new term. That is only safe because the old process is
        gone, and two live processes must never share an id. Partition and
        clock offset are kept; the new process starts at the next
        ``advance_time``.
        """
        member = self._node(node)
        if member.state != "killed":
            member.state = "killed"
            self._forget(member)
        if node_id is not None:
            member.node_id = node_id
        member.restarts += 1
        member.state = "running"
        member.app = member._build_app()
        member.scheduler = member._build_scheduler()
        self.simulation.add_node(member.app)
        self._start_if_sync()

    def _start_if_sync(self) -> None:
        """Start new nodes at once in a sync test, so that they accept calls."""
        if self.asynchronous:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self.simulation.run_sync(self.simulation.start())

    def partition(self, node: int | ClusterNode) -> None:
        """Cut a node off from storage until :meth:`heal`.

        Each of its storage calls raises
        :class:`~fantasma.StorageUnavailableError`, so its passes fail and
        retry every second, as a node loop does during a database outage.
        """
        self._node(node).partitioned = True

    def heal(self, node: int | ClusterNode) -> None:
        """Reconnect a node that :meth:`partition` cut off."""
        self._node(node).partitioned = False

    def jump_clock(self, node: int | ClusterNode, delta: timedelta) -> None:
        """Move one node's wall clock by ``delta`` (negative to go back).

        The other nodes keep the simulation's time; the node's offset is
        the sum of its jumps.
        """
        member = self._node(node)
        member.clock.offset += delta

    def _running(self, node: int | ClusterNode, verb: str) -> ClusterNode:
        member = self._node(node)
        if member.state != "running":
            raise SimulationError(
                f"cannot {verb} node {member.node_id!r}: it is {member.state}"
            )
        return member

    def _exclude(self, member: ClusterNode) -> None:
        if member.app in self.simulation.nodes:
            self.simulation.exclude(member.app)

    def _forget(self, member: ClusterNode) -> None:
        # A crashed process is never stopped, so the simulation must not
        # stop it at the end of the test either.
        if member.app in self.simulation.nodes:
            self.simulation.remove_node(member.app)

    # Observation

    @property
    def leader(self) -> ClusterNode | None:
        """The node holding the stored lease, unexpired at the simulation's time."""
        lease = self._stored_lease
        if lease is None or lease.expires_at <= self.simulation.now():
            return None
        for member in self._nodes:
            if member.node_id == lease.holder:
                return member
        return None

    @property
    def term(self) -> int | None:
        """The term of the stored lease, expired or not; ``None`` before the first."""
        return None if self._stored_lease is None else self._stored_lease.term

    @property
    def runs(self) -> Runs:
        """Runs of every node, in the order they finished."""
        return self.simulation.runs()

    def running_nodes(self) -> list[ClusterNode]:
        """Return the nodes that are neither paused nor killed."""
        return [node for node in self._nodes if node.state == "running"]

    # Reports from node storage

    async def _start_storage(self) -> None:
        if not self._storage_started:
            self._storage_started = True
            await self.storage.start()

    def _record(
        self,
        kind: str,
        member: ClusterNode,
        term: int | None,
        **details: Any,
    ) -> None:
        self.leader_actions.append(
            LeaderAction(
                kind,
                member.node_id,
                term,
                self.simulation.now(),
                member.clock.now(),
                **details,
            )
        )

    def _record_rejected(self, member: ClusterNode, term: int, **details: Any) -> None:
        self.rejected_writes.append(
            LeaderAction(
                "materialise",
                member.node_id,
                term,
                self.simulation.now(),
                member.clock.now(),
                **details,
            )
        )

    def _lease_stored(
        self, lease: LeaderLease, member: ClusterNode, *, acquired: bool
    ) -> None:
        previous = self._stored_lease
        self._stored_lease = lease
        if not acquired or (previous is not None and previous.term == lease.term):
            return
        self._record("acquire", member, lease.term)
        for callback in list(self._leadership_callbacks):
            callback(member, lease.term)

    def _lease_released(self, lease: LeaderLease, member: ClusterNode) -> None:
        stored = self._stored_lease
        if stored is not None and (stored.holder, stored.term) == (
            lease.holder,
            lease.term,
        ):
            self._stored_lease = LeaderLease(
                lease.holder, lease.term, datetime.min.replace(tzinfo=UTC)
            )
            self._record("release", member, lease.term)


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest,
    fantasma_simulation: Simulation,
    fantasma_storage: Storage,
) -> Callable[..., Cluster]:
    """Build a simulated cluster of scheduler nodes on the test's simulation.

    Function scope. Call it once: ``nodes = cluster(n=3)`` starts nodes
    ``node-0`` to ``node-2`` on the ``fantasma_storage`` (memory unless the
    ``fantasma`` marker or ``--fantasma-storage`` chooses another backend),
    all reading the test's fake clock, with the default
    :class:`fantasma.ClusterSettings` so that leases and failovers take
    their real time. Keyword ``settings`` and ``job_lease`` change that.
    ``advance_time`` drives every running node, in an order drawn from the
    test's seed. Teardown stops the nodes that were not killed.

    The returned :class:`~fantasma_testing.cluster.Cluster` offers:

    - ``register(Handler)``, to register a handler on every node;
    - ``kill(i)``, ``pause(i)``, ``resume(i)``, ``restart(i, node_id=None)``,
      ``partition(i)``, ``heal(i)`` and ``jump_clock(i, delta)``;
    - ``leader``, ``term``, ``runs``, ``leader_actions`` and
      ``rejected_writes``, to inspect what happened.

    ``nodes[i].scheduler`` schedules through node i, and ``nodes[i].runs``
    lists its runs.

    Example::

        def test_failover(cluster, advance_time):
            nodes = cluster(n=3)
            nodes.register(PollHandler)
            every_10_s = Trigger.recurring("poll", "*/10 * * * * *")
            nodes[0].scheduler.schedule("poll", Poll(), every_10_s)
            advance_time(seconds=5)
            nodes.kill(nodes.leader.index)
            advance_time(minutes=1)
            assert nodes.term == 2
    """
    from fantasma_testing.plugin import is_async_request

    # Decided now: while an async test runs, its function is wrapped in a
    # plain one by the plugin that runs it.
    asynchronous = is_async_request(request)
    built: list[Cluster] = []

    def build(
        n: int = 3,
        *,
        settings: ClusterSettings | None = None,
        job_lease: timedelta = timedelta(seconds=30),
    ) -> Cluster:
        if built:
            raise SimulationError("the cluster fixture builds one cluster per test")
        nodes = Cluster(
            fantasma_simulation,
            fantasma_storage,
            n=n,
            settings=settings or ClusterSettings(),
            job_lease=job_lease,
            asynchronous=asynchronous,
        )
        built.append(nodes)
        return nodes

    return build
