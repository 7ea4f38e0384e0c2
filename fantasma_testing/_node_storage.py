"""One simulated node's connection to the shared storage, which a test can cut."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from fantasma import LeaderLease, Storage, StorageUnavailableError
from fantasma.jobs import Job, JobId, JobStatus, NodeInfo, RecurringJob

if TYPE_CHECKING:
    from fantasma_testing.cluster import ClusterNode

__all__ = ["NodeCrashed", "NodeStorage"]


class NodeCrashed(BaseException):
    """Unwinds a pass of a node that a test killed, as if its process died.

    A BaseException, so that no ``except Exception`` in the runtime records
    an outcome or releases a lease on the way out.
    """


class NodeStorage(Storage):
    """One node's view of the shared storage, which the cluster can cut or kill.

    Every call first checks the node: a killed node's call unwinds its pass,
    a partitioned node's call raises
    :class:`~fantasma.StorageUnavailableError`. Lease writes and leader
    work that succeed are reported to the cluster.
    """

    def __init__(self, inner: Storage, member: ClusterNode) -> None:
        self._inner = inner
        self._member = member

    def _gate(self) -> None:
        member = self._member
        if member.state == "killed":
            raise NodeCrashed(member.node_id)
        if member.partitioned:
            raise StorageUnavailableError(
                f"node {member.node_id!r} is cut off from storage by a simulated "
                "network partition; heal it with nodes.heal()"
            )

    async def start(self) -> None:
        # A node restarted while cut off starts anyway and retries its passes,
        # as a node loop would once connected.
        if self._member.state == "killed":
            raise NodeCrashed(self._member.node_id)
        await self._member.cluster._start_storage()

    async def close(self) -> None:
        # The fixture that opened the shared storage closes it.
        return None

    # Jobs

    async def add_jobs(self, jobs: Sequence[Job]) -> list[JobId]:
        self._gate()
        return await self._inner.add_jobs(jobs)

    async def get_job(self, job_id: JobId) -> Job | None:
        self._gate()
        return await self._inner.get_job(job_id)

    async def list_jobs(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        name: str | None = None,
        recurring_id: str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        self._gate()
        return await self._inner.list_jobs(
            statuses=statuses, name=name, recurring_id=recurring_id, limit=limit
        )

    async def cancel_job(self, job_id: JobId, *, now: datetime) -> bool:
        self._gate()
        return await self._inner.cancel_job(job_id, now=now)

    async def claim_jobs(
        self, *, node_id: str, now: datetime, limit: int, lease_until: datetime
    ) -> list[Job]:
        self._gate()
        return await self._inner.claim_jobs(
            node_id=node_id, now=now, limit=limit, lease_until=lease_until
        )

    async def extend_job_leases(
        self, *, node_id: str, job_ids: Collection[JobId], lease_until: datetime
    ) -> set[JobId]:
        self._gate()
        return await self._inner.extend_job_leases(
            node_id=node_id, job_ids=job_ids, lease_until=lease_until
        )

    async def finish_job(
        self,
        job_id: JobId,
        *,
        node_id: str,
        now: datetime,
        status: JobStatus,
        error: str | None = None,
    ) -> bool:
        self._gate()
        return await self._inner.finish_job(
            job_id, node_id=node_id, now=now, status=status, error=error
        )

    async def retry_job(
        self,
        job_id: JobId,
        *,
        node_id: str,
        now: datetime,
        due_at: datetime,
        error: str,
    ) -> bool:
        self._gate()
        return await self._inner.retry_job(
            job_id, node_id=node_id, now=now, due_at=due_at, error=error
        )

    async def requeue_expired_jobs(self, *, now: datetime) -> list[JobId]:
        self._gate()
        requeued = await self._inner.requeue_expired_jobs(now=now)
        if requeued:
            lease = self._member.app.lease
            self._member.cluster._record(
                "requeue",
                self._member,
                None if lease is None else lease.term,
                job_ids=tuple(requeued),
            )
        return requeued

    async def next_due_at(self) -> datetime | None:
        self._gate()
        return await self._inner.next_due_at()

    # Recurring jobs

    async def put_recurring(self, recurring: RecurringJob) -> None:
        self._gate()
        await self._inner.put_recurring(recurring)

    async def get_recurring(self, recurring_id: str) -> RecurringJob | None:
        self._gate()
        return await self._inner.get_recurring(recurring_id)

    async def list_recurring(self) -> list[RecurringJob]:
        self._gate()
        return await self._inner.list_recurring()

    async def remove_recurring(self, recurring_id: str) -> bool:
        self._gate()
        return await self._inner.remove_recurring(recurring_id)

    async def active_recurring_ids(self) -> set[str]:
        self._gate()
        return await self._inner.active_recurring_ids()

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
        self._gate()
        applied = await self._inner.materialise_occurrence(
            lease=lease,
            now=now,
            recurring_id=recurring_id,
            expected_next_fire_at=expected_next_fire_at,
            occurrence=occurrence,
            next_fire_at=next_fire_at,
        )
        if not applied:
            self._member.cluster._record_rejected(
                self._member,
                lease.term,
                recurring_id=recurring_id,
                expected_next_fire_at=expected_next_fire_at,
            )
        else:
            self._member.cluster._record(
                "materialise",
                self._member,
                lease.term,
                recurring_id=recurring_id,
                fire_time=None if occurrence is None else occurrence.fire_time,
                expected_next_fire_at=expected_next_fire_at,
                next_fire_at=next_fire_at,
            )
        return applied

    # Cluster

    async def acquire_leadership(
        self, *, node_id: str, now: datetime, until: datetime
    ) -> LeaderLease | None:
        self._gate()
        lease = await self._inner.acquire_leadership(
            node_id=node_id, now=now, until=until
        )
        if lease is not None:
            self._member.cluster._lease_stored(lease, self._member, acquired=True)
        return lease

    async def renew_leadership(
        self, lease: LeaderLease, *, now: datetime, until: datetime
    ) -> LeaderLease | None:
        self._gate()
        renewed = await self._inner.renew_leadership(lease, now=now, until=until)
        if renewed is not None:
            self._member.cluster._lease_stored(renewed, self._member, acquired=False)
        return renewed

    async def release_leadership(self, lease: LeaderLease) -> None:
        self._gate()
        await self._inner.release_leadership(lease)
        self._member.cluster._lease_released(lease, self._member)

    async def get_leader(self) -> LeaderLease | None:
        self._gate()
        return await self._inner.get_leader()

    async def heartbeat(self, *, node_id: str, now: datetime) -> None:
        self._gate()
        await self._inner.heartbeat(node_id=node_id, now=now)

    async def list_nodes(self) -> list[NodeInfo]:
        self._gate()
        return await self._inner.list_nodes()

    async def remove_node(self, node_id: str) -> None:
        self._gate()
        await self._inner.remove_node(node_id)
