"""The APIs the pytest fixtures hand to tests: one to call, one to await."""

from __future__ import annotations

import types
from collections.abc import Collection, Iterable
from datetime import datetime, timedelta
from typing import Any, final, overload

from fantasma import (
    Fantasma,
    Job,
    JobHandler,
    JobId,
    JobStatus,
    MisfirePolicy,
    OneOffTrigger,
    RecurringJob,
    RecurringTrigger,
    RunOutcome,
    Trigger,
)
from fantasma.handlers import Registration
from fantasma_testing import assertions
from fantasma_testing.clock import FakeClock
from fantasma_testing.simulation import Runs, RunSelector, Simulation

__all__ = [
    "AdvanceTime",
    "AsyncAdvanceTime",
    "AsyncSimulatedScheduler",
    "SimulatedScheduler",
    "advance_target",
]

_TIMEDELTA_KEYWORDS = (
    "weeks",
    "days",
    "hours",
    "minutes",
    "seconds",
    "milliseconds",
    "microseconds",
)


def advance_target(
    now: datetime,
    delta: timedelta | None,
    to: datetime | None,
    amounts: dict[str, float],
) -> datetime:
    """Return the instant ``advance_time(delta, to=to, **amounts)`` moves to.

    Exactly one of a timedelta, keyword amounts (``minutes=30``) or ``to``
    must be given.

    Raises:
        TypeError: None or several of them are given, or a keyword is not a
            timedelta unit.
        ValueError: The step is negative, or ``to`` is naive or in the past.
    """
    unknown = sorted(set(amounts) - set(_TIMEDELTA_KEYWORDS))
    if unknown:
        raise TypeError(
            f"advance_time got an unknown keyword {unknown[0]!r}; use "
            f"{', '.join(_TIMEDELTA_KEYWORDS)} or to"
        )
    ways_used = (delta is not None) + (to is not None) + bool(amounts)
    if ways_used != 1:
        raise TypeError(
            "advance_time takes exactly one of: a timedelta, keyword amounts "
            "such as minutes=30, or to=<aware datetime>"
        )
    if to is not None:
        if to.tzinfo is None or to.utcoffset() is None:
            raise ValueError(
                f"advance_time(to=...) needs an aware datetime, got {to!r}"
            )
        if to < now:
            raise ValueError(
                f"cannot advance to {to.isoformat()}: the fake clock already reads "
                f"{now.isoformat()}"
            )
        return to
    step = timedelta(**amounts) if delta is None else delta
    if not isinstance(step, timedelta):
        raise TypeError(f"advance_time needs a timedelta, got {step!r}")
    if step < timedelta(0):
        raise ValueError(f"advance_time needs a step of zero or more, got {step!r}")
    return now + step


@final
class AdvanceTime:
    """The ``advance_time`` fixture in sync tests: call it to move the fake time."""

    def __init__(self, simulation: Simulation) -> None:
        self._simulation = simulation

    def __call__(
        self,
        delta: timedelta | None = None,
        /,
        *,
        to: datetime | None = None,
        **amounts: float,
    ) -> datetime:
        """Advance by ``delta`` or keyword amounts, or to ``to``; return the new time.

        Raises:
            TypeError: None or several ways of giving the target are used.
            ValueError: The target is in the past, or ``to`` is naive.
        """
        simulation = self._simulation
        target = advance_target(simulation.now(), delta, to, amounts)
        return simulation.run_sync(simulation.advance(target))


@final
class AsyncAdvanceTime:
    """The ``advance_time`` fixture in async tests: await it to move the fake time."""

    def __init__(self, simulation: Simulation) -> None:
        self._simulation = simulation

    async def __call__(
        self,
        delta: timedelta | None = None,
        /,
        *,
        to: datetime | None = None,
        **amounts: float,
    ) -> datetime:
        """Advance by ``delta`` or keyword amounts, or to ``to``; return the new time.

        Raises:
            TypeError: None or several ways of giving the target are used.
            ValueError: The target is in the past, or ``to`` is naive.
        """
        simulation = self._simulation
        target = advance_target(simulation.now(), delta, to, amounts)
        return await simulation.advance(target)


