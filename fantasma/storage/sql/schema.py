"""Table definitions of the SQL backend, built for a given table prefix and schema."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from fantasma.errors import ConfigurationError
from fantasma.jobs import CLAIMABLE_STATUSES, JobStatus

__all__ = [
    "CLAIMABLE_WHERE",
    "DEFAULT_TABLE_PREFIX",
    "ID_LENGTH",
    "LEADER_ROW_NAME",
    "MISFIRE_LENGTH",
    "MYSQL_TABLE_OPTIONS",
    "NAME_LENGTH",
    "OCCURRENCE_KEY_WHERE",
    "PARTIAL_INDEX_DIALECTS",
    "RUNNING_WHERE",
    "STATUS_LENGTH",
    "Tables",
    "UTCDateTime",
    "build_tables",
    "channel_name",
    "large_text",
    "sequence_type",
    "validate_names",
]

logger = logging.getLogger(__name__)

DEFAULT_TABLE_PREFIX = "fantasma_"
ID_LENGTH = 32
NAME_LENGTH = 255
STATUS_LENGTH = 16
MISFIRE_LENGTH = 32
LEADER_ROW_NAME = "leader"

# utf8mb4 stores characters outside the Basic Multilingual Plane (emoji), and
# the binary collation makes comparisons exact and case-sensitive, as on the
# other backends. MariaDB reads the "mariadb_" keys, MySQL the "mysql_" keys.
MYSQL_TABLE_OPTIONS: dict[str, Any] = {
    f"{dialect}_{option}": value
    for dialect in ("mysql", "mariadb")
    for option, value in (
        ("engine", "InnoDB"),
        ("charset", "utf8mb4"),
        ("collate", "utf8mb4_bin"),
    )
}

# Predicates of the partial indexes on PostgreSQL and SQLite. Queries use
# the same text with literal values, because neither planner can match a
# partial index to a predicate with bound parameters (PostgreSQL's generic
# plans for prepared statements included).
OCCURRENCE_KEY_WHERE = text("recurring_id IS NOT NULL")
"""Rows in the partial occurrence-key index: jobs of a recurring job."""

CLAIMABLE_WHERE = text(
    "status IN ({})".format(
        ", ".join(f"'{status.value}'" for status in sorted(CLAIMABLE_STATUSES))
    )
)
"""Rows in the partial claim index: jobs in a claimable status."""

RUNNING_WHERE = text(f"status = '{JobStatus.RUNNING.value}'")
"""Rows in the partial lease index: running jobs."""

# SQLAlchemy's Index.ddl_if documents a tuple of dialect names, but its type
# annotation only allows str, hence the type: ignore comments at the calls.
PARTIAL_INDEX_DIALECTS = ("postgresql", "sqlite")
"""Dialects that get the partial indexes. MariaDB/MySQL get a plain index instead."""

_PREFIX_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,29}")
_SCHEMA_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetime, stored to the microsecond on every dialect.

    PostgreSQL stores ``timestamptz``. MariaDB/MySQL (``DATETIME(6)``) and
    SQLite (fixed-width text) store naive UTC values, so this type converts
    at the boundary and rejects naive datetimes on the way in.
    """

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(
                postgresql.TIMESTAMP(timezone=True, precision=6)
            )
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(
        self, value: datetime | None, dialect: Dialect
    ) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} cannot be stored:"
                " pass an aware datetime in UTC"
            )
        value = value.astimezone(UTC)
        if dialect.name == "postgresql":
            return value
        return value.replace(tzinfo=None)

    def process_result_value(
        self, value: datetime | None, dialect: Dialect
    ) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def large_text() -> TypeEngine[str]:
    """Return the type of payloads and error texts.

    MariaDB's plain TEXT stops at 64 KiB, so it gets LONGTEXT (4 GiB).
    """
    return Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def sequence_type() -> TypeEngine[int]:
    """Return the type of the insertion-order key.

    SQLite only auto-increments a column declared exactly ``INTEGER PRIMARY
    KEY``, which is 64-bit there anyway.
    """
    return BigInteger().with_variant(Integer(), "sqlite")


@dataclass(frozen=True, slots=True)
class Tables:
    """The backend's tables, all in one :class:`~sqlalchemy.MetaData`."""

    metadata: MetaData
    jobs: Table
    recurring_jobs: Table
    leader: Table
    nodes: Table


def validate_names(table_prefix: str, schema: str | None) -> None:
    """Raise :class:`ConfigurationError` unless both are plain SQL identifiers.

    The prefix and schema end up in table names, lock names and the
    PostgreSQL notification channel, so only letters, digits and underscores
    are allowed. Their lengths keep every derived name within PostgreSQL's
    63-byte and MariaDB's 64-character limits.
    """
    if table_prefix and not _PREFIX_PATTERN.fullmatch(table_prefix):
        raise ConfigurationError(
            f"invalid table_prefix {table_prefix!r}: use up to 30 letters, digits"
            " and underscores, starting with a letter or underscore"
        )
    if schema is not None and not _SCHEMA_PATTERN.fullmatch(schema):
        raise ConfigurationError(
            f"invalid schema {schema!r}: use up to 63 letters, digits and"
            " underscores, starting with a letter or underscore"
        )


# PostgreSQL truncates identifiers, channel names included, to 63 bytes.
_MAX_CHANNEL_BYTES = 63


