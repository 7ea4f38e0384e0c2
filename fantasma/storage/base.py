"""The storage port: every durable fact of the scheduler goes through it."""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Sequence
from datetime import datetime

from fantasma.jobs import Job, JobId, JobStatus, LeaderLease, NodeInfo, RecurringJob

__all__ = ["Storage"]


class Storage(abc.ABC):
    """Abstract base class of storage backends.

    A backend is correct when it passes the contract suite in
    ``fantasma_testing.contract``. Rules every method follows:

    - Time comes from the caller: methods that compare against the current
      time take ``now`` (an aware UTC datetime), so a fake clock drives every
      backend. A backend never reads the system clock.
    - Datetimes go in and come out aware, in UTC, to the microsecond.
    - Each method is atomic: it takes effect completely or not at all. A
      backend raises :class:`~fantasma.errors.StorageUnavailableError` when
      the database cannot be reached or the connection drops, and
      :class:`~fantasma.errors.StorageError` for other failures, with the
      driver's exception chained.
    - Claimable jobs are those in :data:`~fantasma.jobs.CLAIMABLE_STATUSES`
      whose ``due_at`` is at or before ``now``. They are handed out in
      ``due_at`` order, ties broken by the order in which they were added.
    """

    # Lifecycle

    async def start(self) -> None:  # noqa: B027
        """Connect and check the schema. Called once before any other method."""

    async def close(self) -> None:  # noqa: B027
        """Release connections. The storage may be started again afterwards."""

    def add_listener(self, callback: Callable[[], None]) -> None:  # noqa: B027
        """Call ``callback`` (from the event loop) whenever jobs may have become due.

        Backends that can see other processes' writes (PostgreSQL
        LISTEN/NOTIFY) use this to wake idle workers at once. The default
        does nothing, and workers fall back to polling.
        """

    # Jobs

    @abc.abstractmethod
    async def add_jobs(self, jobs: Sequence[Job]) -> list[JobId]:
        """Insert new jobs in one round trip and return the ids inserted.

        A job with a ``recurring_id`` whose (``recurring_id``, ``fire_time``)
        pair already exists is skipped silently, so its id is not in the
        result. Inserting an id that exists raises
        :class:`~fantasma.errors.StorageError`.
        """

    @abc.abstractmethod
    async def get_job(self, job_id: JobId) -> Job | None:
        """Return the job with this id, or ``None``."""

    @abc.abstractmethod
    async def list_jobs(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        name: str | None = None,
        recurring_id: str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        """Return jobs matching every filter, ordered by ``due_at`` then insertion."""

    @abc.abstractmethod
    async def cancel_job(self, job_id: JobId, *, now: datetime) -> bool:
        """Cancel a job that has not started; return whether it was cancelled.

        Only jobs in a claimable status can be cancelled; a running or
        finished job is left alone and ``False`` is returned.
        """

    @abc.abstractmethod
    async def claim_jobs(
        self, *, node_id: str, now: datetime, limit: int, lease_until: datetime
    ) -> list[Job]:
        """Claim up to ``limit`` claimable jobs for ``node_id``.

        Each claimed job becomes ``running`` with ``lease_owner=node_id``,
        ``lease_expires_at=lease_until``, ``started_at=now`` and ``attempts``
        incremented, and is returned in that state. Concurrent callers never
        receive the same job.
        """

    @abc.abstractmethod
    async def extend_job_leases(
        self, *, node_id: str, job_ids: Collection[JobId], lease_until: datetime
    ) -> set[JobId]:
        """Push back the lease of running jobs ``node_id`` still owns.

        Returns the ids whose lease was extended; a job missing from the
        result was requeued or finished by someone else.
        """

    @abc.abstractmethod
    async def finish_job(
        self,
        job_id: JobId,
        *,
        node_id: str,
        now: datetime,
        status: JobStatus,
        error: str | None = None,
    ) -> bool:
        """Record the end of a running job owned by ``node_id``.

        ``status`` is ``succeeded`` or ``dead``. Sets ``finished_at=now``,
        clears the lease and stores ``error`` as ``last_error`` when given.
        Returns ``False``, changing nothing, when the job is no longer
        running under this node's lease.
        """

    async def finish_jobs(
        self,
        job_ids: Collection[JobId],
        *,
        node_id: str,
        now: datetime,
        status: JobStatus,
        error: str | None = None,
    ) -> set[JobId]:
        """Record the end of several running jobs owned by ``node_id`` at once.

        Each job changes as :meth:`finish_job` describes, with the same
        ``now``, ``status`` and ``error``. Returns the ids that were finished;
        a job missing from the result was no longer running under this
        node's lease and is left unchanged. Unlike the other methods, the
        batch is not atomic as a whole: each job is finished or not on its
        own.

        The default calls :meth:`finish_job` once per job. SQL backends
        override it with one statement for the whole batch, which is what
        lets a worker record many outcomes in one round trip.
        """
        finished: set[JobId] = set()
        for job_id in job_ids:
            if await self.finish_job(
                job_id, node_id=node_id, now=now, status=status, error=error
            ):
                finished.add(job_id)
        return finished

    @abc.abstractmethod
    async def retry_job(
        self,
        job_id: JobId,
        *,
        node_id: str,
        now: datetime,
        due_at: datetime,
        error: str,
    ) -> bool:
        """Move a running job owned by ``node_id`` to ``failed``, due at ``due_at``.

        Clears the lease and stores ``error`` as ``last_error``. Returns
        ``False``, changing nothing, when the job is no longer running under
        this node's lease.
        """

    @abc.abstractmethod
    async def requeue_expired_jobs(self, *, now: datetime) -> list[JobId]:
        """Release running jobs whose lease expired at or before ``now``.

        A job with attempts left goes back to ``scheduled``, due at once; a job
        that used its last attempt becomes ``dead``. Both get ``last_error``
        saying the lease expired. Returns the ids of the jobs released.
        """

    @abc.abstractmethod
    async def next_due_at(self) -> datetime | None:
        """Return the earliest ``due_at`` among claimable jobs, or ``None``."""

    # Recurring jobs

    @abc.abstractmethod
    async def put_recurring(self, recurring: RecurringJob) -> None:
        """Insert a recurring job, or replace the one with the same id."""

    @abc.abstractmethod
    async def get_recurring(self, recurring_id: str) -> RecurringJob | None:
        """Return the recurring job with this id, or ``None``."""

    @abc.abstractmethod
    async def list_recurring(self) -> list[RecurringJob]:
        """Return every recurring job, ordered by ``next_fire_at`` then id."""

    @abc.abstractmethod
    async def remove_recurring(self, recurring_id: str) -> bool:
        """Delete a recurring job; return whether it existed.

        Occurrences already enqueued stay and run.
        """

    @abc.abstractmethod
    async def active_recurring_ids(self) -> set[str]:
        """Return the recurring ids that have an occurrence in an active status."""

    @abc.abstractmethod
    async def materialise_occurrence(
        self,
        *,
        lease: LeaderLease,
        now: datetime,
        recurring_id: str,
        expected_next_fire_at: datetime,
        occurrence: Job | None,
        next_fire_at: datetime,
    ) -> bool:
        """Enqueue one occurrence and advance a recurring job, fenced by the lease.

        In one transaction: check that ``lease`` is still the stored lease
        (same holder and term) and has not expired at ``now``, and that the
        recurring job's ``next_fire_at`` still equals
        ``expected_next_fire_at``; then insert ``occurrence`` (skipped if its
        occurrence key exists; ``None`` inserts nothing, for skipped fire
        times) and set ``next_fire_at``. Returns ``False``, changing nothing,
        when either check fails.
        """

    # Cluster

    @abc.abstractmethod
    async def acquire_leadership(
        self, *, node_id: str, now: datetime, until: datetime
    ) -> LeaderLease | None:
        """Take the leader lease if it is free or expired at ``now``.

        If ``node_id`` already holds an unexpired lease, it is extended to
        ``until`` with the same term. A takeover (new holder, or the same
        holder after expiry) stores ``term + 1``; the first lease has term 1.
        Returns the lease now stored, or ``None`` when another node holds an
        unexpired lease.
        """

    @abc.abstractmethod
    async def renew_leadership(
        self, lease: LeaderLease, *, now: datetime, until: datetime
    ) -> LeaderLease | None:
        """Extend ``lease`` to ``until`` if it is stored and unexpired at ``now``.

        Returns the extended lease, or ``None`` when the lease was lost
        (expired, or taken over in a later term).
        """

    @abc.abstractmethod
    async def release_leadership(self, lease: LeaderLease) -> None:
        """Give up ``lease`` so that another node can take over at once.

        Does nothing when ``lease`` is no longer the stored lease.
        """

    @abc.abstractmethod
    async def get_leader(self) -> LeaderLease | None:
        """Return the stored leader lease, expired or not, or ``None``."""

    @abc.abstractmethod
    async def heartbeat(self, *, node_id: str, now: datetime) -> None:
        """Register ``node_id`` or update its ``last_seen_at`` to ``now``."""

    @abc.abstractmethod
    async def list_nodes(self) -> list[NodeInfo]:
        """Return every registered node, ordered by node id."""

    @abc.abstractmethod
    async def remove_node(self, node_id: str) -> None:
        """Unregister a node, as at a clean shutdown."""
