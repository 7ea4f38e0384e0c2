"""Simulation: one test's fake clock, its scheduler nodes, and the runs they report."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeAlias, TypeVar, final, overload

from fantasma import ClusterSettings, Fantasma, JobHandler, Run, RunOutcome, Storage
from fantasma.handlers import HandlerFactory, HandlerRegistry
from fantasma_testing import driver
from fantasma_testing.clock import DEFAULT_START, FakeClock
from fantasma_testing.driver import SimulationError
from fantasma_testing.executor import DeterministicExecutor
from fantasma_testing.freezegun_bridge import check_freezegun, follow_clock

__all__ = [
    "SINGLE_NODE_SETTINGS",
    "RunSelector",
    "Runs",
    "Simulation",
    "describe_selector",
    "run_predicate",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

SINGLE_NODE_SETTINGS = ClusterSettings(
    lease_period=timedelta(days=1),
    renew_interval=timedelta(hours=1),
    heartbeat_interval=timedelta(hours=1),
    lookahead=timedelta(0),
)
"""Cluster timings for a simulated node that has the storage to itself.

The leader lease lasts a day and is renewed every hour, and heartbeats are
hourly, so these timers stop the fake clock rarely. Occurrences are enqueued
at their fire time (no lookahead), so a handler's clock reads its due time.
Simulated clusters that test failover want shorter, realistic leases instead.
"""

RunSelector: TypeAlias = str | type[JobHandler[Any]] | None
"""Picks runs: a job name or job id, a handler class, or ``None`` for every run."""


def run_predicate(selector: RunSelector) -> Callable[[Run], bool]:
    """Return a function that checks whether a run matches ``selector``.

    A string matches runs whose job name or job id equals it. A handler
    class matches runs of the data type it is registered for.

    Raises:
        TypeError: ``selector`` is not a string, a JobHandler subclass or None.
    """
    if selector is None:
        return lambda run: True
    if isinstance(selector, str):
        return lambda run: run.name == selector or run.job_id == selector
    if isinstance(selector, type) and issubclass(selector, JobHandler):
        # A throwaway registry computes the stored type name exactly as the
        # scheduler's own registry does.
        type_name = HandlerRegistry().register(selector).type_name
        return lambda run: run.type_name == type_name
    raise TypeError(
        f"select runs by job name, job id or JobHandler subclass, got {selector!r}"
    )


def describe_selector(selector: RunSelector) -> str:
    """Return how failure messages name the runs ``selector`` picks."""
    if selector is None:
        return "any job"
    if isinstance(selector, str):
        return repr(selector)
    return selector.__qualname__


@final
class Runs:
    """Runs in the order they finished, as :meth:`Simulation.runs` returns them.

    It behaves as a read-only sequence of :class:`fantasma.Run` records:
    index it, slice it, iterate it, or take its ``len``. Each run has its ``due_at``,
    ``started_at``, ``finished_at``, ``attempt``, ``outcome``, ``error`` and
    ``node_id``.
    """

    __slots__ = ("_runs",)

    def __init__(self, runs: Sequence[Run]) -> None:
        self._runs = runs

    @property
    def count(self) -> int:
        """The number of runs."""
        return len(self._runs)

    @property
    def due_times(self) -> list[datetime]:
        """The due time (UTC) of each run, in order."""
        return [run.due_at for run in self._runs]

    def where(
        self,
        *,
        outcome: RunOutcome | str | None = None,
        node_id: str | None = None,
    ) -> Runs:
        """Return the runs with this outcome and on this node, when given."""
        return Runs(
            [
                run
                for run in self._runs
                if (outcome is None or run.outcome == outcome)
                and (node_id is None or run.node_id == node_id)
            ]
        )

    def __len__(self) -> int:
        return len(self._runs)

    @overload
    def __getitem__(self, index: int) -> Run: ...

    @overload
    def __getitem__(self, index: slice) -> Runs: ...

    def __getitem__(self, index: int | slice) -> Run | Runs:
        if isinstance(index, slice):
            return Runs(self._runs[index])
        return self._runs[index]

    def __iter__(self) -> Iterator[Run]:
        return iter(self._runs)

    def __repr__(self) -> str:
        return f"<Runs count={len(self._runs)}>"


@dataclass(slots=True)
class _Node:
    node: Fantasma
    live: bool
    started: bool


class Simulation:
    """One test's simulated world: a fake clock, scheduler nodes and their runs.

    Every node reads the same :class:`~fantasma_testing.FakeClock`. Time
    moves only through :meth:`advance`, which lets each live node do its
    passes in an order drawn from the simulation's seeded random generator,
    so one seed always gives one interleaving. An excluded node does no
    passes at all, as if it were paused or dead. Each node's runs are
    collected in one log, in the order they finished.

    The async methods run on the event loop of the first one awaited, and on
    no other. :meth:`run_sync` gives synchronous code its own private loop
    instead. :meth:`close` stops the nodes the simulation started, then runs
    the cleanups in reverse order of registration.

    Args:
        start: The clock's first reading, an aware datetime.
        seed: Seed of the node order, and the default seed of node retry jitter.
        freeze_time: Make ``datetime.now()``, ``datetime.utcnow()``,
            ``time.time()`` and friends read the fake time during
            :meth:`advance`, through freezegun.

    Raises:
        ValueError: ``start`` is naive.
        SimulationError: ``freeze_time`` is set and freezegun is not installed.
    """

    def __init__(
        self,
        *,
        start: datetime = DEFAULT_START,
        seed: int = 0,
        freeze_time: bool = False,
    ) -> None:
        if freeze_time:
            check_freezegun()
        self._clock = FakeClock(start)
        self._seed = seed
        self._rng = random.Random(seed)
        self._freeze_time = freeze_time
        self._nodes: dict[str, _Node] = {}
        self._runs: list[Run] = []
        self._cleanups: list[Callable[[], Awaitable[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: asyncio.Runner | None = None
        self._closed = False

    # State

    @property
    def clock(self) -> FakeClock:
        """The clock every node reads."""
        return self._clock

    @property
    def seed(self) -> int:
        """The seed given at construction."""
        return self._seed

    @property
    def rng(self) -> random.Random:
        """The random generator that orders node passes, seeded with :attr:`seed`."""
        return self._rng

    @property
    def freeze_time(self) -> bool:
        """Whether the standard time functions read the fake time in :meth:`advance`."""
        return self._freeze_time

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    @property
    def nodes(self) -> tuple[Fantasma, ...]:
        """Every node, live or excluded, in the order they were added."""
        return tuple(entry.node for entry in self._nodes.values())

    @property
    def live_nodes(self) -> tuple[Fantasma, ...]:
        """The nodes that take part in :meth:`advance`, in the order they were added."""
        return tuple(entry.node for entry in self._nodes.values() if entry.live)

    def now(self) -> datetime:
        """Return the fake time (UTC)."""
        return self._clock.now()

    def runs(self, selector: RunSelector = None) -> Runs:
        """Return the runs that ``selector`` picks, in the order they finished.

        See :func:`run_predicate` for what a selector matches.
        """
        if selector is None:
            return Runs(list(self._runs))
        matches = run_predicate(selector)
        return Runs([run for run in self._runs if matches(run)])

    # Nodes

    def create_node(
        self,
        storage: Storage,
        *,
        node_id: str,
        cluster: ClusterSettings = SINGLE_NODE_SETTINGS,
        seed: int | None = None,
        job_lease: timedelta = timedelta(seconds=30),
        handler_factory: HandlerFactory | None = None,
        live: bool = True,
    ) -> Fantasma:
        """Build a node on this simulation's clock and add it.

        The node runs handlers with a
        :class:`~fantasma_testing.DeterministicExecutor` and is started by
        the next :meth:`start` or :meth:`advance`.

        Args:
            storage: The storage the node uses; nodes of one cluster share it.
            node_id: The node's id, unique within the simulation.
            cluster: Lease, heartbeat and recurring timing.
            seed: Seed of the node's retry jitter. Defaults to the
                simulation's seed plus the number of nodes added before.
            job_lease: How long a claimed job stays reserved without renewal.
            handler_factory: Builds handler instances, as in
                :class:`fantasma.Fantasma`.
            live: Whether the node takes part in :meth:`advance` from the start.

        Raises:
            ValueError: Another node has this id.
        """
        node = Fantasma(
            storage,
            clock=self._clock,
            executor=DeterministicExecutor(),
            handler_factory=handler_factory,
            node_id=node_id,
            job_lease=job_lease,
            cluster=cluster,
            seed=self._seed + len(self._nodes) if seed is None else seed,
        )
        return self.add_node(node, live=live)

    def add_node(
        self, node: Fantasma, *, live: bool = True, started: bool = False
    ) -> Fantasma:
        """Add a node built by the caller, and return it.

        The node must read :attr:`clock`, or a clock whose ``base`` attribute
        is :attr:`clock` (a node with its own clock offset, whose
        ``run_pending`` returns wake-up times by :attr:`clock`), and should
        not run a background loop: :meth:`advance` drives it. Its runs are
        recorded from now on.

        Args:
            node: The scheduler node.
            live: Whether the node takes part in :meth:`advance` from the start.
            started: Whether the caller already started the node. Otherwise
                the next :meth:`start` or :meth:`advance` starts it with
                ``start(background=False)``.

        Raises:
            ValueError: The node reads another clock, or another node has its id.
            SimulationError: The simulation is closed.
        """
        self._check_open()
        if getattr(node.clock, "base", node.clock) is not self._clock:
            raise ValueError(
                f"node {node.node_id!r} reads another clock; build it with "
                "clock=simulation.clock"
            )
        if node.node_id in self._nodes:
            raise ValueError(
                f"the simulation already has a node with id {node.node_id!r}"
            )
        self._nodes[node.node_id] = _Node(node, live=live, started=started)
        node.add_run_listener(lambda run: self._record_run(node, run))
        return node

    def _record_run(self, node: Fantasma, run: Run) -> None:
        entry = self._nodes.get(node.node_id)
        if entry is not None and entry.node is node:
            self._runs.append(run)

    def remove_node(self, node: Fantasma) -> None:
        """Forget a node without stopping it; its later runs are not recorded.

        The caller takes over the node, including stopping it.

        Raises:
            KeyError: The node is not in this simulation.
        """
        self._entry(node)
        del self._nodes[node.node_id]

    def node(self, node_id: str) -> Fantasma:
        """Return the node with this id.

        Raises:
            KeyError: No node has this id.
        """
        try:
            return self._nodes[node_id].node
        except KeyError:
            raise KeyError(f"the simulation has no node with id {node_id!r}") from None

    def is_live(self, node: Fantasma) -> bool:
        """Return whether ``node`` takes part in :meth:`advance`."""
        return self._entry(node).live

    def exclude(self, node: Fantasma) -> None:
        """Stop ``node`` from doing passes, as if it were paused or dead.

        Its leases, running jobs and storage rows stay as they are, so other
        nodes see what a crashed node leaves behind.
        """
        self._entry(node).live = False

    def include(self, node: Fantasma) -> None:
        """Let an excluded node do passes again from the next one on."""
        self._entry(node).live = True

    def _entry(self, node: Fantasma) -> _Node:
        entry = self._nodes.get(node.node_id)
        if entry is None or entry.node is not node:
            raise KeyError(f"node {node.node_id!r} is not in this simulation")
        return entry

    def add_cleanup(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Await ``callback()`` in :meth:`close`, after the nodes have stopped.

        Cleanups run in reverse order of registration, on the simulation's
        event loop, so they may close storage the nodes shared.
        """
        self._check_open()
        self._cleanups.append(callback)

    # Running

    async def start(self) -> None:
        """Start the nodes added since the last start, in the order they were added.

        Raises:
            SimulationError: The simulation is closed, or runs on another loop.
        """
        self._bind()
        for entry in list(self._nodes.values()):
            if not entry.started:
                await entry.node.start(background=False)
                entry.started = True

    async def advance(self, target: datetime) -> datetime:
        """Move the fake time to ``target``, letting the live nodes run what falls due.

        Each instant at which a job or timer of a live node falls due is
        visited in turn: the clock stops there and the nodes run everything
        due, in due order and then in the order it was scheduled. Work that
        handlers add joins the same loop. Finally the clock stops at
        ``target``.

        Returns:
            The new fake time, in UTC.

        Raises:
            ValueError: ``target`` is naive or before the current fake time.
            SimulationError: The simulation is closed or runs on another loop.
            SimulationStalledError: The nodes livelocked at one instant.
        """
        if target.tzinfo is None or target.utcoffset() is None:
            raise ValueError(f"advance needs an aware datetime, got {target!r}")
        await self.start()
        nodes = self.live_nodes
        if self._freeze_time:
            with follow_clock(self._clock):
                await driver.advance(nodes, self._clock, target, rng=self._rng)
        else:
            await driver.advance(nodes, self._clock, target, rng=self._rng)
        return self._clock.now()

    async def advance_by(self, delta: timedelta) -> datetime:
        """Advance the fake time by ``delta``, as :meth:`advance` does.

        Raises:
            ValueError: ``delta`` is negative.
        """
        if delta < timedelta(0):
            raise ValueError(f"cannot advance by a negative delta, got {delta!r}")
        return await self.advance(self._clock.now() + delta)

    async def drain(self) -> datetime:
        """Run whatever is due now without moving the clock."""
        return await self.advance(self._clock.now())

    async def close(self) -> None:
        """Stop the started nodes in reverse order, then run the cleanups.

        Every node is stopped and every cleanup runs even if one fails;
        the first failure is raised afterwards. Closing twice does nothing.
        """
        if self._closed:
            return
        if self._loop is not None:
            self._bind()
        self._closed = True
        errors: list[Exception] = []
        for entry in reversed(list(self._nodes.values())):
            if entry.started:
                try:
                    await entry.node.stop()
                except Exception as exc:
                    logger.exception("node %s failed to stop", entry.node.node_id)
                    errors.append(exc)
        for cleanup in reversed(self._cleanups):
            try:
                await cleanup()
            except Exception as exc:
                logger.exception("simulation cleanup %r failed", cleanup)
                errors.append(exc)
        if errors:
            raise errors[0]

    # Synchronous use

    def run_sync(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` to completion on the simulation's private event loop.

        Synchronous tests use this for every async call. The loop is created
        on first use and closed by :meth:`close_sync`.

        Raises:
            SimulationError: An event loop is running in this thread, or the
                simulation already runs on another loop.
        """
        if self._closed:
            coroutine.close()
            self._check_open()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coroutine.close()
            raise SimulationError(
                "the synchronous scheduler API was called while an event loop is "
                "running; in async tests and async fixtures, await the methods of "
                "the async API instead"
            )
        if self._runner is None:
            if self._loop is not None:
                coroutine.close()
                raise SimulationError(
                    "this simulation already runs on the test's event loop; "
                    "await its methods there instead of calling them synchronously"
                )
            self._runner = asyncio.Runner(loop_factory=asyncio.new_event_loop)
        return self._runner.run(coroutine)

    def close_sync(self) -> None:
        """Close the simulation from synchronous code, on the loop it ran on.

        With a private loop from :meth:`run_sync`, :meth:`close` runs there
        and the loop is closed. A simulation bound to another loop that is
        idle closes on that loop. A simulation that never ran, or whose loop
        is gone, closes on a temporary loop, which suits storage without
        connections (memory) but not a SQL engine bound to the lost loop.
        """
        if self._runner is not None:
            try:
                if not self._closed:
                    self._runner.run(self.close())
            finally:
                self._runner.close()
                self._runner = None
            return
        if self._closed:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed() and not loop.is_running():
            loop.run_until_complete(self.close())
            return
        # Rebind to the temporary loop: the original one cannot run anything.
        self._loop = None
        with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
            runner.run(self.close())

    def _bind(self) -> None:
        self._check_open()
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise SimulationError(
                "this simulation runs on another event loop: a test and its "
                "fixtures must drive it from one loop"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise SimulationError(
                "this simulation is closed: its nodes stopped when the test ended"
            )
