"""The Fantasma facade: the object an application uses to schedule and run jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import types
import uuid
from collections.abc import Callable, Collection, Iterable
from datetime import datetime, timedelta
from typing import Any, Self, overload

from fantasma import serialization
from fantasma.clock import Clock, SystemClock
from fantasma.cluster import ClusterSettings, Coordinator
from fantasma.errors import ConfigurationError, FantasmaError, JobNotFoundError
from fantasma.executor import AsyncioExecutor, Executor
from fantasma.handlers import (
    HandlerFactory,
    HandlerRegistry,
    JobHandler,
    Registration,
)
from fantasma.jobs import (
    Job,
    JobId,
    JobStatus,
    LeaderLease,
    MisfirePolicy,
    RecurringJob,
    Run,
    new_job_id,
)
from fantasma.storage import MemoryStorage, Storage, storage_from_url
from fantasma.triggers import OneOffTrigger, RecurringTrigger, Trigger
from fantasma.worker import Worker

__all__ = ["DEFAULT_STORAGE_URL", "Fantasma"]

logger = logging.getLogger(__name__)

DEFAULT_STORAGE_URL = "sqlite+aiosqlite:///fantasma.db"
"""Storage used when none is given: a SQLite file in the working directory."""

_MEMORY_POLL = timedelta(seconds=1)
_SQL_POLL = timedelta(seconds=5)
_ERROR_BACKOFF = timedelta(seconds=1)


def _default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _build_handler(handler_class: type[JobHandler[Any]]) -> JobHandler[Any]:
    return handler_class()


class Fantasma:
    """A scheduler node: schedules jobs into storage and runs the ones due.

    Use it as an async context manager; its workers run while the block is
    open and shut down gracefully when it closes::

        app = Fantasma(storage="sqlite+aiosqlite:///fantasma.db")
        app.register(SendReportHandler)
        async with app:
            await app.schedule("report", SendReport("ana"), Trigger.after(minutes=5))

    Several processes on one database form a cluster: all of them run jobs,
    and the one holding the leader lease enqueues recurring occurrences.

    Args:
        storage: A database URL (``sqlite+aiosqlite:///file.db``,
            ``postgresql+asyncpg://...``, ``mysql+asyncmy://...``,
            ``memory://``) or a :class:`~fantasma.storage.Storage` object.
            A storage built from a URL is closed with the scheduler; one
            passed in is left open.
        clock: Source of time; a fake clock in tests.
        executor: Where handler calls run; an
            :class:`~fantasma.executor.AsyncioExecutor` with ``concurrency``
            slots by default.
        handler_factory: Builds a handler instance for each run, for
            applications with their own dependency injection. Defaults to
            calling the handler class with no arguments.
        node_id: This node's id in the cluster; unique per process by
            default.
        concurrency: Jobs run at once by the default executor.
        poll_interval: Longest idle sleep, bounding how late this node notices
            jobs added by other processes. Local ``schedule`` calls wake the
            workers at once. Defaults to 1 s for memory storage and 5 s for
            SQL storage.
        job_lease: How long a claimed job stays reserved without renewal; a
            running node renews it every third of this period. If the node
            dies, the job runs again once the lease expires.
        shutdown_grace: How long shutdown waits for running jobs before
            cancelling them.
        cluster: Lease, heartbeat and recurring timing.
        seed: Seed for retry jitter, for reproducible tests.
    """

    def __init__(
        self,
        storage: str | Storage = DEFAULT_STORAGE_URL,
        *,
        clock: Clock | None = None,
        executor: Executor | None = None,
        handler_factory: HandlerFactory | None = None,
        node_id: str | None = None,
        concurrency: int = 10,
        poll_interval: timedelta | None = None,
        job_lease: timedelta = timedelta(seconds=30),
        shutdown_grace: timedelta = timedelta(seconds=30),
        cluster: ClusterSettings | None = None,
        seed: int | None = None,
    ) -> None:
        if isinstance(storage, str):
            self._storage = storage_from_url(storage)
            self._owns_storage = True
        else:
            self._storage = storage
            self._owns_storage = False
        if poll_interval is None:
            is_memory = isinstance(self._storage, MemoryStorage)
            poll_interval = _MEMORY_POLL if is_memory else _SQL_POLL
        if poll_interval <= timedelta(0):
            raise ConfigurationError(
                f"poll_interval must be positive, got {poll_interval}"
            )
        self._clock: Clock = clock or SystemClock()
        self._executor: Executor = executor or AsyncioExecutor(concurrency)
        self._registry = HandlerRegistry()
        self._node_id = node_id or _default_node_id()
        self._poll_interval = poll_interval
        self._job_lease = job_lease
        self._shutdown_grace = shutdown_grace
        self._run_listeners: list[Callable[[Run], None]] = []
        self._declared: dict[str, tuple[str, RecurringTrigger, Any, Any]] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._started = False
        # Set while stop() waits for running jobs: the node claims nothing
        # more, but handlers finishing within the grace period may still
        # schedule follow-up jobs.
        self._stopping = False
        self._next_lease_extension: datetime | None = None
        # When the cluster duties are next due, and the time they last ran;
        # passes in between skip them (see run_pending). The flag records a
        # request to run them that came while they were running.
        self._duties_due: datetime | None = None
        self._duties_checked_at: datetime | None = None
        self._duties_requested = False
        self._coordinator = Coordinator(
            node_id=self._node_id,
            storage=self._storage,
            clock=self._clock,
            settings=cluster or ClusterSettings(),
        )
        self._worker = Worker(
            app=self,
            node_id=self._node_id,
            storage=self._storage,
            registry=self._registry,
            executor=self._executor,
            clock=self._clock,
            handler_factory=handler_factory or _build_handler,
            job_lease=job_lease,
            rng=random.Random(seed),
            on_run=self._report_run,
            # Only the executor built here is known to run jobs concurrently
            # with the loop, which is when waiting jobs save claims.
            prefetch=4 * concurrency if executor is None else 0,
            wake=self._wake.set,
        )
        self._executor.add_slot_listener(self._wake.set)
        self._storage.add_listener(self._wake.set)

    # Properties

    @property
    def node_id(self) -> str:
        """This node's id in the cluster."""
        return self._node_id

    @property
    def clock(self) -> Clock:
        """The clock this scheduler reads."""
        return self._clock

    @property
    def storage(self) -> Storage:
        """The storage backend."""
        return self._storage

    @property
    def lease(self) -> LeaderLease | None:
        """The leader lease as this node last saw it, if this node led then."""
        return self._coordinator.lease

    @property
    def is_leader(self) -> bool:
        """Whether this node holds an unexpired leader lease now."""
        return self._coordinator.is_leader(self._clock.now())

    @property
    def running_job_ids(self) -> set[JobId]:
        """Ids of the jobs this node is executing now."""
        return self._worker.executing

    # Handlers

    def register(self, handler_class: type[JobHandler[Any]]) -> Registration:
        """Register a handler class for the data type it declares.

        Raises:
            ConfigurationError: See :meth:`HandlerRegistry.register`.
        """
        return self._registry.register(handler_class)

    def register_handlers_in_module(
        self, module: types.ModuleType
    ) -> list[Registration]:
        """Register every handler class defined in a module or package."""
        return self._registry.register_module(module)

    def add_run_listener(self, callback: Callable[[Run], None]) -> None:
        """Call ``callback`` with a :class:`~fantasma.jobs.Run` after each execution."""
        self._run_listeners.append(callback)

    def _report_run(self, run: Run) -> None:
        for callback in self._run_listeners:
            callback(run)
        if run.recurring_id is not None:
            # The schedule's next occurrence may have been waiting for this one.
            self._make_duties_due()
            self._wake.set()

    # Scheduling

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
        """Schedule ``data`` for its handler to run when ``trigger`` fires.

        Args:
            name: A label for the job, shown in listings and logs.
            data: The job data; its type selects the handler.
            trigger: From :class:`~fantasma.triggers.Trigger`.
            data_type: The handler's data type, needed only for dict data
                when several handlers take dicts.

        Returns:
            The new job's id, or for a recurring trigger its recurring id.

        Raises:
            UnknownJobTypeError: No handler is registered for the data.
            SerializationError: The data cannot be encoded as JSON.
            StorageError: The job could not be stored.
        """
        self._require_started("schedule")
        # Encode first: data of a type no handler could ever take (a set, an
        # arbitrary object) is reported as such, not as a missing handler.
        payload = serialization.encode(data)
        registration = self._registry.for_data(data, data_type)
        if isinstance(trigger, RecurringTrigger):
            await self._put_recurring(name, trigger, registration, payload)
            return trigger.recurring_id
        job = self._new_job(name, registration, payload, trigger)
        await self._storage.add_jobs([job])
        logger.debug("scheduled job %s (%s) due %s", job.id, job.type_name, job.due_at)
        self._wake.set()
        return job.id

    async def schedule_many(
        self,
        jobs: Iterable[tuple[str, object, OneOffTrigger]],
        *,
        data_type: Any = None,
    ) -> list[JobId]:
        """Schedule many one-off jobs in one storage round trip.

        Each item is ``(name, data, trigger)``. Either every job is stored
        or, on error, none is.
        """
        self._require_started("schedule_many")
        batch = []
        for name, data, trigger in jobs:
            if not isinstance(trigger, OneOffTrigger):
                raise ConfigurationError(
                    "schedule_many takes one-off triggers only; schedule recurring "
                    "jobs one by one with schedule()"
                )
            payload = serialization.encode(data)
            registration = self._registry.for_data(data, data_type)
            batch.append(self._new_job(name, registration, payload, trigger))
        if not batch:
            return []
        ids = await self._storage.add_jobs(batch)
        logger.debug("scheduled %d jobs in one batch", len(ids))
        self._wake.set()
        return ids

    def _new_job(
        self,
        name: str,
        registration: Registration,
        payload: str,
        trigger: OneOffTrigger,
    ) -> Job:
        _check_name(name)
        now = self._clock.now()
        handler = registration.handler_class
        return Job(
            id=new_job_id(),
            name=name,
            type_name=registration.type_name,
            payload=payload,
            status=JobStatus.SCHEDULED,
            due_at=trigger.due_at(now),
            created_at=now,
            max_attempts=handler.max_attempts,
            timeout=handler.timeout,
        )

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
    ) -> None:
        """Declare a recurring job, stored when the scheduler starts.

        The expression and data are checked now. Declaring an id again
        replaces the earlier declaration; at start, a stored schedule with
        the same id is updated and keeps its position if its cron and time
        zone did not change. To add or update a schedule while the scheduler
        runs, await :meth:`schedule` with :meth:`Trigger.recurring`.

        Raises:
            InvalidCronExpression: ``cron`` is malformed or never fires.
            SerializationError: ``data`` cannot be encoded as JSON.
            ConfigurationError: The scheduler is already running.
        """
        if self._started:
            raise ConfigurationError(
                f"cannot declare recurring job {recurring_id!r} on a running "
                "scheduler; use await app.schedule(name, data, "
                "Trigger.recurring(recurring_id, cron)) instead"
            )
        _check_name(name)
        trigger = Trigger.recurring(
            recurring_id,
            cron,
            timezone=timezone,
            misfire=misfire,
            allow_overlap=allow_overlap,
        )
        serialization.encode(data)
        self._declared[recurring_id] = (name, trigger, data, data_type)

    async def _put_recurring(
        self,
        name: str,
        trigger: RecurringTrigger,
        registration: Registration,
        payload: str,
    ) -> None:
        now = self._clock.now()
        cron = trigger.cron
        existing = await self._storage.get_recurring(trigger.recurring_id)
        unchanged = (
            existing is not None
            and existing.cron == cron.expression
            and existing.timezone == cron.timezone
        )
        handler = registration.handler_class
        recurring = RecurringJob(
            id=trigger.recurring_id,
            name=name,
            cron=cron.expression,
            timezone=cron.timezone,
            type_name=registration.type_name,
            payload=payload,
            next_fire_at=(
                existing.next_fire_at
                if existing is not None and unchanged
                else cron.next_after(now)
            ),
            created_at=now if existing is None else existing.created_at,
            updated_at=now,
            misfire=trigger.misfire,
            allow_overlap=trigger.allow_overlap,
            max_attempts=handler.max_attempts,
            timeout=handler.timeout,
        )
        await self._storage.put_recurring(recurring)
        # A schedule declared in code is stored again at every start; only a
        # real change is lifecycle news for an operator.
        unchanged_definition = existing is not None and existing == recurring.replace(
            created_at=existing.created_at, updated_at=existing.updated_at
        )
        if existing is None:
            change = "added"
        elif unchanged_definition:
            change = "kept"
        else:
            change = "updated"
        logger.log(
            logging.DEBUG if unchanged_definition else logging.INFO,
            "%s recurring job %s (%s, %s), next fire time %s",
            change,
            recurring.id,
            recurring.cron,
            recurring.timezone,
            recurring.next_fire_at.isoformat(),
        )
        # The leader reads schedules in its cluster duties, due at once now.
        self._make_duties_due()
        self._wake.set()

    async def remove_recurring_job(self, recurring_id: str) -> bool:
        """Delete a recurring schedule; return whether it existed.

        Occurrences already enqueued still run.
        """
        self._require_started("remove_recurring_job")
        removed = await self._storage.remove_recurring(recurring_id)
        if removed:
            logger.info("removed recurring job %s", recurring_id)
        return removed

    async def get_recurring_job(self, recurring_id: str) -> RecurringJob | None:
        """Return a stored recurring schedule, or ``None``."""
        self._require_started("get_recurring_job")
        return await self._storage.get_recurring(recurring_id)

    async def cancel(self, job_id: JobId) -> bool:
        """Cancel a job that has not started; return whether it was cancelled."""
        self._require_started("cancel")
        cancelled = await self._storage.cancel_job(job_id, now=self._clock.now())
        if cancelled:
            logger.info("cancelled job %s", job_id)
        return cancelled

    async def get_job(self, job_id: JobId) -> Job:
        """Return a job with its status and last error.

        Raises:
            JobNotFoundError: No job has this id.
        """
        self._require_started("get_job")
        job = await self._storage.get_job(job_id)
        if job is None:
            raise JobNotFoundError(f"job {job_id!r} not found", job_id=job_id)
        return job

    async def list_jobs(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        name: str | None = None,
        recurring_id: str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        """Return stored jobs matching every filter, in due order."""
        self._require_started("list_jobs")
        return await self._storage.list_jobs(
            statuses=statuses, name=name, recurring_id=recurring_id, limit=limit
        )

    # Lifecycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self, *, background: bool = True) -> None:
        """Connect storage, store declared recurring jobs and start the workers.

        With ``background=False`` no loop task is started and the caller
        drives the node with :meth:`run_pending`, as the pytest plugin does.

        Raises:
            StorageUnavailableError: The database cannot be reached.
            ConfigurationError: The scheduler is already running.
        """
        if self._started:
            raise ConfigurationError("this scheduler is already running")
        await self._storage.start()
        self._started = True
        try:
            for name, trigger, data, data_type in self._declared.values():
                await self.schedule(name, data, trigger, data_type=data_type)
        except BaseException:
            await self._close_storage()
            self._started = False
            raise
        logger.info(
            "scheduler node %s started with %d handlers",
            self._node_id,
            len(self._registry.registrations()),
        )
        if background:
            self._loop_task = asyncio.create_task(
                self._run_loop(), name=f"fantasma-node-{self._node_id}"
            )

    async def stop(self) -> None:
        """Stop claiming jobs, wait for running ones, release leadership, disconnect.

        Jobs still running after the shutdown grace period are cancelled and
        become due again, so the next start runs them. Jobs this node claimed
        ahead of a free executor slot run within the same grace period, or
        become due again. While stop() waits, running handlers may still
        schedule follow-up jobs.
        """
        if not self._started or self._stopping:
            return
        self._stopping = True
        try:
            if self._loop_task is not None:
                self._loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._loop_task
                self._loop_task = None
            await self._finish_claimed_jobs()
        finally:
            self._started = False
            self._stopping = False
            self._duties_due = None
        try:
            await self._coordinator.release()
        except FantasmaError:
            logger.exception("node %s could not release its lease", self._node_id)
        await self._close_storage()
        logger.info("scheduler node %s stopped", self._node_id)

    async def _finish_claimed_jobs(self) -> None:
        """Run the jobs this node claimed, within the shutdown grace period.

        Jobs claimed ahead of a free executor slot start as slots free up.
        Those still waiting when the grace period ends are handed back to
        storage, due at once.
        """
        grace = self._shutdown_grace
        deadline = self._clock.now() + grace
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._worker.run_waiting(), grace.total_seconds())
        remaining = max(timedelta(0), deadline - self._clock.now())
        await self._executor.shutdown(remaining.total_seconds())
        await self._worker.release_waiting()
        await self._worker.close()

    async def _close_storage(self) -> None:
        if self._owns_storage:
            await self._storage.close()

    async def run_pending(self) -> datetime:
        """Run one pass of this node's work and return when the next is due.

        A pass does the cluster duties that are due (heartbeat, lease,
        enqueueing recurring occurrences), then claims due jobs while the
        executor has free slots. With an executor that runs jobs to
        completion inside ``submit``, everything due at the current time has
        run when this returns.

        Passes before the time the duties returned skip them, which saves
        the leader from reading every schedule on each pass. A schedule
        stored by this node, or the end of a recurring run here, makes them
        due at once. The leader reads schedules that other nodes changed at
        its next heartbeat at the latest.
        """
        self._require_started("run_pending")
        if self._stopping:
            raise ConfigurationError(
                "cannot call run_pending() while the scheduler is stopping"
            )
        while True:
            now = self._clock.now()
            if self._duties_are_due(now):
                self._duties_checked_at = now
                self._duties_requested = False
                due = await self._coordinator.tick()
                # A run that ended during the tick may have unblocked a
                # schedule that the tick read before, so that request is kept.
                self._duties_due = None if self._duties_requested else due
            claimed = await self._worker.dispatch_due()
            if not claimed or self._executor.free_slots() <= 0:
                break
        now = self._clock.now()
        # None when a recurring run ended during this pass: due at once.
        wake = now if self._duties_due is None else self._duties_due
        if self._worker.running:
            if self._next_lease_extension is None:
                self._next_lease_extension = now + self._job_lease / 3
            elif now >= self._next_lease_extension:
                await self._worker.extend_leases()
                self._next_lease_extension = now + self._job_lease / 3
            wake = min(wake, self._next_lease_extension)
        else:
            self._next_lease_extension = None
        if self._executor.free_slots() > 0 and not self._worker.may_have_due:
            next_job = await self._storage.next_due_at()
            if next_job is not None:
                wake = min(wake, next_job)
        return wake

    def _make_duties_due(self) -> None:
        self._duties_due = None
        self._duties_requested = True

    def _duties_are_due(self, now: datetime) -> bool:
        due, checked_at = self._duties_due, self._duties_checked_at
        if due is None or checked_at is None:
            return True
        # A clock set back since the last check cannot wait for a due time
        # computed before the jump.
        return now >= due or now < checked_at

    async def _run_loop(self) -> None:
        consecutive_errors = 0
        while True:
            self._wake.clear()
            now = self._clock.now()
            try:
                if self._duties_are_due(now):
                    # Jobs that fell due start before the cluster duties,
                    # which can take several storage round trips. An every-
                    # second job falls due as the leader enqueues the next.
                    await self._worker.dispatch_due()
                wake = await self.run_pending()
                consecutive_errors = 0
            except Exception as exc:
                consecutive_errors += 1
                # Log the first failure and then every hundredth, so that an
                # outage does not flood the log.
                if consecutive_errors == 1 or consecutive_errors % 100 == 0:
                    logger.error(
                        "node %s: scheduler pass failed (%d in a row), retrying: %s",
                        self._node_id,
                        consecutive_errors,
                        exc,
                        exc_info=not isinstance(exc, FantasmaError),
                    )
                wake = now + _ERROR_BACKOFF
            wake = min(wake, self._clock.now() + self._poll_interval)
            await self._clock.sleep_until(wake, self._wake)

    def _require_started(self, method: str) -> None:
        if not self._started:
            raise ConfigurationError(
                f"cannot call {method}() before the scheduler starts; "
                "use 'async with app:' or await app.start() first"
            )


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"job name must be a non-empty string, got {name!r}")
