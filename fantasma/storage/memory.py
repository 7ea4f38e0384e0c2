"""In-process storage backend, for tests and single-process applications."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Collection, Sequence
from datetime import datetime

from fantasma.errors import StorageError
from fantasma.jobs import (
    ACTIVE_STATUSES,
    CLAIMABLE_STATUSES,
    Job,
    JobId,
    JobStatus,
    LeaderLease,
    NodeInfo,
    RecurringJob,
)
from fantasma.storage.base import Storage

__all__ = ["MemoryStorage"]

_LEASE_EXPIRED = "lease expired: the node running this job stopped reporting"


class MemoryStorage(Storage):
    """Storage that keeps everything in dictionaries of the current process.

    Nothing survives the process, and only the process's own scheduler can
    see the data. Every method runs without awaiting, so each one is atomic
    with respect to other tasks on the event loop. Claims cost O(log n) in
    the number of waiting jobs, which keeps simulated runs in tests fast.
    """

    def __init__(self) -> None:
        self._jobs: dict[JobId, Job] = {}
        self._order: dict[JobId, int] = {}
        self._counter = itertools.count()
        # Heap of (due_at, insertion order, id) for claimable jobs. Entries
        # go stale when a job changes; a stale entry no longer matches the
        # job's current status and due time and is dropped when popped.
        self._due: list[tuple[datetime, int, JobId]] = []
        self._occurrences: dict[tuple[str, datetime], JobId] = {}
        self._active_by_recurring: dict[str, int] = {}
        self._running: set[JobId] = set()
        self._recurring: dict[str, RecurringJob] = {}
        self._leader: LeaderLease | None = None
        self._nodes: dict[str, NodeInfo] = {}
        self._listeners: list[Callable[[], None]] = []

    def add_listener(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()

    # Jobs

    def _store(self, job: Job) -> None:
        """Replace a stored job, keeping the indexes in step with its status."""
        old = self._jobs[job.id]
        self._jobs[job.id] = job
        if job.recurring_id is not None:
            delta = (job.status in ACTIVE_STATUSES) - (old.status in ACTIVE_STATUSES)
            if delta:
                self._count_active(job.recurring_id, delta)
        if job.status is JobStatus.RUNNING:
            self._running.add(job.id)
        else:
            self._running.discard(job.id)
        if job.status in CLAIMABLE_STATUSES and (
            old.status not in CLAIMABLE_STATUSES or old.due_at != job.due_at
        ):
            heapq.heappush(self._due, (job.due_at, self._order[job.id], job.id))

    def _count_active(self, recurring_id: str, delta: int) -> None:
        count = self._active_by_recurring.get(recurring_id, 0) + delta
        if count:
            self._active_by_recurring[recurring_id] = count
        else:
            self._active_by_recurring.pop(recurring_id, None)

    def _insert(self, job: Job) -> bool:
        if job.id in self._jobs:
            raise StorageError(f"cannot add job {job.id!r}: a job with this id exists")
        if job.recurring_id is not None and job.fire_time is not None:
            key = (job.recurring_id, job.fire_time)
            if key in self._occurrences:
                return False
            self._occurrences[key] = job.id
        order = next(self._counter)
        self._jobs[job.id] = job
        self._order[job.id] = order
        if job.status in CLAIMABLE_STATUSES:
            heapq.heappush(self._due, (job.due_at, order, job.id))
        elif job.status is JobStatus.RUNNING:
            self._running.add(job.id)
        if job.recurring_id is not None and job.status in ACTIVE_STATUSES:
            self._count_active(job.recurring_id, 1)
        return True

    async def add_jobs(self, jobs: Sequence[Job]) -> list[JobId]:
        ids = {job.id for job in jobs}
        if len(ids) != len(jobs):
            raise StorageError("cannot add jobs: the batch contains the same id twice")
        # Only the batch is looped over: set.intersection(dict) would walk
        # every stored job.
        clash = {job_id for job_id in ids if job_id in self._jobs}
        if clash:
            raise StorageError(
                f"cannot add job {min(clash)!r}: a job with this id exists"
            )
        inserted = [job.id for job in jobs if self._insert(job)]
        if inserted:
            self._notify()
        return inserted

    async def get_job(self, job_id: JobId) -> Job | None:
        return self._jobs.get(job_id)

    async def list_jobs(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        name: str | None = None,
        recurring_id: str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        selected = [
            job
            for job in self._jobs.values()
            if (statuses is None or job.status in statuses)
            and (name is None or job.name == name)
            and (recurring_id is None or job.recurring_id == recurring_id)
        ]
        selected.sort(key=lambda job: (job.due_at, self._order[job.id]))
        return selected if limit is None else selected[:limit]

    async def cancel_job(self, job_id: JobId, *, now: datetime) -> bool:
        job = self._jobs.get(job_id)
        if job is None or job.status not in CLAIMABLE_STATUSES:
            return False
        self._store(job.replace(status=JobStatus.CANCELLED, finished_at=now))
        return True

    def _pop_due(self, now: datetime) -> Job | None:
        due = self._due
        while due and due[0][0] <= now:
            due_at, _, job_id = heapq.heappop(due)
            job = self._jobs[job_id]
            if job.status in CLAIMABLE_STATUSES and job.due_at == due_at:
                return job
        return None

    def _peek_due(self) -> Job | None:
        due = self._due
        while due:
            due_at, _, job_id = due[0]
            job = self._jobs[job_id]
            if job.status in CLAIMABLE_STATUSES and job.due_at == due_at:
                return job
            heapq.heappop(due)
        return None

    async def claim_jobs(
        self, *, node_id: str, now: datetime, limit: int, lease_until: datetime
    ) -> list[Job]:
        claimed: list[Job] = []
        while len(claimed) < limit:
            job = self._pop_due(now)
            if job is None:
                break
            running = job.replace(
                status=JobStatus.RUNNING,
                lease_owner=node_id,
                lease_expires_at=lease_until,
                started_at=now,
                attempts=job.attempts + 1,
            )
            self._store(running)
            claimed.append(running)
        return claimed

    def _owned_running(self, job_id: JobId, node_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None or job.status is not JobStatus.RUNNING:
            return None
        return job if job.lease_owner == node_id else None

    async def extend_job_leases(
        self, *, node_id: str, job_ids: Collection[JobId], lease_until: datetime
    ) -> set[JobId]:
        extended: set[JobId] = set()
        for job_id in job_ids:
            job = self._owned_running(job_id, node_id)
            if job is not None:
                self._store(job.replace(lease_expires_at=lease_until))
                extended.add(job_id)
        return extended

    async def finish_job(
        self,
        job_id: JobId,
        *,
        node_id: str,
        now: datetime,
        status: JobStatus,
        error: str | None = None,
    ) -> bool:
        if status not in (JobStatus.SUCCEEDED, JobStatus.DEAD):
            raise ValueError(f"finish_job takes succeeded or dead, got {status!r}")
        job = self._owned_running(job_id, node_id)
        if job is None:
            return False
        self._store(
            job.replace(
                status=status,
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
                last_error=job.last_error if error is None else error,
            )
        )
        return True

    async def retry_job(
        self,
        job_id: JobId,
        *,
        node_id: str,
        now: datetime,
        due_at: datetime,
        error: str,
    ) -> bool:
        job = self._owned_running(job_id, node_id)
        if job is None:
            return False
        self._store(
            job.replace(
                status=JobStatus.FAILED,
                due_at=due_at,
                lease_owner=None,
                lease_expires_at=None,
                last_error=error,
            )
        )
        self._notify()
        return True

    async def requeue_expired_jobs(self, *, now: datetime) -> list[JobId]:
        expired = [
            job
            for job_id in self._running
            if (job := self._jobs[job_id]).lease_expires_at is not None
            and job.lease_expires_at <= now
        ]
        expired.sort(key=lambda job: self._order[job.id])
        for job in expired:
            released = job.replace(
                lease_owner=None, lease_expires_at=None, last_error=_LEASE_EXPIRED
            )
            if job.attempts >= job.max_attempts:
                self._store(released.replace(status=JobStatus.DEAD, finished_at=now))
            else:
                self._store(released.replace(status=JobStatus.SCHEDULED, due_at=now))
        if expired:
            self._notify()
        return [job.id for job in expired]

    async def next_due_at(self) -> datetime | None:
        job = self._peek_due()
        return None if job is None else job.due_at

    # Recurring jobs

    async def put_recurring(self, recurring: RecurringJob) -> None:
        self._recurring[recurring.id] = recurring

    async def get_recurring(self, recurring_id: str) -> RecurringJob | None:
        return self._recurring.get(recurring_id)

    async def list_recurring(self) -> list[RecurringJob]:
        return sorted(self._recurring.values(), key=lambda r: (r.next_fire_at, r.id))

    async def remove_recurring(self, recurring_id: str) -> bool:
        return self._recurring.pop(recurring_id, None) is not None

    async def active_recurring_ids(self) -> set[str]:
        return set(self._active_by_recurring)

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
        current = self._leader
        if current is None or (current.holder, current.term) != (
            lease.holder,
            lease.term,
        ):
            return False
        if now >= current.expires_at:
            return False
        recurring = self._recurring.get(recurring_id)
        if recurring is None or recurring.next_fire_at != expected_next_fire_at:
            return False
        if occurrence is not None:
            if occurrence.id in self._jobs:
                raise StorageError(
                    f"cannot add job {occurrence.id!r}: a job with this id exists"
                )
            if self._insert(occurrence):
                self._notify()
        self._recurring[recurring_id] = recurring.replace(next_fire_at=next_fire_at)
        return True

    # Cluster

    async def acquire_leadership(
        self, *, node_id: str, now: datetime, until: datetime
    ) -> LeaderLease | None:
        current = self._leader
        if current is not None and now < current.expires_at:
            if current.holder != node_id:
                return None
            self._leader = LeaderLease(node_id, current.term, until)
        else:
            term = 1 if current is None else current.term + 1
            self._leader = LeaderLease(node_id, term, until)
        return self._leader

    async def renew_leadership(
        self, lease: LeaderLease, *, now: datetime, until: datetime
    ) -> LeaderLease | None:
        current = self._leader
        if current is None or current.holder != lease.holder:
            return None
        if current.term != lease.term or now >= current.expires_at:
            return None
        self._leader = LeaderLease(lease.holder, lease.term, until)
        return self._leader

    async def release_leadership(self, lease: LeaderLease) -> None:
        current = self._leader
        if current is not None and (current.holder, current.term) == (
            lease.holder,
            lease.term,
        ):
            # Keep the term so the next holder still gets a larger one.
            self._leader = LeaderLease(current.holder, current.term, _EPOCH)

    async def get_leader(self) -> LeaderLease | None:
        return self._leader

    async def heartbeat(self, *, node_id: str, now: datetime) -> None:
        node = self._nodes.get(node_id)
        started_at = now if node is None else node.started_at
        self._nodes[node_id] = NodeInfo(node_id, started_at, now)

    async def list_nodes(self) -> list[NodeInfo]:
        return [self._nodes[node_id] for node_id in sorted(self._nodes)]

    async def remove_node(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)


_EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")
