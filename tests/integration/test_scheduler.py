"""Tests for a scheduler node running jobs: one-off runs, retries, recurring schedules.

Most tests drive one node on a FakeClock with the deterministic executor and
memory storage. Tests of overlapping occurrences use the AsyncioExecutor on a
FakeClock, so that a handler can stay running while the fake time moves. The
real-time tests at the end run the node's own loop on the system clock.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest

from fantasma import (
    AsyncioExecutor,
    ConfigurationError,
    Fantasma,
    JobContext,
    JobHandler,
    JobId,
    JobNotFoundError,
    JobStatus,
    MemoryStorage,
    MisfirePolicy,
    RunOutcome,
    SystemClock,
    Trigger,
)
from fantasma_testing import FakeClock
from tests.helpers import (
    QUIET_CLUSTER,
    START,
    WAIT,
    IdleSignalClock,
    Simulation,
    collect_runs,
    signal_on_runs,
)


@dataclass
class Tick:
    number: int


class TickHandler(JobHandler[Tick]):
    async def handle(self, data: Tick, context: JobContext) -> None:
        pass


class FailingHandler(JobHandler[Tick]):
    max_attempts = 4
    retry_backoff = 10.0
    retry_jitter = 0.0

    async def handle(self, data: Tick, context: JobContext) -> None:
        raise ValueError(f"card {data.number} declined")


def seconds(amount: float) -> timedelta:
    return timedelta(seconds=amount)


def minutes(amount: float) -> timedelta:
    return timedelta(minutes=amount)


def hours(amount: float) -> timedelta:
    return timedelta(hours=amount)


# One-off jobs on fake time


@pytest.mark.asyncio
async def test_job_not_run_before_due() -> None:
    async with Simulation(TickHandler) as sim:
        await sim.app.schedule("tick", Tick(1), Trigger.after(minutes=5))
        await sim.advance(minutes(5) - timedelta(microseconds=1))

    assert sim.runs == []


@pytest.mark.asyncio
async def test_job_runs_at_due_time() -> None:
    async with Simulation(TickHandler) as sim:
        await sim.app.schedule("tick", Tick(1), Trigger.after(minutes=5))
        await sim.advance(hours(1))

    assert [run.started_at for run in sim.runs] == [START + minutes(5)]


@pytest.mark.asyncio
async def test_jobs_run_in_due_order() -> None:
    order: list[int] = []

    class OrderHandler(JobHandler[Tick]):
        async def handle(self, data: Tick, context: JobContext) -> None:
            order.append(data.number)

    async with Simulation(OrderHandler) as sim:
        await sim.app.schedule("tick", Tick(3), Trigger.after(minutes=3))
        await sim.app.schedule("tick", Tick(1), Trigger.after(minutes=1))
        await sim.app.schedule("tick", Tick(2), Trigger.after(minutes=1))
        await sim.advance(hours(1))

    assert order == [1, 2, 3]


@pytest.mark.asyncio
async def test_context_describes_run() -> None:
    contexts: list[JobContext] = []
    now_in_handler: list[datetime] = []

    class ContextHandler(JobHandler[Tick]):
        async def handle(self, data: Tick, context: JobContext) -> None:
            contexts.append(context)
            now_in_handler.append(context.clock.now())

    async with Simulation(ContextHandler) as sim:
        job_id = await sim.app.schedule("report", Tick(1), Trigger.after(minutes=5))
        await sim.advance(hours(1))

    (context,) = contexts
    assert context.job_id == job_id
    assert context.name == "report"
    assert context.attempt == 1
    assert context.max_attempts == 3
    assert context.due_at == START + minutes(5)
    assert context.fire_time is None
    assert context.recurring_id is None
    assert context.node_id == sim.app.node_id
    assert context.app is sim.app
    assert now_in_handler == [START + minutes(5)]


@pytest.mark.asyncio
async def test_handler_schedules_follow_up() -> None:
    seen: list[int] = []

    class ChainHandler(JobHandler[Tick]):
        async def handle(self, data: Tick, context: JobContext) -> None:
            seen.append(data.number)
            if data.number < 3:
                await context.app.schedule(
                    "chain", Tick(data.number + 1), Trigger.now()
                )

    async with Simulation(ChainHandler) as sim:
        await sim.app.schedule("chain", Tick(1), Trigger.now())
        await sim.advance()

    assert seen == [1, 2, 3]


@pytest.mark.asyncio
async def test_success_marks_succeeded() -> None:
    async with Simulation(TickHandler) as sim:
        job_id = await sim.app.schedule("tick", Tick(1), Trigger.after(seconds=30))
        await sim.advance(minutes(1))
        job = await sim.app.get_job(job_id)

    assert job.status is JobStatus.SUCCEEDED
    assert job.attempts == 1
    assert job.finished_at == START + seconds(30)
    assert job.last_error is None
    assert job.lease_owner is None


@pytest.mark.asyncio
async def test_run_reports_success() -> None:
    async with Simulation(TickHandler) as sim:
        job_id = await sim.app.schedule("tick", Tick(1), Trigger.now())
        await sim.advance()

    (run,) = sim.runs
    assert run.job_id == job_id
    assert run.outcome is RunOutcome.SUCCEEDED
    assert run.attempt == 1
    assert run.error is None


# Failures and retries


@pytest.mark.asyncio
async def test_retries_back_off_exponentially() -> None:
    """Backoff 10 s doubles: retries 10 s, 20 s and 40 s after each failure."""
    async with Simulation(FailingHandler) as sim:
        await sim.app.schedule("pay", Tick(1), Trigger.now())
        await sim.advance(hours(1))

    assert [run.started_at for run in sim.runs] == [
        START,
        START + seconds(10),
        START + seconds(30),
        START + seconds(70),
    ]


@pytest.mark.asyncio
async def test_retry_attempt_numbers_increase() -> None:
    attempts: list[int] = []

    class CountingHandler(FailingHandler):
        async def handle(self, data: Tick, context: JobContext) -> None:
            attempts.append(context.attempt)
            await super().handle(data, context)

    async with Simulation(CountingHandler) as sim:
        await sim.app.schedule("pay", Tick(1), Trigger.now())
        await sim.advance(hours(1))

    assert attempts == [1, 2, 3, 4]


@pytest.mark.asyncio
async def test_retry_stays_failed_until_due() -> None:
    async with Simulation(FailingHandler) as sim:
        job_id = await sim.app.schedule("pay", Tick(1), Trigger.now())
        await sim.advance(seconds(5))
        job = await sim.app.get_job(job_id)

    assert job.status is JobStatus.FAILED
    assert job.due_at == START + seconds(10)
    assert job.attempts == 1


@pytest.mark.asyncio
async def test_dead_after_max_attempts() -> None:
    async with Simulation(FailingHandler) as sim:
        job_id = await sim.app.schedule("pay", Tick(1), Trigger.now())
        await sim.advance(hours(1))
        job = await sim.app.get_job(job_id)

    assert sim.outcomes() == [
        RunOutcome.FAILED,
        RunOutcome.FAILED,
        RunOutcome.FAILED,
        RunOutcome.DEAD,
    ]
    assert job.status is JobStatus.DEAD
    assert job.attempts == 4
    assert job.finished_at == START + seconds(70)


@pytest.mark.asyncio
async def test_last_error_names_exception() -> None:
    async with Simulation(FailingHandler) as sim:
        job_id = await sim.app.schedule("pay", Tick(42), Trigger.now())
        await sim.advance()
        job = await sim.app.get_job(job_id)

    assert job.last_error is not None
    assert job.last_error.startswith("Traceback (most recent call last):")
    assert job.last_error.endswith("ValueError: card 42 declined")


@pytest.mark.asyncio
async def test_run_reports_error() -> None:
    async with Simulation(FailingHandler) as sim:
        await sim.app.schedule("pay", Tick(42), Trigger.now())
        await sim.advance()

    (run,) = sim.runs
    assert run.outcome is RunOutcome.FAILED
    assert run.error is not None
    assert run.error.endswith("ValueError: card 42 declined")


@pytest.mark.asyncio
async def test_backoff_capped_at_maximum() -> None:
    """Delays 10, 20, then 25 twice, because the cap is 25 s."""

    class CappedHandler(FailingHandler):
        max_attempts = 5
        retry_backoff_max = 25.0

    async with Simulation(CappedHandler) as sim:
        await sim.app.schedule("pay", Tick(1), Trigger.now())
        await sim.advance(hours(1))

    assert [run.started_at for run in sim.runs] == [
        START,
        START + seconds(10),
        START + seconds(30),
        START + seconds(55),
        START + seconds(80),
    ]


@pytest.mark.asyncio
async def test_retry_jitter_within_bounds() -> None:
    """Jitter 0.5 stretches or shrinks a 10 s backoff to between 5 s and 15 s."""

    class JitteryHandler(FailingHandler):
        retry_jitter = 0.5

    async with Simulation(JitteryHandler) as sim:
        for number in range(50):
            await sim.app.schedule("pay", Tick(number), Trigger.now())
        await sim.advance()
        retries = await sim.app.list_jobs(statuses={JobStatus.FAILED})

    delays = [(job.due_at - START).total_seconds() for job in retries]
    assert len(delays) == 50
    assert min(delays) >= 5.0
    assert max(delays) <= 15.0
    assert max(delays) - min(delays) > 5.0


@pytest.mark.asyncio
async def test_retry_jitter_repeats_with_seed() -> None:
    class JitteryHandler(FailingHandler):
        retry_jitter = 0.5

    async def retry_times(seed: int) -> list[datetime]:
        async with Simulation(JitteryHandler, seed=seed) as sim:
            for number in range(5):
                await sim.app.schedule("pay", Tick(number), Trigger.now())
            await sim.advance()
            return [job.due_at for job in await sim.app.list_jobs()]

    assert await retry_times(seed=7) == await retry_times(seed=7)


@pytest.mark.asyncio
@pytest.mark.parametrize("limit", [None, 60.0], ids=["no-limit", "limit-not-hit"])
async def test_handler_timeout_error_kept(limit: float | None) -> None:
    """A TimeoutError raised by the handler itself is not reported as its timeout."""

    class UpstreamHandler(JobHandler[Tick]):
        max_attempts = 1
        timeout = limit

        async def handle(self, data: Tick, context: JobContext) -> None:
            raise TimeoutError("upstream took too long")

    async with Simulation(UpstreamHandler) as sim:
        job_id = await sim.app.schedule("call", Tick(1), Trigger.now())
        await sim.advance()
        job = await sim.app.get_job(job_id)

    assert job.last_error is not None
    assert job.last_error.endswith("TimeoutError: upstream took too long")


# Cancelling and looking up jobs


@pytest.mark.asyncio
async def test_cancel_before_run() -> None:
    async with Simulation(TickHandler) as sim:
        job_id = await sim.app.schedule("tick", Tick(1), Trigger.after(minutes=5))
        cancelled = await sim.app.cancel(job_id)
        await sim.advance(hours(1))
        job = await sim.app.get_job(job_id)

    assert cancelled is True
    assert sim.runs == []
    assert job.status is JobStatus.CANCELLED
    assert job.finished_at == START


@pytest.mark.asyncio
async def test_cancel_waiting_retry() -> None:
    async with Simulation(FailingHandler) as sim:
        job_id = await sim.app.schedule("pay", Tick(1), Trigger.now())
        await sim.advance()
        cancelled = await sim.app.cancel(job_id)
        await sim.advance(hours(1))
        job = await sim.app.get_job(job_id)

    assert cancelled is True
    assert len(sim.runs) == 1
    assert job.status is JobStatus.CANCELLED


@pytest.mark.asyncio
async def test_cancel_running_returns_false() -> None:
    results: list[bool] = []

    class SelfCancellingHandler(JobHandler[Tick]):
        async def handle(self, data: Tick, context: JobContext) -> None:
            results.append(await context.app.cancel(context.job_id))

    async with Simulation(SelfCancellingHandler) as sim:
        job_id = await sim.app.schedule("tick", Tick(1), Trigger.now())
        await sim.advance()
        job = await sim.app.get_job(job_id)

    assert results == [False]
    assert job.status is JobStatus.SUCCEEDED


@pytest.mark.asyncio
async def test_cancel_finished_returns_false() -> None:
    async with Simulation(TickHandler) as sim:
        job_id = await sim.app.schedule("tick", Tick(1), Trigger.now())
        await sim.advance()
        cancelled = await sim.app.cancel(job_id)
        job = await sim.app.get_job(job_id)

    assert cancelled is False
    assert job.status is JobStatus.SUCCEEDED


@pytest.mark.asyncio
async def test_cancel_unknown_returns_false() -> None:
    async with Simulation(TickHandler) as sim:
        cancelled = await sim.app.cancel(JobId("missing"))

    assert cancelled is False


@pytest.mark.asyncio
async def test_get_unknown_job_raises() -> None:
    async with Simulation(TickHandler) as sim:
        with pytest.raises(JobNotFoundError, match=r"^job 'missing' not found$"):
            await sim.app.get_job(JobId("missing"))


@pytest.mark.asyncio
async def test_not_found_error_carries_id() -> None:
    async with Simulation(TickHandler) as sim:
        with pytest.raises(JobNotFoundError) as caught:
            await sim.app.get_job(JobId("missing"))

    assert caught.value.job_id == "missing"


@pytest.mark.asyncio
async def test_schedule_before_start_rejected() -> None:
    sim = Simulation(TickHandler)

    message = (
        "cannot call schedule() before the scheduler starts; use 'async with "
        "app:' or await app.start() first"
    )
    with pytest.raises(ConfigurationError, match=rf"^{re.escape(message)}$"):
        await sim.app.schedule("tick", Tick(1), Trigger.now())


@pytest.mark.asyncio
async def test_start_twice_rejected() -> None:
    async with Simulation(TickHandler) as sim:
        with pytest.raises(
            ConfigurationError, match=r"^this scheduler is already running$"
        ):
            await sim.app.start(background=False)


# Recurring jobs


def _declare_ticker(
    sim: Simulation,
    cron: str = "*/10 * * * * *",
    *,
    number: int = 1,
    misfire: MisfirePolicy | None = None,
    allow_overlap: bool = False,
) -> None:
    sim.app.add_recurring_job(
        "tick",
        "ticker",
        cron,
        Tick(number),
        misfire=misfire,
        allow_overlap=allow_overlap,
    )


@pytest.mark.asyncio
async def test_declared_recurring_stored_at_start() -> None:
    sim = Simulation(TickHandler)
    _declare_ticker(sim)

    async with sim:
        recurring = await sim.app.get_recurring_job("ticker")

    assert recurring is not None
    assert recurring.cron == "*/10 * * * * *"
    assert recurring.next_fire_at == START + seconds(10)
    assert recurring.misfire == MisfirePolicy.once()
    assert recurring.allow_overlap is False


@pytest.mark.asyncio
async def test_unchanged_declaration_logged_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = Simulation(TickHandler)
    _declare_ticker(first)
    async with first:
        pass
    second = Simulation(TickHandler, storage=first.storage)
    _declare_ticker(second)
    caplog.set_level(logging.INFO, logger="fantasma.scheduler")

    async with second:
        pass

    changes = [r.message for r in caplog.records if "recurring job" in r.message]
    assert changes == []


@pytest.mark.asyncio
async def test_changed_declaration_logged_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = Simulation(TickHandler)
    _declare_ticker(first)
    async with first:
        pass
    second = Simulation(TickHandler, storage=first.storage)
    _declare_ticker(second, "*/20 * * * * *")
    caplog.set_level(logging.INFO, logger="fantasma.scheduler")

    async with second:
        pass

    changes = [r.message for r in caplog.records if "recurring job" in r.message]
    assert len(changes) == 1
    assert changes[0].startswith("updated recurring job ticker (*/20 * * * * *, UTC)")


@pytest.mark.asyncio
async def test_declared_recurring_runs_on_schedule() -> None:
    sim = Simulation(TickHandler)
    _declare_ticker(sim)

    async with sim:
        await sim.advance(minutes(1))

    assert [run.fire_time for run in sim.runs] == [
        START + seconds(10 * n) for n in range(1, 7)
    ]


@pytest.mark.asyncio
async def test_occurrence_context_has_fire_time() -> None:
    contexts: list[JobContext] = []

    class ContextHandler(JobHandler[Tick]):
        async def handle(self, data: Tick, context: JobContext) -> None:
            contexts.append(context)

    sim = Simulation(ContextHandler)
    _declare_ticker(sim)
    async with sim:
        await sim.advance(seconds(10))

    (context,) = contexts
    assert context.fire_time == START + seconds(10)
    assert context.due_at == START + seconds(10)
    assert context.recurring_id == "ticker"
    assert context.name == "tick"


@pytest.mark.asyncio
async def test_declare_on_running_scheduler_rejected() -> None:
    async with Simulation(TickHandler) as sim:
        message = (
            "cannot declare recurring job 'ticker' on a running scheduler; use "
            "await app.schedule(name, data, Trigger.recurring(recurring_id, "
            "cron)) instead"
        )
        with pytest.raises(ConfigurationError, match=rf"^{re.escape(message)}$"):
            _declare_ticker(sim)


@pytest.mark.asyncio
async def test_declare_again_replaces_declaration() -> None:
    sim = Simulation(TickHandler)
    _declare_ticker(sim, "0 0 * * * *")
    _declare_ticker(sim, "0 30 * * * *")

    async with sim:
        recurring = await sim.app.get_recurring_job("ticker")

    assert recurring is not None
    assert recurring.cron == "0 30 * * * *"


@pytest.mark.asyncio
async def test_schedule_same_id_changes_cron() -> None:
    async with Simulation(TickHandler) as sim:
        hourly = Trigger.recurring("ticker", "0 0 * * * *")
        await sim.app.schedule("tick", Tick(1), hourly)
        await sim.advance(minutes(10))
        quarterly = Trigger.recurring("ticker", "0 */15 * * * *")
        await sim.app.schedule("tick", Tick(1), quarterly)
        recurring = await sim.app.get_recurring_job("ticker")
        await sim.advance(minutes(50))

    assert recurring is not None
    assert recurring.next_fire_at == START + minutes(15)
    assert [run.fire_time for run in sim.runs] == [
        START + minutes(15),
        START + minutes(30),
        START + minutes(45),
        START + minutes(60),
    ]


@pytest.mark.asyncio
async def test_schedule_same_id_updates_data() -> None:
    numbers: list[int] = []

    class NumberHandler(JobHandler[Tick]):
        async def handle(self, data: Tick, context: JobContext) -> None:
            numbers.append(data.number)

    async with Simulation(NumberHandler) as sim:
        trigger = Trigger.recurring("ticker", "0 * * * * *")
        await sim.app.schedule("tick", Tick(1), trigger)
        await sim.advance(minutes(1))
        await sim.app.schedule("tick", Tick(2), trigger)
        await sim.advance(minutes(1))

    assert numbers == [1, 2]


@pytest.mark.asyncio
async def test_remove_recurring_stops_occurrences() -> None:
    sim = Simulation(TickHandler)
    _declare_ticker(sim)

    async with sim:
        await sim.advance(seconds(10))
        removed = await sim.app.remove_recurring_job("ticker")
        await sim.advance(hours(1))
        recurring = await sim.app.get_recurring_job("ticker")

    assert removed is True
    assert [run.fire_time for run in sim.runs] == [START + seconds(10)]
    assert recurring is None


@pytest.mark.asyncio
async def test_remove_unknown_recurring_returns_false() -> None:
    async with Simulation(TickHandler) as sim:
        removed = await sim.app.remove_recurring_job("missing")

    assert removed is False


@pytest.mark.asyncio
async def test_remove_keeps_enqueued_occurrence() -> None:
    """Lookahead enqueues 00:00:10 at 00:00:09; removal leaves that job to run."""
    sim = Simulation(TickHandler)
    _declare_ticker(sim)

    async with sim:
        await sim.advance(seconds(9))
        await sim.app.remove_recurring_job("ticker")
        await sim.advance(hours(1))

    assert [run.fire_time for run in sim.runs] == [START + seconds(10)]


# Recurring jobs across a restart


async def _run_first_node(
    storage: MemoryStorage,
    clock: FakeClock,
    *,
    misfire: MisfirePolicy | None = None,
) -> list[datetime | None]:
    """Run an hourly schedule from 00:00 to 01:30 on a node, then stop the node."""
    first = Simulation(TickHandler, storage=storage, clock=clock)
    _declare_ticker(first, "0 0 * * * *", misfire=misfire)
    async with first:
        await first.advance(hours(1.5))
    return [run.fire_time for run in first.runs]


async def _runs_after_downtime(
    misfire: MisfirePolicy, back_at: datetime
) -> list[tuple[datetime | None, datetime]]:
    """Stop the node at 01:30, start a new one at ``back_at`` and run it an hour.

    Returns the (fire time, start time) of each run of the new node.
    """
    storage = MemoryStorage()
    clock = FakeClock(START)
    await _run_first_node(storage, clock, misfire=misfire)

    clock.set(back_at)
    async with Simulation(TickHandler, storage=storage, clock=clock) as second:
        await second.advance(hours(1))
    return [(run.fire_time, run.started_at) for run in second.runs]


@pytest.mark.asyncio
async def test_first_node_runs_hourly() -> None:
    storage = MemoryStorage()

    fire_times = await _run_first_node(storage, FakeClock(START))

    assert fire_times == [START + hours(1)]


@pytest.mark.asyncio
async def test_misfire_skip_after_downtime() -> None:
    """Missed 02:00, 03:00 and 04:00: none runs, 05:00 runs on time."""
    runs = await _runs_after_downtime(MisfirePolicy.skip(), START + hours(4.5))

    assert runs == [(START + hours(5), START + hours(5))]


@pytest.mark.asyncio
async def test_misfire_once_after_downtime() -> None:
    """Missed 02:00, 03:00 and 04:00: one catch-up run at 04:30, then 05:00."""
    runs = await _runs_after_downtime(MisfirePolicy.once(), START + hours(4.5))

    assert runs == [
        (START + hours(2), START + hours(4.5)),
        (START + hours(5), START + hours(5)),
    ]


@pytest.mark.asyncio
async def test_misfire_each_after_downtime() -> None:
    """Missed 02:00, 03:00 and 04:00: each runs at 04:30, then 05:00."""
    runs = await _runs_after_downtime(MisfirePolicy.each(3), START + hours(4.5))

    assert runs == [
        (START + hours(2), START + hours(4.5)),
        (START + hours(3), START + hours(4.5)),
        (START + hours(4), START + hours(4.5)),
        (START + hours(5), START + hours(5)),
    ]


@pytest.mark.asyncio
async def test_misfire_each_keeps_latest() -> None:
    """Missed 02:00 to 06:00: only the latest three run at 06:30, then 07:00."""
    runs = await _runs_after_downtime(MisfirePolicy.each(3), START + hours(6.5))

    assert runs == [
        (START + hours(4), START + hours(6.5)),
        (START + hours(5), START + hours(6.5)),
        (START + hours(6), START + hours(6.5)),
        (START + hours(7), START + hours(7)),
    ]


@pytest.mark.asyncio
async def test_same_cron_keeps_position() -> None:
    """Declaring the unchanged schedule again keeps its missed 02:00 fire time."""
    storage = MemoryStorage()
    clock = FakeClock(START)
    await _run_first_node(storage, clock)
    clock.set(START + hours(4.5))

    second = Simulation(TickHandler, storage=storage, clock=clock)
    _declare_ticker(second, "0 0 * * * *", number=2)
    async with second:
        recurring = await second.app.get_recurring_job("ticker")
        await second.advance()

    assert recurring is not None
    assert recurring.next_fire_at == START + hours(2)
    assert [run.fire_time for run in second.runs] == [START + hours(2)]


@pytest.mark.asyncio
async def test_changed_cron_recomputes_position() -> None:
    """A new cron starts from now, so fire times missed under the old one are gone."""
    storage = MemoryStorage()
    clock = FakeClock(START)
    await _run_first_node(storage, clock)
    clock.set(START + hours(4.5))

    second = Simulation(TickHandler, storage=storage, clock=clock)
    _declare_ticker(second, "0 45 * * * *")
    async with second:
        recurring = await second.app.get_recurring_job("ticker")
        await second.advance(minutes(30))

    assert recurring is not None
    assert recurring.next_fire_at == START + hours(4.75)
    assert [run.fire_time for run in second.runs] == [START + hours(4.75)]


# Overlapping occurrences


class _HeldHandlerState:
    """Lets a test hold the first run of a handler until it releases it."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.fire_times: list[datetime | None] = []


