"""Behaviour of SqlStorage that only a SQL database has, checked on real servers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, make_url

import fantasma
from fantasma.errors import (
    ConfigurationError,
    SchemaError,
    StorageError,
    StorageUnavailableError,
)
from fantasma.jobs import Job, JobStatus
from fantasma.storage import storage_from_url
from fantasma.storage.sql import SqlStorage, upgrade_database
from fantasma.storage.sql.migrate import head_revision, version_table_name
from fantasma_testing.contract import (
    LEASE_DURATION,
    NOW,
    SECOND,
    make_job,
    make_occurrence,
    make_recurring,
)
from tests.dbs import (
    drop_mysql_database,
    kill_mysql_sessions,
    terminate_postgres_sessions,
    unique_database_name,
)

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.asyncio

WAIT = 10.0
"""Seconds a test waits for a notification or a subprocess before it fails."""

_REPO_ROOT = Path(fantasma.__file__).resolve().parent.parent


@asynccontextmanager
async def open_storage(url: str, **options: Any) -> AsyncIterator[SqlStorage]:
    """Start a SqlStorage on ``url`` and close it on exit."""
    storage = SqlStorage(url, **options)
    await storage.start()
    try:
        yield storage
    finally:
        await storage.close()


async def _table_names(storage: SqlStorage, schema: str | None = None) -> set[str]:
    async with storage.engine.connect() as connection:
        names = await connection.run_sync(
            lambda sync: inspect(sync).get_table_names(schema=schema)
        )
    return set(names)


# Migrations


async def test_migration_idempotent(sql_url: str) -> None:
    await upgrade_database(sql_url)
    await upgrade_database(sql_url)

    async with open_storage(sql_url, migrate=False) as storage:
        names = await _table_names(storage)
        revision = await _current_revision(storage)

    assert {
        "fantasma_jobs",
        "fantasma_recurring_jobs",
        "fantasma_leader",
        "fantasma_nodes",
        "fantasma_alembic_version",
    } <= names
    assert revision == head_revision()


async def test_concurrent_starts_migrate_once(sql_url: str) -> None:
    storages = [SqlStorage(sql_url) for _ in range(4)]
    try:
        await asyncio.gather(*(storage.start() for storage in storages))
        job = make_job()
        await storages[0].add_jobs([job])

        fetched = await storages[-1].get_job(job.id)
        revision = await _current_revision(storages[1])
    finally:
        await asyncio.gather(*(storage.close() for storage in storages))

    assert fetched == job
    assert revision == head_revision()


async def test_sqlite_fresh_file_concurrent_starts(tmp_path: Path) -> None:
    # Races on a new file (switching it to WAL, creating the tables) only
    # show up now and then, so the test repeats the start-up on new files.
    for round_number in range(20):
        url = f"sqlite+aiosqlite:///{tmp_path / f'round-{round_number}.db'}"
        storages = [SqlStorage(url) for _ in range(4)]
        try:
            await asyncio.gather(*(storage.start() for storage in storages))
            job = make_job()
            await storages[0].add_jobs([job])
            fetched = await storages[-1].get_job(job.id)
        finally:
            for storage in storages:
                await storage.close()

        assert fetched == job, f"round {round_number}"


async def test_concurrent_starts_other_prefixes(sql_url: str) -> None:
    # Different prefixes take different database locks, so only the lock
    # around Alembic's module-level state keeps these migrations apart.
    storages = [SqlStorage(sql_url, table_prefix=f"p{index}_") for index in range(4)]
    try:
        await asyncio.gather(*(storage.start() for storage in storages))
        names = await _table_names(storages[0])
    finally:
        for storage in storages:
            await storage.close()

    for index in range(4):
        assert f"p{index}_jobs" in names


async def test_concurrent_upgrades_succeed(sql_url: str) -> None:
    await asyncio.gather(*(upgrade_database(sql_url) for _ in range(3)))

    async with open_storage(sql_url, migrate=False) as storage:
        assert await _current_revision(storage) == head_revision()


@pytest.mark.parametrize("table_prefix", ["fantasma_", "app2_"])
async def test_migrated_tables_match_schema(sql_url: str, table_prefix: str) -> None:
    differences = await _migrate_and_compare(sql_url, table_prefix, None)

    assert differences == []


async def test_migrated_schema_option_matches(server_url: str) -> None:
    on_mariadb = make_url(server_url).get_backend_name() == "mysql"
    # On MariaDB the schema is a database of its own, so its name is unique.
    schema = unique_database_name() if on_mariadb else "tenant"
    try:
        differences = await _migrate_and_compare(server_url, "fantasma_", schema)
    finally:
        if on_mariadb:
            await drop_mysql_database(
                make_url(server_url).set(database=schema).render_as_string(False)
            )

    assert differences == []


async def _migrate_and_compare(
    url: str, table_prefix: str, schema: str | None
) -> list[Any]:
    async with (
        open_storage(url, table_prefix=table_prefix, schema=schema) as storage,
        storage.engine.connect() as connection,
    ):
        return await connection.run_sync(
            _schema_differences, storage, table_prefix, schema
        )


def _schema_differences(
    connection: Connection, storage: SqlStorage, table_prefix: str, schema: str | None
) -> list[Any]:
    """Return Alembic's differences between the database and schema.py's tables."""
    dialect = connection.dialect.name
    version_table = version_table_name(table_prefix)

    def include_object(
        item: Any, name: str | None, kind: str, reflected: bool, compare_to: Any
    ) -> bool:
        if kind == "table" and name == version_table:
            return False
        ddl_if = getattr(item, "_ddl_if", None)
        if ddl_if is not None and ddl_if.dialect is not None:
            # Index.ddl_if limits some indexes to some dialects, which
            # Alembic's comparison does not know.
            return dialect in ddl_if.dialect
        return True

    migration_context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "include_object": include_object,
            "include_schemas": schema is not None,
            "include_name": lambda name, kind, parent: (
                kind != "schema" or name == schema
            ),
        },
    )
    return list(compare_metadata(migration_context, storage.tables.metadata))


async def _current_revision(storage: SqlStorage) -> str | None:
    def read(connection: Connection) -> str | None:
        context = MigrationContext.configure(
            connection,
            opts={"version_table": version_table_name("fantasma_")},
        )
        return context.get_current_revision()

    async with storage.engine.connect() as connection:
        return await connection.run_sync(read)


async def test_no_migrate_reports_missing_tables(sql_url: str) -> None:
    storage = SqlStorage(sql_url, migrate=False)
    try:
        with pytest.raises(SchemaError) as caught:
            await storage.start()
    finally:
        await storage.close()

    assert "fantasma db upgrade" in str(caught.value)


async def test_dropped_table_raises_schema_error(sql_url: str) -> None:
    async with open_storage(sql_url) as storage:
        async with storage.engine.begin() as connection:
            await connection.execute(text("DROP TABLE fantasma_nodes"))

        with pytest.raises(SchemaError) as caught:
            await storage.list_nodes()

    assert "fantasma db upgrade" in str(caught.value)
    assert caught.value.__cause__ is not None


# SQLite


async def test_sqlite_connections_use_wal(sqlite_url: str) -> None:
    async with (
        open_storage(sqlite_url) as storage,
        storage.engine.connect() as connection,
    ):
        journal_mode = await connection.scalar(text("PRAGMA journal_mode"))
        busy_timeout = await connection.scalar(text("PRAGMA busy_timeout"))

    assert journal_mode == "wal"
    assert busy_timeout == 30_000


_CLAIMER = """
import asyncio, json, sys
from datetime import datetime, timedelta, UTC

