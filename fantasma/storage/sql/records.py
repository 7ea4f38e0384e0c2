"""Conversion between fantasma's records and table rows."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.engine import RowMapping

from fantasma.jobs import (
    Job,
    JobId,
    JobStatus,
    LeaderLease,
    MisfirePolicy,
    NodeInfo,
    RecurringJob,
)

__all__ = [
    "JOB_COLUMNS",
    "job_from_row",
    "job_to_row",
    "lease_from_row",
    "node_from_row",
    "recurring_from_row",
    "recurring_to_row",
]

logger = logging.getLogger(__name__)

JOB_COLUMNS = (
    "id",
    "name",
    "type_name",
    "payload",
    "status",
    "due_at",
    "created_at",
    "max_attempts",
    "timeout",
    "attempts",
    "recurring_id",
    "fire_time",
    "lease_owner",
    "lease_expires_at",
    "started_at",
    "finished_at",
    "last_error",
)
"""Columns of the jobs table that mirror :class:`Job` fields (all but ``seq``)."""


def job_to_row(job: Job) -> dict[str, Any]:
    """Return the column values that store ``job``."""
    row = {column: getattr(job, column) for column in JOB_COLUMNS}
    row["status"] = job.status.value
    return row


def job_from_row(row: RowMapping) -> Job:
    """Build a :class:`Job` from a jobs-table row."""
    values = {column: row[column] for column in JOB_COLUMNS}
    values["id"] = JobId(values["id"])
    values["status"] = JobStatus(values["status"])
    return Job(**values)


def recurring_to_row(recurring: RecurringJob) -> dict[str, Any]:
    """Return the column values that store ``recurring``."""
    return {
        "id": recurring.id,
        "name": recurring.name,
        "cron": recurring.cron,
        "timezone": recurring.timezone,
        "type_name": recurring.type_name,
        "payload": recurring.payload,
        "next_fire_at": recurring.next_fire_at,
        "created_at": recurring.created_at,
        "updated_at": recurring.updated_at,
        "misfire": str(recurring.misfire),
        "allow_overlap": recurring.allow_overlap,
        "max_attempts": recurring.max_attempts,
        "timeout": recurring.timeout,
    }


def recurring_from_row(row: RowMapping) -> RecurringJob:
    """Build a :class:`RecurringJob` from a recurring-jobs-table row."""
    return RecurringJob(
        id=row["id"],
        name=row["name"],
        cron=row["cron"],
        timezone=row["timezone"],
        type_name=row["type_name"],
        payload=row["payload"],
        next_fire_at=row["next_fire_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        misfire=MisfirePolicy.parse(row["misfire"]),
        allow_overlap=bool(row["allow_overlap"]),
        max_attempts=row["max_attempts"],
        timeout=row["timeout"],
    )


def lease_from_row(row: RowMapping) -> LeaderLease:
    """Build a :class:`LeaderLease` from the leader row."""
    return LeaderLease(row["holder"], int(row["term"]), row["expires_at"])


def node_from_row(row: RowMapping) -> NodeInfo:
    """Build a :class:`NodeInfo` from a nodes-table row."""
    return NodeInfo(row["node_id"], row["started_at"], row["last_seen_at"])
