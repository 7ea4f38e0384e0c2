"""A job whose process is killed mid-run runs again, on attempt 2, after a restart.

The test kills a real ``fantasma run`` process with SIGKILL while a handler
blocks, restarts it on the same SQLite file, and waits on the output lines
of each process, never on a sleep. Short leases keep it to a few seconds:
the restarted node becomes leader once the dead node's leader lease expires
(1 s), and as leader it requeues the job once the job's lease expires (2 s).
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from fantasma import JobId, JobStatus, Trigger
from tests.integration import sample_app
from tests.integration.processes import FantasmaProcess

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

APP = "tests.integration.sample_app:app"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'recovery.db'}"


@pytest.fixture
def app_env(database_url: str) -> dict[str, str]:
    return {
        "SAMPLE_APP_DATABASE_URL": database_url,
        "SAMPLE_APP_JOB_LEASE_MS": "2000",
        "SAMPLE_APP_LEADER_LEASE_MS": "1000",
        "SAMPLE_APP_POLL_MS": "200",
    }


@pytest_asyncio.fixture
async def start_node(
    tmp_path: Path, app_env: dict[str, str]
) -> AsyncIterator[Callable[[], Awaitable[FantasmaProcess]]]:
    """Return a function that starts ``fantasma run`` on the app; kills leftovers."""
    started: list[FantasmaProcess] = []

    async def start() -> FantasmaProcess:
        node = await FantasmaProcess.start(
            "run", APP, "--log-level", "info", cwd=tmp_path, env=app_env
        )
        started.append(node)
        return node

    yield start
    for node in started:
        await node.close()


async def schedule_blocking_job(url: str) -> JobId:
    """Store a job that blocks on attempt 1, without running it in this process."""
    app = sample_app.build_app(url)
    await app.start(background=False)
    try:
        return await app.schedule(
            "block", sample_app.BlockOnFirstAttempt("crash"), Trigger.now()
        )
    finally:
        await app.stop()


async def stored_job_status(url: str, job_id: JobId) -> tuple[JobStatus, int]:
    app = sample_app.build_app(url)
    await app.start(background=False)
    try:
        job = await app.get_job(job_id)
    finally:
        await app.stop()
    return job.status, job.attempts


async def test_killed_job_runs_again(
    database_url: str, start_node: Callable[[], Awaitable[FantasmaProcess]]
) -> None:
    job_id = await schedule_blocking_job(database_url)

    first = await start_node()
    await first.wait_for_stdout(lambda line: line == f"started {job_id} attempt 1")
    first.process.send_signal(signal.SIGKILL)
    killed_status = await first.wait()

    second = await start_node()
    restarted = await second.wait_for_stdout(lambda line: line.startswith("started "))
    recorded = await second.wait_for_stdout(lambda line: line.startswith("recorded "))
    second.process.send_signal(signal.SIGTERM)
    stopped_status = await second.wait()
    status, attempts = await stored_job_status(database_url, job_id)

    assert killed_status == -signal.SIGKILL
    assert restarted == f"started {job_id} attempt 2"
    assert recorded == f"recorded {job_id} attempt 2 succeeded"
    assert stopped_status == 0
    assert status is JobStatus.SUCCEEDED
    assert attempts == 2