from fantasma.storage.sql import SqlStorage


async def main(url, node_id):
    storage = SqlStorage(url)
    await storage.start()
    print("ready", flush=True)
    sys.stdin.readline()
    now = datetime(2030, 1, 1, tzinfo=UTC)
    claimed = []
    while True:
        jobs = await storage.claim_jobs(
            node_id=node_id, now=now, limit=3, lease_until=now + timedelta(seconds=30)
        )
        if not jobs:
            break
        claimed.extend(job.id for job in jobs)
    await storage.close()
    print(json.dumps(claimed), flush=True)


asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_sqlite_processes_claim_disjoint_jobs(sqlite_url: str) -> None:
    jobs = [make_job(due_at=NOW - index * SECOND) for index in range(120)]
    async with open_storage(sqlite_url) as storage:
        await storage.add_jobs(jobs)
    environment = {**os.environ, "PYTHONPATH": str(_REPO_ROOT)}
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CLAIMER,
            sqlite_url,
            f"node-{index}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
        )
        for index in range(3)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 6 * WAIT)
            assert line == b"ready\n", line
        # Every process has started before any of them claims.
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            await process.stdin.drain()
        outputs = [
            await asyncio.wait_for(process.communicate(), 6 * WAIT)
            for process in processes
        ]
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()

    claims = []
    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr.decode()
        claims.append(json.loads(stdout))
    claimed = [job_id for claim in claims for job_id in claim]
    assert len(claimed) == len(set(claimed)), "a job was claimed twice"
    assert set(claimed) == {job.id for job in jobs}


