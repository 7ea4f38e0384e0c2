"""Builders shared by the runtime tests: a scheduler node on fake time and its runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from fantasma import (
    ClusterSettings,
    Executor,
    Fantasma,
    JobHandler,
    MemoryStorage,
    Run,
    RunOutcome,
    Storage,
    SystemClock,
)
from fantasma.handlers import HandlerFactory
from fantasma_testing import DeterministicExecutor, FakeClock
from fantasma_testing.driver import advance

START = datetime(2030, 1, 1, tzinfo=UTC)
"""Where every simulation's FakeClock starts: 2030-01-01 00:00 UTC."""

WAIT = 5.0
"""Seconds a real-time test waits for an event before it fails."""


class Simulation:
    """One scheduler node on a FakeClock, driven pass by pass.

    The node uses the deterministic executor and memory storage by default,
    and records every run it reports. Enter it with ``async with``
    to start the node without a background loop. Leaving the block stops it.
    """

    def __init__(
        self,
        *handlers: type[JobHandler[Any]],
        storage: Storage | None = None,
        clock: FakeClock | None = None,
        executor: Executor | None = None,
        handler_factory: HandlerFactory | None = None,
        cluster: ClusterSettings | None = None,
        shutdown_grace: timedelta = timedelta(seconds=1),
        seed: int = 0,
    ) -> None:
        self.clock = clock or FakeClock(START)
        self.storage = storage or MemoryStorage()
        self.app = Fantasma(
            self.storage,
            clock=self.clock,
            executor=executor or DeterministicExecutor(),
            handler_factory=handler_factory,
            cluster=cluster,
            shutdown_grace=shutdown_grace,
            seed=seed,
        )
        for handler in handlers:
            self.app.register(handler)
        self.runs: list[Run] = []
        self.app.add_run_listener(self.runs.append)

    async def __aenter__(self) -> Self:
        await self.app.start(background=False)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.app.stop()

    async def advance(self, delta: timedelta = timedelta(0)) -> None:
        """Move the fake time forward by ``delta``, running all work due on the way."""
        await advance([self.app], self.clock, self.clock.now() + delta)

    async def advance_to(self, instant: datetime) -> None:
        """Move the fake time to ``instant``, running all work due on the way."""
        await advance([self.app], self.clock, instant)

    def outcomes(self) -> list[RunOutcome]:
        """Return the outcome of each recorded run, in run order."""
        return [run.outcome for run in self.runs]


class IdleSignalClock(SystemClock):
    """The system clock, setting :attr:`idle` when a caller starts a long wait.

    A node loop that waits this long has found nothing to do, so a test can
    wait for :attr:`idle` before it checks what wakes the loop early.
    """

    def __init__(self, long_wait: timedelta = timedelta(seconds=30)) -> None:
        self.idle = asyncio.Event()
        self._long_wait = long_wait

    async def sleep_until(
        self, deadline: datetime, wake: asyncio.Event | None = None
    ) -> bool:
        if deadline - self.now() >= self._long_wait:
            self.idle.set()
        return await super().sleep_until(deadline, wake)


QUIET_CLUSTER = ClusterSettings(
    lease_period=timedelta(minutes=10),
    renew_interval=timedelta(minutes=5),
    heartbeat_interval=timedelta(minutes=5),
)
"""Cluster timing with no duty due for minutes, so that only jobs wake a node."""


def signal_on_runs(app: Fantasma, count: int = 1) -> asyncio.Event:
    """Return an event set once ``app`` has reported ``count`` finished runs."""
    finished = asyncio.Event()
    seen: list[Run] = []

    def on_run(run: Run) -> None:
        seen.append(run)
        if len(seen) >= count:
            finished.set()

    app.add_run_listener(on_run)
    return finished


def collect_runs(app: Fantasma) -> list[Run]:
    """Return a list that receives every run ``app`` reports from now on."""
    runs: list[Run] = []
    record: Callable[[Run], None] = runs.append
    app.add_run_listener(record)
    return runs