def _held_handler(state: _HeldHandlerState) -> type[JobHandler[Tick]]:
    class HeldHandler(JobHandler[Tick]):
        async def handle(self, data: Tick, context: JobContext) -> None:
            state.fire_times.append(context.fire_time)
            if len(state.fire_times) == 1:
                state.started.set()
                await state.release.wait()

    return HeldHandler


@pytest.mark.asyncio
async def test_running_occurrence_blocks_next() -> None:
    state = _HeldHandlerState()
    sim = Simulation(_held_handler(state), executor=AsyncioExecutor(concurrency=5))
    _declare_ticker(sim)

    async with sim:
        await sim.advance(seconds(10))
        await asyncio.wait_for(state.started.wait(), WAIT)
        await sim.advance(seconds(65))
        jobs = await sim.app.list_jobs(recurring_id="ticker")
        state.release.set()

    assert [job.fire_time for job in jobs] == [START + seconds(10)]


@pytest.mark.asyncio
async def test_blocked_fire_times_go_to_misfire() -> None:
    """Held from 00:00:10 to 00:01:15: one catch-up for 00:00:20, then 00:01:20."""
    state = _HeldHandlerState()
    sim = Simulation(_held_handler(state), executor=AsyncioExecutor(concurrency=5))
    _declare_ticker(sim)

    async with sim:
        await sim.advance(seconds(10))
        await asyncio.wait_for(state.started.wait(), WAIT)
        await sim.advance(seconds(65))
        held_done = signal_on_runs(sim.app)
        state.release.set()
        await asyncio.wait_for(held_done.wait(), WAIT)

        catch_up_done = signal_on_runs(sim.app)
        await sim.advance()
        await asyncio.wait_for(catch_up_done.wait(), WAIT)

        next_done = signal_on_runs(sim.app)
        await sim.advance(seconds(5))
        await asyncio.wait_for(next_done.wait(), WAIT)

    assert state.fire_times == [
        START + seconds(10),
        START + seconds(20),
        START + seconds(80),
    ]
    assert [run.started_at for run in sim.runs] == [
        START + seconds(10),
        START + seconds(75),
        START + seconds(80),
    ]