# PostgreSQL LISTEN/NOTIFY


@pytest.mark.postgres
async def test_notify_wakes_other_engine(postgres_url: str) -> None:
    woken = asyncio.Event()
    listener = SqlStorage(postgres_url)
    listener.add_listener(woken.set)
    await listener.start()
    try:
        async with open_storage(postgres_url) as writer:
            await writer.add_jobs([make_job()])
            await asyncio.wait_for(woken.wait(), WAIT)

            woken.clear()
            running = await _add_and_claim(writer)
            await writer.retry_job(
                running.id, node_id="node-a", now=NOW, due_at=NOW, error="boom"
            )
            await asyncio.wait_for(woken.wait(), WAIT)

            woken.clear()
            running = await _add_and_claim(writer)
            await writer.requeue_expired_jobs(now=NOW + 2 * LEASE_DURATION)
            await asyncio.wait_for(woken.wait(), WAIT)

            woken.clear()
            await writer.add_jobs([make_occurrence("r", NOW)])
            await asyncio.wait_for(woken.wait(), WAIT)
    finally:
        await listener.close()


async def _add_and_claim(storage: SqlStorage) -> Job:
    job = make_job(due_at=NOW - 3600 * SECOND, max_attempts=3)
    await storage.add_jobs([job])
    claimed = await storage.claim_jobs(
        node_id="node-a", now=NOW, limit=100, lease_until=NOW + LEASE_DURATION
    )
    matching = [item for item in claimed if item.id == job.id]
    assert matching, "setup could not claim the job"
    return matching[0]


@pytest.mark.postgres
async def test_notify_wakes_materialised_occurrence(postgres_url: str) -> None:
    woken = asyncio.Event()
    listener = SqlStorage(postgres_url, schema="tenant", table_prefix="t_")
    listener.add_listener(woken.set)
    await listener.start()
    try:
        async with open_storage(
            postgres_url, schema="tenant", table_prefix="t_"
        ) as writer:
            await writer.put_recurring(make_recurring())
            lease = await writer.acquire_leadership(
                node_id="leader", now=NOW, until=NOW + LEASE_DURATION
            )
            assert lease is not None

            done = await writer.materialise_occurrence(
                lease=lease,
                now=NOW,
                recurring_id="contract-recurring",
                expected_next_fire_at=NOW,
                occurrence=make_occurrence("contract-recurring", NOW),
                next_fire_at=NOW + 300 * SECOND,
            )

            assert done
            await asyncio.wait_for(woken.wait(), WAIT)
    finally:
        await listener.close()


