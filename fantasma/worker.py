"""The worker: claims due jobs, runs their handlers and records the outcome."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import traceback
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
    ) -> None:
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
        self.running: dict[JobId, Job] = {}
        self._job_loggers: dict[str, logging.Logger] = {}

    async def dispatch_due(self) -> int:
        """Claim due jobs up to the executor's free slots and start them.

        Returns the number of jobs claimed.
        """
        slots = self._executor.free_slots()
        if slots <= 0:
            return 0
        now = self._clock.now()
        jobs = await self._storage.claim_jobs(
            node_id=self._node_id,
            now=now,
            limit=min(slots, _CLAIM_BATCH),
            lease_until=now + self._job_lease,
        )
        for job in jobs:
            self.running[job.id] = job
            logger.debug(
                "claimed job %s (%s), attempt %d", job.id, job.type_name, job.attempts
            )
            await self._executor.submit(functools.partial(self._execute, job))
        return len(jobs)

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
                finished_at=now,
                attempt=job.attempts,
                outcome=outcome,
                error=error,
                node_id=self._node_id,
            )
        )

    async def _store_outcome(
        self, job: Job, now: datetime, outcome: RunOutcome, error: str | None
    ) -> bool:
        storage = self._storage
        if outcome is RunOutcome.SUCCEEDED:
            return await storage.finish_job(
                job.id, node_id=self._node_id, now=now, status=JobStatus.SUCCEEDED
            )
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

    def _handler_class(self, job: Job) -> type[JobHandler[Any]]:
        try:
            return self._registry.by_name(job.type_name).handler_class
        except FantasmaError:
            # A job of an unknown type still backs off, with the default policy.
            return JobHandler