class _Inspection:
    """Members shared by both APIs: handlers, the clock, runs and run assertions."""

    def __init__(self, app: Fantasma, simulation: Simulation) -> None:
        self._app = app
        self._simulation = simulation

    @property
    def app(self) -> Fantasma:
        """The scheduler node itself, for anything this API does not wrap."""
        return self._app

    @property
    def simulation(self) -> Simulation:
        """The test's simulation, which holds the clock and every node."""
        return self._simulation

    @property
    def clock(self) -> FakeClock:
        """The fake clock."""
        return self._simulation.clock

    def now(self) -> datetime:
        """Return the fake time (UTC)."""
        return self._simulation.now()

    def register(self, handler_class: type[JobHandler[Any]]) -> Registration:
        """Register a handler class for the data type it declares."""
        return self._app.register(handler_class)

    def register_handlers_in_module(
        self, module: types.ModuleType
    ) -> list[Registration]:
        """Register every handler class defined in a module or package."""
        return self._app.register_handlers_in_module(module)

    def runs(self, selector: RunSelector = None) -> Runs:
        """Return the runs of the test's nodes that ``selector`` picks.

        Args:
            selector: A job name or job id, a handler class, or ``None``
                for every run.

        Returns:
            The runs in the order they finished, with ``.count``,
            ``.due_times`` and ``.where(outcome=...)``.
        """
        return self._simulation.runs(selector)

    def assert_ran(
        self,
        selector: RunSelector,
        *,
        at: datetime | None = None,
        outcome: RunOutcome | str | None = None,
    ) -> None:
        """Assert that ``selector`` ran, optionally due at ``at`` or with ``outcome``.

        The failure message lists every run with its due time and outcome.
        """
        __tracebackhide__ = True
        assertions.assert_ran(self.runs(), selector, at=at, outcome=outcome)

    def assert_not_run(self, selector: RunSelector) -> None:
        """Assert that ``selector`` never ran; the failure message lists every run."""
        __tracebackhide__ = True
        assertions.assert_not_run(self.runs(), selector)

    def assert_ran_times(self, selector: RunSelector, count: int) -> None:
        """Assert that ``selector`` ran ``count`` times, retries included."""
        __tracebackhide__ = True
        assertions.assert_ran_times(self.runs(), selector, count)


def _recurring_trigger(
    recurring_id: str,
    cron: str,
    timezone: str,
    misfire: MisfirePolicy | None,
    allow_overlap: bool,
) -> RecurringTrigger:
    return Trigger.recurring(
        recurring_id,
        cron,
        timezone=timezone,
        misfire=misfire,
        allow_overlap=allow_overlap,
    )


@final
class SimulatedScheduler(_Inspection):
    """The ``fantasma_scheduler`` fixture in sync tests: every method is a plain call.

    The methods mirror :class:`fantasma.Fantasma`, run on the test's private
    event loop, and add ``advance_time``, ``drain``, ``runs`` and the
    assertion helpers.
    """

    def _run(self, coroutine: Any) -> Any:
        return self._simulation.run_sync(coroutine)

    @overload
    def schedule(
        self, name: str, data: object, trigger: OneOffTrigger, *, data_type: Any = None
    ) -> JobId: ...

    @overload
    def schedule(
        self,
        name: str,
        data: object,
        trigger: RecurringTrigger,
        *,
        data_type: Any = None,
    ) -> str: ...

    def schedule(
        self,
        name: str,
        data: object,
        trigger: OneOffTrigger | RecurringTrigger,
        *,
        data_type: Any = None,
    ) -> JobId | str:
        """Schedule ``data`` to run when ``trigger`` fires (see ``Fantasma.schedule``).

        Returns:
            The job id, or for a recurring trigger its recurring id.
        """
        result: JobId | str = self._run(
            self._app.schedule(name, data, trigger, data_type=data_type)
        )
        return result

    def schedule_many(
        self,
        jobs: Iterable[tuple[str, object, OneOffTrigger]],
        *,
        data_type: Any = None,
    ) -> list[JobId]:
        """Schedule several one-off jobs at once; see :meth:`Fantasma.schedule_many`."""
        result: list[JobId] = self._run(
            self._app.schedule_many(jobs, data_type=data_type)
        )
        return result

    def add_recurring_job(
        self,
        name: str,
        recurring_id: str,
        cron: str,
        data: object,
        *,
        timezone: str = "UTC",
        misfire: MisfirePolicy | None = None,
        allow_overlap: bool = False,
        data_type: Any = None,
    ) -> str:
        """Add or update a recurring schedule at once, and return its id.

        Takes the arguments of :meth:`Fantasma.add_recurring_job`, but since
        the fixture's scheduler is already running, the schedule is stored
        right away, as ``schedule(name, data, Trigger.recurring(...))`` does.
        """
        trigger = _recurring_trigger(
            recurring_id, cron, timezone, misfire, allow_overlap
        )
        return self.schedule(name, data, trigger, data_type=data_type)

    def remove_recurring_job(self, recurring_id: str) -> bool:
        """Delete a recurring schedule; return whether it existed."""
        result: bool = self._run(self._app.remove_recurring_job(recurring_id))
        return result

    def get_recurring_job(self, recurring_id: str) -> RecurringJob | None:
        """Return a stored recurring schedule, or ``None``."""
        result: RecurringJob | None = self._run(
            self._app.get_recurring_job(recurring_id)
        )
        return result

    def cancel(self, job_id: JobId) -> bool:
        """Cancel a job that has not started; return whether it was cancelled."""
        result: bool = self._run(self._app.cancel(job_id))
        return result

    def get_job(self, job_id: JobId) -> Job:
        """Return a stored job.

        Raises:
            JobNotFoundError: No job has this id.
        """
        result: Job = self._run(self._app.get_job(job_id))
        return result

    def jobs(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        name: str | None = None,
        recurring_id: str | None = None,
    ) -> list[Job]:
        """Return stored jobs matching every filter, in due order."""
        result: list[Job] = self._run(
            self._app.list_jobs(statuses=statuses, name=name, recurring_id=recurring_id)
        )
        return result

    def advance_time(
        self,
        delta: timedelta | None = None,
        /,
        *,
        to: datetime | None = None,
        **amounts: float,
    ) -> datetime:
        """Move the fake time like the ``advance_time`` fixture; return the new time."""
        return AdvanceTime(self._simulation)(delta, to=to, **amounts)

    def drain(self) -> datetime:
        """Run everything due now without moving the clock; return the fake time."""
        return self._simulation.run_sync(self._simulation.drain())

    def assert_scheduled(self, name: str, *, at: datetime | None = None) -> None:
        """Assert that a job or recurring schedule called ``name`` waits to run.

        With ``at``, it must be due then. The failure message lists
        everything that waits, by due time.
        """
        __tracebackhide__ = True
        jobs, recurring = self._run(_waiting(self._app))
        assertions.assert_scheduled(jobs, name, at=at, recurring=recurring)


