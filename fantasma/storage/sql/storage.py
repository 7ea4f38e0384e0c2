"""Storage backend on SQLAlchemy's async Core for SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Row,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import TextClause

from fantasma.errors import ConfigurationError, FantasmaError, StorageError
from fantasma.jobs import (
    ACTIVE_STATUSES,
    CLAIMABLE_STATUSES,
    Job,
    JobId,
    JobStatus,
    LeaderLease,
    NodeInfo,
    RecurringJob,
)
from fantasma.storage.base import Storage
from fantasma.storage.sql import hot_path
from fantasma.storage.sql.engine import (
    SQLITE_BEGIN_OPTION,
    Backend,
    check_sqlite_directory,
    create_engine,
    describe_target,
    install_sqlite_hooks,
    parse_database_url,
)
from fantasma.storage.sql.errors import DRIVER_ERRORS, translate_error
from fantasma.storage.sql.migrate import check_schema, migrate_engine
from fantasma.storage.sql.records import (
    JOB_COLUMNS,
    job_from_row,
    job_to_row,
    lease_from_row,
    node_from_row,
    recurring_from_row,
    recurring_to_row,
)
from fantasma.storage.sql.schema import (
    CLAIMABLE_WHERE,
    DEFAULT_TABLE_PREFIX,
    LEADER_ROW_NAME,
    OCCURRENCE_KEY_WHERE,
    RUNNING_WHERE,
    Tables,
    build_tables,
    channel_name,
)

if TYPE_CHECKING:
    import aiosqlite
    import asyncpg

    from fantasma.storage.sql.notify import PostgresListener

__all__ = ["SqlStorage"]

logger = logging.getLogger(__name__)

LEASE_EXPIRED_ERROR = "lease expired: the node running this job stopped reporting"
"""``last_error`` of a job released by :meth:`SqlStorage.requeue_expired_jobs`."""

# A released leader lease keeps its holder and term but expires at this time,
# so that any caller's ``now`` finds it expired.
_RELEASED_EXPIRY = datetime.fromisoformat("1970-01-01T00:00:00+00:00")

# Upper bound on the ids in one IN (...) list. SQLite accepts 32766 bound
# parameters per statement since version 3.32; other servers accept more.
_IN_LIST_CHUNK = 5000

_CLAIMABLE = sorted(status.value for status in CLAIMABLE_STATUSES)
_ACTIVE = sorted(status.value for status in ACTIVE_STATUSES)


class SqlStorage(Storage):
    """Storage in a SQL database shared by every process of a cluster.

    Supports SQLite through aiosqlite, PostgreSQL through asyncpg, and
    MariaDB 10.6+ or MySQL 8+ through asyncmy. Claims never hand one job to
    two callers: PostgreSQL and MariaDB lock candidate rows with ``FOR UPDATE
    SKIP LOCKED``, and SQLite takes the database write lock with ``BEGIN
    IMMEDIATE``. On PostgreSQL, :meth:`add_listener` keeps a LISTEN
    connection open, and every change that makes jobs claimable sooner sends
    a NOTIFY in its transaction, so idle workers in other processes wake at
    once.

    Args:
        url_or_engine: A database URL such as ``postgresql+asyncpg://user@host/db``
            (a URL without a driver gets the one above), or an
            :class:`~sqlalchemy.ext.asyncio.AsyncEngine` that the caller keeps
            and disposes of.
        table_prefix: Prefix of every table name, so that several schedulers
            can share one database.
        schema: PostgreSQL schema (created if missing) or MariaDB/MySQL
            database that contains the tables. Not supported on SQLite.
        migrate: Whether :meth:`start` creates or upgrades the tables. When
            ``False``, :meth:`start` only checks that they are current.
        **engine_options: Passed to
            :func:`~sqlalchemy.ext.asyncio.create_async_engine`, overriding
            fantasma's defaults (``pool_pre_ping=True`` on PostgreSQL and
            MariaDB/MySQL, and READ COMMITTED isolation on MariaDB/MySQL).
            Not allowed with an engine.

    Raises:
        ConfigurationError: The URL, driver, prefix or schema is not supported.
    """

    def __init__(
        self,
        url_or_engine: str | URL | AsyncEngine,
        *,
        table_prefix: str = DEFAULT_TABLE_PREFIX,
        schema: str | None = None,
        migrate: bool = True,
        **engine_options: Any,
    ) -> None:
        self._tables: Tables = build_tables(table_prefix, schema)
        if isinstance(url_or_engine, AsyncEngine):
            if engine_options:
                raise ConfigurationError(
                    f"engine options {sorted(engine_options)} cannot be applied to an"
                    " existing engine: pass them to create_async_engine instead"
                )
            parse_database_url(url_or_engine.url)
            url = url_or_engine.url
        else:
            url = parse_database_url(url_or_engine)
        self._target = describe_target(url)
        self._backend = self._target.backend
        if schema is not None and self._backend is Backend.SQLITE:
            raise ConfigurationError(
                f"schema={schema!r} is not supported on SQLite: use table_prefix,"
                " or a separate database file"
            )

        if isinstance(url_or_engine, AsyncEngine):
            self._engine = url_or_engine
            self._owns_engine = False
            if self._backend is Backend.SQLITE:
                install_sqlite_hooks(url_or_engine)
        else:
            self._engine = create_engine(url, **engine_options)
            self._owns_engine = True
        # The LISTEN connection is opened outside the pool, so it needs the
        # caller's connect_args (SSL settings, for example) separately.
        self._connect_args: dict[str, Any] = dict(
            engine_options.get("connect_args", {})
        )

        self._table_prefix = table_prefix
        self._schema = schema
        self._migrate = migrate
        self._channel = channel_name(table_prefix, schema)
        # The quoted, schema-qualified jobs table, for the asyncpg statements.
        self._jobs_table_sql = self._engine.dialect.identifier_preparer.format_table(
            self._tables.jobs
        )
        self._callbacks: list[Callable[[], None]] = []
        self._sqlite_writes = asyncio.Lock()
        self._listener: PostgresListener | None = None
        self._started = False

    def __repr__(self) -> str:
        return (
            f"SqlStorage({self._target.safe_url!r},"
            f" table_prefix={self._table_prefix!r}, schema={self._schema!r})"
        )

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine this storage runs its statements on."""
        return self._engine

    @property
    def tables(self) -> Tables:
        """The tables this storage reads and writes."""
        return self._tables

    # Lifecycle

    async def start(self) -> None:
        """Create or upgrade the tables (or, with ``migrate=False``, check them).

        With listeners registered on PostgreSQL, this also opens the LISTEN
        connection and returns after its first connection attempt.

        Raises:
            StorageUnavailableError: The database cannot be reached.
            SchemaError: The tables are missing or outdated and
                ``migrate=False``, or a newer fantasma migrated them.
        """
        check_sqlite_directory(self._engine.url, self._target)
        # A lock belongs to the event loop it first waited on, and a storage
        # may be started again under another loop.
        self._sqlite_writes = asyncio.Lock()
        if self._migrate:
            await migrate_engine(
                self._engine,
                table_prefix=self._table_prefix,
                schema=self._schema,
                target=self._target,
            )
        else:
            await check_schema(
                self._engine,
                table_prefix=self._table_prefix,
                schema=self._schema,
                target=self._target,
            )
        self._started = True
        if self._callbacks and self._backend is Backend.POSTGRESQL:
            listener = self._ensure_listener()
            await listener.wait_first_attempt()
        logger.debug("storage started on %s", self._target.description)

    async def close(self) -> None:
        self._started = False
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stop()
        if self._owns_engine:
            await self._engine.dispose()

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` from the event loop whenever jobs may have become due.

        On PostgreSQL the callback also fires for changes made by other
        processes, through LISTEN/NOTIFY. On SQLite and MariaDB/MySQL it only
        fires for changes made through this storage object.
        """
        self._callbacks.append(callback)
        if self._backend is Backend.POSTGRESQL and self._started:
            self._ensure_listener()

    def _ensure_listener(self) -> PostgresListener:
        from fantasma.storage.sql.notify import PostgresListener

        if self._listener is None:
            _, options = self._engine.dialect.create_connect_args(self._engine.url)
            options.update(self._connect_args)
            self._listener = PostgresListener(
                connect_options=options,
                channel=self._channel,
                on_notify=self._run_callbacks,
                description=self._target.description,
            )
        self._listener.start()
        return self._listener

    def _run_callbacks(self) -> None:
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:
                logger.exception("storage listener %r failed", callback)

    @contextlib.asynccontextmanager
    async def _transaction(
        self, operation: str, *, write: bool, single_statement: bool = False
    ) -> AsyncIterator[AsyncConnection]:
        """Run the block in one transaction, translating driver errors.

        With ``single_statement=True`` the caller promises that the block
        runs one statement on PostgreSQL, which then runs in autocommit mode.
        A lone statement is atomic by itself, and autocommit saves the BEGIN
        and COMMIT round trips.

        NOTE: a connection lost during COMMIT raises StorageUnavailableError
        even though the server may have committed the transaction.
        """
        try:
            async with (
                self._write_lock(write),
                self._engine.connect() as connection,
            ):
                if single_statement and self._backend is Backend.POSTGRESQL:
                    await connection.execution_options(isolation_level="AUTOCOMMIT")
                if write and self._backend is Backend.SQLITE:
                    # Taking the write lock at BEGIN makes concurrent writers
                    # queue on the busy timeout. A deferred transaction that
                    # read first would fail with SQLITE_BUSY on its first write.
                    await connection.execution_options(
                        **{SQLITE_BEGIN_OPTION: "IMMEDIATE"}
                    )
                async with connection.begin():
                    yield connection
        except FantasmaError:
            raise
        except DRIVER_ERRORS as exc:
            raise translate_error(
                exc, operation=operation, target=self._target
            ) from exc

    def _write_lock(self, write: bool) -> contextlib.AbstractAsyncContextManager[Any]:
        """Return the lock that queues this process's SQLite writers, if needed.

        SQLite's busy handler retries a locked database after sleeps of 1 ms
        and longer, so writers of one process wait for each other here,
        where the next one starts as soon as the previous one commits.
        Writers in other processes still queue on the busy timeout.
        """
        if write and self._backend is Backend.SQLITE:
            return self._sqlite_writes
        return contextlib.nullcontext()

    async def _send_notification(self, connection: AsyncConnection) -> None:
        """Queue a NOTIFY that PostgreSQL delivers when the transaction commits."""
        if self._backend is Backend.POSTGRESQL:
            await connection.execute(select(func.pg_notify(self._channel, "")))

    def _notify_local(self) -> None:
        """Wake this process's listeners after a commit, where no NOTIFY does it."""
        if self._backend is not Backend.POSTGRESQL:
            self._run_callbacks()

    # Jobs

    async def add_jobs(self, jobs: Sequence[Job]) -> list[JobId]:
        if not jobs:
            return []
        ids = [job.id for job in jobs]
        if len(set(ids)) != len(ids):
            raise StorageError("cannot add jobs: the batch contains the same id twice")
        for job in jobs:
            _check_aware(job)
        keyed = any(
            job.recurring_id is not None and job.fire_time is not None for job in jobs
        )
        if self._backend is Backend.SQLITE and len(jobs) == 1 and not keyed:
            # One call to the connection's thread in place of Core's several.
            async with self._sqlite_write("add_jobs") as driver:
                await driver.execute_fetchall(
                    hot_path.sqlite_insert_one(self._jobs_table_sql),
                    hot_path.sqlite_job_values(jobs[0]),
                )
            self._notify_local()
            return list(ids)
        if self._backend is Backend.POSTGRESQL and not keyed:
            if len(jobs) == 1:
                # One statement beats COPY's several round trips for one row.
                async with self._asyncpg_connection("add_jobs") as driver:
                    await driver.execute(
                        hot_path.postgres_insert_one(self._jobs_table_sql),
                        *_job_values(jobs[0]),
                        self._channel,
                    )
            else:
                await self._copy_jobs(jobs)
            return list(ids)
        async with self._transaction("add_jobs", write=True) as connection:
            inserted = await self._insert_jobs(connection, jobs)
            if inserted:
                await self._send_notification(connection)
        if inserted:
            self._notify_local()
        return inserted

    async def _copy_jobs(self, jobs: Sequence[Job]) -> None:
        """Insert jobs without occurrence keys on PostgreSQL with COPY.

        In a measurement on PostgreSQL 15, binary COPY inserted about twice as
        fast as INSERT ... SELECT FROM unnest(...). No row can be skipped, so
        no ids need to come back. COPY runs on the asyncpg connection under
        SQLAlchemy's pooled connection, in an asyncpg transaction of its own.
        """
        records = [_job_values(job) for job in jobs]
        table = self._tables.jobs
        async with (
            self._asyncpg_connection("add_jobs") as driver,
            driver.transaction(),
        ):
            await driver.copy_records_to_table(
                table.name,
                records=records,
                columns=JOB_COLUMNS,
                schema_name=self._schema,
            )
            await driver.execute("SELECT pg_notify($1, '')", self._channel)

    @contextlib.asynccontextmanager
    async def _asyncpg_connection(
        self, operation: str
    ) -> AsyncIterator[asyncpg.Connection]:
        """Yield the asyncpg connection under a pooled one, translating driver errors.

        Statements on it run outside SQLAlchemy, each in a transaction of
        its own unless the block opens one.
        """
        try:
            async with self._engine.connect() as connection:
                raw = await connection.get_raw_connection()
                driver = raw.driver_connection
                if driver is None:
                    raise StorageError(
                        f"{operation} failed: the pooled connection is closed"
                    )
                try:
                    yield driver
                except DRIVER_ERRORS:
                    if driver.is_closed():
                        # The pool cannot see errors raised outside
                        # SQLAlchemy, so drop the dead connection here.
                        await connection.invalidate()
                    raise
        except FantasmaError:
            raise
        except DRIVER_ERRORS as exc:
            raise translate_error(
                exc, operation=operation, target=self._target
            ) from exc

    @contextlib.asynccontextmanager
    async def _sqlite_write(
        self, operation: str
    ) -> AsyncIterator[aiosqlite.Connection]:
        """Yield the aiosqlite connection under a pooled one, in a write transaction.

        The block runs between BEGIN IMMEDIATE and COMMIT, each one call to
        the connection's thread, and is rolled back if it raises. Driver
        errors are translated as in :meth:`_transaction`.
        """
        try:
            async with (
                self._write_lock(write=True),
                self._engine.connect() as connection,
            ):
                raw = await connection.get_raw_connection()
                driver = raw.driver_connection
                if driver is None:
                    raise StorageError(
                        f"{operation} failed: the pooled connection is closed"
                    )
                await driver.execute_fetchall("BEGIN IMMEDIATE")
                try:
                    yield driver
                except BaseException:
                    await driver.rollback()
                    raise
                await driver.commit()
        except FantasmaError:
            raise
        except DRIVER_ERRORS as exc:
            raise translate_error(
                exc, operation=operation, target=self._target
            ) from exc

    async def _insert_jobs(
        self, connection: AsyncConnection, jobs: Sequence[Job]
    ) -> list[JobId]:
        """Insert ``jobs`` and return the ids inserted.

        A job whose occurrence key exists is skipped.
        """
        table = self._tables.jobs
        rows = [job_to_row(job) for job in jobs]
        keyed = [
            job.id
            for job in jobs
            if job.recurring_id is not None and job.fire_time is not None
        ]
        if self._backend is Backend.POSTGRESQL:
            statement = _postgres_bulk_insert(
                table, rows, ignore_occurrences=bool(keyed)
            )
            if not keyed:
                await connection.execute(statement)
                return [job.id for job in jobs]
            result = await connection.execute(statement.returning(table.c.id))
            returned = set(result.scalars())
            return [job.id for job in jobs if job.id in returned]
        if not keyed:
            await connection.execute(table.insert(), rows)
            return [job.id for job in jobs]
        if self._backend is Backend.MYSQL:
            # MariaDB's duplicate-key clause also swallows a duplicate id, so
            # ids are checked first. The check and the insert share the
            # transaction. A concurrent insert of the same random id could
            # still slip between them.
            existing = await self._existing_ids(connection, [job.id for job in jobs])
            if existing:
                raise StorageError(
                    f"cannot add job {min(existing)!r}: a job with this id exists"
                )
        await connection.execute(
            self._insert_ignoring(
                table, ["recurring_id", "fire_time"], OCCURRENCE_KEY_WHERE
            ),
            rows,
        )
        present = await self._existing_ids(connection, keyed)
        skipped = set(keyed) - present
        return [job.id for job in jobs if job.id not in skipped]

    async def _existing_ids(
        self, connection: AsyncConnection, ids: Sequence[str]
    ) -> set[str]:
        table = self._tables.jobs
        found: set[str] = set()
        for chunk in _chunks(ids, _IN_LIST_CHUNK):
            result = await connection.execute(
                select(table.c.id).where(table.c.id.in_(chunk))
            )
            found.update(result.scalars())
        return found

    def _insert_ignoring(
        self, table: Table, key: list[str], where: TextClause | None = None
    ) -> Insert:
        """Return an INSERT that skips rows whose ``key`` duplicates a stored row.

        Other constraint violations still raise, except on MariaDB/MySQL,
        whose duplicate-key clause covers every unique key.
        """
        if self._backend is Backend.POSTGRESQL:
            return postgresql.insert(table).on_conflict_do_nothing(
                index_elements=key, index_where=where
            )
        if self._backend is Backend.SQLITE:
            return sqlite.insert(table).on_conflict_do_nothing(
                index_elements=key, index_where=where
            )
        # Assigning a column to itself changes nothing in the stored row.
        return mysql.insert(table).on_duplicate_key_update({key[0]: table.c[key[0]]})

    def _upsert(
        self, table: Table, row: dict[str, Any], key: str, update_columns: Iterable[str]
    ) -> Insert:
        """Return an INSERT of ``row`` that updates ``update_columns`` on conflict."""
        if self._backend is Backend.MYSQL:
            mysql_insert = mysql.insert(table).values(row)
            return mysql_insert.on_duplicate_key_update(
                {column: mysql_insert.inserted[column] for column in update_columns}
            )
        dialect_insert = (
            postgresql.insert(table)
            if self._backend is Backend.POSTGRESQL
            else sqlite.insert(table)
        ).values(row)
        return dialect_insert.on_conflict_do_update(
            index_elements=[key],
            set_={column: dialect_insert.excluded[column] for column in update_columns},
        )

    async def get_job(self, job_id: JobId) -> Job | None:
        table = self._tables.jobs
        async with self._transaction("get_job", write=False) as connection:
            result = await connection.execute(select(table).where(table.c.id == job_id))
            row = result.mappings().first()
        return None if row is None else job_from_row(row)

    async def list_jobs(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        name: str | None = None,
        recurring_id: str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        table = self._tables.jobs
        query = select(table).order_by(table.c.due_at, table.c.seq)
        if statuses is not None:
            query = query.where(
                table.c.status.in_([JobStatus(s).value for s in statuses])
            )
        if name is not None:
            query = query.where(table.c.name == name)
        if recurring_id is not None:
            query = query.where(table.c.recurring_id == recurring_id)
        if limit is not None:
            query = query.limit(max(limit, 0))
        async with self._transaction("list_jobs", write=False) as connection:
            result = await connection.execute(query)
            return [job_from_row(row) for row in result.mappings()]

    async def cancel_job(self, job_id: JobId, *, now: datetime) -> bool:
        table = self._tables.jobs
        statement = (
            update(table)
            .where(table.c.id == job_id, table.c.status.in_(_CLAIMABLE))
            .values(status=JobStatus.CANCELLED.value, finished_at=now)
        )
        async with self._transaction("cancel_job", write=True) as connection:
            cancelled = (await connection.execute(statement)).rowcount == 1
            if cancelled:
                # Workers sleeping until this job's due time can recompute
                # their next wake-up.
                await self._send_notification(connection)
        if cancelled:
            self._notify_local()
        return cancelled

    async def claim_jobs(
        self, *, node_id: str, now: datetime, limit: int, lease_until: datetime
    ) -> list[Job]:
        if limit <= 0:
            return []
        if self._backend is Backend.POSTGRESQL:
            async with self._asyncpg_connection("claim_jobs") as driver:
                records = await driver.fetch(
                    hot_path.postgres_claim(self._jobs_table_sql, limit),
                    node_id,
                    _aware(lease_until, "claim_jobs"),
                    _aware(now, "claim_jobs"),
                )
            records.sort(key=lambda record: (record["due_at"], record["seq"]))
            return [hot_path.job_from_postgres(record) for record in records]
        if self._backend is Backend.SQLITE:
            async with self._sqlite_write("claim_jobs") as driver:
                claimed_rows = await driver.execute_fetchall(
                    hot_path.sqlite_claim(self._jobs_table_sql, limit),
                    (
                        node_id,
                        _sqlite_time(lease_until, "claim_jobs"),
                        _sqlite_time(now, "claim_jobs"),
                    ),
                )
            # A claimed row starts with seq, the tie-breaker of the order.
            claimed = sorted(
                ((row[0], hot_path.job_from_sqlite(row)) for row in claimed_rows),
                key=lambda pair: (pair[1].due_at, pair[0]),
            )
            return [job for _, job in claimed]
        table = self._tables.jobs
        values = {
            "status": JobStatus.RUNNING.value,
            "lease_owner": node_id,
            "lease_expires_at": lease_until,
            "started_at": now,
            "attempts": table.c.attempts + 1,
        }
        async with self._transaction(
            "claim_jobs", write=True, single_statement=True
        ) as connection:
            candidates: Select[Any] | list[int]
            if self._backend is Backend.MYSQL:
                candidates = await self._lock_claimable_mysql(connection, now, limit)
            else:
                # PostgreSQL locks rows after sorting, as the LIMIT takes
                # them, and skips rows other claims hold. SQLite ignores
                # FOR UPDATE, because its BEGIN IMMEDIATE already excludes
                # other writers. The limit is rendered as a literal because a
                # generic plan of the prepared statement would guess the
                # row count and may scan the whole table in the UPDATE.
                candidates = (
                    select(table.c.seq)
                    .where(CLAIMABLE_WHERE, table.c.due_at <= now)
                    .order_by(table.c.due_at, table.c.seq)
                    .limit(bindparam("claim_limit", limit, literal_execute=True))
                    .with_for_update(skip_locked=True)
                )
            rows = await self._update_returning(connection, candidates, values)
        return [job_from_row(row._mapping) for row in rows]

    async def _lock_claimable_mysql(
        self, connection: AsyncConnection, now: datetime, limit: int
    ) -> list[int]:
        """Lock up to ``limit`` claimable jobs on MariaDB/MySQL and return their seqs.

        InnoDB locks every row a locking read examines, and a sorted read
        examines all due rows before its LIMIT applies, so one claim would
        lock the whole backlog and leave nothing to concurrent claims.
        Instead, plain reads find candidates in index order, one status at a
        time, and a locking read by primary key takes exactly those that no
        other claim holds. Candidates that others hold are skipped, and the
        loop reads the next ones until ``limit`` are locked or none are left.
        """
        table = self._tables.jobs
        locked: list[int] = []
        after: tuple[datetime, int] | None = None
        while len(locked) < limit:
            remaining = limit - len(locked)
            candidates: list[tuple[datetime, int]] = []
            for status in _CLAIMABLE:
                query = select(table.c.due_at, table.c.seq).where(
                    table.c.status == status, table.c.due_at <= now
                )
                if after is not None:
                    query = query.where(
                        or_(
                            table.c.due_at > after[0],
                            and_(table.c.due_at == after[0], table.c.seq > after[1]),
                        )
                    )
                query = query.order_by(table.c.due_at, table.c.seq).limit(remaining)
                result = await connection.execute(query)
                candidates.extend((due_at, seq) for due_at, seq in result)
            if not candidates:
                break
            candidates.sort()
            candidates = candidates[:remaining]
            after = candidates[-1]
            # Through any other index, the locking read would lock (briefly)
            # rows it does not take, and concurrent claims would skip them.
            lock = (
                select(table.c.seq)
                .where(
                    table.c.seq.in_([seq for _, seq in candidates]),
                    CLAIMABLE_WHERE,
                    table.c.due_at <= now,
                )
                .with_hint(table, "FORCE INDEX (PRIMARY)", "mysql")
                .with_hint(table, "FORCE INDEX (PRIMARY)", "mariadb")
                .with_for_update(skip_locked=True)
            )
            locked.extend((await connection.execute(lock)).scalars())
        return locked

    async def _update_returning(
        self,
        connection: AsyncConnection,
        candidates: Select[Any] | list[int],
        values: dict[str, Any],
    ) -> list[Row[Any]]:
        """Update the job rows that ``candidates`` names by ``seq`` and return them.

        ``candidates`` is a query that locks its rows (``FOR UPDATE``), or
        the seqs of rows already locked, so that the rows cannot change
        between the selection and the update. The rows come back updated,
        ordered by ``due_at`` then ``seq``.
        """
        table = self._tables.jobs
        if self._backend is not Backend.MYSQL:
            statement = (
                update(table)
                .where(table.c.seq.in_(candidates))
                .values(values)
                .returning(*table.c)
            )
            rows = list((await connection.execute(statement)).all())
        else:
            # MariaDB has no UPDATE ... RETURNING, and rejects LIMIT in an
            # IN (...) subquery, so the locked seqs make the round trip.
            if isinstance(candidates, list):
                seqs = candidates
            else:
                seqs = list((await connection.execute(candidates)).scalars())
            if not seqs:
                return []
            await connection.execute(
                update(table).where(table.c.seq.in_(seqs)).values(values)
            )
            result = await connection.execute(
                select(table).where(table.c.seq.in_(seqs))
            )
            rows = list(result.all())
        rows.sort(key=lambda row: (row.due_at, row.seq))
        return rows

    async def extend_job_leases(
        self, *, node_id: str, job_ids: Collection[JobId], lease_until: datetime
    ) -> set[JobId]:
        if not job_ids:
            return set()
        table = self._tables.jobs
        extended: set[JobId] = set()
        async with self._transaction("extend_job_leases", write=True) as connection:
            for chunk in _chunks(list(job_ids), _IN_LIST_CHUNK):
                # Locking in seq order, as finish_jobs does, keeps the two
                # from deadlocking over the same running jobs (within one
                # chunk, so up to _IN_LIST_CHUNK jobs).
                candidates = (
                    select(table.c.seq)
                    .where(
                        table.c.id.in_(chunk),
                        table.c.status == JobStatus.RUNNING.value,
                        table.c.lease_owner == node_id,
                    )
                    .order_by(table.c.seq)
                    .with_for_update()
                )
                rows = await self._update_returning(
                    connection, candidates, {"lease_expires_at": lease_until}
                )
                extended.update(JobId(row.id) for row in rows)
        return extended

    async def finish_job(
        self,
        job_id: JobId,
        *,
        node_id: str,
        now: datetime,
        status: JobStatus,
        error: str | None = None,
    ) -> bool:
        values = _finished_values("finish_job", now, status, error)
        if self._backend is Backend.POSTGRESQL:
            finished = await self._finish_postgres(
                "finish_job", [job_id], node_id, now, status, error
            )
            return bool(finished)
        if self._backend is Backend.SQLITE:
            finished = await self._finish_sqlite(
                "finish_job", [job_id], node_id, now, status, error
            )
            return bool(finished)
        async with self._transaction(
            "finish_job", write=True, single_statement=True
        ) as connection:
            result = await connection.execute(
                self._owned_update(job_id, node_id, values)
            )
        return result.rowcount == 1

    async def finish_jobs(
        self,
        job_ids: Collection[JobId],
        *,
        node_id: str,
        now: datetime,
        status: JobStatus,
        error: str | None = None,
    ) -> set[JobId]:
        values = _finished_values("finish_jobs", now, status, error)
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return set()
        if self._backend is Backend.POSTGRESQL:
            return await self._finish_postgres(
                "finish_jobs", ids, node_id, now, status, error
            )
        if self._backend is Backend.SQLITE:
            return await self._finish_sqlite(
                "finish_jobs", ids, node_id, now, status, error
            )
        table = self._tables.jobs
        finished: set[JobId] = set()
        async with self._transaction("finish_jobs", write=True) as connection:
            for chunk in _chunks(ids, _IN_LIST_CHUNK):
                # No UPDATE ... RETURNING on MariaDB: the rows are locked and
                # read first, in seq order so that two batches over the same
                # jobs cannot deadlock, and only those are updated.
                owned = (
                    select(table.c.seq, table.c.id)
                    .where(
                        table.c.id.in_(chunk),
                        table.c.status == JobStatus.RUNNING.value,
                        table.c.lease_owner == node_id,
                    )
                    .order_by(table.c.seq)
                    .with_for_update()
                )
                rows = (await connection.execute(owned)).all()
                if rows:
                    await connection.execute(
                        update(table)
                        .where(table.c.seq.in_([row.seq for row in rows]))
                        .values(values)
                    )
                finished.update(JobId(row.id) for row in rows)
        return finished

    async def _finish_postgres(
        self,
        operation: str,
        job_ids: list[JobId],
        node_id: str,
        now: datetime,
        status: JobStatus,
        error: str | None,
    ) -> set[JobId]:
        async with self._asyncpg_connection(operation) as driver:
            records = await driver.fetch(
                hot_path.postgres_finish(self._jobs_table_sql),
                status.value,
                _aware(now, operation),
                error,
                job_ids,
                node_id,
            )
        return {JobId(record["id"]) for record in records}

    async def _finish_sqlite(
        self,
        operation: str,
        job_ids: list[JobId],
        node_id: str,
        now: datetime,
        status: JobStatus,
        error: str | None,
    ) -> set[JobId]:
        finished: set[JobId] = set()
        finished_at = _sqlite_time(now, operation)
        async with self._sqlite_write(operation) as driver:
            for chunk in _chunks(job_ids, _IN_LIST_CHUNK):
                rows = await driver.execute_fetchall(
                    hot_path.sqlite_finish(self._jobs_table_sql, len(chunk)),
                    (status.value, finished_at, error, node_id, *chunk),
                )
                finished.update(JobId(row[0]) for row in rows)
        return finished

    async def retry_job(
        self,
        job_id: JobId,
        *,
        node_id: str,
        now: datetime,
        due_at: datetime,
        error: str,
    ) -> bool:
        values = {
            "status": JobStatus.FAILED.value,
            "due_at": due_at,
            "lease_owner": None,
            "lease_expires_at": None,
            "last_error": error,
        }
        async with self._transaction("retry_job", write=True) as connection:
            result = await connection.execute(
                self._owned_update(job_id, node_id, values)
            )
            retried = result.rowcount == 1
            if retried:
                await self._send_notification(connection)
        if retried:
            self._notify_local()
        return retried

    def _owned_update(
        self, job_id: JobId, node_id: str, values: dict[str, Any]
    ) -> Update:
        table = self._tables.jobs
        return (
            update(table)
            .where(
                table.c.id == job_id,
                table.c.status == JobStatus.RUNNING.value,
                table.c.lease_owner == node_id,
            )
            .values(values)
        )

    async def requeue_expired_jobs(self, *, now: datetime) -> list[JobId]:
        table = self._tables.jobs
        candidates = (
            select(table.c.seq)
            .where(RUNNING_WHERE, table.c.lease_expires_at <= now)
            .with_for_update(skip_locked=True)
        )
        used_up = table.c.attempts >= table.c.max_attempts
        # A typed literal, so that the datetime goes through UTCDateTime's
        # conversion inside the CASE expressions.
        now_value = literal(now, type_=table.c.due_at.type)
        values = {
            "status": case(
                (used_up, JobStatus.DEAD.value), else_=JobStatus.SCHEDULED.value
            ),
            "due_at": case((used_up, table.c.due_at), else_=now_value),
            "finished_at": case((used_up, now_value), else_=table.c.finished_at),
            "lease_owner": None,
            "lease_expires_at": None,
            "last_error": LEASE_EXPIRED_ERROR,
        }
        async with self._transaction("requeue_expired_jobs", write=True) as connection:
            rows = await self._update_returning(connection, candidates, values)
            if rows:
                await self._send_notification(connection)
        if rows:
            self._notify_local()
        rows.sort(key=lambda row: row.seq)
        return [JobId(row.id) for row in rows]

    async def next_due_at(self) -> datetime | None:
        table = self._tables.jobs
        query = select(func.min(table.c.due_at)).where(CLAIMABLE_WHERE)
        async with self._transaction(
            "next_due_at", write=False, single_statement=True
        ) as connection:
            value: datetime | None = await connection.scalar(query)
        return value

    # Recurring jobs

    async def put_recurring(self, recurring: RecurringJob) -> None:
        table = self._tables.recurring_jobs
        row = recurring_to_row(recurring)
        statement = self._upsert(table, row, "id", [c for c in row if c != "id"])
        async with self._transaction("put_recurring", write=True) as connection:
            await connection.execute(statement)

    async def get_recurring(self, recurring_id: str) -> RecurringJob | None:
        table = self._tables.recurring_jobs
        async with self._transaction("get_recurring", write=False) as connection:
            result = await connection.execute(
                select(table).where(table.c.id == recurring_id)
            )
            row = result.mappings().first()
        return None if row is None else recurring_from_row(row)

    async def list_recurring(self) -> list[RecurringJob]:
        table = self._tables.recurring_jobs
        async with self._transaction("list_recurring", write=False) as connection:
            result = await connection.execute(select(table))
            recurring = [recurring_from_row(row) for row in result.mappings()]
        # Sorted here, because the database's collation may order ids
        # differently from Python's code point order.
        recurring.sort(key=lambda item: (item.next_fire_at, item.id))
        return recurring

    async def remove_recurring(self, recurring_id: str) -> bool:
        table = self._tables.recurring_jobs
        async with self._transaction("remove_recurring", write=True) as connection:
            result = await connection.execute(
                delete(table).where(table.c.id == recurring_id)
            )
        return result.rowcount == 1

    async def active_recurring_ids(self) -> set[str]:
        table = self._tables.jobs
        # NOTE: this reads every stored occurrence, finished ones included,
        # through the occurrence-key index, so it slows down as history grows.
        query = (
            select(table.c.recurring_id)
            .where(OCCURRENCE_KEY_WHERE, table.c.status.in_(_ACTIVE))
            .distinct()
        )
        async with self._transaction("active_recurring_ids", write=False) as connection:
            return set((await connection.execute(query)).scalars())

    async def materialise_occurrence(
        self,
        *,
        lease: LeaderLease,
        now: datetime,
        recurring_id: str,
        expected_next_fire_at: datetime,
        occurrence: Job | None,
        next_fire_at: datetime,
    ) -> bool:
        recurring = self._tables.recurring_jobs
        inserted = False
        async with self._transaction(
            "materialise_occurrence", write=True
        ) as connection:
            # Locking the leader row first makes a takeover wait until this
            # transaction ends, so a deposed leader cannot enqueue afterwards.
            current = await self._lock_leader(connection)
            if current is None or (current.holder, current.term) != (
                lease.holder,
                lease.term,
            ):
                return False
            if now >= current.expires_at:
                return False
            stored = await connection.scalar(
                select(recurring.c.next_fire_at)
                .where(recurring.c.id == recurring_id)
                .with_for_update()
            )
            if stored is None or stored != expected_next_fire_at:
                return False
            if occurrence is not None:
                inserted = bool(await self._insert_jobs(connection, [occurrence]))
                if inserted:
                    await self._send_notification(connection)
            await connection.execute(
                update(recurring)
                .where(recurring.c.id == recurring_id)
                .values(next_fire_at=next_fire_at)
            )
        if inserted:
            self._notify_local()
        return True

    # Cluster

    async def _lock_leader(self, connection: AsyncConnection) -> LeaderLease | None:
        table = self._tables.leader
        result = await connection.execute(
            select(table).where(table.c.name == LEADER_ROW_NAME).with_for_update()
        )
        row = result.mappings().first()
        return None if row is None else lease_from_row(row)

    async def acquire_leadership(
        self, *, node_id: str, now: datetime, until: datetime
    ) -> LeaderLease | None:
        table = self._tables.leader
        async with self._transaction("acquire_leadership", write=True) as connection:
            current = await self._lock_leader(connection)
            if current is None:
                # A placeholder that is already expired, so the code below
                # takes it over with term 1. Racing nodes both try to insert
                # it, and the loser waits for the winner's row and then
                # finds it held.
                placeholder = {
                    "name": LEADER_ROW_NAME,
                    "holder": node_id,
                    "term": 0,
                    "expires_at": _RELEASED_EXPIRY,
                }
                await connection.execute(
                    self._insert_ignoring(table, ["name"]), [placeholder]
                )
                current = await self._lock_leader(connection)
                if current is None:
                    raise StorageError(
                        "acquire_leadership failed: the leader row is missing"
                        " right after its insert"
                    )
            if now < current.expires_at:
                if current.holder != node_id:
                    return None
                lease = LeaderLease(node_id, current.term, until)
            else:
                lease = LeaderLease(node_id, current.term + 1, until)
            await connection.execute(
                update(table)
                .where(table.c.name == LEADER_ROW_NAME)
                .values(
                    holder=lease.holder, term=lease.term, expires_at=lease.expires_at
                )
            )
        return lease

    async def renew_leadership(
        self, lease: LeaderLease, *, now: datetime, until: datetime
    ) -> LeaderLease | None:
        table = self._tables.leader
        statement = (
            update(table)
            .where(
                table.c.name == LEADER_ROW_NAME,
                table.c.holder == lease.holder,
                table.c.term == lease.term,
                table.c.expires_at > now,
            )
            .values(expires_at=until)
        )
        async with self._transaction("renew_leadership", write=True) as connection:
            renewed = (await connection.execute(statement)).rowcount == 1
        return LeaderLease(lease.holder, lease.term, until) if renewed else None

    async def release_leadership(self, lease: LeaderLease) -> None:
        table = self._tables.leader
        # The term stays, so the next holder still gets a larger one.
        statement = (
            update(table)
            .where(
                table.c.name == LEADER_ROW_NAME,
                table.c.holder == lease.holder,
                table.c.term == lease.term,
            )
            .values(expires_at=_RELEASED_EXPIRY)
        )
        async with self._transaction("release_leadership", write=True) as connection:
            await connection.execute(statement)

    async def get_leader(self) -> LeaderLease | None:
        table = self._tables.leader
        async with self._transaction("get_leader", write=False) as connection:
            result = await connection.execute(
                select(table).where(table.c.name == LEADER_ROW_NAME)
            )
            row = result.mappings().first()
        return None if row is None else lease_from_row(row)

    async def heartbeat(self, *, node_id: str, now: datetime) -> None:
        table = self._tables.nodes
        row = {"node_id": node_id, "started_at": now, "last_seen_at": now}
        statement = self._upsert(table, row, "node_id", ["last_seen_at"])
        async with self._transaction("heartbeat", write=True) as connection:
            await connection.execute(statement)

    async def list_nodes(self) -> list[NodeInfo]:
        table = self._tables.nodes
        async with self._transaction("list_nodes", write=False) as connection:
            result = await connection.execute(select(table))
            nodes = [node_from_row(row) for row in result.mappings()]
        nodes.sort(key=lambda node: node.node_id)
        return nodes

    async def remove_node(self, node_id: str) -> None:
        table = self._tables.nodes
        async with self._transaction("remove_node", write=True) as connection:
            await connection.execute(delete(table).where(table.c.node_id == node_id))


_job_values = operator.attrgetter(*JOB_COLUMNS)


def _finished_values(
    operation: str, now: datetime, status: JobStatus, error: str | None
) -> dict[str, Any]:
    """Return the column values of a job that ends with ``status`` at ``now``."""
    if status not in (JobStatus.SUCCEEDED, JobStatus.DEAD):
        raise ValueError(f"{operation} takes succeeded or dead, got {status!r}")
    values: dict[str, Any] = {
        "status": status.value,
        "finished_at": now,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if error is not None:
        values["last_error"] = error
    return values


def _aware(value: datetime, operation: str) -> datetime:
    """Return ``value`` after checking that it is aware, as UTCDateTime does.

    asyncpg would read a naive datetime as UTC. The error is the one the
    Core path raises, where SQLAlchemy wraps UTCDateTime's ValueError.
    """
    if value.utcoffset() is None:
        raise StorageError(
            f"{operation} failed: naive datetime {value.isoformat()} cannot be"
            " stored: pass an aware datetime in UTC"
        )
    return value


def _sqlite_time(value: datetime, operation: str) -> str:
    return hot_path.sqlite_time(_aware(value, operation))


def _check_aware(job: Job) -> None:
    """Raise ``ValueError`` if ``job`` has a naive datetime.

    Checked before any statement runs, because the COPY path on PostgreSQL
    bypasses :class:`UTCDateTime`, which rejects them on the other paths.
    """
    for value in (
        job.due_at,
        job.created_at,
        job.fire_time,
        job.lease_expires_at,
        job.started_at,
        job.finished_at,
    ):
        if value is not None and value.utcoffset() is None:
            raise ValueError(
                f"job {job.id!r} has naive datetime {value.isoformat()}:"
                " pass aware datetimes in UTC"
            )


def _postgres_bulk_insert(
    table: Table, rows: Sequence[dict[str, Any]], *, ignore_occurrences: bool
) -> postgresql.Insert:
    """Return one INSERT ... SELECT FROM unnest(...) statement for every row.

    One array parameter per column keeps the statement text, and so
    asyncpg's prepared statement, the same for any batch size, and the whole
    batch travels in one round trip.
    """
    arrays = [
        bindparam(
            f"{column}_values",
            [row[column] for row in rows],
            type_=postgresql.ARRAY(table.c[column].type),
        )
        for column in JOB_COLUMNS
    ]
    source = (
        func.unnest(*arrays)
        .table_valued(*JOB_COLUMNS, with_ordinality="position")
        .render_derived()
    )
    # Ordering by array position gives seq values in batch order.
    rows_query = select(*(source.c[column] for column in JOB_COLUMNS)).order_by(
        source.c.position
    )
    statement = postgresql.insert(table).from_select(list(JOB_COLUMNS), rows_query)
    if ignore_occurrences:
        statement = statement.on_conflict_do_nothing(
            index_elements=["recurring_id", "fire_time"],
            index_where=OCCURRENCE_KEY_WHERE,
        )
    return statement


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