@pytest.mark.asyncio
async def test_allow_overlap_runs_concurrently() -> None:
    state = _HeldHandlerState()
    sim = Simulation(_held_handler(state), executor=AsyncioExecutor(concurrency=5))
    _declare_ticker(sim, allow_overlap=True)

    async with sim:
        await sim.advance(seconds(10))
        await asyncio.wait_for(state.started.wait(), WAIT)
        others_done = signal_on_runs(sim.app, count=3)
        await sim.advance(seconds(30))
        await asyncio.wait_for(others_done.wait(), WAIT)
        state.release.set()

    assert state.fire_times == [
        START + seconds(10),
        START + seconds(20),
        START + seconds(30),
        START + seconds(40),
    ]


# The node's own loop on real time


def _real_time_app(
    handler: type[JobHandler[Tick]],
    *,
    clock: SystemClock | None = None,
    concurrency: int = 10,
) -> Fantasma:
    app = Fantasma(
        MemoryStorage(),
        clock=clock,
        concurrency=concurrency,
        poll_interval=seconds(60),
        cluster=QUIET_CLUSTER,
        shutdown_grace=seconds(1),
    )
    app.register(handler)
    return app


@pytest.mark.asyncio
async def test_schedule_wakes_idle_loop() -> None:
    """The loop sleeps up to 60 s when idle; a local schedule cuts that short."""
    clock = IdleSignalClock()
    app = _real_time_app(TickHandler, clock=clock)
    ran = signal_on_runs(app)

    async with app:
        await asyncio.wait_for(clock.idle.wait(), WAIT)
        await app.schedule("tick", Tick(1), Trigger.now())
        await asyncio.wait_for(ran.wait(), WAIT)


