"""Per-test SQLite files and PostgreSQL and MariaDB databases, as pytest fixtures.

Load it from ``tests/conftest.py`` with ``pytest_plugins = ["tests.dbs"]``.
Each fixture yields a URL of a database that exists only for one test and
is dropped afterwards, so tests can run in parallel under pytest-xdist.

The servers default to PostgreSQL and MariaDB on 127.0.0.1 with user
``root`` and no password, reached through an existing database named
``test``. Set ``FANTASMA_TEST_POSTGRES_URL`` or ``FANTASMA_TEST_MYSQL_URL``
to use others. When a server cannot be reached, its tests are skipped, or
fail when ``CI=true``, so that CI never passes without running them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import asyncmy
import asyncmy.errors
import asyncpg
import pytest
from sqlalchemy.engine import URL, make_url

__all__ = [
    "MYSQL_ADMIN_URL",
    "POSTGRES_ADMIN_URL",
    "ServerUnreachable",
    "create_mysql_database",
    "create_postgres_database",
    "drop_mysql_database",
    "drop_postgres_database",
    "kill_mysql_sessions",
    "mysql_database",
    "mysql_url",
    "postgres_database",
    "postgres_url",
    "server_url",
    "sql_url",
    "sqlite_url",
    "terminate_postgres_sessions",
    "unique_database_name",
]

logger = logging.getLogger(__name__)

POSTGRES_ADMIN_URL = os.environ.get(
    "FANTASMA_TEST_POSTGRES_URL", "postgresql+asyncpg://root@127.0.0.1:5432/test"
)
"""URL of an existing PostgreSQL database from which test databases are created."""

MYSQL_ADMIN_URL = os.environ.get(
    "FANTASMA_TEST_MYSQL_URL", "mysql+asyncmy://root@127.0.0.1:3306/test"
)
"""URL of an existing MariaDB/MySQL database from which test databases are created."""

_CONNECT_TIMEOUT_SECONDS = 10

# How long pg_terminate_backend waits for each session to end, in ms.
_TERMINATE_TIMEOUT_MS = 10_000

T = TypeVar("T")


class ServerUnreachable(Exception):
    """The test database server refused the connection or did not respond."""


def unique_database_name() -> str:
    """Return a database name no other test, worker or run uses."""
    return f"fantasma_test_{uuid.uuid4().hex[:16]}"


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    # A thread of its own gives the coroutine a fresh event loop, whether or
    # not the calling test already runs one.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, coroutine).result()


# PostgreSQL


async def _postgres_admin(admin_url: str) -> asyncpg.Connection:
    url = make_url(admin_url)
    try:
        return await asyncpg.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            database=url.database,
            timeout=_CONNECT_TIMEOUT_SECONDS,
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise ServerUnreachable(
            f"cannot connect to PostgreSQL at {url.render_as_string()}: {exc};"
            " start the server, or set FANTASMA_TEST_POSTGRES_URL to another one"
        ) from exc


async def create_postgres_database(admin_url: str = POSTGRES_ADMIN_URL) -> str:
    """Create an empty PostgreSQL database and return its asyncpg URL."""
    name = unique_database_name()
    connection = await _postgres_admin(admin_url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    url: URL = make_url(admin_url).set(drivername="postgresql+asyncpg", database=name)
    return url.render_as_string(hide_password=False)


async def drop_postgres_database(url: str, admin_url: str = POSTGRES_ADMIN_URL) -> None:
    """Drop a database from :func:`create_postgres_database`, ending its sessions."""
    name = make_url(url).database
    connection = await _postgres_admin(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@contextmanager
def postgres_database(admin_url: str = POSTGRES_ADMIN_URL) -> Iterator[str]:
    """Yield the URL of a new PostgreSQL database, dropped on exit."""
    url = _run(create_postgres_database(admin_url))
    try:
        yield url
    finally:
        _run(drop_postgres_database(url, admin_url))


# MariaDB / MySQL


async def _mysql_admin(admin_url: str) -> Any:
    url = make_url(admin_url)
    try:
        return await asyncmy.connect(
            host=url.host or "127.0.0.1",
            port=url.port or 3306,
            user=url.username or "root",
            password=url.password or "",
            database=url.database,
            connect_timeout=_CONNECT_TIMEOUT_SECONDS,
        )
    except (OSError, asyncmy.errors.OperationalError) as exc:
        raise ServerUnreachable(
            f"cannot connect to MariaDB at {url.render_as_string()}: {exc};"
            " start the server, or set FANTASMA_TEST_MYSQL_URL to another one"
        ) from exc


async def create_mysql_database(admin_url: str = MYSQL_ADMIN_URL) -> str:
    """Create an empty MariaDB/MySQL database and return its asyncmy URL."""
    name = unique_database_name()
    connection = await _mysql_admin(admin_url)
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )
    finally:
        connection.close()
    url: URL = make_url(admin_url).set(drivername="mysql+asyncmy", database=name)
    return url.render_as_string(hide_password=False)


async def drop_mysql_database(url: str, admin_url: str = MYSQL_ADMIN_URL) -> None:
    """Drop a database that :func:`create_mysql_database` made."""
    name = make_url(url).database
    connection = await _mysql_admin(admin_url)
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        connection.close()


@contextmanager
def mysql_database(admin_url: str = MYSQL_ADMIN_URL) -> Iterator[str]:
    """Yield the URL of a new MariaDB/MySQL database, dropped on exit."""
    url = _run(create_mysql_database(admin_url))
    try:
        yield url
    finally:
        _run(drop_mysql_database(url, admin_url))


# Breaking connections


async def terminate_postgres_sessions(database: str | None) -> int:
    """End every session on ``database`` from an admin connection; return how many."""
    connection = await _postgres_admin(POSTGRES_ADMIN_URL)
    try:
        # The timeout argument makes each call wait until the session is
        # gone, so the storage's next operation meets a closed socket.
        ended: int = await connection.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, $2))"
            " FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
            _TERMINATE_TIMEOUT_MS,
        )
    finally:
        await connection.close()
    return ended


async def kill_mysql_sessions(database: str | None) -> int:
    """Kill every MariaDB/MySQL session using ``database``; return how many."""
    connection = await _mysql_admin(MYSQL_ADMIN_URL)
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(
                "SELECT id FROM information_schema.processlist"
                " WHERE db = %s AND id <> CONNECTION_ID()",
                (database,),
            )
            session_ids = [row[0] for row in await cursor.fetchall()]
            for session_id in session_ids:
                await cursor.execute(f"KILL CONNECTION {int(session_id)}")
    finally:
        connection.close()
    return len(session_ids)


# Fixtures


def _unreachable(exc: ServerUnreachable) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{exc} (CI=true, so a missing server fails the test)")
    pytest.skip(str(exc))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of an SQLite file in the test's temporary directory."""
    return f"sqlite+aiosqlite:///{tmp_path / 'fantasma.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a new PostgreSQL database, dropped after the test."""
    try:
        url = _run(create_postgres_database())
    except ServerUnreachable as exc:
        _unreachable(exc)
    yield url
    _run(drop_postgres_database(url))


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """URL of a new MariaDB/MySQL database, dropped after the test."""
    try:
        url = _run(create_mysql_database())
    except ServerUnreachable as exc:
        _unreachable(exc)
    yield url
    _run(drop_mysql_database(url))


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", id="mariadb", marks=pytest.mark.mysql),
    ]
)
def sql_url(request: pytest.FixtureRequest) -> str:
    """URL of a fresh database on each SQL backend in turn."""
    fixture = {
        "sqlite": "sqlite_url",
        "postgres": "postgres_url",
        "mariadb": "mysql_url",
    }
    url: str = request.getfixturevalue(fixture[request.param])
    return url


@pytest.fixture(
    params=[
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", id="mariadb", marks=pytest.mark.mysql),
    ]
)
def server_url(request: pytest.FixtureRequest) -> str:
    """URL of a fresh database on each database server in turn (no SQLite)."""
    fixture = {"postgres": "postgres_url", "mariadb": "mysql_url"}
    url: str = request.getfixturevalue(fixture[request.param])
    return url
