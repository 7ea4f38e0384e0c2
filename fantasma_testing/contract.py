"""Contract tests that every :class:`~fantasma.storage.base.Storage` backend must pass.

Subclass :class:`StorageContract` in a test module, name the subclass so that
pytest collects it (``Test...``), mark it for your async plugin and define a
``storage`` fixture::

    import pytest
    import pytest_asyncio

    from fantasma_testing.contract import StorageContract


    class TestMyStorage(StorageContract):
        pytestmark = pytest.mark.asyncio

        @pytest_asyncio.fixture
        async def storage(self):
            storage = MyStorage()
            await storage.start()
            yield storage
            await storage.close()

The tests are ``async def`` methods and run on the event loop of whichever
plugin marks them (pytest-asyncio or anyio), the same loop as the ``storage``
fixture. ``docs/storage-contract.md`` describes the hooks and each test group.

Every test drives time through the ``now`` arguments, starting from the fixed
instant :data:`NOW`, and never reads the system clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import types
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest

from fantasma.errors import StorageError, StorageUnavailableError
from fantasma.jobs import (
    Job,
    JobId,
    JobStatus,
    LeaderLease,
    MisfirePolicy,
    NodeInfo,
    RecurringJob,
    new_job_id,
)
from fantasma.storage.base import Storage

__all__ = [
    "LEASE_DURATION",
    "NOW",
    "SECOND",
    "StorageContract",
    "make_job",
    "make_occurrence",
    "make_recurring",
]

NOW = datetime(2030, 1, 1, tzinfo=UTC)
"""The instant the contract tests use as the current time."""

SECOND = timedelta(seconds=1)

LEASE_DURATION = 30 * SECOND
"""Length of the job and leader leases that the tests take."""

_NODE_A = "node-a"
_NODE_B = "node-b"
_LEADER = "leader-node"
_HOUR = 3600 * SECOND

# Names of the tests that need StorageContract.break_connection. Subclasses
# that do not override the hook get None in their place, which pytest does
# not collect, so the tests are absent rather than skipped.
_CONNECTION_LOSS_TESTS = (
    "test_connection_loss_read_recovers",
    "test_connection_loss_write_all_or_nothing",
)


def make_job(**changes: object) -> Job:
    """Build a ``scheduled`` job due at :data:`NOW` with a fresh id.

    Keyword arguments replace fields of the result, for example
    ``make_job(due_at=NOW + 5 * SECOND, max_attempts=3)``.
    """
    job = Job(
        id=new_job_id(),
        name="contract.job",
        type_name="contract.Payload",
        payload='{"value": 1}',
        status=JobStatus.SCHEDULED,
        due_at=NOW,
        created_at=NOW,
    )
    return job.replace(**changes)


def make_occurrence(recurring_id: str, fire_time: datetime, **changes: object) -> Job:
    """Build the job for one occurrence of ``recurring_id``, due at ``fire_time``.

    Keyword arguments replace fields of the result, as in :func:`make_job`.
    """
    job = make_job(
        name=f"contract.recurring.{recurring_id}",
        recurring_id=recurring_id,
        fire_time=fire_time,
        due_at=fire_time,
    )
    return job.replace(**changes)


def make_recurring(**changes: object) -> RecurringJob:
    """Build a recurring job with id ``contract-recurring``, next firing at :data:`NOW`.

    Keyword arguments replace fields of the result, as in :func:`make_job`.
    """
    recurring = RecurringJob(
        id="contract-recurring",
        name="contract.recurring",
        cron="*/5 * * * *",
        timezone="UTC",
        type_name="contract.Payload",
        payload="{}",
        next_fire_at=NOW,
        created_at=NOW,
        updated_at=NOW,
    )
    return recurring.replace(**changes)


def _ids(jobs: list[Job]) -> list[JobId]:
    return [job.id for job in jobs]


def _ordered_ids(count: int) -> list[JobId]:
    """Return ``count`` valid job ids that sort in reverse of their list order.

    Tests that check insertion order use them, so a backend that orders by id
    instead of by insertion fails.
    """
    return [JobId(f"{count - index:032x}") for index in range(count)]


async def _claim_one(storage: Storage, job: Job, *, node_id: str = _NODE_A) -> Job:
    """Claim ``job`` at its ``due_at`` with a lease of :data:`LEASE_DURATION`.

    Call it while no other claimable job is due at or before ``job.due_at``,
    because it claims the first due job and checks that it is ``job``.
    """
    claimed = await storage.claim_jobs(
        node_id=node_id,
        now=job.due_at,
        limit=1,
        lease_until=job.due_at + LEASE_DURATION,
    )
    assert _ids(claimed) == [job.id], "test setup claimed another job"
    return claimed[0]


async def _add_running(storage: Storage, **changes: object) -> Job:
    """Add a job and claim it as ``node-a``, returning the claimed record."""
    job = make_job(**changes)
    await storage.add_jobs([job])
    return await _claim_one(storage, job)


async def _add_in_status(storage: Storage, status: JobStatus, **changes: object) -> Job:
    """Add a job and drive it to ``status`` through the storage API.

    Statuses past ``scheduled`` claim the job as in :func:`_claim_one`. A
    ``failed`` job is due again one hour after its first ``due_at``.
    """
    job = make_job(**{"max_attempts": 3, **changes})
    await storage.add_jobs([job])
    if status is JobStatus.SCHEDULED:
        pass
    elif status is JobStatus.CANCELLED:
        assert await storage.cancel_job(job.id, now=job.due_at)
    else:
        await _claim_one(storage, job)
        if status is JobStatus.FAILED:
            assert await storage.retry_job(
                job.id,
                node_id=_NODE_A,
                now=job.due_at,
                due_at=job.due_at + _HOUR,
                error="setup failure",
            )
        elif status is not JobStatus.RUNNING:
            assert await storage.finish_job(
                job.id, node_id=_NODE_A, now=job.due_at, status=status
            )
    stored = await storage.get_job(job.id)
    assert stored is not None
    assert stored.status is status, f"test setup left the job {stored.status}"
    return stored


async def _get(storage: Storage, job_id: JobId) -> Job:
    job = await storage.get_job(job_id)
    assert job is not None, f"job {job_id} is missing from storage"
    return job


def _assert_utc(value: datetime | None, field: str) -> None:
    if value is None:
        return
    assert value.tzinfo is not None, f"{field} came back naive: {value!r}"
    assert value.utcoffset() == timedelta(0), f"{field} is not in UTC: {value!r}"


def _copy_test(test: Callable[..., Any], owner: type) -> Callable[..., Any]:
    """Return a copy of the test function ``test`` that belongs to ``owner`` alone.

    Plugins mark test functions in place: anyio adds
    ``usefixtures("anyio_backend")`` to each function of a class marked
    ``anyio``. With a shared function, that mark would reach the subclasses
    that run under pytest-asyncio too, and anyio would run their tests.
    """
    copy = types.FunctionType(
        test.__code__,
        test.__globals__,
        test.__name__,
        test.__defaults__,
        test.__closure__,
    )
    copy.__kwdefaults__ = test.__kwdefaults__
    copy.__annotations__ = test.__annotations__
    copy.__doc__ = test.__doc__
    copy.__module__ = test.__module__
    copy.__qualname__ = f"{owner.__qualname__}.{test.__name__}"
    # The dictionary contains the marks, such as parametrize. Plugins replace
    # the pytestmark list rather than change it, so a shallow copy suffices.
    copy.__dict__.update(test.__dict__)
    return copy


class StorageContract:
    """Tests for the rules of :class:`~fantasma.storage.base.Storage`.

    Subclasses must define a ``storage`` fixture that yields a started, empty
    storage and closes it at teardown, and must be marked for an async
    plugin. Optional hooks:

    - ``other_storage`` fixture: a second, independent storage on the same
      database, so that the concurrency tests race two connections. It
      defaults to ``storage`` itself.
    - :meth:`break_connection`: drops the storage's database connection.
      When a subclass overrides it, the connection loss tests are collected.
      Otherwise they are left out.

    The base class and subclasses that set ``__test__ = False`` in their own
    body are not collected. Every other subclass is.
    """

    __test__: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # The base sets __test__ = False so that pytest does not collect it
        # when a module imports it. Subclasses inherit that value, so reset it
        # unless the subclass decides for itself (an abstract intermediate
        # class, for example).
        if "__test__" not in cls.__dict__:
            cls.__test__ = True
        can_break = cls.break_connection is not StorageContract.break_connection
        for name, base_test in vars(StorageContract).items():
            if not name.startswith("test_") or name in cls.__dict__:
                continue
            if name in _CONNECTION_LOSS_TESTS and not can_break:
                setattr(cls, name, None)
                continue
            # An intermediate class may have hidden a connection test that
            # this subclass supports, so fall back to the base's function.
            inherited = getattr(cls, name) or base_test
            setattr(cls, name, _copy_test(inherited, cls))

    @pytest.fixture
    def other_storage(self, storage: Storage) -> Storage:
        """Provide a second storage on the same data: ``storage`` itself by default.

        Override it with a fixture that opens another instance on the same
        database, so that the concurrency tests race two connections.
        """
        return storage

    @pytest.fixture
    def anyio_backend(self) -> str:
        """Run under asyncio when anyio runs the suite.

        The tests use asyncio.gather, and the backends fantasma ships are
        asyncio-only, so the trio backend is not offered.
        """
        return "asyncio"

    async def break_connection(self, storage: Storage) -> None:
        """Drop the database connection that ``storage`` uses, from outside it.

        Override this in subclasses for backends with a connection. A SQL
        backend can terminate its server-side sessions from an administrative
        connection. The storage must not be notified, so that its next operation
        finds the dead connection.
        """
        raise NotImplementedError

    # Lifecycle

    async def test_restart_after_close(self, storage: Storage) -> None:
        await storage.close()
        await storage.start()
        job = make_job()

        inserted = await storage.add_jobs([job])

        assert inserted == [job.id]
        assert await storage.get_job(job.id) == job

    # Adding and reading jobs

    async def test_add_returns_inserted_ids(self, storage: Storage) -> None:
        jobs = [make_job(), make_job()]

        inserted = await storage.add_jobs(jobs)

        assert inserted == _ids(jobs)

    async def test_add_empty_batch(self, storage: Storage) -> None:
        assert await storage.add_jobs([]) == []

    async def test_job_fields_round_trip(self, storage: Storage) -> None:
        # Every field differs from its default, and every datetime has a
        # different microsecond value, so a lost or swapped column shows.
        job = Job(
            id=new_job_id(),
            name="reports.nightly",
            type_name="reports.NightlyReport",
            payload='{"pages": [1, 2, 3]}',
            status=JobStatus.RUNNING,
            due_at=datetime(2030, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
            created_at=datetime(2029, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            max_attempts=7,
            timeout=0.1,
            attempts=3,
            recurring_id="nightly-report",
            fire_time=datetime(2029, 12, 31, 23, 59, 0, 123456, tzinfo=UTC),
            lease_owner="node-7",
            lease_expires_at=datetime(2030, 1, 1, 0, 0, 30, 654321, tzinfo=UTC),
            started_at=datetime(2030, 1, 1, 0, 0, 0, 500000, tzinfo=UTC),
            finished_at=datetime(2030, 1, 1, 0, 0, 1, 2, tzinfo=UTC),
            last_error="ValueError: page 2 is empty",
        )
        await storage.add_jobs([job])

        stored = await _get(storage, job.id)

        for field in dataclasses.fields(Job):
            expected = getattr(job, field.name)
            actual = getattr(stored, field.name)
            assert actual == expected, (
                f"{field.name}: added {expected!r}, got {actual!r}"
            )

    async def test_job_datetimes_come_back_utc(self, storage: Storage) -> None:
        running = await _add_running(storage, fire_time=NOW, recurring_id="r")
        finished = await _add_in_status(storage, JobStatus.SUCCEEDED)

        for job in (await _get(storage, running.id), await _get(storage, finished.id)):
            for field in dataclasses.fields(Job):
                value = getattr(job, field.name)
                if isinstance(value, datetime):
                    _assert_utc(value, field.name)

    @pytest.mark.parametrize("status", list(JobStatus))
    async def test_job_status_round_trips(
        self, storage: Storage, status: JobStatus
    ) -> None:
        job = make_job(status=status)
        await storage.add_jobs([job])

        stored = await _get(storage, job.id)

        assert stored.status is status

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param("🎉🚀 emoji outside the BMP 🧪", id="emoji"),
            pytest.param("👩‍👩‍👧 joined with zero-width joiners", id="zwj"),
            pytest.param("任务调度 ジョブ 작업", id="cjk"),
            pytest.param("e\u0301 and \u00e9 must stay different", id="combining"),
            pytest.param("שלום مرحبا right to left", id="rtl"),
            pytest.param(
                "quote ' double \" backslash \\ newline \n tab \t", id="escapes"
            ),
        ],
    )
    async def test_unicode_text_round_trips(self, storage: Storage, text: str) -> None:
        payload = json.dumps({"text": text}, ensure_ascii=False)
        job = make_job(name=f"unicode {text}", payload=payload, last_error=text)
        await storage.add_jobs([job])

        stored = await _get(storage, job.id)

        assert stored.payload == payload
        assert stored.name == job.name
        assert stored.last_error == text

    async def test_large_payload_round_trips(self, storage: Storage) -> None:
        # 1 MiB of characters, ending in multi-byte ones so that a truncated
        # or byte-limited column shows.
        prefix, suffix = '{"b":"', 'é€"}'
        body = "x" * (1024 * 1024 - len(prefix) - len(suffix))
        payload = prefix + body + suffix
        job = make_job(payload=payload)
        await storage.add_jobs([job])

        stored = await _get(storage, job.id)

        assert len(stored.payload) == len(payload)
        assert stored.payload == payload

    async def test_get_missing_job_returns_none(self, storage: Storage) -> None:
        await storage.add_jobs([make_job()])

        assert await storage.get_job(new_job_id()) is None

    async def test_add_duplicate_id_raises(self, storage: Storage) -> None:
        job = make_job()
        await storage.add_jobs([job])

        with pytest.raises(StorageError):
            await storage.add_jobs([make_job(id=job.id, name="other")])

        assert await storage.get_job(job.id) == job

    async def test_duplicate_id_in_batch_raises(self, storage: Storage) -> None:
        job = make_job()

        with pytest.raises(StorageError):
            await storage.add_jobs([job, make_job(id=job.id, name="other")])

    async def test_failed_batch_inserts_nothing(self, storage: Storage) -> None:
        existing = make_job()
        await storage.add_jobs([existing])
        fresh = make_job()

        with pytest.raises(StorageError):
            await storage.add_jobs([fresh, make_job(id=existing.id)])

        assert await storage.get_job(fresh.id) is None
        assert await storage.list_jobs() == [existing]

    async def test_add_thousand_jobs_in_order(self, storage: Storage) -> None:
        jobs = [make_job(due_at=NOW + index * SECOND) for index in range(1000)]

        inserted = await storage.add_jobs(jobs)

        assert inserted == _ids(jobs)
        assert _ids(await storage.list_jobs()) == _ids(jobs)

    # Listing jobs

    async def test_list_orders_by_due_at(self, storage: Storage) -> None:
        late = make_job(due_at=NOW + 20 * SECOND)
        early = make_job(due_at=NOW - 10 * SECOND)
        middle = make_job(due_at=NOW)
        await storage.add_jobs([late, early])
        await storage.add_jobs([middle])

        listed = await storage.list_jobs()

        assert _ids(listed) == [early.id, middle.id, late.id]

    async def test_list_ties_keep_insertion_order(self, storage: Storage) -> None:
        first, second, third, fourth = _ordered_ids(4)
        await storage.add_jobs([make_job(id=first), make_job(id=second)])
        await storage.add_jobs([make_job(id=third)])
        await storage.add_jobs([make_job(id=fourth)])

        listed = await storage.list_jobs()

        assert _ids(listed) == [first, second, third, fourth]

    async def test_list_filters_by_statuses(self, storage: Storage) -> None:
        running = await _add_in_status(storage, JobStatus.RUNNING)
        succeeded = await _add_in_status(storage, JobStatus.SUCCEEDED)
        cancelled = await _add_in_status(storage, JobStatus.CANCELLED)
        scheduled = await _add_in_status(storage, JobStatus.SCHEDULED)

        listed = await storage.list_jobs(
            statuses={JobStatus.RUNNING, JobStatus.SCHEDULED}
        )

        assert set(_ids(listed)) == {running.id, scheduled.id}
        assert succeeded.id not in _ids(listed)
        assert cancelled.id not in _ids(listed)

    async def test_list_empty_statuses_matches_nothing(self, storage: Storage) -> None:
        await storage.add_jobs([make_job()])

        assert await storage.list_jobs(statuses=[]) == []

    async def test_list_filters_by_name(self, storage: Storage) -> None:
        matching = make_job(name="emails.send")
        await storage.add_jobs([make_job(name="emails.sender"), matching])
        await storage.add_jobs([make_job(name="Emails.send")])

        listed = await storage.list_jobs(name="emails.send")

        assert _ids(listed) == [matching.id]

    async def test_list_filters_by_recurring_id(self, storage: Storage) -> None:
        first = make_occurrence("hourly", NOW)
        second = make_occurrence("hourly", NOW + _HOUR)
        other = make_occurrence("daily", NOW)
        await storage.add_jobs([second, other, first, make_job()])

        listed = await storage.list_jobs(recurring_id="hourly")

        assert _ids(listed) == [first.id, second.id]

    async def test_list_combines_filters(self, storage: Storage) -> None:
        match = make_occurrence("hourly", NOW, name="report")
        await storage.add_jobs(
            [
                match,
                make_occurrence("hourly", NOW + _HOUR, name="other"),
                make_occurrence("daily", NOW, name="report"),
                make_job(name="report"),
            ]
        )

        listed = await storage.list_jobs(
            statuses=[JobStatus.SCHEDULED], name="report", recurring_id="hourly"
        )

        assert _ids(listed) == [match.id]

    async def test_list_limit_takes_earliest(self, storage: Storage) -> None:
        jobs = [make_job(due_at=NOW + index * SECOND) for index in range(5)]
        await storage.add_jobs(list(reversed(jobs)))

        listed = await storage.list_jobs(limit=2)

        assert _ids(listed) == _ids(jobs[:2])

    async def test_list_limit_zero_is_empty(self, storage: Storage) -> None:
        await storage.add_jobs([make_job()])

        assert await storage.list_jobs(limit=0) == []

    # Cancelling jobs

    @pytest.mark.parametrize("status", [JobStatus.SCHEDULED, JobStatus.FAILED])
    async def test_cancel_claimable_job(
        self, storage: Storage, status: JobStatus
    ) -> None:
        job = await _add_in_status(storage, status)

        cancelled = await storage.cancel_job(job.id, now=NOW)

        assert cancelled is True
        assert (await _get(storage, job.id)).status is JobStatus.CANCELLED

    @pytest.mark.parametrize(
        "status",
        [
            JobStatus.RUNNING,
            JobStatus.SUCCEEDED,
            JobStatus.DEAD,
            JobStatus.CANCELLED,
        ],
    )
    async def test_cancel_rejects_unclaimable_job(
        self, storage: Storage, status: JobStatus
    ) -> None:
        job = await _add_in_status(storage, status)

        cancelled = await storage.cancel_job(job.id, now=NOW)

        assert cancelled is False
        assert await storage.get_job(job.id) == job

    async def test_cancel_missing_job(self, storage: Storage) -> None:
        assert await storage.cancel_job(new_job_id(), now=NOW) is False

    async def test_cancelled_job_not_claimable(self, storage: Storage) -> None:
        job = make_job()
        await storage.add_jobs([job])
        await storage.cancel_job(job.id, now=NOW)

        claimed = await storage.claim_jobs(
            node_id=_NODE_A, now=NOW, limit=10, lease_until=NOW + LEASE_DURATION
        )

        assert claimed == []

    # Claiming jobs

    async def test_claim_empty_storage(self, storage: Storage) -> None:
        claimed = await storage.claim_jobs(
            node_id=_NODE_A, now=NOW, limit=10, lease_until=NOW + LEASE_DURATION
        )

        assert claimed == []

    async def test_claim_skips_future_jobs(self, storage: Storage) -> None:
        due = make_job(due_at=NOW)
        future = make_job(due_at=NOW + datetime.resolution)
        await storage.add_jobs([future, due])

        claimed = await storage.claim_jobs(
            node_id=_NODE_A, now=NOW, limit=10, lease_until=NOW + LEASE_DURATION
        )

        assert _ids(claimed) == [due.id]
        assert (await _get(storage, future.id)).status is JobStatus.SCHEDULED

    @pytest.mark.parametrize(
        "status",
        [
            JobStatus.RUNNING,
            JobStatus.SUCCEEDED,
            JobStatus.DEAD,
            JobStatus.CANCELLED,
        ],
    )
    async def test_claim_skips_unclaimable_statuses(
        self, storage: Storage, status: JobStatus
    ) -> None:
        job = await _add_in_status(storage, status, due_at=NOW - _HOUR)

        claimed = await storage.claim_jobs(
            node_id=_NODE_B, now=NOW, limit=10, lease_until=NOW + LEASE_DURATION
        )

        assert claimed == []
        assert await storage.get_job(job.id) == job

    async def test_claim_orders_by_due_at(self, storage: Storage) -> None:
        jobs = [make_job(due_at=NOW - index * SECOND) for index in range(4)]
        await storage.add_jobs(jobs[:2])
        await storage.add_jobs(jobs[2:])

        claimed = await storage.claim_jobs(
            node_id=_NODE_A, now=NOW, limit=10, lease_until=NOW + LEASE_DURATION
        )

        assert _ids(claimed) == _ids(list(reversed(jobs)))

    async def test_claim_ties_by_insertion_order(self, storage: Storage) -> None:
        first, second, third, fourth = _ordered_ids(4)
        await storage.add_jobs([make_job(id=first), make_job(id=second)])
        await storage.add_jobs([make_job(id=third)])
        await storage.add_jobs([make_job(id=fourth)])

        claimed = await storage.claim_jobs(
            node_id=_NODE_A, now=NOW, limit=10, lease_until=NOW + LEASE_DURATION
        )

        assert _ids(claimed) == [first, second, third, fourth]

    async def test_claim_respects_limit(self, storage: Storage) -> None:
        jobs = [make_job(due_at=NOW - (5 - index) * SECOND) for index in range(5)]
        await storage.add_jobs(jobs)

        first = await storage.claim_jobs(
            node_id=_NODE_A, now=NOW, limit=2, lease_until=NOW + LEASE_DURATION
        )
        second = await storage.claim_jobs(
            node_id=_NODE_B, now=NOW, limit=2, lease_until=NOW + LEASE_DURATION
        )

        assert _ids(first) == _ids(jobs[:2])
        assert _ids(second) == _ids(jobs[2:4])
        assert (await _get(storage, jobs[4].id)).status is JobStatus.SCHEDULED

    async def test_claim_limit_zero_claims_nothing(self, storage: Storage) -> None:
        job = make_job()
        await storage.add_jobs([job])

        claimed = await storage.claim_jobs(
            node_id=_NODE_A, now=NOW, limit=0, lease_until=NOW + LEASE_DURATION
        )

        assert claimed == []
        assert (await _get(storage, job.id)).status is JobStatus.SCHEDULED

    async def test_claim_sets_lease_fields(self, storage: Storage) -> None:
        job = make_job(due_at=NOW - _HOUR, max_attempts=3)
        await storage.add_jobs([job])
        lease_until = NOW + LEASE_DURATION

        [claimed] = await storage.claim_jobs(
            node_id=_NODE_A, now=NOW, limit=1, lease_until=lease_until
        )

        assert claimed.status is JobStatus.RUNNING
        assert claimed.lease_owner == _NODE_A
        assert claimed.lease_expires_at == lease_until
        assert claimed.started_at == NOW
        assert claimed.attempts == 1
        assert claimed.due_at == job.due_at
        assert claimed.payload == job.payload

    async def test_claim_returns_stored_state(self, storage: Storage) -> None:
        job = make_job()
        await storage.add_jobs([job])

        [claimed] = await storage.claim_jobs(
            node_id=_NODE_A, now=NOW, limit=1, lease_until=NOW + LEASE_DURATION
        )

        assert await storage.get_job(job.id) == claimed

    async def test_claimed_job_not_claimed_again(self, storage: Storage) -> None:
        job = make_job()
        await storage.add_jobs([job])
        await _claim_one(storage, job)

        claimed = await storage.claim_jobs(
            node_id=_NODE_B, now=NOW, limit=10, lease_until=NOW + LEASE_DURATION
        )

        assert claimed == []

    async def test_claim_adds_to_existing_attempts(self, storage: Storage) -> None:
        job = make_job(status=JobStatus.FAILED, attempts=2, max_attempts=5)
        await storage.add_jobs([job])

        [claimed] = await storage.claim_jobs(
            node_id=_NODE_A, now=NOW, limit=1, lease_until=NOW + LEASE_DURATION
        )

        assert claimed.attempts == 3

    async def test_failed_job_claimable_when_due(self, storage: Storage) -> None:
        retry_at = NOW + _HOUR
        job = make_job(
            status=JobStatus.FAILED, due_at=retry_at, attempts=1, max_attempts=3
        )
        await storage.add_jobs([job])

        early = await storage.claim_jobs(
            node_id=_NODE_A,
            now=retry_at - SECOND,
            limit=1,
            lease_until=retry_at + LEASE_DURATION,
        )
        due = await storage.claim_jobs(
            node_id=_NODE_A,
            now=retry_at,
            limit=1,
            lease_until=retry_at + LEASE_DURATION,
        )

        assert early == []
        assert _ids(due) == [job.id]

    # Concurrent claims

    async def test_concurrent_claims_never_overlap(self, storage: Storage) -> None:
        jobs = [make_job(due_at=NOW - index * SECOND) for index in range(60)]
        await storage.add_jobs(jobs)
        node_ids = [f"node-{index}" for index in range(12)]

        results = await asyncio.gather(
            *(
                storage.claim_jobs(
                    node_id=node_id, now=NOW, limit=10, lease_until=NOW + LEASE_DURATION
                )
                for node_id in node_ids
            )
        )

        await self._check_claims_partition(storage, jobs, node_ids, results)

    async def test_claims_across_instances_never_overlap(
        self, storage: Storage, other_storage: Storage
    ) -> None:
        jobs = [make_job(due_at=NOW - index * SECOND) for index in range(60)]
        await storage.add_jobs(jobs)
        node_ids = [f"node-{index}" for index in range(12)]
        instances = [storage, other_storage] * (len(node_ids) // 2)

        results = await asyncio.gather(
            *(
                instance.claim_jobs(
                    node_id=node_id, now=NOW, limit=10, lease_until=NOW + LEASE_DURATION
                )
                for instance, node_id in zip(instances, node_ids, strict=True)
            )
        )

        await self._check_claims_partition(storage, jobs, node_ids, results)

    @staticmethod
    async def _check_claims_partition(
        storage: Storage,
        jobs: list[Job],
        node_ids: list[str],
        results: list[list[Job]],
    ) -> None:
        """Check that concurrent claims split ``jobs`` with no job given twice."""
        claimed_ids = [job.id for result in results for job in result]
        assert len(claimed_ids) == len(set(claimed_ids)), "a job was claimed twice"
        assert set(claimed_ids) == set(_ids(jobs)), "some due jobs were not claimed"
        for node_id, result in zip(node_ids, results, strict=True):
            for job in result:
                stored = await _get(storage, job.id)
                assert stored.lease_owner == node_id, f"{job.id} owner overwritten"
                assert stored.attempts == 1, f"{job.id} attempts counted twice"

    # Finishing jobs

    async def test_finish_records_success(self, storage: Storage) -> None:
        job = await _add_running(storage)
        finished_at = NOW + 5 * SECOND

        finished = await storage.finish_job(
            job.id, node_id=_NODE_A, now=finished_at, status=JobStatus.SUCCEEDED
        )

        stored = await _get(storage, job.id)
        assert finished is True
        assert stored.status is JobStatus.SUCCEEDED
        assert stored.finished_at == finished_at
        assert stored.lease_owner is None
        assert stored.lease_expires_at is None
        assert stored.last_error is None
        assert stored.attempts == 1
        assert stored.started_at == job.started_at

    async def test_finish_records_dead_error(self, storage: Storage) -> None:
        job = await _add_running(storage)
        finished_at = NOW + 5 * SECOND

        finished = await storage.finish_job(
            job.id,
            node_id=_NODE_A,
            now=finished_at,
            status=JobStatus.DEAD,
            error="RuntimeError: out of attempts",
        )

        stored = await _get(storage, job.id)
        assert finished is True
        assert stored.status is JobStatus.DEAD
        assert stored.finished_at == finished_at
        assert stored.last_error == "RuntimeError: out of attempts"
        assert stored.lease_owner is None
        assert stored.lease_expires_at is None

    async def test_finish_by_other_node_rejected(self, storage: Storage) -> None:
        job = await _add_running(storage)

        finished = await storage.finish_job(
            job.id, node_id=_NODE_B, now=NOW, status=JobStatus.SUCCEEDED
        )

        assert finished is False
        assert await storage.get_job(job.id) == job

    @pytest.mark.parametrize(
        "status",
        [
            JobStatus.SCHEDULED,
            JobStatus.FAILED,
            JobStatus.SUCCEEDED,
            JobStatus.DEAD,
            JobStatus.CANCELLED,
        ],
    )
    async def test_finish_not_running_rejected(
        self, storage: Storage, status: JobStatus
    ) -> None:
        job = await _add_in_status(storage, status)

        finished = await storage.finish_job(
            job.id, node_id=_NODE_A, now=NOW, status=JobStatus.DEAD, error="late"
        )

        assert finished is False
        assert await storage.get_job(job.id) == job

    async def test_finish_missing_job_rejected(self, storage: Storage) -> None:
        finished = await storage.finish_job(
            new_job_id(), node_id=_NODE_A, now=NOW, status=JobStatus.SUCCEEDED
        )

        assert finished is False

    async def test_finish_after_requeue_rejected(self, storage: Storage) -> None:
        job = await _add_running(storage, max_attempts=3)
        assert job.lease_expires_at is not None
        await storage.requeue_expired_jobs(now=job.lease_expires_at)
        requeued = await _get(storage, job.id)

        finished = await storage.finish_job(
            job.id,
            node_id=_NODE_A,
            now=job.lease_expires_at,
            status=JobStatus.SUCCEEDED,
        )

        assert finished is False
        assert await storage.get_job(job.id) == requeued

    async def test_finish_batch_records_success(self, storage: Storage) -> None:
        jobs = [make_job(due_at=NOW + index * SECOND) for index in range(3)]
        await storage.add_jobs(jobs)
        claimed = [await _claim_one(storage, job) for job in jobs]
        finished_at = NOW + 5 * SECOND

        finished = await storage.finish_jobs(
            _ids(claimed), node_id=_NODE_A, now=finished_at, status=JobStatus.SUCCEEDED
        )

        assert finished == set(_ids(jobs))
        for job in claimed:
            stored = await _get(storage, job.id)
            assert stored.status is JobStatus.SUCCEEDED, job.id
            assert stored.finished_at == finished_at, job.id
            assert stored.lease_owner is None, job.id
            assert stored.lease_expires_at is None, job.id
            assert stored.last_error is None, job.id
            assert stored.attempts == 1, job.id

    async def test_finish_batch_records_dead_error(self, storage: Storage) -> None:
        job = await _add_running(storage)

        finished = await storage.finish_jobs(
            [job.id],
            node_id=_NODE_A,
            now=NOW + SECOND,
            status=JobStatus.DEAD,
            error="RuntimeError: out of attempts",
        )

        stored = await _get(storage, job.id)
        assert finished == {job.id}
        assert stored.status is JobStatus.DEAD
        assert stored.last_error == "RuntimeError: out of attempts"

    async def test_finish_batch_skips_unowned(self, storage: Storage) -> None:
        """Only the caller's running jobs finish; the rest stay as they were."""
        owned = await _add_running(storage, due_at=NOW)
        other = make_job(due_at=NOW + SECOND)
        await storage.add_jobs([other])
        others = await _claim_one(storage, other, node_id=_NODE_B)
        waiting = await _add_in_status(
            storage, JobStatus.SCHEDULED, due_at=NOW + 2 * _HOUR
        )
        missing = new_job_id()

        finished = await storage.finish_jobs(
            [others.id, owned.id, waiting.id, missing],
            node_id=_NODE_A,
            now=NOW + SECOND,
            status=JobStatus.SUCCEEDED,
        )

        assert finished == {owned.id}
        assert (await _get(storage, owned.id)).status is JobStatus.SUCCEEDED
        assert await storage.get_job(others.id) == others
        assert await storage.get_job(waiting.id) == waiting
        assert await storage.get_job(missing) is None

    async def test_finish_batch_empty(self, storage: Storage) -> None:
        finished = await storage.finish_jobs(
            [], node_id=_NODE_A, now=NOW, status=JobStatus.SUCCEEDED
        )

        assert finished == set()

    async def test_finish_batch_repeated_id(self, storage: Storage) -> None:
        job = await _add_running(storage)

        finished = await storage.finish_jobs(
            [job.id, job.id], node_id=_NODE_A, now=NOW, status=JobStatus.SUCCEEDED
        )

        assert finished == {job.id}
        assert (await _get(storage, job.id)).status is JobStatus.SUCCEEDED

    # Retrying jobs

    async def test_retry_sets_failed_state(self, storage: Storage) -> None:
        job = await _add_running(storage, max_attempts=3)
        retry_at = NOW + _HOUR

        retried = await storage.retry_job(
            job.id,
            node_id=_NODE_A,
            now=NOW + SECOND,
            due_at=retry_at,
            error="TimeoutError: upstream",
        )

        stored = await _get(storage, job.id)
        assert retried is True
        assert stored.status is JobStatus.FAILED
        assert stored.due_at == retry_at
        assert stored.last_error == "TimeoutError: upstream"
        assert stored.lease_owner is None
        assert stored.lease_expires_at is None
        assert stored.attempts == 1

    async def test_retried_job_claimable_once_due(self, storage: Storage) -> None:
        job = await _add_running(storage, max_attempts=3)
        retry_at = NOW + _HOUR
        await storage.retry_job(
            job.id, node_id=_NODE_A, now=NOW, due_at=retry_at, error="boom"
        )

        early = await storage.claim_jobs(
            node_id=_NODE_B,
            now=retry_at - SECOND,
            limit=1,
            lease_until=retry_at + LEASE_DURATION,
        )
        due = await storage.claim_jobs(
            node_id=_NODE_B,
            now=retry_at,
            limit=1,
            lease_until=retry_at + LEASE_DURATION,
        )

        assert early == []
        assert _ids(due) == [job.id]
        assert due[0].attempts == 2
        assert due[0].started_at == retry_at
        assert due[0].lease_owner == _NODE_B

    async def test_retry_by_other_node_rejected(self, storage: Storage) -> None:
        job = await _add_running(storage, max_attempts=3)

        retried = await storage.retry_job(
            job.id, node_id=_NODE_B, now=NOW, due_at=NOW + _HOUR, error="boom"
        )

        assert retried is False
        assert await storage.get_job(job.id) == job

    @pytest.mark.parametrize(
        "status",
        [
            JobStatus.SCHEDULED,
            JobStatus.FAILED,
            JobStatus.SUCCEEDED,
            JobStatus.DEAD,
            JobStatus.CANCELLED,
        ],
    )
    async def test_retry_not_running_rejected(
        self, storage: Storage, status: JobStatus
    ) -> None:
        job = await _add_in_status(storage, status)

        retried = await storage.retry_job(
            job.id, node_id=_NODE_A, now=NOW, due_at=NOW + _HOUR, error="boom"
        )

        assert retried is False
        assert await storage.get_job(job.id) == job

    # Extending job leases

    async def test_extend_own_running_leases(self, storage: Storage) -> None:
        first = await _add_running(storage)
        second = await _add_running(storage)
        new_expiry = NOW + 2 * LEASE_DURATION

        extended = await storage.extend_job_leases(
            node_id=_NODE_A, job_ids=[first.id, second.id], lease_until=new_expiry
        )

        assert extended == {first.id, second.id}
        assert (await _get(storage, first.id)).lease_expires_at == new_expiry
        assert (await _get(storage, second.id)).lease_expires_at == new_expiry

    async def test_extend_skips_other_nodes_jobs(self, storage: Storage) -> None:
        job = await _add_running(storage)

        extended = await storage.extend_job_leases(
            node_id=_NODE_B, job_ids=[job.id], lease_until=NOW + _HOUR
        )

        assert extended == set()
        assert await storage.get_job(job.id) == job

    async def test_extend_skips_jobs_not_running(self, storage: Storage) -> None:
        running = await _add_running(storage)
        others = [
            await _add_in_status(storage, status)
            for status in (
                JobStatus.SUCCEEDED,
                JobStatus.DEAD,
                JobStatus.FAILED,
                JobStatus.CANCELLED,
                JobStatus.SCHEDULED,
            )
        ]
        missing = new_job_id()

        extended = await storage.extend_job_leases(
            node_id=_NODE_A,
            job_ids=[running.id, missing, *_ids(others)],
            lease_until=NOW + _HOUR,
        )

        assert extended == {running.id}
        for job in others:
            assert await storage.get_job(job.id) == job, f"{job.status} job changed"

    async def test_extend_no_ids(self, storage: Storage) -> None:
        await _add_running(storage)

        extended = await storage.extend_job_leases(
            node_id=_NODE_A, job_ids=[], lease_until=NOW + _HOUR
        )

        assert extended == set()

    # Requeueing jobs whose lease expired

    async def test_requeue_expired_with_attempts_left(self, storage: Storage) -> None:
        job = await _add_running(storage, max_attempts=2)
        now = NOW + LEASE_DURATION + SECOND

        requeued = await storage.requeue_expired_jobs(now=now)

        stored = await _get(storage, job.id)
        assert requeued == [job.id]
        assert stored.status is JobStatus.SCHEDULED
        assert stored.due_at <= now
        assert stored.lease_owner is None
        assert stored.lease_expires_at is None
        assert stored.attempts == 1
        assert stored.last_error is not None
        assert "lease" in stored.last_error.lower()

    async def test_requeued_job_claimable_at_once(self, storage: Storage) -> None:
        job = await _add_running(storage, max_attempts=2)
        now = NOW + LEASE_DURATION + SECOND
        await storage.requeue_expired_jobs(now=now)

        claimed = await storage.claim_jobs(
            node_id=_NODE_B, now=now, limit=1, lease_until=now + LEASE_DURATION
        )

        assert _ids(claimed) == [job.id]
        assert claimed[0].attempts == 2

    async def test_requeue_last_attempt_marks_dead(self, storage: Storage) -> None:
        job = await _add_running(storage, max_attempts=1)
        now = NOW + LEASE_DURATION + SECOND

        requeued = await storage.requeue_expired_jobs(now=now)

        stored = await _get(storage, job.id)
        assert requeued == [job.id]
        assert stored.status is JobStatus.DEAD
        assert stored.lease_owner is None
        assert stored.lease_expires_at is None
        assert stored.attempts == 1
        assert stored.last_error is not None
        assert "lease" in stored.last_error.lower()

    async def test_requeue_skips_unexpired_leases(self, storage: Storage) -> None:
        job = await _add_running(storage, max_attempts=2)
        assert job.lease_expires_at is not None

        requeued = await storage.requeue_expired_jobs(
            now=job.lease_expires_at - datetime.resolution
        )

        assert requeued == []
        assert await storage.get_job(job.id) == job

    async def test_requeue_lease_expiring_now(self, storage: Storage) -> None:
        job = await _add_running(storage, max_attempts=2)
        assert job.lease_expires_at is not None

        requeued = await storage.requeue_expired_jobs(now=job.lease_expires_at)

        assert requeued == [job.id]
        assert (await _get(storage, job.id)).status is JobStatus.SCHEDULED

    async def test_requeue_ignores_jobs_not_running(self, storage: Storage) -> None:
        jobs = [
            await _add_in_status(storage, status)
            for status in (
                JobStatus.SUCCEEDED,
                JobStatus.DEAD,
                JobStatus.FAILED,
                JobStatus.CANCELLED,
                JobStatus.SCHEDULED,
            )
        ]

        requeued = await storage.requeue_expired_jobs(now=NOW + 10 * _HOUR)

        assert requeued == []
        for job in jobs:
            assert await storage.get_job(job.id) == job, f"{job.status} job changed"

    async def test_requeue_returns_every_expired_job(self, storage: Storage) -> None:
        expired = [await _add_running(storage, max_attempts=2) for _ in range(3)]
        fresh = make_job(due_at=NOW + _HOUR)
        await storage.add_jobs([fresh])
        await _claim_one(storage, fresh)

        requeued = await storage.requeue_expired_jobs(now=NOW + LEASE_DURATION)

        assert sorted(requeued) == sorted(_ids(expired))

    # Next due time

    async def test_next_due_empty_is_none(self, storage: Storage) -> None:
        assert await storage.next_due_at() is None

    async def test_next_due_earliest_claimable(self, storage: Storage) -> None:
        await storage.add_jobs(
            [
                make_job(due_at=NOW + 10 * SECOND),
                make_job(due_at=NOW + 5 * SECOND),
                make_job(due_at=NOW + 20 * SECOND),
            ]
        )

        assert await storage.next_due_at() == NOW + 5 * SECOND

    async def test_next_due_includes_failed_jobs(self, storage: Storage) -> None:
        await storage.add_jobs(
            [
                make_job(due_at=NOW + _HOUR),
                make_job(status=JobStatus.FAILED, due_at=NOW + 5 * SECOND),
            ]
        )

        assert await storage.next_due_at() == NOW + 5 * SECOND

    @pytest.mark.parametrize(
        "status",
        [
            JobStatus.RUNNING,
            JobStatus.SUCCEEDED,
            JobStatus.DEAD,
            JobStatus.CANCELLED,
        ],
    )
    async def test_next_due_ignores_unclaimable(
        self, storage: Storage, status: JobStatus
    ) -> None:
        await _add_in_status(storage, status, due_at=NOW - _HOUR)
        assert await storage.next_due_at() is None, "only job is not claimable"

        await storage.add_jobs([make_job(due_at=NOW + _HOUR)])

        assert await storage.next_due_at() == NOW + _HOUR

    async def test_next_due_comes_back_utc(self, storage: Storage) -> None:
        await storage.add_jobs([make_job(due_at=NOW + datetime.resolution)])

        next_due = await storage.next_due_at()

        assert next_due == NOW + datetime.resolution
        _assert_utc(next_due, "next_due_at")

    # Recurring jobs

    async def test_recurring_fields_round_trip(self, storage: Storage) -> None:
        recurring = RecurringJob(
            id="nightly-report",
            name="reports.nightly ☾",
            cron="30 2 * * 1-5",
            timezone="Europe/Paris",
            type_name="reports.NightlyReport",
            payload='{"title": "Résumé 報告 🧾"}',
            next_fire_at=datetime(2030, 1, 2, 1, 30, 0, 1, tzinfo=UTC),
            created_at=datetime(2029, 12, 1, 8, 0, 0, 999999, tzinfo=UTC),
            updated_at=datetime(2029, 12, 2, 9, 0, 0, 123456, tzinfo=UTC),
            misfire=MisfirePolicy.each(7),
            allow_overlap=True,
            max_attempts=4,
            timeout=0.1,
        )
        await storage.put_recurring(recurring)

        stored = await storage.get_recurring(recurring.id)

        assert stored is not None
        for field in dataclasses.fields(RecurringJob):
            expected = getattr(recurring, field.name)
            actual = getattr(stored, field.name)
            assert actual == expected, f"{field.name}: put {expected!r}, got {actual!r}"
            if isinstance(actual, datetime):
                _assert_utc(actual, field.name)

    @pytest.mark.parametrize(
        "misfire",
        [
            MisfirePolicy.skip(),
            MisfirePolicy.once(),
            MisfirePolicy.each(1),
            MisfirePolicy.each(100),
        ],
        ids=str,
    )
    async def test_misfire_policy_round_trips(
        self, storage: Storage, misfire: MisfirePolicy
    ) -> None:
        await storage.put_recurring(make_recurring(misfire=misfire))

        stored = await storage.get_recurring("contract-recurring")

        assert stored is not None
        assert stored.misfire == misfire

    async def test_recurring_defaults_round_trip(self, storage: Storage) -> None:
        recurring = make_recurring()
        await storage.put_recurring(recurring)

        assert await storage.get_recurring(recurring.id) == recurring

    async def test_get_missing_recurring_none(self, storage: Storage) -> None:
        await storage.put_recurring(make_recurring())

        assert await storage.get_recurring("no-such-recurring") is None

    async def test_put_recurring_replaces_same_id(self, storage: Storage) -> None:
        original = make_recurring()
        await storage.put_recurring(original)
        replacement = original.replace(
            cron="0 * * * *",
            payload='{"version": 2}',
            next_fire_at=NOW + _HOUR,
            updated_at=NOW + SECOND,
            misfire=MisfirePolicy.skip(),
            allow_overlap=True,
        )

        await storage.put_recurring(replacement)

        assert await storage.get_recurring(original.id) == replacement
        assert await storage.list_recurring() == [replacement]

    async def test_list_recurring_order(self, storage: Storage) -> None:
        late = make_recurring(id="a-late", next_fire_at=NOW + _HOUR)
        early_b = make_recurring(id="b-early", next_fire_at=NOW)
        early_a = make_recurring(id="a-early", next_fire_at=NOW)
        for recurring in (late, early_b, early_a):
            await storage.put_recurring(recurring)

        listed = await storage.list_recurring()

        assert [item.id for item in listed] == ["a-early", "b-early", "a-late"]

    async def test_list_recurring_empty(self, storage: Storage) -> None:
        assert await storage.list_recurring() == []

    async def test_remove_recurring(self, storage: Storage) -> None:
        remaining = make_recurring(id="remaining")
        await storage.put_recurring(make_recurring())
        await storage.put_recurring(remaining)

        removed = await storage.remove_recurring("contract-recurring")
        removed_again = await storage.remove_recurring("contract-recurring")

        assert removed is True
        assert removed_again is False
        assert await storage.get_recurring("contract-recurring") is None
        assert await storage.list_recurring() == [remaining]

    async def test_remove_recurring_keeps_occurrences(self, storage: Storage) -> None:
        recurring = make_recurring()
        await storage.put_recurring(recurring)
        occurrence = make_occurrence(recurring.id, NOW)
        await storage.add_jobs([occurrence])

        await storage.remove_recurring(recurring.id)

        assert await storage.get_job(occurrence.id) == occurrence

    # Occurrence key: one job per (recurring_id, fire_time)

    async def test_duplicate_occurrence_skipped(self, storage: Storage) -> None:
        first = make_occurrence("hourly", NOW)
        duplicate = make_occurrence("hourly", NOW)
        await storage.add_jobs([first])

        inserted = await storage.add_jobs([duplicate])

        assert inserted == []
        assert await storage.get_job(duplicate.id) is None
        assert _ids(await storage.list_jobs(recurring_id="hourly")) == [first.id]

    async def test_duplicate_occurrence_in_batch(self, storage: Storage) -> None:
        first = make_occurrence("hourly", NOW)
        duplicate = make_occurrence("hourly", NOW)

        inserted = await storage.add_jobs([first, duplicate])

        assert inserted == [first.id]
        assert await storage.get_job(duplicate.id) is None

    async def test_batch_skips_only_duplicates(self, storage: Storage) -> None:
        existing = make_occurrence("hourly", NOW)
        await storage.add_jobs([existing])
        plain = make_job()
        duplicate = make_occurrence("hourly", NOW)
        next_occurrence = make_occurrence("hourly", NOW + _HOUR)

        inserted = await storage.add_jobs([plain, duplicate, next_occurrence])

        assert inserted == [plain.id, next_occurrence.id]

    async def test_finished_occurrence_still_blocks(self, storage: Storage) -> None:
        first = make_occurrence("hourly", NOW)
        await storage.add_jobs([first])
        await _claim_one(storage, first)
        await storage.finish_job(
            first.id, node_id=_NODE_A, now=NOW, status=JobStatus.SUCCEEDED
        )

        inserted = await storage.add_jobs([make_occurrence("hourly", NOW)])

        assert inserted == []

    async def test_occurrence_key_scoped_per_recurring(self, storage: Storage) -> None:
        jobs = [
            make_occurrence("hourly", NOW),
            make_occurrence("daily", NOW),
            make_occurrence("hourly", NOW + datetime.resolution),
        ]

        inserted = await storage.add_jobs(jobs)

        assert inserted == _ids(jobs)

    async def test_plain_jobs_have_no_key(self, storage: Storage) -> None:
        jobs = [
            make_job(),
            make_job(),
            make_job(fire_time=NOW),
            make_job(fire_time=NOW),
        ]

        inserted = await storage.add_jobs(jobs)

        assert inserted == _ids(jobs)

    # Active recurring ids

    async def test_active_recurring_ids_empty(self, storage: Storage) -> None:
        await storage.add_jobs([make_job()])

        assert await storage.active_recurring_ids() == set()

    async def test_active_recurring_ids_by_status(self, storage: Storage) -> None:
        # Scheduled goes last, so that it is not claimed by the setup of the
        # statuses that need a claim.
        for status in (
            JobStatus.RUNNING,
            JobStatus.FAILED,
            JobStatus.SUCCEEDED,
            JobStatus.DEAD,
            JobStatus.CANCELLED,
            JobStatus.SCHEDULED,
        ):
            await _add_in_status(
                storage, status, recurring_id=f"r-{status}", fire_time=NOW
            )
        await storage.add_jobs([make_job()])

        active = await storage.active_recurring_ids()

        assert active == {"r-scheduled", "r-running", "r-failed"}

    async def test_active_recurring_ids_any_occurrence(self, storage: Storage) -> None:
        # One finished and one pending occurrence: the recurring job is active.
        await _add_in_status(
            storage, JobStatus.SUCCEEDED, recurring_id="hourly", fire_time=NOW
        )
        await storage.add_jobs([make_occurrence("hourly", NOW + _HOUR)])

        assert await storage.active_recurring_ids() == {"hourly"}

    # Materialising recurring occurrences

    async def _lead(self, storage: Storage) -> LeaderLease:
        lease = await storage.acquire_leadership(
            node_id=_LEADER, now=NOW, until=NOW + LEASE_DURATION
        )
        assert lease is not None, "test setup could not take the leader lease"
        return lease

    async def test_materialise_inserts_and_advances(self, storage: Storage) -> None:
        recurring = make_recurring()
        await storage.put_recurring(recurring)
        lease = await self._lead(storage)
        occurrence = make_occurrence(recurring.id, NOW)

        done = await storage.materialise_occurrence(
            lease=lease,
            now=NOW,
            recurring_id=recurring.id,
            expected_next_fire_at=NOW,
            occurrence=occurrence,
            next_fire_at=NOW + _HOUR,
        )

        stored = await storage.get_recurring(recurring.id)
        assert done is True
        assert await storage.get_job(occurrence.id) == occurrence
        assert stored is not None
        assert stored.next_fire_at == NOW + _HOUR

    async def test_materialise_none_advances_only(self, storage: Storage) -> None:
        recurring = make_recurring()
        await storage.put_recurring(recurring)
        lease = await self._lead(storage)

        done = await storage.materialise_occurrence(
            lease=lease,
            now=NOW,
            recurring_id=recurring.id,
            expected_next_fire_at=NOW,
            occurrence=None,
            next_fire_at=NOW + _HOUR,
        )

        stored = await storage.get_recurring(recurring.id)
        assert done is True
        assert await storage.list_jobs() == []
        assert stored is not None
        assert stored.next_fire_at == NOW + _HOUR

    async def test_materialise_existing_occurrence_advances(
        self, storage: Storage
    ) -> None:
        recurring = make_recurring()
        await storage.put_recurring(recurring)
        existing = make_occurrence(recurring.id, NOW)
        await storage.add_jobs([existing])
        lease = await self._lead(storage)
        duplicate = make_occurrence(recurring.id, NOW)

        done = await storage.materialise_occurrence(
            lease=lease,
            now=NOW,
            recurring_id=recurring.id,
            expected_next_fire_at=NOW,
            occurrence=duplicate,
            next_fire_at=NOW + _HOUR,
        )

        stored = await storage.get_recurring(recurring.id)
        assert done is True
        assert await storage.get_job(duplicate.id) is None
        assert _ids(await storage.list_jobs()) == [existing.id]
        assert stored is not None
        assert stored.next_fire_at == NOW + _HOUR

    async def test_materialise_wrong_expected_rejected(self, storage: Storage) -> None:
        recurring = make_recurring()
        await storage.put_recurring(recurring)
        lease = await self._lead(storage)

        done = await storage.materialise_occurrence(
            lease=lease,
            now=NOW,
            recurring_id=recurring.id,
            expected_next_fire_at=NOW - _HOUR,
            occurrence=make_occurrence(recurring.id, NOW - _HOUR),
            next_fire_at=NOW,
        )

        assert done is False
        assert await storage.list_jobs() == []
        assert await storage.get_recurring(recurring.id) == recurring

    async def test_materialise_missing_recurring_rejected(
        self, storage: Storage
    ) -> None:
        lease = await self._lead(storage)

        done = await storage.materialise_occurrence(
            lease=lease,
            now=NOW,
            recurring_id="no-such-recurring",
            expected_next_fire_at=NOW,
            occurrence=make_occurrence("no-such-recurring", NOW),
            next_fire_at=NOW + _HOUR,
        )

        assert done is False
        assert await storage.list_jobs() == []

    async def test_materialise_without_leader_rejected(self, storage: Storage) -> None:
        recurring = make_recurring()
        await storage.put_recurring(recurring)
        forged = LeaderLease(_LEADER, 1, NOW + LEASE_DURATION)

        done = await storage.materialise_occurrence(
            lease=forged,
            now=NOW,
            recurring_id=recurring.id,
            expected_next_fire_at=NOW,
            occurrence=make_occurrence(recurring.id, NOW),
            next_fire_at=NOW + _HOUR,
        )

        assert done is False
        assert await storage.list_jobs() == []
        assert await storage.get_recurring(recurring.id) == recurring

    async def test_materialise_other_holder_rejected(self, storage: Storage) -> None:
        recurring = make_recurring()
        await storage.put_recurring(recurring)
        old = await self._lead(storage)
        later = old.expires_at + SECOND
        await storage.acquire_leadership(
            node_id=_NODE_B, now=later, until=later + LEASE_DURATION
        )

        done = await storage.materialise_occurrence(
            lease=old,
            now=later,
            recurring_id=recurring.id,
            expected_next_fire_at=NOW,
            occurrence=make_occurrence(recurring.id, NOW),
            next_fire_at=NOW + _HOUR,
        )

        assert done is False
        assert await storage.list_jobs() == []
        assert await storage.get_recurring(recurring.id) == recurring

    async def test_materialise_older_term_rejected(self, storage: Storage) -> None:
        recurring = make_recurring()
        await storage.put_recurring(recurring)
        old = await self._lead(storage)
        later = old.expires_at + SECOND
        current = await storage.acquire_leadership(
            node_id=_LEADER, now=later, until=later + LEASE_DURATION
        )
        assert current is not None
        assert current.term == old.term + 1
        # Same holder, and an expiry that has not passed: only the term is stale.
        stale = LeaderLease(_LEADER, old.term, current.expires_at)

        done = await storage.materialise_occurrence(
            lease=stale,
            now=later,
            recurring_id=recurring.id,
            expected_next_fire_at=NOW,
            occurrence=make_occurrence(recurring.id, NOW),
            next_fire_at=NOW + _HOUR,
        )

        assert done is False
        assert await storage.list_jobs() == []
        assert await storage.get_recurring(recurring.id) == recurring

    async def test_materialise_expired_lease_rejected(self, storage: Storage) -> None:
        recurring = make_recurring()
        await storage.put_recurring(recurring)
        lease = await self._lead(storage)

        done = await storage.materialise_occurrence(
            lease=lease,
            now=lease.expires_at,
            recurring_id=recurring.id,
            expected_next_fire_at=NOW,
            occurrence=make_occurrence(recurring.id, NOW),
            next_fire_at=NOW + _HOUR,
        )

        assert done is False
        assert await storage.list_jobs() == []
        assert await storage.get_recurring(recurring.id) == recurring

    # Leader lease

    async def test_no_leader_initially(self, storage: Storage) -> None:
        assert await storage.get_leader() is None

    async def test_first_acquire_gets_term_one(self, storage: Storage) -> None:
        lease = await storage.acquire_leadership(
            node_id=_NODE_A, now=NOW, until=NOW + LEASE_DURATION
        )

        assert lease == LeaderLease(_NODE_A, 1, NOW + LEASE_DURATION)
        assert await storage.get_leader() == lease

    async def test_leader_lease_comes_back_utc(self, storage: Storage) -> None:
        until = NOW + LEASE_DURATION + datetime.resolution
        await storage.acquire_leadership(node_id=_NODE_A, now=NOW, until=until)

        leader = await storage.get_leader()

        assert leader is not None
        assert leader.expires_at == until
        _assert_utc(leader.expires_at, "expires_at")

    async def test_acquire_rejected_while_held(self, storage: Storage) -> None:
        current = await storage.acquire_leadership(
            node_id=_NODE_A, now=NOW, until=NOW + LEASE_DURATION
        )

        rejected = await storage.acquire_leadership(
            node_id=_NODE_B,
            now=NOW + LEASE_DURATION - datetime.resolution,
            until=NOW + 2 * LEASE_DURATION,
        )

        assert rejected is None
        assert await storage.get_leader() == current

    async def test_acquire_at_expiry_takes_over(self, storage: Storage) -> None:
        old = await storage.acquire_leadership(
            node_id=_NODE_A, now=NOW, until=NOW + LEASE_DURATION
        )
        assert old is not None

        new = await storage.acquire_leadership(
            node_id=_NODE_B, now=old.expires_at, until=old.expires_at + LEASE_DURATION
        )

        assert new == LeaderLease(_NODE_B, 2, old.expires_at + LEASE_DURATION)
        assert await storage.get_leader() == new

    async def test_acquire_after_expiry_takes_over(self, storage: Storage) -> None:
        await storage.acquire_leadership(
            node_id=_NODE_A, now=NOW, until=NOW + LEASE_DURATION
        )
        later = NOW + _HOUR

        new = await storage.acquire_leadership(
            node_id=_NODE_B, now=later, until=later + LEASE_DURATION
        )

        assert new == LeaderLease(_NODE_B, 2, later + LEASE_DURATION)

    async def test_reacquire_while_held_extends(self, storage: Storage) -> None:
        await storage.acquire_leadership(
            node_id=_NODE_A, now=NOW, until=NOW + LEASE_DURATION
        )
        now = NOW + 10 * SECOND

        again = await storage.acquire_leadership(
            node_id=_NODE_A, now=now, until=now + LEASE_DURATION
        )

        assert again == LeaderLease(_NODE_A, 1, now + LEASE_DURATION)
        assert await storage.get_leader() == again

    async def test_reacquire_after_expiry_new_term(self, storage: Storage) -> None:
        await storage.acquire_leadership(
            node_id=_NODE_A, now=NOW, until=NOW + LEASE_DURATION
        )
        later = NOW + LEASE_DURATION

        again = await storage.acquire_leadership(
            node_id=_NODE_A, now=later, until=later + LEASE_DURATION
        )

        assert again == LeaderLease(_NODE_A, 2, later + LEASE_DURATION)

    async def test_terms_keep_growing(self, storage: Storage) -> None:
        terms = []
        for index in range(4):
            now = NOW + index * _HOUR
            lease = await storage.acquire_leadership(
                node_id=f"node-{index % 2}", now=now, until=now + LEASE_DURATION
            )
            assert lease is not None
            terms.append(lease.term)

        assert terms == [1, 2, 3, 4]

    async def test_renew_by_holder_extends(self, storage: Storage) -> None:
        lease = await storage.acquire_leadership(
            node_id=_NODE_A, now=NOW, until=NOW + LEASE_DURATION
        )
        assert lease is not None
        now = NOW + 10 * SECOND

        renewed = await storage.renew_leadership(
            lease, now=now, until=now + LEASE_DURATION
        )

        assert renewed == LeaderLease(_NODE_A, 1, now + LEASE_DURATION)
        assert await storage.get_leader() == renewed

    async def test_renew_after_expiry_fails(self, storage: Storage) -> None:
        lease = await storage.acquire_leadership(
            node_id=_NODE_A, now=NOW, until=NOW + LEASE_DURATION
        )
        assert lease is not None

        renewed = await storage.renew_leadership(
            lease, now=lease.expires_at, until=lease.expires_at + LEASE_DURATION
        )

        assert renewed is None
        assert await storage.get_leader() == lease

    async def test_renew_superseded_lease_fails(self, storage: Storage) -> None:
        old = await storage.acquire_leadership(
            node_id=_NODE_A, now=NOW, until=NOW + LEASE_DURATION
        )
        assert old is not None
        later = NOW + _HOUR
        current = await storage.acquire_leadership(
            node_id=_NODE_B, now=later, until=later + LEASE_DURATION
        )

        renewed = await storage.renew_leadership(
            old, now=later, until=later + LEASE_DURATION
        )

        assert renewed is None
        assert await storage.get_leader() == current

    async def test_renew_older_term_fails(self, storage: Storage) -> None:
        old = await storage.acquire_leadership(
            node_id=_NODE_A, now=NOW, until=NOW + LEASE_DURATION
        )
        assert old is not None
        later = NOW + _HOUR
        current = await storage.acquire_leadership(
            node_id=_NODE_A, now=later, until=later + LEASE_DURATION
        )
        assert current is not None
        # Same holder, and an expiry that has not passed: only the term is stale.
        stale = LeaderLease(_NODE_A, old.term, current.expires_at)

        renewed = await storage.renew_leadership(
            stale, now=later, until=later + 2 * LEASE_DURATION
        )

        assert renewed is None
        assert await storage.get_leader() == current

    async def test_release_lets_other_acquire(self, storage: Storage) -> None:
        lease = await storage.acquire_leadership(
            node_id=_NODE_A, now=NOW, until=NOW + LEASE_DURATION
        )
        assert lease is not None

        await storage.release_leadership(lease)
        new_lease = await storage.acquire_leadership(
            node_id=_NODE_B, now=NOW + SECOND, until=NOW + SECOND + LEASE_DURATION
        )

        assert new_lease is not None
        assert new_lease.holder == _NODE_B
        assert new_lease.term == 2, "terms must keep growing after a release"

    async def test_release_stale_lease_ignored(self, storage: Storage) -> None:
        old = await storage.acquire_leadership(
            node_id=_NODE_A, now=NOW, until=NOW + LEASE_DURATION
        )
        assert old is not None
        later = NOW + _HOUR
        current = await storage.acquire_leadership(
            node_id=_NODE_B, now=later, until=later + LEASE_DURATION
        )

        await storage.release_leadership(old)
        rejected = await storage.acquire_leadership(
            node_id="node-c", now=later + SECOND, until=later + LEASE_DURATION
        )

        assert await storage.get_leader() == current
        assert rejected is None

    async def test_racing_acquire_one_wins(
        self, storage: Storage, other_storage: Storage
    ) -> None:
        node_ids = [f"node-{index}" for index in range(10)]
        instances = [storage, other_storage] * (len(node_ids) // 2)

        results = await asyncio.gather(
            *(
                instance.acquire_leadership(
                    node_id=node_id, now=NOW, until=NOW + LEASE_DURATION
                )
                for instance, node_id in zip(instances, node_ids, strict=True)
            )
        )

        winners = [lease for lease in results if lease is not None]
        assert len(winners) == 1
        assert winners[0].term == 1
        assert await storage.get_leader() == winners[0]

    # Nodes

    async def test_no_nodes_initially(self, storage: Storage) -> None:
        assert await storage.list_nodes() == []

    async def test_heartbeat_registers_node(self, storage: Storage) -> None:
        await storage.heartbeat(node_id=_NODE_A, now=NOW)

        assert await storage.list_nodes() == [NodeInfo(_NODE_A, NOW, NOW)]

    async def test_heartbeat_updates_last_seen(self, storage: Storage) -> None:
        await storage.heartbeat(node_id=_NODE_A, now=NOW)
        later = NOW + 5 * SECOND + datetime.resolution

        await storage.heartbeat(node_id=_NODE_A, now=later)

        [node] = await storage.list_nodes()
        assert node.started_at == NOW
        assert node.last_seen_at == later
        _assert_utc(node.started_at, "started_at")
        _assert_utc(node.last_seen_at, "last_seen_at")

    async def test_list_nodes_ordered_by_id(self, storage: Storage) -> None:
        for node_id in ("node-c", "node-a", "node-b"):
            await storage.heartbeat(node_id=node_id, now=NOW)

        nodes = await storage.list_nodes()

        assert [node.node_id for node in nodes] == ["node-a", "node-b", "node-c"]

    async def test_remove_node(self, storage: Storage) -> None:
        await storage.heartbeat(node_id=_NODE_A, now=NOW)
        await storage.heartbeat(node_id=_NODE_B, now=NOW)

        await storage.remove_node(_NODE_A)

        assert await storage.list_nodes() == [NodeInfo(_NODE_B, NOW, NOW)]

    async def test_remove_missing_node(self, storage: Storage) -> None:
        await storage.heartbeat(node_id=_NODE_A, now=NOW)

        await storage.remove_node("no-such-node")

        assert await storage.list_nodes() == [NodeInfo(_NODE_A, NOW, NOW)]

    # Connection loss. __init_subclass__ leaves these out unless the subclass
    # overrides break_connection.

    async def _add_known_state(self, storage: Storage) -> tuple[list[Job], LeaderLease]:
        """Write one record of every kind, to compare after a connection loss."""
        jobs = [make_job(due_at=NOW + index * SECOND) for index in range(3)]
        await storage.add_jobs(jobs)
        await storage.put_recurring(make_recurring())
        await storage.heartbeat(node_id=_NODE_A, now=NOW)
        lease = await storage.acquire_leadership(
            node_id=_NODE_A, now=NOW, until=NOW + LEASE_DURATION
        )
        assert lease is not None
        return jobs, lease

    async def _check_known_state(
        self, storage: Storage, jobs: list[Job], lease: LeaderLease
    ) -> None:
        assert await storage.list_jobs() == jobs
        assert await storage.list_recurring() == [make_recurring()]
        assert await storage.list_nodes() == [NodeInfo(_NODE_A, NOW, NOW)]
        assert await storage.get_leader() == lease

    async def test_connection_loss_read_recovers(self, storage: Storage) -> None:
        jobs, lease = await self._add_known_state(storage)

        await self.break_connection(storage)
        error: StorageUnavailableError | None = None
        try:
            fetched = await storage.get_job(jobs[0].id)
        except StorageUnavailableError as caught:
            # A backend that checks connections before use reconnects and
            # succeeds. One that does not must report the loss this way, and
            # the next call must work.
            error = caught
            fetched = await storage.get_job(jobs[0].id)

        if error is not None:
            assert error.__cause__ is not None, "driver exception is not chained"
        assert fetched == jobs[0]
        await self._check_known_state(storage, jobs, lease)
        claimed = await storage.claim_jobs(
            node_id=_NODE_B, now=NOW, limit=1, lease_until=NOW + LEASE_DURATION
        )
        assert _ids(claimed) == [jobs[0].id]

    async def test_connection_loss_write_all_or_nothing(self, storage: Storage) -> None:
        jobs, lease = await self._add_known_state(storage)
        extra = [make_job(due_at=NOW + _HOUR), make_job(due_at=NOW + 2 * _HOUR)]

        await self.break_connection(storage)
        error: StorageUnavailableError | None = None
        try:
            inserted = await storage.add_jobs(extra)
        except StorageUnavailableError as caught:
            error = caught
            inserted = []

        # The failed batch must have taken no effect, so the same batch can be
        # sent again.
        if error is not None:
            assert error.__cause__ is not None, "driver exception is not chained"
            assert await storage.get_job(extra[0].id) is None
            assert await storage.get_job(extra[1].id) is None
            inserted = await storage.add_jobs(extra)
        assert inserted == _ids(extra)
        await self._check_known_state(storage, [*jobs, *extra], lease)
