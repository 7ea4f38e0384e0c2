"""Static checks of the public API's types, run by mypy and never executed.

Run with ``mypy --strict tests/typing``. Each ``assert_type`` fails the check
when a public signature changes its type. Each ``type: ignore[code]`` marks a
call that must stay a type error: under ``--strict``, mypy reports an ignore
that is no longer needed, so loosening such a signature fails the check too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import assert_type

from fantasma import (
    AsyncioExecutor,
    Clock,
    Executor,
    Fantasma,
    Job,
    JobContext,
    JobHandler,
    JobId,
    JobStatus,
    MemoryStorage,
    MisfirePolicy,
    OneOffTrigger,
    RecurringJob,
    RecurringTrigger,
    Run,
    Storage,
    SystemClock,
    Trigger,
)


@dataclass
class Report:
    recipient: str


class ReportHandler(JobHandler[Report]):
    max_attempts = 5
    timeout = 30.0

    async def handle(self, data: Report, context: JobContext) -> None:
        assert_type(context.job_id, JobId)
        assert_type(context.attempt, int)
        assert_type(context.due_at, datetime)
        assert_type(context.fire_time, datetime | None)
        assert_type(context.clock, Clock)
        assert_type(context.app, Fantasma)
        await context.app.schedule("follow-up", data, Trigger.after(minutes=1))


class SyncReportHandler(JobHandler[Report]):
    type_name = "reports.sync"

    def handle(self, data: Report, context: JobContext) -> None:
        context.logger.info("sending report")


def check_triggers(when: datetime) -> None:
    assert_type(Trigger.now(), OneOffTrigger)
    assert_type(Trigger.at(when), OneOffTrigger)
    assert_type(Trigger.after(timedelta(seconds=5)), OneOffTrigger)
    assert_type(Trigger.after(minutes=5), OneOffTrigger)
    assert_type(Trigger.recurring("poll", "*/10 * * * * *"), RecurringTrigger)
    assert_type(MisfirePolicy.each(3), MisfirePolicy)

    Trigger.at("2030-01-01T00:00:00Z")  # type: ignore[arg-type]
    Trigger.after(5)  # type: ignore[arg-type]
    Trigger.recurring("poll", "* * * * * *", misfire="once")  # type: ignore[arg-type]


def check_ports() -> None:
    clock: Clock = SystemClock()
    executor: Executor = AsyncioExecutor(concurrency=4)
    storage: Storage = MemoryStorage()
    assert_type(clock.now(), datetime)
    Fantasma(storage, clock=clock, executor=executor)
    Fantasma("memory://", concurrency=4, shutdown_grace=timedelta(seconds=10))

    Fantasma(storage, clock=datetime.now(UTC))  # type: ignore[arg-type]


async def check_scheduler(app: Fantasma) -> None:
    app.register(ReportHandler)
    app.add_recurring_job("nightly", "nightly", "0 0 2 * * *", Report("ops"))

    def on_run(run: Run) -> None:
        assert_type(run.job_id, JobId)

    app.add_run_listener(on_run)

    async with app as running:
        assert_type(running, Fantasma)
        job_id = await app.schedule("report", Report("ana"), Trigger.now())
        assert_type(job_id, JobId)
        recurring_id = await app.schedule(
            "poll", Report("bo"), Trigger.recurring("poll", "0 * * * * *")
        )
        assert_type(recurring_id, str)
        assert_type(
            await app.schedule_many([("report", Report("cy"), Trigger.now())]),
            list[JobId],
        )
        assert_type(await app.get_job(job_id), Job)
        assert_type((await app.get_job(job_id)).status, JobStatus)
        assert_type(await app.list_jobs(statuses={JobStatus.DEAD}), list[Job])
        assert_type(await app.cancel(job_id), bool)
        assert_type(await app.get_recurring_job("poll"), RecurringJob | None)
        assert_type(await app.remove_recurring_job("poll"), bool)
        assert_type(await app.run_pending(), datetime)
        assert_type(app.running_job_ids, set[JobId])

        await app.get_job("not-a-job-id")  # type: ignore[arg-type]
