"""Create the jobs, recurring jobs, leader and nodes tables."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

from fantasma.storage.sql.migrate import current_migration_names
from fantasma.storage.sql.schema import (
    MYSQL_TABLE_OPTIONS,
    UTCDateTime,
    large_text,
    sequence_type,
)

logger = logging.getLogger(__name__)

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The tables are spelled out here, with literal lengths, instead of taken from
# schema.build_tables, so this revision keeps creating the same tables after
# schema.py moves on.


def upgrade() -> None:
    p, schema = current_migration_names()
    op.create_table(
        f"{p}jobs",
        sa.Column("seq", sequence_type(), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("type_name", sa.String(255), nullable=False),
        sa.Column("payload", large_text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("timeout", sa.Double(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("recurring_id", sa.String(255), nullable=True),
        sa.Column("fire_time", UTCDateTime(), nullable=True),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", large_text(), nullable=True),
        sa.UniqueConstraint("id", name=f"{p}jobs_id_key"),
        schema=schema,
        **MYSQL_TABLE_OPTIONS,
    )
    if op.get_bind().dialect.name in ("postgresql", "sqlite"):
        op.create_index(
            f"{p}jobs_claim_idx",
            f"{p}jobs",
            ["due_at", "seq"],
            schema=schema,
            postgresql_where=sa.text("status IN ('failed', 'scheduled')"),
            sqlite_where=sa.text("status IN ('failed', 'scheduled')"),
        )
        op.create_index(
            f"{p}jobs_lease_idx",
            f"{p}jobs",
            ["lease_expires_at"],
            schema=schema,
            postgresql_where=sa.text("status = 'running'"),
            sqlite_where=sa.text("status = 'running'"),
        )
    else:
        op.create_index(
            f"{p}jobs_status_idx", f"{p}jobs", ["status", "due_at"], schema=schema
        )
    op.create_index(
        f"{p}jobs_occurrence_key",
        f"{p}jobs",
        ["recurring_id", "fire_time"],
        unique=True,
        schema=schema,
        postgresql_where=sa.text("recurring_id IS NOT NULL"),
        sqlite_where=sa.text("recurring_id IS NOT NULL"),
    )
    op.create_table(
        f"{p}recurring_jobs",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("cron", sa.String(255), nullable=False),
        sa.Column("timezone", sa.String(255), nullable=False),
        sa.Column("type_name", sa.String(255), nullable=False),
        sa.Column("payload", large_text(), nullable=False),
        sa.Column("next_fire_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("misfire", sa.String(32), nullable=False),
        sa.Column("allow_overlap", sa.Boolean(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("timeout", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        schema=schema,
        **MYSQL_TABLE_OPTIONS,
    )
    op.create_table(
        f"{p}leader",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("term", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        schema=schema,
        **MYSQL_TABLE_OPTIONS,
    )
    op.create_table(
        f"{p}nodes",
        sa.Column("node_id", sa.String(255), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("node_id"),
        schema=schema,
        **MYSQL_TABLE_OPTIONS,
    )


def downgrade() -> None:
    p, schema = current_migration_names()
    op.drop_table(f"{p}nodes", schema=schema)
    op.drop_table(f"{p}leader", schema=schema)
    op.drop_table(f"{p}recurring_jobs", schema=schema)
    op.drop_index(f"{p}jobs_occurrence_key", table_name=f"{p}jobs", schema=schema)
    if op.get_bind().dialect.name in ("postgresql", "sqlite"):
        op.drop_index(f"{p}jobs_lease_idx", table_name=f"{p}jobs", schema=schema)
        op.drop_index(f"{p}jobs_claim_idx", table_name=f"{p}jobs", schema=schema)
    else:
        op.drop_index(f"{p}jobs_status_idx", table_name=f"{p}jobs", schema=schema)
    op.drop_table(f"{p}jobs", schema=schema)
