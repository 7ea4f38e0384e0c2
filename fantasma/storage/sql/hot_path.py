"""Statements of the worker's hot path, run on the PostgreSQL and SQLite drivers.

Claims and finishes run once per batch of jobs, so their per-statement cost
bounds how fast a node drains a backlog, and a single ``schedule`` call
should cost one round trip. On the driver these statements skip
SQLAlchemy's statement compilation and per-value result processing. In a
measurement on the machine that ``docs/benchmarks.md`` describes, a claim of
50 jobs took about 1.5 ms through asyncpg and 3.3 ms through SQLAlchemy Core
on PostgreSQL 15, and a claim of 37 jobs 1.1 ms through aiosqlite and 3.6 ms
through Core on SQLite 3.40. The statements do what the Core statements do
on MariaDB/MySQL, and the storage contract runs against every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fantasma.jobs import Job, JobId, JobStatus
from fantasma.storage.sql.records import JOB_COLUMNS
from fantasma.storage.sql.schema import CLAIMABLE_WHERE, RUNNING_WHERE

if TYPE_CHECKING:
    import asyncpg

__all__ = [
    "job_from_postgres",
    "job_from_sqlite",
    "postgres_claim",
    "postgres_finish",
    "postgres_insert_one",
    "sqlite_claim",
    "sqlite_finish",
    "sqlite_insert_one",
    "sqlite_job_values",
    "sqlite_time",
]

_RETURNED = ", ".join(["seq", *JOB_COLUMNS])
_RUNNING = JobStatus.RUNNING.value
_TIME_COLUMNS = frozenset(
    index
    for index, column in enumerate(JOB_COLUMNS)
    if column
    in {
        "due_at",
        "created_at",
        "fire_time",
        "lease_expires_at",
        "started_at",
        "finished_at",
    }
)


def _claim(
    table: str, limit: int, parameters: tuple[str, str, str], locking: str
) -> str:
    # The limit is part of the text, as in the Core statement, because a
    # generic plan of a prepared statement with a bound limit may scan the
    # whole table in the UPDATE.
    node, lease_until, now = parameters
    return (
        f"UPDATE {table} SET status = '{_RUNNING}', lease_owner = {node},"
        f" lease_expires_at = {lease_until}, started_at = {now},"
        " attempts = attempts + 1"
        f" WHERE seq IN (SELECT seq FROM {table}"
        f" WHERE {CLAIMABLE_WHERE.text} AND due_at <= {now}"
        f" ORDER BY due_at, seq LIMIT {int(limit)}{locking})"
        f" RETURNING {_RETURNED}"
    )


# PostgreSQL (asyncpg)


def postgres_insert_one(table: str) -> str:
    """Return the insert of one job that also sends the wake-up notification.

    Parameters: ``$1`` to ``$17`` the values of :data:`JOB_COLUMNS` in
    order, ``$18`` the NOTIFY channel. PostgreSQL runs a data-modifying WITH
    clause to completion even though the outer query does not read it, so
    the insert and the NOTIFY commit together in one round trip.
    """
    columns = ", ".join(JOB_COLUMNS)
    values = ", ".join(f"${number}" for number in range(1, len(JOB_COLUMNS) + 1))
    channel = len(JOB_COLUMNS) + 1
    return (
        f"WITH inserted AS (INSERT INTO {table} ({columns}) VALUES ({values}))"
        f" SELECT pg_notify(${channel}, '')"
    )


def postgres_claim(table: str, limit: int) -> str:
    """Return the claim of up to ``limit`` due jobs of ``table`` (a quoted name).

    Parameters: ``$1`` the node id, ``$2`` the lease expiry, ``$3`` the
    current time. Other claims skip the rows it locks. Rows come back in no
    set order.

    NOTE: the planner reads the claim index in order, and stops after
    ``limit`` rows, only once the table has statistics. A table filled in a
    burst before autovacuum first analyzed it gets a plan that sorts every
    due job on each claim, which slowed the drain of a 10,000-job backlog
    in ``benchmarks/throughput.py``. Autovacuum fixes it within its next
    round, by default a minute.
    """
    return _claim(table, limit, ("$1", "$2", "$3"), " FOR UPDATE SKIP LOCKED")


def postgres_finish(table: str) -> str:
    """Return the update that finishes the running jobs of one node by id.

    Parameters: ``$1`` the status, ``$2`` the finish time, ``$3`` the error
    or NULL to keep ``last_error``, ``$4`` an array of job ids, ``$5`` the
    node id. One array parameter keeps the text, and so the prepared
    statement, the same for every batch size. Rows are locked in ``seq``
    order, so two of these updates over the same jobs cannot deadlock each
    other. Returns the ids finished.
    """
    return (
        f"UPDATE {table} SET status = $1, finished_at = $2, lease_owner = NULL,"
        " lease_expires_at = NULL, last_error = COALESCE($3::text, last_error)"
        f" WHERE seq IN (SELECT seq FROM {table}"
        f" WHERE id = ANY($4::varchar[]) AND {RUNNING_WHERE.text}"
        " AND lease_owner = $5 ORDER BY seq FOR UPDATE)"
        " RETURNING id"
    )


def job_from_postgres(record: asyncpg.Record) -> Job:
    """Build a :class:`Job` from a row that :func:`postgres_claim` returned.

    asyncpg returns ``timestamptz`` values as aware datetimes in UTC, which
    is what the Core path's column type produces too.
    """
    values = {column: record[column] for column in JOB_COLUMNS}
    values["id"] = JobId(values["id"])
    values["status"] = JobStatus(values["status"])
    return Job(**values)


# SQLite (aiosqlite)


def sqlite_time(value: datetime) -> str:
    """Return the aware ``value`` as SQLite stores it: naive UTC text with microseconds.

    This is the format of SQLAlchemy's SQLite DATETIME type, which the Core
    path writes, so text comparisons order both alike.
    """
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def sqlite_insert_one(table: str) -> str:
    """Return the insert of one job, whose values :func:`sqlite_job_values` gives."""
    columns = ", ".join(JOB_COLUMNS)
    values = ", ".join("?" * len(JOB_COLUMNS))
    return f"INSERT INTO {table} ({columns}) VALUES ({values})"


def sqlite_job_values(job: Job) -> tuple[Any, ...]:
    """Return the values of :data:`JOB_COLUMNS` for ``job``, as SQLite stores them.

    The job's datetimes must be aware; they become :func:`sqlite_time` text.
    """
    values: list[Any] = []
    for index, column in enumerate(JOB_COLUMNS):
        value = getattr(job, column)
        if index in _TIME_COLUMNS and value is not None:
            value = sqlite_time(value)
        values.append(value)
    values[JOB_COLUMNS.index("status")] = job.status.value
    return tuple(values)


def sqlite_claim(table: str, limit: int) -> str:
    """Return the claim of up to ``limit`` due jobs of ``table`` (a quoted name).

    Parameters, by position: the node id, the lease expiry and the current
    time, the times as :func:`sqlite_time` formats them. Run it after BEGIN
    IMMEDIATE, whose write lock keeps other claims out. Rows come back in
    no set order.
    """
    return _claim(table, limit, ("?1", "?2", "?3"), "")


def sqlite_finish(table: str, count: int) -> str:
    """Return the update that finishes ``count`` running jobs of one node by id.

    Parameters, by position: the status, the finish time, the error or NULL
    to keep ``last_error``, the node id, then ``count`` job ids. Returns the
    ids finished.
    """
    ids = ", ".join("?" * count)
    return (
        f"UPDATE {table} SET status = ?, finished_at = ?, lease_owner = NULL,"
        " lease_expires_at = NULL, last_error = COALESCE(?, last_error)"
        f" WHERE lease_owner = ? AND {RUNNING_WHERE.text} AND id IN ({ids})"
        " RETURNING id"
    )


def job_from_sqlite(row: Sequence[Any]) -> Job:
    """Build a :class:`Job` from a row that :func:`sqlite_claim` returned."""
    values: dict[str, Any] = {}
    # The row starts with seq, so column i of JOB_COLUMNS is at i + 1.
    for index, column in enumerate(JOB_COLUMNS):
        value = row[index + 1]
        if index in _TIME_COLUMNS and value is not None:
            value = datetime.fromisoformat(value).replace(tzinfo=UTC)
        values[column] = value
    values["id"] = JobId(values["id"])
    values["status"] = JobStatus(values["status"])
    return Job(**values)