@pytest.mark.postgres
async def test_listener_reconnects_after_drop(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fantasma.storage.sql.notify")
    woken = asyncio.Event()
    listener = SqlStorage(postgres_url)
    listener.add_listener(woken.set)
    await listener.start()
    try:
        ended = await terminate_postgres_sessions(make_url(postgres_url).database)
        # After reconnecting, the listener calls back once for the
        # notifications it may have missed.
        await asyncio.wait_for(woken.wait(), WAIT)
        woken.clear()
        async with open_storage(postgres_url) as writer:
            await writer.add_jobs([make_job()])
            await asyncio.wait_for(woken.wait(), WAIT)
    finally:
        await listener.close()

    assert ended >= 1
    assert "lost the LISTEN connection" in caplog.text


# Connection loss and unreachable servers


async def _end_sessions(url: str) -> int:
    database = make_url(url).database
    if url.startswith("postgresql"):
        return await terminate_postgres_sessions(database)
    return await kill_mysql_sessions(database)


async def test_dropped_connection_without_ping(server_url: str) -> None:
    async with open_storage(server_url, pool_pre_ping=False) as storage:
        job = make_job()
        await storage.add_jobs([job])

        assert await _end_sessions(server_url) >= 1
        with pytest.raises(StorageUnavailableError) as caught:
            await storage.get_job(job.id)
        fetched = await storage.get_job(job.id)

    assert caught.value.__cause__ is not None
    assert "127.0.0.1" in str(caught.value)
    assert fetched == job


async def test_dropped_connection_during_batch(server_url: str) -> None:
    async with open_storage(server_url, pool_pre_ping=False) as storage:
        first = make_job()
        await storage.add_jobs([first])
        batch = [make_job(due_at=NOW + index * SECOND) for index in range(50)]

        assert await _end_sessions(server_url) >= 1
        with pytest.raises(StorageUnavailableError):
            await storage.add_jobs(batch)
        after_failure = await storage.list_jobs()
        inserted = await storage.add_jobs(batch)
        after_retry = await storage.list_jobs()

    assert after_failure == [first]
    assert inserted == [job.id for job in batch]
    assert after_retry == [first, *batch]


async def test_dropped_connection_with_ping_recovers(server_url: str) -> None:
    async with open_storage(server_url) as storage:
        jobs = [make_job(due_at=NOW + index * SECOND) for index in range(3)]
        await storage.add_jobs(jobs)

        assert await _end_sessions(server_url) >= 1
        listed = await storage.list_jobs()
        claimed = await storage.claim_jobs(
            node_id="node-a", now=NOW, limit=1, lease_until=NOW + LEASE_DURATION
        )

    assert listed == jobs
    assert [job.id for job in claimed] == [jobs[0].id]


@pytest.mark.parametrize(
    ("url", "label"),
    [
        ("postgresql+asyncpg://fantasma:secret@127.0.0.1:1/app", "PostgreSQL"),
        ("mysql+asyncmy://fantasma:secret@127.0.0.1:1/app", "MySQL"),
        ("mariadb+asyncmy://fantasma:secret@127.0.0.1:1/app", "MariaDB"),
    ],
    ids=["postgres", "mysql", "mariadb"],
)
async def test_unreachable_server_message(url: str, label: str) -> None:
    storage = SqlStorage(url)
    try:
        with pytest.raises(StorageUnavailableError) as caught:
            await storage.start()
    finally:
        await storage.close()

    message = str(caught.value)
    assert f"{label} at 127.0.0.1:1 (database 'app')" in message
    assert "connection refused" in message
    assert "check that the server is running" in message
    assert "secret" not in message
    assert caught.value.__cause__ is not None


async def test_upgrade_unreachable_server() -> None:
    with pytest.raises(StorageUnavailableError) as caught:
        await upgrade_database("postgresql://fantasma:secret@127.0.0.1:1/app")

    assert "connection refused" in str(caught.value)
    assert "secret" not in str(caught.value)


async def test_sqlite_missing_directory_message(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "fantasma.db"
    storage = SqlStorage(f"sqlite+aiosqlite:///{path}")
    try:
        with pytest.raises(StorageUnavailableError) as caught:
            await storage.start()
    finally:
        await storage.close()

    assert str(path) in str(caught.value)
    assert "does not exist" in str(caught.value)


# Configuration


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("oracle://scott@db/orcl", "unsupported database 'oracle'"),
        ("postgresql+psycopg://u@h/db", "needs the asyncio driver asyncpg"),
        ("mysql+aiomysql://u@h/db", "needs the asyncio driver asyncmy"),
        ("sqlite+aiosqlite://", "in-memory SQLite is not supported"),
        ("sqlite+aiosqlite:///:memory:", "in-memory SQLite is not supported"),
        ("not a url", "invalid database URL"),
    ],
)
async def test_unsupported_url_rejected(url: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SqlStorage(url)

    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("postgresql://u@h/db", "asyncpg", "postgres"),
        ("mariadb://u@h/db", "asyncmy", "mysql"),
    ],
)
async def test_missing_driver_names_extra(
    monkeypatch: pytest.MonkeyPatch, url: str, module: str, extra: str
) -> None:
    # A None entry in sys.modules makes the package look not installed.
    monkeypatch.setitem(sys.modules, module, None)

    with pytest.raises(ConfigurationError) as caught:
        SqlStorage(url)

    assert f"pip install 'fantasma[{extra}]'" in str(caught.value)


