"""The worker: claims due jobs, runs their handlers and records the outcome."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import traceback
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from fantasma import serialization
from fantasma.clock import Clock
from fantasma.errors import FantasmaError, JobTimeoutError
from fantasma.executor import Executor
from fantasma.handlers import (
    HandlerFactory,
    HandlerRegistry,
    JobContext,
    JobHandler,
    Registration,
)
from fantasma.jobs import Job, JobId, JobStatus, Run, RunOutcome
from fantasma.storage.base import Storage

if TYPE_CHECKING:
    from fantasma.scheduler import Fantasma

__all__ = ["Worker", "retry_delay"]

logger = logging.getLogger(__name__)

_MAX_ERROR_LENGTH = 8000
_CLAIM_BATCH = 50
_MAX_QUEUED_FINISHES = 4 * _CLAIM_BATCH
# Runs shorter than this on average let the worker claim jobs ahead.
_SHORT_RUN_SECONDS = 0.01
# Weight of the latest run in the moving average of run times.
_RUN_TIME_WEIGHT = 0.1


def retry_delay(
    attempt: int,
    *,
    backoff: float,
    backoff_max: float,
    jitter: float,
    rng: random.Random,
) -> timedelta:
    """Return the wait before the retry that follows failed attempt ``attempt``.

    The delay doubles with each attempt (``backoff``, ``2 * backoff``, ...),
    is capped at ``backoff_max`` seconds, and is then scaled by a random
    factor in ``[1 - jitter, 1 + jitter]`` so that jobs failing together do
    not retry together.
    """
    base = min(backoff_max, backoff * 2 ** (attempt - 1))
    factor = 1.0 + jitter * rng.uniform(-1.0, 1.0) if jitter else 1.0
    return timedelta(seconds=max(0.0, base * factor))


def _describe(error: BaseException) -> str:
    text = "".join(traceback.format_exception(error)).rstrip()
    if len(text) > _MAX_ERROR_LENGTH:
        text = "...\n" + text[-_MAX_ERROR_LENGTH:]
    return text


class Worker:
    """Claims jobs for one node and runs them through an executor."""

    def __init__(
        self,
        *,
        app: Fantasma,
        node_id: str,
        storage: Storage,
        registry: HandlerRegistry,
        executor: Executor,
        clock: Clock,
        handler_factory: HandlerFactory,
        job_lease: timedelta,
        rng: random.Random,
        on_run: Callable[[Run], None],
        prefetch: int = 0,
        wake: Callable[[], None] | None = None,
    ) -> None:
        """Create a worker; it claims nothing until :meth:`dispatch_due` is awaited.

        ``prefetch`` is how many claimed jobs may wait in this node for an
        executor slot. Claiming them with the ones that start at once lets
        one claim serve several finished jobs, at the price of holding jobs
        that another idle node could have run. So the worker claims ahead
        only while recent runs took less than 10 ms: with ``prefetch`` at
        four times the executor's slots, a waiting job then waits about 40 ms
        at most. Leases of waiting jobs are extended as those of running
        jobs are.

        ``wake`` is called when a batch of queued successes has been
        written, which makes room for more claims.
        """
        self._app = app
        self._node_id = node_id
        self._storage = storage
        self._registry = registry
        self._executor = executor
        self._clock = clock
        self._handler_factory = handler_factory
        self._job_lease = job_lease
        self._rng = rng
        self._on_run = on_run
        self._prefetch = prefetch
        # Moving average of recent run times in seconds; None until a run ends.
        self._run_seconds: float | None = None
        self._wake = wake
        self.may_have_due = True
        # Every job this node has claimed and not yet recorded, including
        # the ones waiting for a slot.
        self.running: dict[JobId, Job] = {}
        self._waiting: deque[Job] = deque()
        self._job_loggers: dict[str, logging.Logger] = {}
        # Successes that ended while another finish write was in flight,
        # with their start and end times, recorded together by the next
        # write (see _finish_succeeded).
        self._finish_in_flight = False
        self._queued_finishes: list[tuple[Job, datetime, datetime]] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._slot_freed = asyncio.Event()
        executor.add_slot_listener(self._slot_freed.set)

    @property
    def executing(self) -> set[JobId]:
        """Ids of the claimed jobs that have started and are not yet recorded."""
        waiting = {job.id for job in self._waiting}
        return {job_id for job_id in self.running if job_id not in waiting}

    async def dispatch_due(self) -> int:
        """Start waiting jobs in free executor slots, and claim more due jobs.

        A claim takes up to the free slots plus the jobs to prefetch (see
        :meth:`__init__`). While every slot is busy, it waits until three
        quarters of the prefetched jobs have started, so that claims go out
        in batches rather than one per finished job.

        Returns the number of jobs claimed. Afterwards :attr:`may_have_due`
        is true when due jobs may be left that this call did not claim.
        """
        if self._waiting:
            await self._start_waiting()
        self.may_have_due = True
        slots = self._executor.free_slots()
        prefetch = self._prefetch
        if self._run_seconds is None or self._run_seconds >= _SHORT_RUN_SECONDS:
            prefetch = 0
        if slots <= 0 and len(self._waiting) > prefetch // 4:
            return 0
        # A slow outcome write pauses claims instead of piling up finished
        # jobs whose outcome a crash would lose.
        if len(self._queued_finishes) >= _MAX_QUEUED_FINISHES:
            return 0
        limit = min(slots + prefetch - len(self._waiting), _CLAIM_BATCH)
        if limit <= 0:
            return 0
        now = self._clock.now()
        jobs = await self._storage.claim_jobs(
            node_id=self._node_id,
            now=now,
            limit=limit,
            lease_until=now + self._job_lease,
        )
        for job in jobs:
            self.running[job.id] = job
            logger.debug(
                "claimed job %s (%s), attempt %d", job.id, job.type_name, job.attempts
            )
        self._waiting.extend(jobs)
        self.may_have_due = len(jobs) == limit
        await self._start_waiting()
        return len(jobs)

    async def _start_waiting(self) -> None:
        while self._waiting and self._executor.free_slots() > 0:
            job = self._waiting.popleft()
            await self._executor.submit(functools.partial(self._execute, job))

    async def run_waiting(self) -> None:
        """Start every waiting job as executor slots free up; return once none wait.

        Called at shutdown, after the last claim, so that jobs this node
        already claimed run within the grace period.
        """
        while self._waiting:
            self._slot_freed.clear()
            await self._start_waiting()
            if self._waiting:
                await self._slot_freed.wait()

    async def release_waiting(self) -> None:
        """Hand jobs that never started back to storage, due at once.

        Storage has no way to undo a claim, so each one is recorded as an
        attempt cut short, the same as a job cancelled at shutdown.
        """
        while self._waiting:
            job = self._waiting.popleft()
            self.running.pop(job.id, None)
            await self._record(
                job,
                self._clock.now(),
                RunOutcome.INTERRUPTED,
                "not started before shutdown",
            )

    async def close(self) -> None:
        """Wait until the successes queued for a batch write are recorded."""
        task = self._flush_task
        if task is not None and not task.done():
            await asyncio.wait([task])

    async def extend_leases(self) -> None:
        """Push back the lease of every job this node is running."""
        if not self.running:
            return
        now = self._clock.now()
        kept = await self._storage.extend_job_leases(
            node_id=self._node_id,
            job_ids=list(self.running),
            lease_until=now + self._job_lease,
        )
        for job_id in set(self.running) - kept:
            logger.warning(
                "lost the lease of running job %s: another node may run it again",
                job_id,
            )

    async def _execute(self, job: Job) -> None:
        started_at = self._clock.now()
        error: BaseException | None = None
        try:
            await self._call_handler(job)
        except asyncio.CancelledError:
            await self._record(
                job, started_at, RunOutcome.INTERRUPTED, "cancelled at shutdown"
            )
            raise
        except Exception as exc:
            error = exc
        finally:
            self.running.pop(job.id, None)

        if error is None:
            await self._record(job, started_at, RunOutcome.SUCCEEDED, None)
            return
        logger.error(
            "job %s (%s) failed on attempt %d of %d: %s",
            job.id,
            job.type_name,
            job.attempts,
            job.max_attempts,
            error,
            exc_info=error if not isinstance(error, FantasmaError) else None,
        )
        outcome = (
            RunOutcome.DEAD if job.attempts >= job.max_attempts else RunOutcome.FAILED
        )
        await self._record(job, started_at, outcome, _describe(error))

    async def _call_handler(self, job: Job) -> None:
        registration = self._registry.by_name(job.type_name)
        data = serialization.decode(job.payload, registration.data_type)
        job_logger = self._job_loggers.get(job.name)
        if job_logger is None:
            job_logger = logging.getLogger(f"fantasma.jobs.{job.name}")
            self._job_loggers[job.name] = job_logger
        context = JobContext(
            job_id=job.id,
            name=job.name,
            attempt=job.attempts,
            max_attempts=job.max_attempts,
            due_at=job.due_at,
            fire_time=job.fire_time,
            recurring_id=job.recurring_id,
            node_id=self._node_id,
            clock=self._clock,
            logger=logging.LoggerAdapter(
                job_logger, {"job_id": job.id, "attempt": job.attempts}
            ),
            app=self._app,
        )
        handler = self._handler_factory(registration.handler_class)
        if job.timeout is None:
            # Most jobs have no timeout; skipping the timeout scope saves a
            # noticeable share of a simulated run's cost.
            await self._call(registration, handler, data, context)
            return
        scope = asyncio.timeout(job.timeout)
        try:
            async with scope:
                await self._call(registration, handler, data, context)
        except TimeoutError:
            # Only the job's own limit becomes JobTimeoutError; a TimeoutError
            # that the handler raised itself is kept as its error.
            if not scope.expired():
                raise
            raise JobTimeoutError(
                f"job {job.id} timed out after {job.timeout} s"
            ) from None

    async def _call(
        self,
        registration: Registration,
        handler: JobHandler[Any],
        data: object,
        context: JobContext,
    ) -> None:
        if registration.is_async:
            await handler.handle(data, context)  # type: ignore[misc]
        else:
            await self._executor.run_sync(lambda: handler.handle(data, context))

    async def _record(
        self, job: Job, started_at: datetime, outcome: RunOutcome, error: str | None
    ) -> None:
        now = self._clock.now()
        if self._prefetch:
            self._note_run_time((now - started_at).total_seconds())
        if outcome is RunOutcome.SUCCEEDED and self._finish_in_flight:
            # The write in flight takes this success next and reports the
            # run then; the execution ends now and frees its slot.
            self._queued_finishes.append((job, started_at, now))
            return
        try:
            recorded = await self._store_outcome(job, now, outcome, error)
        except FantasmaError:
            # The lease expires and the leader requeues the job, so the
            # outcome is lost but the job is not.
            logger.exception(
                "could not record outcome %s of job %s; it will run again after "
                "its lease expires",
                outcome,
                job.id,
            )
            recorded = False
        self._report_run(job, started_at, now, outcome, error, recorded)

    def _report_run(
        self,
        job: Job,
        started_at: datetime,
        finished_at: datetime,
        outcome: RunOutcome,
        error: str | None,
        recorded: bool,
    ) -> None:
        if not recorded and outcome is not RunOutcome.INTERRUPTED:
            logger.warning(
                "job %s finished after its lease was lost; outcome %s not recorded",
                job.id,
                outcome,
            )
        self._on_run(
            Run(
                job_id=job.id,
                name=job.name,
                type_name=job.type_name,
                recurring_id=job.recurring_id,
                fire_time=job.fire_time,
                due_at=job.due_at,
                started_at=started_at,
                finished_at=finished_at,
                attempt=job.attempts,
                outcome=outcome,
                error=error,
                node_id=self._node_id,
            )
        )

    def _note_run_time(self, seconds: float) -> None:
        average = self._run_seconds
        if average is None:
            self._run_seconds = seconds
        else:
            self._run_seconds = average + (seconds - average) * _RUN_TIME_WEIGHT

    async def _store_outcome(
        self, job: Job, now: datetime, outcome: RunOutcome, error: str | None
    ) -> bool:
        storage = self._storage
        if outcome is RunOutcome.SUCCEEDED:
            return await self._finish_succeeded(job.id, now)
        if outcome is RunOutcome.DEAD:
            return await storage.finish_job(
                job.id,
                node_id=self._node_id,
                now=now,
                status=JobStatus.DEAD,
                error=error,
            )
        if outcome is RunOutcome.INTERRUPTED:
            # Due at once again: the attempt was cut short, not failed.
            return await storage.retry_job(
                job.id, node_id=self._node_id, now=now, due_at=now, error=error or ""
            )
        handler_class = self._handler_class(job)
        delay = retry_delay(
            job.attempts,
            backoff=handler_class.retry_backoff,
            backoff_max=handler_class.retry_backoff_max,
            jitter=handler_class.retry_jitter,
            rng=self._rng,
        )
        logger.info(
            "retrying job %s (%s) in %.3f s",
            job.id,
            job.type_name,
            delay.total_seconds(),
        )
        return await storage.retry_job(
            job.id,
            node_id=self._node_id,
            now=now,
            due_at=now + delay,
            error=error or "",
        )

    async def _finish_succeeded(self, job_id: JobId, now: datetime) -> bool:
        """Record a success on its own, collecting the ones that end meanwhile.

        Successes that end while this write is in flight queue up (see
        :meth:`_record`), and one background task then records them with
        :meth:`~fantasma.storage.Storage.finish_jobs`, a batch per write,
        until none are left. A node that runs one job at a time never queues
        any, so it makes the same storage calls as without batching.
        """
        self._finish_in_flight = True
        try:
            return await self._storage.finish_job(
                job_id, node_id=self._node_id, now=now, status=JobStatus.SUCCEEDED
            )
        finally:
            if self._queued_finishes:
                self._flush_task = asyncio.create_task(
                    self._write_queued_finishes(),
                    name=f"fantasma-finish-{self._node_id}",
                )
            else:
                self._finish_in_flight = False

    async def _write_queued_finishes(self) -> None:
        try:
            while self._queued_finishes:
                batch, self._queued_finishes = self._queued_finishes, []
                ids = [job.id for job, _, _ in batch]
                try:
                    # The batch gets the time of the write, at most one write
                    # after each job's own end.
                    finished = await self._storage.finish_jobs(
                        ids,
                        node_id=self._node_id,
                        now=self._clock.now(),
                        status=JobStatus.SUCCEEDED,
                    )
                except Exception:
                    # No caller is left to raise to. The leases expire and
                    # the leader requeues the jobs, so they run again.
                    logger.exception(
                        "could not record the success of %d jobs; they will run"
                        " again after their leases expire: %s",
                        len(ids),
                        ", ".join(ids),
                    )
                    finished = set()
                for job, started_at, finished_at in batch:
                    try:
                        self._report_run(
                            job,
                            started_at,
                            finished_at,
                            RunOutcome.SUCCEEDED,
                            None,
                            job.id in finished,
                        )
                    except Exception:
                        logger.exception("run listener failed for job %s", job.id)
                if self._wake is not None:
                    self._wake()
        finally:
            # Cancelled as the event loop shuts down, the queued successes
            # are lost, and the jobs run again once their leases expire.
            self._queued_finishes = []
            self._finish_in_flight = False

    def _handler_class(self, job: Job) -> type[JobHandler[Any]]:
        try:
            return self._registry.by_name(job.type_name).handler_class
        except FantasmaError:
            # A job of an unknown type still backs off, with the default policy.
            return JobHandler
