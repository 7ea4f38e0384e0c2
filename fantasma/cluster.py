"""Cluster membership: heartbeats, the leader lease, and the leader's duties.

Every node heartbeats and executes jobs. The node holding the leader lease
also turns recurring schedules into occurrence jobs and requeues jobs whose
node stopped renewing their lease. Every leader write is fenced by the
lease's term in the same transaction, so a node that lost its lease, even
one that does not know it yet, changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import final

from fantasma.clock import Clock
from fantasma.cron import Cron
from fantasma.jobs import Job, JobStatus, LeaderLease, RecurringJob, new_job_id
from fantasma.storage.base import Storage

__all__ = ["ClusterSettings", "Coordinator", "OccurrencePlan", "plan_occurrence"]

logger = logging.getLogger(__name__)

_MAX_STEPS_PER_SCHEDULE = 100
_ONE_MICROSECOND = timedelta(microseconds=1)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSettings:
    """Timing of a node's cluster duties.

    Attributes:
        lease_period: How long a leader lease lasts without renewal. A
            follower takes over at most this long (plus its own renewal
            interval) after the leader stops.
        renew_interval: How often the leader renews its lease, and how often
            followers try to take it.
        heartbeat_interval: How often a node records that it is alive.
        lookahead: How long before its fire time an occurrence is enqueued.
        misfire_grace: How late an occurrence may be enqueued and still count
            as on time; later ones are missed and go to the misfire policy.
        poll_interval: Longest sleep of an idle node, which bounds how late
            it notices work that another process added.
    """

    lease_period: timedelta = timedelta(seconds=10)
    renew_interval: timedelta = timedelta(seconds=3)
    heartbeat_interval: timedelta = timedelta(seconds=3)
    lookahead: timedelta = timedelta(seconds=1)
    misfire_grace: timedelta = timedelta(seconds=1)
    poll_interval: timedelta = timedelta(seconds=1)

    def __post_init__(self) -> None:
        if self.renew_interval >= self.lease_period:
            raise ValueError(
                f"renew_interval ({self.renew_interval}) must be shorter than "
                f"lease_period ({self.lease_period}), or the lease lapses between "
                "renewals"
            )


@final
@dataclass(frozen=True, slots=True)
class OccurrencePlan:
    """The next step for one recurring job.

    ``fire_time`` is the occurrence to enqueue, or ``None`` when missed fire
    times are skipped; ``next_fire_at`` is the schedule's new position.
    """

    fire_time: datetime | None
    next_fire_at: datetime
    missed: bool


@lru_cache(maxsize=1024)
def _cron(expression: str, timezone: str) -> Cron:
    return Cron(expression, timezone)


def plan_occurrence(
    recurring: RecurringJob, *, now: datetime, grace: timedelta
) -> OccurrencePlan:
    """Decide what to enqueue for ``recurring``, whose next fire time is due.

    A fire time more than ``grace`` before ``now`` is missed, and the
    schedule's misfire policy applies:

    - ``skip``: enqueue nothing; move to the first fire time not missed.
    - ``once``: enqueue the first missed fire time as one catch-up run and
      move past ``now``, so the other missed fire times are dropped.
    - ``each``: enqueue missed fire times one by one, but only the latest
      ``limit`` of them; older ones are skipped.

    The plan depends only on its arguments, so two leaders that disagree
    about who leads still plan the same occurrence key.
    """
    cron = _cron(recurring.cron, recurring.timezone)
    fire_time = recurring.next_fire_at
    cutoff = now - grace
    if fire_time >= cutoff:
        return OccurrencePlan(fire_time, cron.next_after(fire_time), missed=False)

    policy = recurring.misfire
    if policy.kind == "skip":
        return OccurrencePlan(None, cron.next_after(cutoff - _ONE_MICROSECOND), True)
    if policy.kind == "once":
        return OccurrencePlan(fire_time, cron.next_after(now), missed=True)

    # "each": find the latest `limit` missed fire times; run from the oldest of them.
    window = [fire_time]
    candidate = cron.next_after(fire_time)
    while candidate < cutoff:
        window.append(candidate)
        if len(window) > policy.limit:
            window.pop(0)
        candidate = cron.next_after(candidate)
    if window[0] != fire_time:
        return OccurrencePlan(None, window[0], missed=True)
    return OccurrencePlan(fire_time, cron.next_after(fire_time), missed=True)


def occurrence_job(recurring: RecurringJob, fire_time: datetime, now: datetime) -> Job:
    """Build the job for one occurrence of ``recurring``."""
    return Job(
        id=new_job_id(),
        name=recurring.name,
        type_name=recurring.type_name,
        payload=recurring.payload,
        status=JobStatus.SCHEDULED,
        due_at=fire_time,
        created_at=now,
        max_attempts=recurring.max_attempts,
        timeout=recurring.timeout,
        recurring_id=recurring.id,
        fire_time=fire_time,
    )


class Coordinator:
    """One node's cluster duties, run by the node's loop between job claims."""

    def __init__(
        self,
        *,
        node_id: str,
        storage: Storage,
        clock: Clock,
        settings: ClusterSettings,
    ) -> None:
        self.node_id = node_id
        self._storage = storage
        self._clock = clock
        self._settings = settings
        self.lease: LeaderLease | None = None
        self._next_heartbeat: datetime | None = None
        self._next_lease_action: datetime | None = None

    def is_leader(self, now: datetime) -> bool:
        """Return whether this node holds an unexpired leader lease at ``now``."""
        return self.lease is not None and self.lease.is_held_by(self.node_id, now)

    async def tick(self) -> datetime:
        """Do every duty that is due and return when the next one falls due."""
        settings = self._settings
        now = self._clock.now()
        if self._next_heartbeat is None or now >= self._next_heartbeat:
            await self._storage.heartbeat(node_id=self.node_id, now=now)
            self._next_heartbeat = now + settings.heartbeat_interval
        if self._next_lease_action is None or now >= self._next_lease_action:
            await self._update_lease(now)
            self._next_lease_action = now + settings.renew_interval
            if self.is_leader(now):
                await self._requeue_expired(now)

        wake = min(self._next_heartbeat, self._next_lease_action)
        if self.is_leader(now):
            next_fire = await self._materialise(now)
            if next_fire is not None:
                wake = min(wake, next_fire)
        return wake

    async def _update_lease(self, now: datetime) -> None:
        until = now + self._settings.lease_period
        if self.lease is not None:
            renewed = await self._storage.renew_leadership(
                self.lease, now=now, until=until
            )
            if renewed is not None:
                self.lease = renewed
                return
            logger.warning(
                "node %s lost the leader lease of term %d",
                self.node_id,
                self.lease.term,
            )
            self.lease = None
        lease = await self._storage.acquire_leadership(
            node_id=self.node_id, now=now, until=until
        )
        if lease is not None:
            self.lease = lease
            logger.info("node %s became leader in term %d", self.node_id, lease.term)

    async def _requeue_expired(self, now: datetime) -> None:
        requeued = await self._storage.requeue_expired_jobs(now=now)
        if requeued:
            logger.warning(
                "requeued %d jobs whose node stopped renewing their lease: %s",
                len(requeued),
                ", ".join(requeued),
            )

    async def _materialise(self, now: datetime) -> datetime | None:
        """Enqueue due occurrences; return when the next one must be enqueued."""
        settings = self._settings
        active = await self._storage.active_recurring_ids()
        horizon = now + settings.lookahead
        wake: datetime | None = None
        for recurring in await self._storage.list_recurring():
            if recurring.id in active and not recurring.allow_overlap:
                # Blocked until its occurrence ends: the node loop is woken
                # when a local job ends, and polls for remote ones.
                continue
            if not self.is_leader(now):
                return None
            next_fire_at = await self._advance(recurring, now, horizon)
            if next_fire_at is not None:
                due = next_fire_at - settings.lookahead
                wake = due if wake is None else min(wake, due)
        return wake

    async def _advance(
        self, recurring: RecurringJob, now: datetime, horizon: datetime
    ) -> datetime | None:
        """Enqueue what is due for one schedule.

        Returns the schedule's next fire time, or ``None`` when it is blocked
        by the occurrence just enqueued, changed under this node, or the lease
        was lost.
        """
        assert self.lease is not None
        for _ in range(_MAX_STEPS_PER_SCHEDULE):
            if recurring.next_fire_at > horizon:
                return recurring.next_fire_at
            plan = plan_occurrence(
                recurring, now=now, grace=self._settings.misfire_grace
            )
            occurrence = None
            if plan.fire_time is not None:
                occurrence = occurrence_job(recurring, plan.fire_time, now)
            applied = await self._storage.materialise_occurrence(
                lease=self.lease,
                now=now,
                recurring_id=recurring.id,
                expected_next_fire_at=recurring.next_fire_at,
                occurrence=occurrence,
                next_fire_at=plan.next_fire_at,
            )
            if not applied:
                await self._check_lease_after_rejection(now)
                return None
            if plan.missed:
                logger.info(
                    "recurring job %s missed fire time %s; misfire policy %s %s",
                    recurring.id,
                    recurring.next_fire_at.isoformat(),
                    recurring.misfire,
                    "enqueued a catch-up run" if occurrence else "skipped it",
                )
            recurring = recurring.replace(next_fire_at=plan.next_fire_at)
            if occurrence is not None and not recurring.allow_overlap:
                return None
        return recurring.next_fire_at

    async def _check_lease_after_rejection(self, now: datetime) -> None:
        """Drop leadership if the storage rejected a write for a stale lease.

        Otherwise the schedule itself changed (updated or removed by another
        node), and the next tick reads it again.
        """
        assert self.lease is not None
        stored = await self._storage.get_leader()
        if (
            stored is not None
            and (stored.holder, stored.term) == (self.lease.holder, self.lease.term)
            and now < stored.expires_at
        ):
            return
        logger.warning(
            "node %s stopped leader work: its lease of term %d is no longer valid",
            self.node_id,
            self.lease.term,
        )
        self.lease = None

    async def release(self) -> None:
        """Give up the leader lease, as at a clean shutdown."""
        if self.lease is not None:
            await self._storage.release_leadership(self.lease)
            logger.info(
                "node %s released the leader lease of term %d",
                self.node_id,
                self.lease.term,
            )
            self.lease = None
        await self._storage.remove_node(self.node_id)