@pytest.mark.parametrize(
    "options",
    [{"table_prefix": "bad-prefix"}, {"schema": "a;b"}, {"table_prefix": "x" * 31}],
    ids=["prefix", "schema", "long-prefix"],
)
async def test_invalid_names_rejected(sqlite_url: str, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        SqlStorage(sqlite_url, **options)


async def test_sqlite_schema_rejected(sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SqlStorage(sqlite_url, schema="tenant")

    assert "not supported on SQLite" in str(caught.value)


async def test_url_without_driver_gets_async_one(tmp_path: Path) -> None:
    storage = storage_from_url(f"sqlite:///{tmp_path / 'plain.db'}")

    assert isinstance(storage, SqlStorage)
    assert storage.engine.url.drivername == "sqlite+aiosqlite"


# Table prefix and schema


async def test_table_prefixes_isolate_data(sql_url: str) -> None:
    async with (
        open_storage(sql_url, table_prefix="one_") as one,
        open_storage(sql_url, table_prefix="two_") as two,
    ):
        job = make_job()
        await one.add_jobs([job])
        await one.heartbeat(node_id="node-a", now=NOW)

        assert await one.get_job(job.id) == job
        assert await two.get_job(job.id) is None
        assert await two.list_nodes() == []
        names = await _table_names(one)

    assert {
        "one_jobs",
        "two_jobs",
        "one_alembic_version",
        "two_alembic_version",
    } <= names


@pytest.mark.postgres
async def test_postgres_schema_holds_tables(postgres_url: str) -> None:
    async with (
        open_storage(postgres_url, schema="tenant_a") as tenant_a,
        open_storage(postgres_url) as default,
    ):
        job = make_job()
        await tenant_a.add_jobs([job])
        await tenant_a.add_jobs([make_occurrence("r", NOW)])

        assert await tenant_a.get_job(job.id) == job
        assert await default.get_job(job.id) is None
        in_schema = await _table_names(tenant_a, schema="tenant_a")

    assert {"fantasma_jobs", "fantasma_alembic_version"} <= in_schema


@pytest.mark.mysql
async def test_mariadb_schema_is_database(mysql_url: str) -> None:
    other_database = unique_database_name()
    try:
        async with (
            open_storage(mysql_url, schema=other_database) as other,
            open_storage(mysql_url) as default,
        ):
            job = make_job()
            await other.add_jobs([job])

            assert await other.get_job(job.id) == job
            assert await default.get_job(job.id) is None
            in_database = await _table_names(other, schema=other_database)
    finally:
        await drop_mysql_database(
            make_url(mysql_url).set(database=other_database).render_as_string(False)
        )

    assert "fantasma_jobs" in in_database


# Values


async def test_megabyte_unicode_payloads(sql_url: str) -> None:
    # Characters of 1 to 4 bytes in UTF-8, emoji included, about 1 MiB each.
    text_block = 'aé€😀 "quoted" \\ newline\n'
    payload = json.dumps({"data": text_block * (1024 * 1024 // len(text_block))})
    plain = make_job(payload=payload, name="名前 🚀", last_error="🔥" * 1000)
    occurrence = make_occurrence("récurrent-😀", NOW, payload=payload)
    recurring = make_recurring(id="récurrent-😀", payload=payload)

    async with open_storage(sql_url) as storage:
        await storage.add_jobs([plain])
        await storage.add_jobs([occurrence])
        await storage.put_recurring(recurring)

        fetched_plain = await storage.get_job(plain.id)
        fetched_occurrence = await storage.get_job(occurrence.id)
        fetched_recurring = await storage.get_recurring(recurring.id)
        by_name = await storage.list_jobs(name="名前 🚀")

    assert len(payload) > 1024 * 1024
    assert fetched_plain == plain
    assert fetched_occurrence == occurrence
    assert fetched_recurring == recurring
    assert [job.id for job in by_name] == [plain.id]


async def test_microsecond_datetimes_round_trip(sql_url: str) -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    due = datetime(2030, 1, 1, 17, 30, 0, 123456, tzinfo=india)
    later = make_job(due_at=due + timedelta(microseconds=1), created_at=due)
    earlier = make_job(due_at=due, created_at=due)

    async with open_storage(sql_url) as storage:
        await storage.add_jobs([later, earlier])
        fetched = await storage.get_job(earlier.id)
        claimed = await storage.claim_jobs(
            node_id="node-a",
            now=due + timedelta(microseconds=1),
            limit=2,
            lease_until=due + LEASE_DURATION,
        )
        next_due = await storage.next_due_at()

    assert fetched is not None
    assert fetched.due_at == due
    assert fetched.due_at.utcoffset() == timedelta(0)
    assert fetched.due_at.microsecond == 123456
    assert [job.id for job in claimed] == [earlier.id, later.id]
    assert claimed[0].started_at == due + timedelta(microseconds=1)
    assert next_due is None


async def test_naive_datetime_rejected(sql_url: str) -> None:
    naive = make_job(due_at=datetime(2030, 1, 1))

    async with open_storage(sql_url) as storage:
        with pytest.raises(ValueError, match="naive datetime"):
            await storage.add_jobs([naive])
        with pytest.raises(StorageError, match="naive datetime"):
            await storage.claim_jobs(
                node_id="node-a",
                now=datetime(2030, 1, 1),
                limit=1,
                lease_until=NOW,
            )
        assert await storage.list_jobs() == []


async def test_occurrence_with_existing_id_raises(sql_url: str) -> None:
    async with open_storage(sql_url) as storage:
        plain = make_job()
        await storage.add_jobs([plain])

        with pytest.raises(StorageError):
            await storage.add_jobs([make_occurrence("r", NOW, id=plain.id)])
        stored = await storage.list_jobs()

    assert stored == [plain]


async def test_large_batch_keeps_order(sql_url: str) -> None:
    jobs = [make_job() for _ in range(3000)]

    async with open_storage(sql_url) as storage:
        inserted = await storage.add_jobs(jobs)
        claimed = await storage.claim_jobs(
            node_id="node-a", now=NOW, limit=3000, lease_until=NOW + LEASE_DURATION
        )

    assert inserted == [job.id for job in jobs]
    assert [job.id for job in claimed] == [job.id for job in jobs]
    assert all(job.status is JobStatus.RUNNING for job in claimed)
