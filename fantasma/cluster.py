"""Cluster duties of a node: heartbeats, the leader lease, and the leader's work."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import final

from fantasma.clock import Clock
from fantasma.cron import Cron
from fantasma.errors import ConfigurationError
from fantasma.jobs import (
    Job,
    JobStatus,
    LeaderLease,
    NodeInfo,
    RecurringJob,
    new_job_id,
)
from fantasma.storage.base import Storage

__all__ = [
    "ClockCheck",
    "ClusterSettings",
    "Coordinator",
    "OccurrencePlan",
    "occurrence_job",
    "plan_occurrence",
]

logger = logging.getLogger(__name__)

_MAX_STEPS_PER_SCHEDULE = 100
_ONE_MICROSECOND = timedelta(microseconds=1)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSettings:
    """Timing of a node's cluster duties; every node of a cluster should share it.

    With the defaults, a follower takes over at most ``lease_period +
    max_clock_skew`` (11 s) after the leader's last renewal, so within
    11 s of the leader dying (see :attr:`takeover_bound`).

    Attributes:
        lease_period: How long a leader lease lasts without renewal.
        renew_interval: How often the leader renews its lease, and how often
            a follower reads the stored lease. A follower also wakes at the
            stored lease's expiry, so it takes over without waiting for the
            next interval.
        heartbeat_interval: How often a node records that it is alive and
            compares its clock with the other nodes' heartbeats.
        lookahead: How long before its fire time an occurrence is enqueued,
            so that a follower can run it on time while a new leader takes
            over.
        misfire_grace: How late an occurrence may be enqueued and still count
            as on time; later ones are missed and go to the misfire policy.
        max_clock_skew: How far apart node clocks may be in normal operation.
            It widens the clock check's tolerance (see
            :attr:`clock_check_tolerance`).
        poll_interval: How often the leader re-reads a schedule whose next
            occurrence is due while the previous one is still active on some
            node, and a schedule that changed while it was being advanced.

    Raises:
        ConfigurationError: A duration is not positive (``lookahead`` and
            ``misfire_grace`` may be zero, ``max_clock_skew`` too), or
            ``renew_interval`` is not shorter than ``lease_period``.
    """

    lease_period: timedelta = timedelta(seconds=10)
    renew_interval: timedelta = timedelta(seconds=3)
    heartbeat_interval: timedelta = timedelta(seconds=2)
    lookahead: timedelta = timedelta(seconds=1)
    misfire_grace: timedelta = timedelta(seconds=1)
    max_clock_skew: timedelta = timedelta(seconds=1)
    poll_interval: timedelta = timedelta(seconds=1)

    def __post_init__(self) -> None:
        zero = timedelta(0)
        for name in ("lease_period", "renew_interval", "heartbeat_interval"):
            value: timedelta = getattr(self, name)
            if value <= zero:
                raise ConfigurationError(f"{name} must be positive, got {value}")
        if self.poll_interval <= zero:
            raise ConfigurationError(
                f"poll_interval must be positive, got {self.poll_interval}"
            )
        for name in ("lookahead", "misfire_grace", "max_clock_skew"):
            value = getattr(self, name)
            if value < zero:
                raise ConfigurationError(f"{name} must not be negative, got {value}")
        if self.renew_interval >= self.lease_period:
            raise ConfigurationError(
                f"renew_interval ({self.renew_interval}) must be shorter than "
                f"lease_period ({self.lease_period}), or the lease lapses between "
                "renewals"
            )

    @property
    def takeover_bound(self) -> timedelta:
        """Maximum wait from the leader's last renewal until a follower holds the lease.

        The bound applies while at least one follower is running with a
        clock within ``max_clock_skew`` of the leader's. Add the time of one
        scheduler pass and one storage round trip.
        """
        return self.lease_period + self.max_clock_skew

    @property
    def clock_check_tolerance(self) -> timedelta:
        """How far ahead of the other live nodes a node's clock may read and still lead.

        A peer's newest heartbeat can be up to two heartbeat intervals old
        when a node reads it, so the check cannot resolve smaller offsets.
        ``max_clock_skew`` is added for ordinary drift.
        """
        return 2 * self.heartbeat_interval + self.max_clock_skew


@final
@dataclass(frozen=True, slots=True)
class OccurrencePlan:
    """The next step for one recurring job.

    ``fire_time`` is the occurrence to enqueue, or ``None`` when missed fire
    times are skipped. ``next_fire_at`` is the schedule's new position.
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

    A fire time earlier than ``now - grace`` is missed, and the schedule's
    misfire policy applies:

    - ``skip``: enqueue nothing; move to the first fire time not missed.
    - ``once``: enqueue the first missed fire time as one catch-up run, drop
      the other missed ones, and move to the first fire time not missed.
    - ``each``: enqueue missed fire times one by one, but only the latest
      ``limit`` of them; older ones are skipped.

    No policy drops a fire time at or after ``now - grace``. A leader whose
    clock reads at most ``grace`` ahead therefore never drops a fire time
    that is still in the future.

    The plan depends only on its arguments, so two leaders that disagree
    about who leads still plan the same occurrence key.
    """
    cron = _cron(recurring.cron, recurring.timezone)
    fire_time = recurring.next_fire_at
    cutoff = now - grace
    if fire_time >= cutoff:
        return OccurrencePlan(fire_time, cron.next_after(fire_time), missed=False)

    first_not_missed = cron.next_after(cutoff - _ONE_MICROSECOND)
    policy = recurring.misfire
    if policy.kind == "skip":
        return OccurrencePlan(None, first_not_missed, missed=True)
    if policy.kind == "once":
        return OccurrencePlan(fire_time, first_not_missed, missed=True)

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
    """Build the job for one occurrence of ``recurring``, created at ``now``."""
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


@final
@dataclass(frozen=True, slots=True)
class ClockVerdict:
    """What one look at the other nodes' heartbeats showed about this node's clock.

    ``live_peers`` counts the other nodes whose heartbeat changed since this
    node's look before last. ``ahead_of`` counts those whose newest
    heartbeat is older than the tolerance by this node's clock. ``lead`` is
    how far this node's clock reads past the newest live heartbeat, or
    ``None`` without live peers.
    """

    in_step: bool
    live_peers: int
    ahead_of: int
    lead: timedelta | None


class ClockCheck:
    """Decides, from the other nodes' heartbeats, whether this node's clock may lead.

    A node whose clock jumped ahead would see the leader lease as expired,
    take it, and treat fire times that have not come yet as missed. Nodes
    cannot compare clocks directly, but every live node writes its own time
    into its heartbeat row every ``heartbeat_interval``. A row whose value
    changed since this node's look before last was written after that look,
    so by a clock in step it is at most two intervals old. A node is out of
    step when its clock reads more than :attr:`ClusterSettings.clock_check_tolerance`
    past the newest heartbeat of more than half of the live peers. Without
    live peers there is nothing to compare, and the node is in step.

    Only a clock that reads ahead is flagged. A node whose clock reads
    behind is harmless as a leader, because it enqueues late and its
    renewals expire early by the others' clocks. With two nodes there is no
    majority to tell which clock is wrong, so the one that reads ahead
    yields.
    """

    def __init__(self, node_id: str, settings: ClusterSettings) -> None:
        self._node_id = node_id
        self._tolerance = settings.clock_check_tolerance
        self._looks = 0
        # Peer id -> (newest heartbeat seen, number of the look that saw it change).
        self._peers: dict[str, tuple[datetime, int | None]] = {}
        self._alone_at_first_look = False
        self.verdict = ClockVerdict(in_step=True, live_peers=0, ahead_of=0, lead=None)

    @property
    def ready_to_take_over(self) -> bool:
        """Whether this node has looked often enough to tell live peers from stale rows.

        A node needs two looks, unless its first look found no other node
        registered at all (a new cluster, or one whose nodes shut down
        cleanly).
        """
        return self._looks >= 2 or self._alone_at_first_look

    def observe(self, nodes: Sequence[NodeInfo], now: datetime) -> ClockVerdict:
        """Record one look at every node's heartbeat, taken at ``now``, and judge.

        ``nodes`` is what :meth:`Storage.list_nodes` returned. This node's
        own row is ignored.
        """
        self._looks += 1
        look = self._looks
        others = [node for node in nodes if node.node_id != self._node_id]
        if look == 1:
            self._alone_at_first_look = not others
        live = 0
        ahead_of = 0
        newest: datetime | None = None
        for node in others:
            seen = self._peers.get(node.node_id)
            if seen is None:
                # A row that appeared since the last look was written after it.
                changed_at = None if look == 1 else look
            elif seen[0] != node.last_seen_at:
                changed_at = look
            else:
                changed_at = seen[1]
            self._peers[node.node_id] = (node.last_seen_at, changed_at)
            if changed_at is None or changed_at < look - 1:
                continue
            live += 1
            if now - node.last_seen_at > self._tolerance:
                ahead_of += 1
            if newest is None or node.last_seen_at > newest:
                newest = node.last_seen_at
        self.verdict = ClockVerdict(
            in_step=2 * ahead_of <= live,
            live_peers=live,
            ahead_of=ahead_of,
            lead=None if newest is None else now - newest,
        )
        return self.verdict


def _is_due(timer: datetime | None, now: datetime, interval: timedelta) -> bool:
    """Return whether a periodic duty is due at ``now``.

    A timer set further ahead than one interval means the clock was set
    back since, and waiting for it would silence the duty for as long as
    the jump.
    """
    return timer is None or now >= timer or timer - now > interval


class Coordinator:
    """One node's cluster duties, run by the node's loop between job claims.

    Each :meth:`tick` reads the clock once and then, in this order:

    1. writes the heartbeat and checks the clock against the other nodes,
       stepping down at once when it reads ahead of them;
    2. renews the leader lease or, as a follower, reads the stored lease
       and takes it once it expired;
    3. requeues jobs whose lease expired, right after a successful renewal;
    4. enqueues the recurring occurrences due within ``lookahead``.

    A node back from a pause therefore learns that its lease expired before
    it does any leader work. Every write of leader work is fenced by the
    lease's holder and term inside the storage transaction, so a deposed
    leader that has not noticed yet changes nothing.
    """

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
        self.clock_check = ClockCheck(node_id, settings)
        self._next_heartbeat: datetime | None = None
        self._next_lease_action: datetime | None = None

    def is_leader(self, now: datetime) -> bool:
        """Return whether this node holds an unexpired leader lease at ``now``."""
        return self.lease is not None and self.lease.is_held_by(self.node_id, now)

    async def tick(self) -> datetime:
        """Do every duty that is due and return when the next one falls due."""
        settings = self._settings
        now = self._clock.now()
        if _is_due(self._next_heartbeat, now, settings.heartbeat_interval):
            await self._heartbeat(now)
            self._next_heartbeat = now + settings.heartbeat_interval
        if _is_due(self._next_lease_action, now, settings.renew_interval):
            self._next_lease_action = await self._update_lease(now)
            if self.is_leader(now):
                # Right after the storage confirmed the lease, so a node that
                # was deposed while paused never requeues a live node's jobs.
                await self._requeue_expired(now)

        assert self._next_heartbeat is not None
        assert self._next_lease_action is not None
        wake = min(self._next_heartbeat, self._next_lease_action)
        if self.is_leader(now):
            next_due = await self._materialise(now)
            if next_due is not None:
                wake = min(wake, next_due)
        return wake

    # Heartbeat and clock check

    async def _heartbeat(self, now: datetime) -> None:
        await self._storage.heartbeat(node_id=self.node_id, now=now)
        nodes = await self._storage.list_nodes()
        was_in_step = self.clock_check.verdict.in_step
        verdict = self.clock_check.observe(nodes, now)
        if verdict.in_step == was_in_step:
            return
        if verdict.in_step:
            logger.info(
                "node %s: clock back in step with the other nodes; leader work resumes",
                self.node_id,
            )
            # Take the lease in this tick if it is free, not a renewal later.
            self._next_lease_action = now
            return
        logger.warning(
            "node %s: clock reads %s ahead of the newest heartbeat of the other "
            "nodes and too far ahead of %d of %d live nodes; it does no leader "
            "work until the clocks agree",
            self.node_id,
            verdict.lead,
            verdict.ahead_of,
            verdict.live_peers,
        )
        await self._step_down("its clock reads ahead of the other nodes")

    async def _step_down(self, reason: str) -> None:
        lease = self.lease
        if lease is None:
            return
        self.lease = None
        # Fenced by holder and term, so this does nothing if the lease has
        # already passed to another node.
        await self._storage.release_leadership(lease)
        logger.warning(
            "node %s stepped down as leader of term %d: %s",
            self.node_id,
            lease.term,
            reason,
        )

    # Leader lease

    async def _update_lease(self, now: datetime) -> datetime:
        """Renew or take the lease; return when the next lease action is due."""
        settings = self._settings
        until = now + settings.lease_period
        next_action = now + settings.renew_interval
        if self.lease is not None:
            renewed = await self._storage.renew_leadership(
                self.lease, now=now, until=until
            )
            if renewed is not None:
                self.lease = renewed
                return next_action
            logger.warning(
                "node %s lost the leader lease of term %d: it expired or another "
                "node took it over",
                self.node_id,
                self.lease.term,
            )
            self.lease = None

        stored = await self._storage.get_leader()
        held_by_other = (
            stored is not None
            and stored.holder != self.node_id
            and now < stored.expires_at
        )
        if held_by_other:
            assert stored is not None
            # Wake at the expiry too, so a takeover does not wait for the
            # next renew interval.
            return min(next_action, stored.expires_at)
        if not self.clock_check.verdict.in_step:
            return next_action
        taking_over = stored is not None and stored.holder != self.node_id
        if taking_over and not self.clock_check.ready_to_take_over:
            return min(next_action, now + settings.heartbeat_interval)

        lease = await self._storage.acquire_leadership(
            node_id=self.node_id, now=now, until=until
        )
        if lease is None:
            return next_action
        self.lease = lease
        if stored is not None and stored.holder != self.node_id:
            logger.info(
                "node %s took over as leader in term %d from %s, whose lease of "
                "term %d expired at %s",
                self.node_id,
                lease.term,
                stored.holder,
                stored.term,
                stored.expires_at.isoformat(),
            )
        else:
            logger.info("node %s became leader in term %d", self.node_id, lease.term)
        return next_action

    async def _requeue_expired(self, now: datetime) -> None:
        requeued = await self._storage.requeue_expired_jobs(now=now)
        if requeued:
            logger.warning(
                "requeued %d jobs whose node stopped renewing their lease: %s",
                len(requeued),
                ", ".join(requeued),
            )

    # Recurring occurrences

    async def _materialise(self, now: datetime) -> datetime | None:
        """Enqueue due occurrences; return when this must run again, if ever."""
        settings = self._settings
        active = await self._storage.active_recurring_ids()
        horizon = now + settings.lookahead
        wake: datetime | None = None
        for recurring in await self._storage.list_recurring():
            blocked = recurring.id in active and not recurring.allow_overlap
            next_fire_at = recurring.next_fire_at
            if not blocked:
                if not self.is_leader(now):
                    return None
                position = await self._advance(recurring, now, horizon)
                if position is None:
                    if self.lease is None:
                        return None
                    # The schedule changed under this node: read it again soon.
                    due = now + settings.poll_interval
                    wake = due if wake is None else min(wake, due)
                    continue
                next_fire_at, blocked = position
            due = next_fire_at - settings.lookahead
            if blocked and due <= now:
                # The previous occurrence is still active, maybe on another
                # node, whose end does not wake this one.
                due = now + settings.poll_interval
            wake = due if wake is None else min(wake, due)
        return wake

    async def _advance(
        self, recurring: RecurringJob, now: datetime, horizon: datetime
    ) -> tuple[datetime, bool] | None:
        """Enqueue what is due for one schedule, up to ``horizon``.

        Returns the schedule's new next fire time and whether the occurrence
        just enqueued blocks the next one, or ``None`` when the storage
        rejected a write: the lease was lost, or the schedule changed.
        """
        assert self.lease is not None
        for _ in range(_MAX_STEPS_PER_SCHEDULE):
            if recurring.next_fire_at > horizon:
                return recurring.next_fire_at, False
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
                    "recurring job %s missed fire time %s; misfire policy %s %s, "
                    "next fire time %s",
                    recurring.id,
                    recurring.next_fire_at.isoformat(),
                    recurring.misfire,
                    "enqueued a catch-up run" if occurrence else "skipped it",
                    plan.next_fire_at.isoformat(),
                )
            if occurrence is not None and not recurring.allow_overlap:
                # Return before copying the schedule: this is the common
                # case, once per run of every recurring job.
                return plan.next_fire_at, True
            recurring = recurring.replace(next_fire_at=plan.next_fire_at)
        return recurring.next_fire_at, False

    async def _check_lease_after_rejection(self, now: datetime) -> None:
        """Drop leadership if the storage rejected a write for a stale lease.

        Otherwise the schedule itself changed (updated or removed by another
        node), and a later tick reads it again.
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
        """Give up the leader lease and unregister the node, as at a clean shutdown."""
        if self.lease is not None:
            lease = self.lease
            self.lease = None
            await self._storage.release_leadership(lease)
            logger.info(
                "node %s released the leader lease of term %d",
                self.node_id,
                lease.term,
            )
        await self._storage.remove_node(self.node_id)