def channel_name(table_prefix: str, schema: str | None) -> str:
    """Return the NOTIFY channel for the tables with this prefix and schema.

    Notifications stay within one database, so the name only needs to tell
    apart table sets inside it.
    """
    name = f"{table_prefix}jobs" if schema is None else f"{schema}.{table_prefix}jobs"
    if len(name.encode()) > _MAX_CHANNEL_BYTES:
        digest = hashlib.sha256(name.encode()).hexdigest()[:32]
        name = f"fantasma_{digest}"
    return name


def build_tables(
    table_prefix: str = DEFAULT_TABLE_PREFIX, schema: str | None = None
) -> Tables:
    """Build the current table definitions for ``table_prefix`` and ``schema``.

    Migrations under ``fantasma/storage/migrations`` must produce exactly
    these tables. A test compares the two on every backend.
    """
    validate_names(table_prefix, schema)
    # Primary keys keep the database's default names ("<table>_pkey" on
    # PostgreSQL), because MariaDB ignores any other name with a warning.
    metadata = MetaData(schema=schema)
    p = table_prefix

    jobs = Table(
        f"{p}jobs",
        metadata,
        # Insertion order breaks ties between jobs due at the same time.
        Column("seq", sequence_type(), primary_key=True, autoincrement=True),
        Column("id", String(ID_LENGTH), nullable=False),
        Column("name", String(NAME_LENGTH), nullable=False),
        Column("type_name", String(NAME_LENGTH), nullable=False),
        Column("payload", large_text(), nullable=False),
        Column("status", String(STATUS_LENGTH), nullable=False),
        Column("due_at", UTCDateTime(), nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("max_attempts", Integer(), nullable=False),
        Column("timeout", Double(), nullable=True),
        Column("attempts", Integer(), nullable=False),
        Column("recurring_id", String(NAME_LENGTH), nullable=True),
        Column("fire_time", UTCDateTime(), nullable=True),
        Column("lease_owner", String(NAME_LENGTH), nullable=True),
        Column("lease_expires_at", UTCDateTime(), nullable=True),
        Column("started_at", UTCDateTime(), nullable=True),
        Column("finished_at", UTCDateTime(), nullable=True),
        Column("last_error", large_text(), nullable=True),
        UniqueConstraint("id", name=f"{p}jobs_id_key"),
        **MYSQL_TABLE_OPTIONS,
    )
    # Claims read this index in (due_at, seq) order and stop after the
    # limit. Finished jobs drop out of it, so it stays as small as the
    # backlog.
    Index(
        f"{p}jobs_claim_idx",
        jobs.c.due_at,
        jobs.c.seq,
        postgresql_where=CLAIMABLE_WHERE,
        sqlite_where=CLAIMABLE_WHERE,
    ).ddl_if(dialect=PARTIAL_INDEX_DIALECTS)  # type: ignore[arg-type]
    # Finds expired leases among running jobs only.
    Index(
        f"{p}jobs_lease_idx",
        jobs.c.lease_expires_at,
        postgresql_where=RUNNING_WHERE,
        sqlite_where=RUNNING_WHERE,
    ).ddl_if(dialect=PARTIAL_INDEX_DIALECTS)  # type: ignore[arg-type]
    # MariaDB has no partial indexes. InnoDB appends the primary key (seq)
    # to every secondary index, so each status's rows are in (due_at, seq)
    # order, and claims read one status at a time.
    Index(f"{p}jobs_status_idx", jobs.c.status, jobs.c.due_at).ddl_if(
        dialect=("mysql", "mariadb")  # type: ignore[arg-type]
    )
    # The occurrence key. Rows with a NULL recurring_id or fire_time never
    # conflict, and where partial indexes exist, plain jobs stay out of the
    # index entirely, which makes bulk inserts of them cheaper.
    Index(
        f"{p}jobs_occurrence_key",
        jobs.c.recurring_id,
        jobs.c.fire_time,
        unique=True,
        postgresql_where=OCCURRENCE_KEY_WHERE,
        sqlite_where=OCCURRENCE_KEY_WHERE,
    )
    recurring_jobs = Table(
        f"{p}recurring_jobs",
        metadata,
        Column("id", String(NAME_LENGTH), primary_key=True),
        Column("name", String(NAME_LENGTH), nullable=False),
        Column("cron", String(NAME_LENGTH), nullable=False),
        Column("timezone", String(NAME_LENGTH), nullable=False),
        Column("type_name", String(NAME_LENGTH), nullable=False),
        Column("payload", large_text(), nullable=False),
        Column("next_fire_at", UTCDateTime(), nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("updated_at", UTCDateTime(), nullable=False),
        Column("misfire", String(MISFIRE_LENGTH), nullable=False),
        Column("allow_overlap", Boolean(), nullable=False),
        Column("max_attempts", Integer(), nullable=False),
        Column("timeout", Double(), nullable=True),
        **MYSQL_TABLE_OPTIONS,
    )
    # A single row, named LEADER_ROW_NAME, holds the cluster's leader lease.
    leader = Table(
        f"{p}leader",
        metadata,
        Column("name", String(ID_LENGTH), primary_key=True),
        Column("holder", String(NAME_LENGTH), nullable=False),
        Column("term", BigInteger(), nullable=False),
        Column("expires_at", UTCDateTime(), nullable=False),
        **MYSQL_TABLE_OPTIONS,
    )
    nodes = Table(
        f"{p}nodes",
        metadata,
        Column("node_id", String(NAME_LENGTH), primary_key=True),
        Column("started_at", UTCDateTime(), nullable=False),
        Column("last_seen_at", UTCDateTime(), nullable=False),
        **MYSQL_TABLE_OPTIONS,
    )
    return Tables(metadata, jobs, recurring_jobs, leader, nodes)
