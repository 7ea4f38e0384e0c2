"""Database URL checks and engine set-up for the three supported SQL backends."""

from __future__ import annotations

import enum
import importlib.util
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from fantasma.errors import ConfigurationError, StorageUnavailableError

__all__ = [
    "SQLITE_BEGIN_OPTION",
    "SQLITE_BUSY_TIMEOUT_MS",
    "Backend",
    "DatabaseTarget",
    "backend_of",
    "check_sqlite_directory",
    "create_engine",
    "describe_target",
    "install_sqlite_hooks",
    "parse_database_url",
]

logger = logging.getLogger(__name__)

# How long an SQLite connection waits for another connection's write lock
# before failing with "database is locked". Claims and inserts hold the lock
# for milliseconds, so reaching this points at a stuck process.
SQLITE_BUSY_TIMEOUT_MS = 30_000

# Execution option naming the SQLite BEGIN mode of a connection's next
# transaction: "DEFERRED" (the default), "IMMEDIATE" or "EXCLUSIVE".
SQLITE_BEGIN_OPTION = "fantasma_sqlite_begin"


class Backend(enum.Enum):
    """A supported database family."""

    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"
    MYSQL = "mysql"


@dataclass(frozen=True, slots=True)
class _Driver:
    backend: Backend
    driver: str
    module: str
    extra: str | None
    label: str


# Keyed by the backend name in the URL, before any "+driver".
_DRIVERS = {
    "sqlite": _Driver(Backend.SQLITE, "aiosqlite", "aiosqlite", None, "SQLite"),
    "postgresql": _Driver(
        Backend.POSTGRESQL, "asyncpg", "asyncpg", "postgres", "PostgreSQL"
    ),
    "mysql": _Driver(Backend.MYSQL, "asyncmy", "asyncmy", "mysql", "MySQL"),
    "mariadb": _Driver(Backend.MYSQL, "asyncmy", "asyncmy", "mysql", "MariaDB"),
}


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    """Description of a database for error messages, without its password.

    Attributes:
        backend: The database family.
        description: For example ``PostgreSQL at 127.0.0.1:5432 (database 'x')``.
        safe_url: The URL with the password masked, for commands to run.
    """

    backend: Backend
    description: str
    safe_url: str