@pytest.mark.asyncio
async def test_delayed_job_runs_after_due() -> None:
    app = _real_time_app(TickHandler, clock=SystemClock())
    ran = signal_on_runs(app)
    runs = collect_runs(app)

    async with app:
        job_id = await app.schedule("tick", Tick(1), Trigger.after(seconds=0.2))
        job = await app.get_job(job_id)
        await asyncio.wait_for(ran.wait(), WAIT)

    (run,) = runs
    assert run.started_at >= job.due_at


@pytest.mark.asyncio
async def test_concurrency_bound_respected() -> None:
    release = asyncio.Event()
    two_running = asyncio.Event()
    running: set[int] = set()
    peak: list[int] = []

    class BlockingHandler(JobHandler[Tick]):
        async def handle(self, data: Tick, context: JobContext) -> None:
            running.add(data.number)
            peak.append(len(running))
            if len(running) == 2:
                two_running.set()
            await release.wait()
            running.discard(data.number)

    app = _real_time_app(BlockingHandler, concurrency=2)
    all_done = signal_on_runs(app, count=5)

    async with app:
        for number in range(5):
            await app.schedule("block", Tick(number), Trigger.now())
        await asyncio.wait_for(two_running.wait(), WAIT)
        running_while_held = len(app.running_job_ids)
        release.set()
        await asyncio.wait_for(all_done.wait(), WAIT)

    assert running_while_held == 2
    assert max(peak) == 2
    assert len(peak) == 5