@final
class AsyncSimulatedScheduler(_Inspection):
    """The ``fantasma_scheduler`` fixture in async tests: its I/O methods are awaited.

    The scheduler starts on the test's event loop at the first awaited call,
    and stops when the test function returns.
    """

    async def _ready(self) -> Fantasma:
        await self._simulation.start()
        return self._app

    @overload
    async def schedule(
        self, name: str, data: object, trigger: OneOffTrigger, *, data_type: Any = None
    ) -> JobId: ...

    @overload
    async def schedule(
        self,
        name: str,
        data: object,
        trigger: RecurringTrigger,
        *,
        data_type: Any = None,
    ) -> str: ...

    async def schedule(
        self,
        name: str,
        data: object,
        trigger: OneOffTrigger | RecurringTrigger,
        *,
        data_type: Any = None,
    ) -> JobId | str:
        """Schedule ``data`` to run when ``trigger`` fires (see ``Fantasma.schedule``).

        Returns:
            The job id, or for a recurring trigger its recurring id.
        """
        app = await self._ready()
        return await app.schedule(name, data, trigger, data_type=data_type)

    async def schedule_many(
        self,
        jobs: Iterable[tuple[str, object, OneOffTrigger]],
        *,
        data_type: Any = None,
    ) -> list[JobId]:
        """Schedule several one-off jobs at once; see :meth:`Fantasma.schedule_many`."""
        app = await self._ready()
        return await app.schedule_many(jobs, data_type=data_type)

    async def add_recurring_job(
        self,
        name: str,
        recurring_id: str,
        cron: str,
        data: object,
        *,
        timezone: str = "UTC",
        misfire: MisfirePolicy | None = None,
        allow_overlap: bool = False,
        data_type: Any = None,
    ) -> str:
        """Add or update a recurring schedule at once, and return its id.

        See :meth:`SimulatedScheduler.add_recurring_job`.
        """
        trigger = _recurring_trigger(
            recurring_id, cron, timezone, misfire, allow_overlap
        )
        return await self.schedule(name, data, trigger, data_type=data_type)

    async def remove_recurring_job(self, recurring_id: str) -> bool:
        """Delete a recurring schedule; return whether it existed."""
        app = await self._ready()
        return await app.remove_recurring_job(recurring_id)

    async def get_recurring_job(self, recurring_id: str) -> RecurringJob | None:
        """Return a stored recurring schedule, or ``None``."""
        app = await self._ready()
        return await app.get_recurring_job(recurring_id)

    async def cancel(self, job_id: JobId) -> bool:
        """Cancel a job that has not started; return whether it was cancelled."""
        app = await self._ready()
        return await app.cancel(job_id)

    async def get_job(self, job_id: JobId) -> Job:
        """Return a stored job.

        Raises:
            JobNotFoundError: No job has this id.
        """
        app = await self._ready()
        return await app.get_job(job_id)

    async def jobs(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        name: str | None = None,
        recurring_id: str | None = None,
    ) -> list[Job]:
        """Return stored jobs matching every filter, in due order."""
        app = await self._ready()
        return await app.list_jobs(
            statuses=statuses, name=name, recurring_id=recurring_id
        )

    async def advance_time(
        self,
        delta: timedelta | None = None,
        /,
        *,
        to: datetime | None = None,
        **amounts: float,
    ) -> datetime:
        """Move the fake time like the ``advance_time`` fixture; return the new time."""
        return await AsyncAdvanceTime(self._simulation)(delta, to=to, **amounts)

    async def drain(self) -> datetime:
        """Run everything due now without moving the clock; return the fake time."""
        return await self._simulation.drain()

    async def assert_scheduled(self, name: str, *, at: datetime | None = None) -> None:
        """Assert that a job or recurring schedule called ``name`` waits to run.

        With ``at``, it must be due then. The failure message lists
        everything that waits, by due time.
        """
        __tracebackhide__ = True
        jobs, recurring = await _waiting(await self._ready())
        assertions.assert_scheduled(jobs, name, at=at, recurring=recurring)


async def _waiting(app: Fantasma) -> tuple[list[Job], list[RecurringJob]]:
    jobs = await app.list_jobs(statuses=(JobStatus.SCHEDULED, JobStatus.FAILED))
    recurring = await app.storage.list_recurring()
    return jobs, recurring
