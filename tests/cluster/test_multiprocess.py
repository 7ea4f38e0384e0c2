"""Three ``fantasma run`` processes on one database survive the leader's SIGKILL.

The processes run ``tests.cluster.failover_app`` with short timings (2 s
leader lease, renewed every 0.5 s) and an every-second job, on a database
created for the test and dropped afterwards. The test waits for log lines,
never on a sleep: for a leader, for a few runs, for another node to take
over after the leader is killed, and for a few more runs. Then it stops the
survivors with SIGTERM and checks the job table and the printed runs:

- Each fire time was enqueued once (one job per fire time).
- Each fire time ran once, except that a run the killed node started may
  run again on another node with a higher attempt number.
- Every second from the first printed fire time to the last ran, except
  fire times that the new leader's misfire policy (one catch-up run)
  dropped: such a fire time F lies between the catch-up run's fire time C
  and the next enqueued one, and F is older than the grace period (0.25 s)
  when the catch-up was enqueued, which happened after the kill.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from fantasma import ClusterSettings, Job, JobStatus
from fantasma.storage.sql import SqlStorage
from tests.cluster.failover_app import SHORT_TIMINGS
from tests.dbs import ServerUnreachable, mysql_database, postgres_database
from tests.integration.processes import REPOSITORY, FantasmaProcess

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

APP = "tests.cluster.failover_app:app"
NODE_IDS = ("node-a", "node-b", "node-c")
SETTINGS: ClusterSettings = SHORT_TIMINGS["cluster"]
TAKEOVER_DEADLINE = 15.0
"""Seconds to wait for a new leader: the 2 s lease plus a wide margin for a
loaded CI machine."""

RAN = re.compile(r"^ran (\S+) on (\S+) attempt (\d+)$")


@dataclass(frozen=True)
class Ran:
    fire_time: datetime
    node_id: str
    attempt: int


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mysql),
    ]
)
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a new database on the backend of the parameter, dropped afterwards."""
    create = postgres_database if request.param == "postgres" else mysql_database
    try:
        with create() as url:
            yield url
    except ServerUnreachable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc} (CI=true, so a missing server fails the test)")
        pytest.skip(str(exc))


@pytest_asyncio.fixture
async def storage(database_url: str) -> AsyncIterator[SqlStorage]:
    """The test database's storage, with its tables created before any node starts."""
    storage = SqlStorage(database_url)
    await storage.start()
    yield storage
    await storage.close()


@pytest_asyncio.fixture
async def nodes(
    database_url: str, storage: SqlStorage, tmp_path: Path
) -> AsyncIterator[dict[str, FantasmaProcess]]:
    """Three running nodes by id; any still running afterwards are killed."""
    started: dict[str, FantasmaProcess] = {}
    try:
        for node_id in NODE_IDS:
            started[node_id] = await FantasmaProcess.start(
                "run",
                APP,
                "--log-level",
                "info",
                cwd=tmp_path,
                env={
                    "PYTHONPATH": str(REPOSITORY),
                    "FAILOVER_APP_DATABASE_URL": database_url,
                    "FAILOVER_APP_NODE_ID": node_id,
                    "FAILOVER_APP_TIMINGS": "short",
                },
            )
        yield started
    finally:
        for process in started.values():
            await process.close()


async def first_line(
    processes: dict[str, FantasmaProcess],
    predicate: Callable[[str], bool],
    within: float,
) -> str:
    """Return the first stderr line of any process that ``predicate`` accepts."""
    waits = [
        asyncio.create_task(process.wait_for_stderr(predicate))
        for process in processes.values()
    ]
    try:
        done, _ = await asyncio.wait(
            waits, timeout=within, return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            if task.exception() is None:
                return task.result()
        output = "\n".join(process.describe() for process in processes.values())
        raise AssertionError(f"no expected line within {within} s\n{output}")
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


def runs_of(processes: dict[str, FantasmaProcess]) -> list[Ran]:
    runs = []
    for process in processes.values():
        for line in process.stdout.lines:
            match = RAN.match(line)
            if match:
                fire_time, node_id, attempt = match.groups()
                runs.append(
                    Ran(datetime.fromisoformat(fire_time), node_id, int(attempt))
                )
    return runs


async def wait_for_runs(
    processes: dict[str, FantasmaProcess], count: int, after: datetime
) -> None:
    """Wait until ``count`` distinct fire times later than ``after`` have run."""

    def enough() -> bool:
        fire_times = {
            run.fire_time for run in runs_of(processes) if run.fire_time > after
        }
        return len(fire_times) >= count

    waits = [
        asyncio.create_task(process.wait_for_stdout(lambda line: enough()))
        for process in processes.values()
    ]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    assert enough(), "\n".join(process.describe() for process in processes.values())


def dropped_by_catch_up(
    fire_time: datetime, jobs: list[Job], killed_at: datetime
) -> bool:
    """Whether the catch-up run after the kill legitimately dropped ``fire_time``."""
    earlier = [
        job for job in jobs if job.fire_time is not None and job.fire_time < fire_time
    ]
    if not earlier:
        return False
    catch_up = max(earlier, key=lambda job: job.fire_time or fire_time)
    assert catch_up.fire_time is not None
    late_by = catch_up.created_at - catch_up.fire_time
    return (
        catch_up.created_at >= killed_at
        and late_by > SETTINGS.misfire_grace
        and fire_time < catch_up.created_at - SETTINGS.misfire_grace
    )


async def test_leader_killed(
    nodes: dict[str, FantasmaProcess], storage: SqlStorage
) -> None:
    await first_line(nodes, lambda line: "became leader in term 1" in line, 60)
    lease = await storage.get_leader()
    assert lease is not None
    await wait_for_runs(nodes, 3, datetime.min.replace(tzinfo=UTC))

    killed_at = datetime.now(UTC)
    nodes[lease.holder].process.send_signal(signal.SIGKILL)
    await nodes[lease.holder].wait()
    survivors = {node_id: p for node_id, p in nodes.items() if node_id != lease.holder}
    await first_line(
        survivors,
        lambda line: "took over as leader in term 2" in line,
        TAKEOVER_DEADLINE,
    )
    new_lease = await storage.get_leader()
    assert new_lease is not None
    await wait_for_runs(survivors, 3, datetime.now(UTC))
    for process in survivors.values():
        process.process.send_signal(signal.SIGTERM)
    statuses = [await process.wait() for process in survivors.values()]
    jobs = await storage.list_jobs(recurring_id="second")

    runs = runs_of(nodes)
    ran_fire_times = sorted({run.fire_time for run in runs})
    first, last = ran_fire_times[0], ran_fire_times[-1]
    every_second = [
        first + timedelta(seconds=offset)
        for offset in range(int((last - first).total_seconds()) + 1)
    ]
    enqueued = [job.fire_time for job in jobs]
    reruns = [
        run
        for run in runs
        if sum(other.fire_time == run.fire_time for other in runs) > 1
        and run.node_id != lease.holder
    ]
    missing = [fire for fire in every_second if fire not in set(ran_fire_times)]
    not_dropped = [
        fire for fire in missing if not dropped_by_catch_up(fire, jobs, killed_at)
    ]
    unfinished = [
        job.fire_time
        for job in jobs
        if first <= (job.fire_time or first) <= last
        and job.status is not JobStatus.SUCCEEDED
    ]

    assert statuses == [0, 0]
    assert new_lease.holder != lease.holder
    assert new_lease.term == 2
    assert len(enqueued) == len(set(enqueued))
    assert all(run.attempt >= 2 for run in reruns)
    assert not_dropped == []
    assert unfinished == []
