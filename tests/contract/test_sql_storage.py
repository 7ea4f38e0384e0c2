"""Run the storage contract against SqlStorage on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import ClassVar

import pytest
import pytest_asyncio

from fantasma.storage.base import Storage
from fantasma.storage.sql import SqlStorage
from fantasma_testing.contract import StorageContract
from tests.dbs import kill_mysql_sessions, terminate_postgres_sessions

logger = logging.getLogger(__name__)


class _SqlContract(StorageContract):
    """The contract on a fresh database from one of the URL fixtures in tests/dbs.py."""

    __test__ = False
    url_fixture: ClassVar[str]

    @pytest.fixture
    def database_url(self, request: pytest.FixtureRequest) -> str:
        url: str = request.getfixturevalue(self.url_fixture)
        return url

    @pytest_asyncio.fixture
    async def storage(self, database_url: str) -> AsyncIterator[Storage]:
        storage = SqlStorage(database_url)
        await storage.start()
        yield storage
        await storage.close()

    # pytest-asyncio's decorator has a different static type than the
    # base's pytest.fixture, which mypy reports as an incompatible override.
    @pytest_asyncio.fixture
    async def other_storage(  # type: ignore[override]
        self, storage: Storage, database_url: str
    ) -> AsyncIterator[Storage]:
        # A second engine on the same database, so that the concurrency tests
        # race two connection pools.
        other = SqlStorage(database_url)
        await other.start()
        yield other
        await other.close()


class TestSqliteStorage(_SqlContract):
    pytestmark = pytest.mark.asyncio
    url_fixture = "sqlite_url"


class TestPostgresStorage(_SqlContract):
    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [
        pytest.mark.asyncio,
        pytest.mark.postgres,
    ]
    url_fixture = "postgres_url"

    async def break_connection(self, storage: Storage) -> None:
        assert isinstance(storage, SqlStorage)
        await terminate_postgres_sessions(storage.engine.url.database)


class TestMariadbStorage(_SqlContract):
    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [
        pytest.mark.asyncio,
        pytest.mark.mysql,
    ]
    url_fixture = "mysql_url"

    async def break_connection(self, storage: Storage) -> None:
        assert isinstance(storage, SqlStorage)
        await kill_mysql_sessions(storage.engine.url.database)
