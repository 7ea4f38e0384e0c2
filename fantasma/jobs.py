"""Records that storage keeps: jobs, recurring job definitions, leases and nodes."""

from __future__ import annotations

import dataclasses
import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import NewType, Self, TypeVar, final

__all__ = [
    "ACTIVE_STATUSES",
    "CLAIMABLE_STATUSES",
    "FINISHED_STATUSES",
    "Job",
    "JobId",
    "JobStatus",
    "LeaderLease",
    "MisfirePolicy",
    "NodeInfo",
    "RecurringJob",
    "Run",
    "RunOutcome",
    "new_job_id",
]

JobId = NewType("JobId", str)

_R = TypeVar("_R")


def new_job_id() -> JobId:
    """Return a new random job id (32 lowercase hex digits)."""
    return JobId(uuid.uuid4().hex)


class JobStatus(enum.StrEnum):
    """Stage of a job's life.

    ``scheduled`` -> ``running`` -> ``succeeded``; a failed attempt goes to
    ``failed`` (waiting for its retry, claimable again once due) and, after the
    last attempt, to ``dead``. ``cancelled`` is set by the user.
    """

    SCHEDULED = "scheduled"
    RUNNING = "running"
    FAILED = "failed"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"


CLAIMABLE_STATUSES = frozenset({JobStatus.SCHEDULED, JobStatus.FAILED})
"""Statuses a worker may claim once the job's ``due_at`` has passed."""

ACTIVE_STATUSES = frozenset({JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.FAILED})
"""Statuses of a job that has not reached its end yet."""

FINISHED_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.DEAD, JobStatus.CANCELLED}
)
"""Statuses a job never leaves."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One unit of work, stored until it finishes and kept afterwards.

    All datetimes are aware and in UTC. ``attempts`` counts the attempts
    started so far, so inside a handler the current attempt number is
    ``attempts`` (1 for the first run).
    """

    id: JobId
    name: str
    type_name: str
    payload: str
    status: JobStatus
    due_at: datetime
    created_at: datetime
    max_attempts: int = 1
    timeout: float | None = None
    attempts: int = 0
    recurring_id: str | None = None
    fire_time: datetime | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    last_error: str | None = None

    def replace(self, **changes: object) -> Self:
        """Return a copy with the given fields changed."""
        # Faster than dataclasses.replace, which matters on the claim path
        # where every run copies its job several times.
        if not changes.keys() <= _JOB_FIELD_SET:
            unknown = changes.keys() - _JOB_FIELD_SET
            raise TypeError(f"Job has no field {', '.join(sorted(unknown))}")
        return _copy_with(self, _JOB_FIELDS, changes)


def _copy_with(record: _R, fields: tuple[str, ...], changes: dict[str, object]) -> _R:
    """Copy a frozen slots dataclass field by field, then apply ``changes``."""
    copy = object.__new__(type(record))
    set_field = object.__setattr__
    for name in fields:
        set_field(copy, name, getattr(record, name))
    for name, value in changes.items():
        set_field(copy, name, value)
    return copy


_JOB_FIELDS = tuple(field.name for field in dataclasses.fields(Job))
_JOB_FIELD_SET = frozenset(_JOB_FIELDS)


@final
@dataclass(frozen=True, slots=True)
class MisfirePolicy:
    """Policy for recurring occurrences that fell due while nothing ran them.

    An occurrence is missed when it could not be enqueued within the grace
    period after its fire time: the process was down, a failover was under
    way, or the previous occurrence was still running.

    Use the constructors: :meth:`skip` drops missed occurrences, :meth:`once`
    (the default) runs a single catch-up run for all of them, and
    :meth:`each` runs every missed occurrence, up to ``limit`` of the latest.
    """

    kind: str
    limit: int = 1

    @classmethod
    def skip(cls) -> MisfirePolicy:
        return cls("skip", 0)

    @classmethod
    def once(cls) -> MisfirePolicy:
        return cls("once", 1)

    @classmethod
    def each(cls, limit: int = 100) -> MisfirePolicy:
        if limit < 1:
            raise ValueError(f"misfire limit must be at least 1, got {limit!r}")
        return cls("each", limit)

    def __str__(self) -> str:
        return f"each:{self.limit}" if self.kind == "each" else self.kind

    @classmethod
    def parse(cls, text: str) -> MisfirePolicy:
        """Parse the form :meth:`__str__` produces (``skip``, ``once``, ``each:N``)."""
        if text == "skip":
            return cls.skip()
        if text == "once":
            return cls.once()
        kind, _, limit = text.partition(":")
        if kind == "each" and limit.isdigit():
            return cls.each(int(limit))
        raise ValueError(
            f"invalid misfire policy {text!r}: use 'skip', 'once' or 'each:N'"
        )


_ONCE = MisfirePolicy.once()


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RecurringJob:
    """A cron schedule that produces one job per occurrence.

    ``next_fire_at`` is the fire time (UTC) of the first occurrence not yet
    turned into a job. Each occurrence job carries ``recurring_id`` and its
    ``fire_time``; that pair is unique in storage, so an occurrence is
    enqueued at most once whichever node enqueues it.
    """

    id: str
    name: str
    cron: str
    timezone: str
    type_name: str
    payload: str
    next_fire_at: datetime
    created_at: datetime
    updated_at: datetime
    misfire: MisfirePolicy = _ONCE
    allow_overlap: bool = False
    max_attempts: int = 1
    timeout: float | None = None

    def replace(self, **changes: object) -> Self:
        """Return a copy with the given fields changed."""
        if not changes.keys() <= _RECURRING_FIELD_SET:
            # dataclasses.replace raises its usual error for the unknown field.
            return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        # Storage advances a schedule on every occurrence, so this is a hot path.
        return _copy_with(self, _RECURRING_FIELDS, changes)


_RECURRING_FIELDS = tuple(field.name for field in dataclasses.fields(RecurringJob))
_RECURRING_FIELD_SET = frozenset(_RECURRING_FIELDS)


@final
@dataclass(frozen=True, slots=True)
class LeaderLease:
    """The cluster's leader lease: who leads, in which term, until when.

    ``term`` grows by one on every change of holder and every re-acquisition
    after expiry, so a node that was paused past its lease can tell that its
    old term is over.
    """

    holder: str
    term: int
    expires_at: datetime

    def is_held_by(self, node_id: str, now: datetime) -> bool:
        """Return whether ``node_id`` holds this lease at ``now`` (expiry exclusive)."""
        return self.holder == node_id and now < self.expires_at


@final
@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node's registration: when it started and when it last reported alive."""

    node_id: str
    started_at: datetime
    last_seen_at: datetime


class RunOutcome(enum.StrEnum):
    """Result of one execution of a job."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """The attempt failed and the job will be retried."""
    DEAD = "dead"
    """The attempt failed and it was the last one."""
    INTERRUPTED = "interrupted"
    """Shutdown cancelled the attempt; the job runs again on a later start."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """One execution of a job on one node, as the node observed it.

    Runs are not stored: a scheduler reports them to its run listeners, which
    is how the pytest plugin records them.
    """

    job_id: JobId
    name: str
    type_name: str
    recurring_id: str | None
    fire_time: datetime | None
    due_at: datetime
    started_at: datetime
    finished_at: datetime
    attempt: int
    outcome: RunOutcome
    error: str | None
    node_id: str
