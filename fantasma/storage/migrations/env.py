"""Alembic environment that migrates fantasma's tables over a connection it is given."""

from __future__ import annotations

import logging

from alembic import context
from sqlalchemy.engine import Connection

from fantasma.storage.sql.migrate import current_migration_names, version_table_name
from fantasma.storage.sql.schema import build_tables

logger = logging.getLogger(__name__)


def run_migrations() -> None:
    """Run pending migrations on the connection in the config's attributes."""
    if context.is_offline_mode():
        raise RuntimeError(
            "fantasma migrations need a database connection and cannot produce"
            " SQL scripts; run `fantasma db upgrade URL`"
        )
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "fantasma migrations run through fantasma.storage.sql.upgrade_database"
            " or `fantasma db upgrade URL`, not through the alembic command"
        )
    table_prefix, schema = current_migration_names()
    tables = build_tables(table_prefix, schema)
    context.configure(
        connection=connection,
        target_metadata=tables.metadata,
        version_table=version_table_name(table_prefix),
        version_table_schema=schema,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