def parse_database_url(url: str | URL) -> URL:
    """Check that ``url`` names a supported backend and return it with its async driver.

    A URL without a driver (``postgresql://``, ``sqlite:///x.db``) gets the
    asyncio driver fantasma uses.

    Raises:
        ConfigurationError: The URL is malformed, names another database or
            driver, names an in-memory SQLite database, or the driver package
            is not installed.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(
            f"invalid database URL {_mask(url)!r}: {exc}; expected for example"
            " 'postgresql+asyncpg://user@host/db'"
        ) from exc
    backend_name, _, driver_name = parsed.drivername.partition("+")
    if backend_name == "postgres":
        backend_name = "postgresql"
    spec = _DRIVERS.get(backend_name)
    if spec is None:
        raise ConfigurationError(
            f"unsupported database {backend_name!r} in URL"
            f" {parsed.render_as_string(hide_password=True)!r}: fantasma supports"
            " sqlite+aiosqlite, postgresql+asyncpg, mysql+asyncmy and mariadb+asyncmy"
        )
    if driver_name and driver_name != spec.driver:
        raise ConfigurationError(
            f"unsupported driver {driver_name!r} for {spec.label}: fantasma needs the"
            f" asyncio driver {spec.driver}, as in '{backend_name}+{spec.driver}://...'"
        )
    try:
        installed = importlib.util.find_spec(spec.module) is not None
    except (ImportError, ValueError):
        installed = False
    if not installed:
        install = (
            f"pip install 'fantasma[{spec.extra}]'"
            if spec.extra
            else f"pip install {spec.module}"
        )
        raise ConfigurationError(
            f"the {spec.label} backend needs the {spec.module} package, which is"
            f" not installed: {install}"
        )
    parsed = parsed.set(drivername=f"{backend_name}+{spec.driver}")
    if spec.backend is Backend.SQLITE and parsed.database in (None, "", ":memory:"):
        raise ConfigurationError(
            "in-memory SQLite is not supported, because each connection would see"
            " its own empty database: use a file path such as"
            " 'sqlite+aiosqlite:///fantasma.db', or 'memory://' for in-process storage"
        )
    return parsed


def backend_of(engine: AsyncEngine) -> Backend:
    """Return the database family of an engine.

    Raises:
        ConfigurationError: The engine uses a database or driver fantasma
            does not support.
    """
    parse_database_url(engine.url)
    name = engine.dialect.name
    if name == "sqlite":
        return Backend.SQLITE
    if name == "postgresql":
        return Backend.POSTGRESQL
    return Backend.MYSQL


def describe_target(url: URL) -> DatabaseTarget:
    """Describe the database ``url`` points at, for error messages."""
    backend_name = url.drivername.partition("+")[0]
    spec = _DRIVERS["postgresql" if backend_name == "postgres" else backend_name]
    safe_url = url.render_as_string(hide_password=True)
    if spec.backend is Backend.SQLITE:
        description = f"SQLite database {url.database!r}"
    else:
        host = url.host or "localhost"
        place = host if url.port is None else f"{host}:{url.port}"
        description = f"{spec.label} at {place} (database {url.database!r})"
    return DatabaseTarget(spec.backend, description, safe_url)


def create_engine(url: URL, **engine_options: Any) -> AsyncEngine:
    """Create the async engine for a URL that :func:`parse_database_url` accepted.

    ``engine_options`` go to :func:`sqlalchemy.ext.asyncio.create_async_engine`
    and override fantasma's defaults.
    """
    # A pooled SQLite connection is a file handle, which no server can
    # close, so only server connections are checked before use. On SQLite
    # the check cost three calls to the connection's thread per operation.
    options: dict[str, Any] = {"pool_pre_ping": not url.drivername.startswith("sqlite")}
    if url.drivername.startswith(("mysql", "mariadb")):
        # REPEATABLE READ, InnoDB's default, takes gap locks on the claim
        # query's index range, which would block concurrent inserts of new
        # jobs until the claim commits.
        options["isolation_level"] = "READ COMMITTED"
    options.update(engine_options)
    # SQLAlchemy's asyncpg pre-ping wraps its query in BEGIN and ROLLBACK,
    # three round trips on every checkout. A one-statement ping on checkout
    # checks the connection as well, in one.
    ping_postgres = url.drivername.startswith("postgresql") and bool(
        options.get("pool_pre_ping")
    )
    if ping_postgres:
        options["pool_pre_ping"] = False
    engine = create_async_engine(url, **options)
    if ping_postgres:
        event.listen(engine.sync_engine, "checkout", _ping_postgres_connection)
    if url.drivername.startswith("sqlite"):
        install_sqlite_hooks(engine)
    return engine


def _ping_postgres_connection(
    dbapi_connection: Any,
    connection_record: ConnectionPoolEntry,
    connection_proxy: PoolProxiedConnection,
) -> None:
    try:
        dbapi_connection.run_async(lambda driver: driver.execute("SELECT 1"))
    except Exception as exc:
        # The pool replaces the connection and checks out again.
        raise DisconnectionError(
            f"pooled PostgreSQL connection failed its ping: {exc}"
        ) from exc


def install_sqlite_hooks(engine: AsyncEngine) -> None:
    """Configure an SQLite engine's connections for several processes sharing a file.

    Each connection gets a busy timeout and WAL mode, in which readers and
    the writer do not block each other. fantasma issues BEGIN itself, so that
    write transactions can take the write lock up front with BEGIN IMMEDIATE.
    Installing twice on one engine does nothing.
    """
    sync_engine = engine.sync_engine
    if event.contains(sync_engine, "connect", _configure_sqlite_connection):
        return
    event.listen(sync_engine, "connect", _configure_sqlite_connection)
    event.listen(sync_engine, "begin", _begin_sqlite_transaction)


def _configure_sqlite_connection(
    dbapi_connection: Any, connection_record: ConnectionPoolEntry
) -> None:
    # Stop the sqlite3 module from issuing its own BEGIN, so that the "begin"
    # hook below decides the transaction mode.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # The busy timeout comes first so that switching to WAL waits for
        # another process's lock instead of failing.
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            # Switching to WAL needs an exclusive lock, which SQLite does not
            # wait for. The mode is stored in the file, so when another
            # connection is switching it, this connection uses WAL as well.
            logger.debug("SQLite could not switch to WAL mode now: %s", exc)
            return
        mode = cursor.fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            logger.warning(
                "SQLite kept journal mode %r instead of WAL; concurrent access"
                " from several processes will be slower",
                None if mode is None else mode[0],
            )
    finally:
        cursor.close()


def _begin_sqlite_transaction(connection: Connection) -> None:
    mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def check_sqlite_directory(url: URL, target: DatabaseTarget) -> None:
    """Raise :class:`StorageUnavailableError` if the SQLite file's directory is missing.

    Checking before connecting gives a clear message. It also keeps away
    from aiosqlite's failed-connect path, which (in aiosqlite 0.22) can raise
    "Event loop is closed" in its worker thread after the loop has ended.
    """
    database = url.database
    if (
        not url.drivername.startswith("sqlite")
        or not database
        or database.startswith("file:")
    ):
        return
    directory = Path(database).expanduser().resolve().parent
    if not directory.is_dir():
        raise StorageUnavailableError(
            f"cannot open {target.description}: the directory {str(directory)!r}"
            " does not exist; create it or fix the URL"
        )


def _mask(url: str | URL) -> str:
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