@pytest.mark.asyncio
async def test_sync_handler_runs_in_thread() -> None:
    threads: list[int] = []

    class SyncHandler(JobHandler[Tick]):
        def handle(self, data: Tick, context: JobContext) -> None:
            threads.append(threading.get_ident())

    app = _real_time_app(SyncHandler)
    ran = signal_on_runs(app)

    async with app:
        await app.schedule("sync", Tick(1), Trigger.now())
        await asyncio.wait_for(ran.wait(), WAIT)

    assert len(threads) == 1
    assert threads[0] != threading.get_ident()


@pytest.mark.asyncio
async def test_timeout_fails_attempt() -> None:
    never = asyncio.Event()

    class StuckHandler(JobHandler[Tick]):
        max_attempts = 1
        timeout = 0.05

        async def handle(self, data: Tick, context: JobContext) -> None:
            await never.wait()

    app = _real_time_app(StuckHandler)
    ran = signal_on_runs(app)
    runs = collect_runs(app)

    async with app:
        job_id = await app.schedule("stuck", Tick(1), Trigger.now())
        await asyncio.wait_for(ran.wait(), WAIT)
        job = await app.get_job(job_id)

    assert [run.outcome for run in runs] == [RunOutcome.DEAD]
    assert job.status is JobStatus.DEAD
    assert job.last_error is not None
    assert job.last_error.endswith(
        f"JobTimeoutError: job {job_id} timed out after 0.05 s"
    )


@pytest.mark.asyncio
async def test_timeout_leads_to_retry() -> None:
    attempts: list[int] = []
    never = asyncio.Event()

    class SlowOnceHandler(JobHandler[Tick]):
        max_attempts = 2
        retry_backoff = 0.01
        timeout = 0.05

        async def handle(self, data: Tick, context: JobContext) -> None:
            attempts.append(context.attempt)
            if context.attempt == 1:
                await never.wait()

    app = _real_time_app(SlowOnceHandler)
    both_done = signal_on_runs(app, count=2)
    runs = collect_runs(app)

    async with app:
        await app.schedule("slow", Tick(1), Trigger.now())
        await asyncio.wait_for(both_done.wait(), WAIT)

    assert attempts == [1, 2]
    assert [run.outcome for run in runs] == [RunOutcome.FAILED, RunOutcome.SUCCEEDED]
