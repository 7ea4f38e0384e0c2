"""Alembic migrations of the SQL backend's tables, run over an async engine."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import weakref
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import func, select
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fantasma.errors import FantasmaError, SchemaError, StorageError
from fantasma.storage.sql.engine import (
    SQLITE_BEGIN_OPTION,
    Backend,
    DatabaseTarget,
    backend_of,
    check_sqlite_directory,
    create_engine,
    describe_target,
    parse_database_url,
)
from fantasma.storage.sql.errors import DRIVER_ERRORS, translate_error
from fantasma.storage.sql.schema import DEFAULT_TABLE_PREFIX, validate_names

__all__ = [
    "MIGRATIONS_PATH",
    "check_schema",
    "current_migration_names",
    "head_revision",
    "migrate_engine",
    "upgrade_database",
    "version_table_name",
]

logger = logging.getLogger(__name__)

MIGRATIONS_PATH = Path(__file__).resolve().parent.parent / "migrations"
"""Alembic script directory (``env.py`` and ``versions/``) shipped in the package."""

# How long a process waits on MariaDB/MySQL for another process that is
# migrating the same tables. PostgreSQL and SQLite wait without a limit of
# their own (SQLite up to its busy timeout).
MYSQL_LOCK_TIMEOUT_SECONDS = 300


# Alembic keeps the running migration in module-level proxies (alembic.context
# and alembic.op), so two migrations in one process must not interleave, even
# on different databases. There is one lock per event loop, because an
# asyncio.Lock belongs to the loop that first uses it.
# NOTE: migrations started from event loops in different threads of one
# process are not serialised.
_alembic_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _alembic_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _alembic_locks.get(loop)
    if lock is None:
        lock = _alembic_locks[loop] = asyncio.Lock()
    return lock


def version_table_name(table_prefix: str) -> str:
    """Return the name of Alembic's version table for ``table_prefix``."""
    return f"{table_prefix}alembic_version"


def alembic_config(table_prefix: str, schema: str | None) -> Config:
    """Build the Alembic configuration that ``env.py`` reads the table names from."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_PATH))
    config.attributes["table_prefix"] = table_prefix
    config.attributes["schema"] = schema
    return config


def current_migration_names() -> tuple[str, str | None]:
    """Return the table prefix and schema of the migration Alembic is running.

    Only valid inside ``env.py`` and the scripts in ``versions/``.
    """
    attributes = context.config.attributes
    return attributes["table_prefix"], attributes["schema"]


@functools.cache
def head_revision() -> str:
    """Return the newest revision among the shipped migrations."""
    script = ScriptDirectory.from_config(alembic_config(DEFAULT_TABLE_PREFIX, None))
    head = script.get_current_head()
    if head is None:
        raise SchemaError(f"no migrations found in {MIGRATIONS_PATH}")
    return head


async def upgrade_database(
    url: str | URL,
    *,
    table_prefix: str = DEFAULT_TABLE_PREFIX,
    schema: str | None = None,
) -> None:
    """Create fantasma's tables in the database at ``url``, or bring them up to date.

    Safe to run while other processes start or migrate the same tables,
    because they wait for each other. Running it again when the tables are current does
    nothing. This is what ``fantasma db upgrade URL`` runs.

    Raises:
        ConfigurationError: The URL, prefix or schema is invalid, or the
            driver is not installed.
        StorageUnavailableError: The database cannot be reached.
        SchemaError: The database was migrated by a newer fantasma.
        StorageError: A migration failed.
    """
    validate_names(table_prefix, schema)
    parsed = parse_database_url(url)
    target = describe_target(parsed)
    check_sqlite_directory(parsed, target)
    engine = create_engine(parsed)
    try:
        await migrate_engine(
            engine, table_prefix=table_prefix, schema=schema, target=target
        )
    finally:
        await engine.dispose()


async def migrate_engine(
    engine: AsyncEngine,
    *,
    table_prefix: str,
    schema: str | None,
    target: DatabaseTarget,
) -> None:
    """Apply pending migrations through ``engine`` under a database lock."""
    current = await _read_revision(engine, table_prefix, schema, target)
    if current == head_revision():
        return
    backend = backend_of(engine)
    config = alembic_config(table_prefix, schema)
    try:
        async with _alembic_lock(), engine.connect() as connection:
            if backend is Backend.SQLITE:
                # EXCLUSIVE takes the write lock up front, so a second
                # process waits here and then finds the tables current.
                await connection.execution_options(**{SQLITE_BEGIN_OPTION: "EXCLUSIVE"})
            async with connection.begin():
                await _lock_and_upgrade(connection, backend, config, target)
        logger.info(
            "fantasma's tables in %s are at revision %s (found %s)",
            target.description,
            head_revision(),
            current,
        )
    except FantasmaError:
        raise
    except CommandError as exc:
        raise _revision_error(exc, current, target) from exc
    except DRIVER_ERRORS as exc:
        raise translate_error(
            exc, operation="migrating the database", target=target
        ) from exc


async def check_schema(
    engine: AsyncEngine,
    *,
    table_prefix: str,
    schema: str | None,
    target: DatabaseTarget,
) -> None:
    """Raise :class:`SchemaError` unless the tables are at the newest revision."""
    current = await _read_revision(engine, table_prefix, schema, target)
    head = head_revision()
    if current == head:
        return
    upgrade = f"`fantasma db upgrade {target.safe_url}`"
    if current is None:
        raise SchemaError(
            f"fantasma's tables are missing in {target.description}: create them"
            f" with {upgrade}, or start the storage with migrate=True"
        )
    script = ScriptDirectory.from_config(alembic_config(table_prefix, schema))
    known = {revision.revision for revision in script.walk_revisions()}
    if current in known:
        raise SchemaError(
            f"fantasma's tables in {target.description} are at revision"
            f" {current!r}, older than {head!r}: upgrade them with {upgrade}"
        )
    raise SchemaError(
        f"fantasma's tables in {target.description} are at revision {current!r},"
        " which this version of fantasma does not know: a newer fantasma"
        " migrated them, so upgrade fantasma"
    )


async def _read_revision(
    engine: AsyncEngine, table_prefix: str, schema: str | None, target: DatabaseTarget
) -> str | None:
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                _current_revision, version_table_name(table_prefix), schema
            )
    except DRIVER_ERRORS as exc:
        raise translate_error(
            exc, operation="reading the schema version", target=target
        ) from exc


def _current_revision(
    connection: Connection, version_table: str, schema: str | None
) -> str | None:
    migration_context = MigrationContext.configure(
        connection,
        opts={"version_table": version_table, "version_table_schema": schema},
    )
    return migration_context.get_current_revision()


async def _lock_and_upgrade(
    connection: AsyncConnection,
    backend: Backend,
    config: Config,
    target: DatabaseTarget,
) -> None:
    table_prefix, schema = (
        config.attributes["table_prefix"],
        config.attributes["schema"],
    )
    lock_key = f"{connection.engine.url.database}.{schema}.{table_prefix}"
    if backend is Backend.POSTGRESQL:
        # The lock is released at commit. The upgrade runs in the same
        # transaction, because PostgreSQL DDL is transactional.
        await connection.execute(select(func.pg_advisory_xact_lock(_lock_id(lock_key))))
        if schema is not None:
            await connection.exec_driver_sql(
                f"CREATE SCHEMA IF NOT EXISTS {_quote(connection, schema)}"
            )
        await connection.run_sync(_run_upgrade, config)
        return
    if backend is Backend.SQLITE:
        await connection.run_sync(_run_upgrade, config)
        return
    # MariaDB/MySQL commit DDL statements one by one, so a session lock
    # (released explicitly, or when the connection closes) guards the run.
    lock_name = f"fantasma_migrate_{_lock_id(lock_key) & 0xFFFFFFFFFFFF:x}"
    acquired = await connection.scalar(
        select(func.get_lock(lock_name, MYSQL_LOCK_TIMEOUT_SECONDS))
    )
    if acquired != 1:
        raise StorageError(
            f"migrating {target.description} failed: another process held the"
            f" migration lock {lock_name!r} for {MYSQL_LOCK_TIMEOUT_SECONDS} s;"
            " check for a stuck `fantasma db upgrade`, then retry"
        )
    try:
        if schema is not None:
            await connection.exec_driver_sql(
                f"CREATE DATABASE IF NOT EXISTS {_quote(connection, schema)}"
                " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )
        await connection.run_sync(_run_upgrade, config)
    finally:
        await _release_mysql_lock(connection, lock_name)


async def _release_mysql_lock(connection: AsyncConnection, lock_name: str) -> None:
    try:
        await connection.execute(select(func.release_lock(lock_name)))
    except DRIVER_ERRORS:
        # The server drops the lock with the session anyway, and raising here
        # would hide the error that the migration itself raised.
        logger.warning(
            "releasing migration lock %r failed; the server releases it when the"
            " connection closes",
            lock_name,
            exc_info=True,
        )


def _run_upgrade(connection: Connection, config: Config) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _lock_id(key: str) -> int:
    digest = hashlib.sha256(f"fantasma migrate {key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _quote(connection: AsyncConnection, name: str) -> str:
    return connection.dialect.identifier_preparer.quote_identifier(name)


def _revision_error(
    exc: CommandError, current: str | None, target: DatabaseTarget
) -> SchemaError:
    return SchemaError(
        f"migrating {target.description} failed at revision {current!r}: {exc};"
        " if a newer fantasma migrated these tables, upgrade fantasma"
    )
