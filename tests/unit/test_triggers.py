"""Tests for triggers: when a job scheduled with each kind of trigger falls due."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from fantasma import (
    ConfigurationError,
    Cron,
    InvalidCronExpression,
    InvalidTriggerError,
    JobContext,
    JobHandler,
    MisfirePolicy,
    OneOffTrigger,
    RecurringTrigger,
    Trigger,
)
from tests.helpers import START, Simulation


@dataclass
class Tick:
    number: int


class TickHandler(JobHandler[Tick]):
    async def handle(self, data: Tick, context: JobContext) -> None:
        pass


async def _due_at_of(trigger: OneOffTrigger) -> datetime:
    """Schedule a job at START and return the due time storage keeps for it."""
    async with Simulation(TickHandler) as sim:
        job_id = await sim.app.schedule("tick", Tick(1), trigger)
        job = await sim.app.get_job(job_id)
    return job.due_at


# Trigger.now


@pytest.mark.asyncio
async def test_now_due_at_schedule_time() -> None:
    assert await _due_at_of(Trigger.now()) == START


@pytest.mark.asyncio
async def test_now_runs_at_next_pass() -> None:
    async with Simulation(TickHandler) as sim:
        await sim.app.schedule("tick", Tick(1), Trigger.now())
        await sim.advance()

    assert [run.started_at for run in sim.runs] == [START]


# Trigger.at


@pytest.mark.asyncio
async def test_at_due_at_given_instant() -> None:
    when = START + timedelta(hours=3)

    assert await _due_at_of(Trigger.at(when)) == when


@pytest.mark.asyncio
async def test_at_other_zone_converted() -> None:
    when = datetime(2030, 1, 1, 9, 30, tzinfo=ZoneInfo("Europe/Berlin"))

    due_at = await _due_at_of(Trigger.at(when))

    assert due_at == datetime(2030, 1, 1, 8, 30, tzinfo=UTC)
    assert due_at.tzinfo is UTC


@pytest.mark.asyncio
async def test_at_fixed_offset_converted() -> None:
    when = datetime(2030, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=-5)))

    due_at = await _due_at_of(Trigger.at(when))

    assert due_at == datetime(2030, 1, 1, 6, 0, tzinfo=UTC)
    assert due_at.tzinfo is UTC


@pytest.mark.asyncio
async def test_at_past_instant_runs_at_once() -> None:
    async with Simulation(TickHandler) as sim:
        await sim.app.schedule("tick", Tick(1), Trigger.at(START - timedelta(days=1)))
        await sim.advance()

    assert [run.started_at for run in sim.runs] == [START]


def test_at_naive_datetime_rejected() -> None:
    message = (
        "Trigger.at needs an aware datetime, got naive "
        "datetime.datetime(2030, 1, 1, 0, 0); attach a time zone, e.g. "
        "when.replace(tzinfo=UTC)"
    )
    with pytest.raises(InvalidTriggerError, match=rf"^{re.escape(message)}$"):
        Trigger.at(datetime(2030, 1, 1))


# Trigger.after


@pytest.mark.asyncio
async def test_after_timedelta() -> None:
    async with Simulation(TickHandler) as sim:
        job_id = await sim.app.schedule(
            "tick", Tick(1), Trigger.after(timedelta(minutes=90))
        )
        job = await sim.app.get_job(job_id)

    assert job.due_at == START + timedelta(minutes=90)


@pytest.mark.asyncio
async def test_after_keyword_amounts_add_up() -> None:
    due_at = await _due_at_of(
        Trigger.after(days=1, hours=2, minutes=3, seconds=4, milliseconds=5)
    )

    assert due_at == START + timedelta(
        days=1, hours=2, minutes=3, seconds=4, milliseconds=5
    )


@pytest.mark.asyncio
async def test_after_fractional_seconds() -> None:
    assert await _due_at_of(Trigger.after(seconds=0.25)) == START + timedelta(
        milliseconds=250
    )


@pytest.mark.asyncio
async def test_after_counts_from_schedule_time() -> None:
    async with Simulation(TickHandler) as sim:
        await sim.advance(timedelta(hours=1))
        job_id = await sim.app.schedule("tick", Tick(1), Trigger.after(minutes=5))
        job = await sim.app.get_job(job_id)

    assert job.due_at == START + timedelta(hours=1, minutes=5)


def test_after_nothing_means_now() -> None:
    assert Trigger.after().due_at(START) == START


def test_after_negative_timedelta_rejected() -> None:
    message = (
        "Trigger.after needs a delay of zero or more, got "
        "datetime.timedelta(days=-1, seconds=86399)"
    )
    with pytest.raises(InvalidTriggerError, match=rf"^{re.escape(message)}$"):
        Trigger.after(timedelta(seconds=-1))


def test_after_negative_keywords_rejected() -> None:
    message = (
        "Trigger.after needs a delay of zero or more, got "
        "datetime.timedelta(days=-1, seconds=86340)"
    )
    with pytest.raises(InvalidTriggerError, match=rf"^{re.escape(message)}$"):
        Trigger.after(minutes=-1)


def test_after_both_forms_rejected() -> None:
    message = "Trigger.after takes a timedelta or keyword amounts, not both"
    with pytest.raises(InvalidTriggerError, match=rf"^{re.escape(message)}$"):
        Trigger.after(timedelta(minutes=1), seconds=30)


# Trigger.recurring


def test_recurring_defaults() -> None:
    trigger = Trigger.recurring("poll", "*/10 * * * * *")

    assert trigger == RecurringTrigger(
        recurring_id="poll",
        cron=Cron("*/10 * * * * *", "UTC"),
        misfire=MisfirePolicy.once(),
        allow_overlap=False,
    )


def test_recurring_options_kept() -> None:
    trigger = Trigger.recurring(
        "report",
        "0 0 2 * * *",
        timezone="Europe/Berlin",
        misfire=MisfirePolicy.each(3),
        allow_overlap=True,
    )

    assert trigger == RecurringTrigger(
        recurring_id="report",
        cron=Cron("0 0 2 * * *", "Europe/Berlin"),
        misfire=MisfirePolicy.each(3),
        allow_overlap=True,
    )


def test_recurring_empty_id_rejected() -> None:
    message = "Trigger.recurring needs a non-empty recurring_id"
    with pytest.raises(InvalidTriggerError, match=rf"^{re.escape(message)}$"):
        Trigger.recurring("", "* * * * * *")


def test_recurring_invalid_cron_rejected() -> None:
    message = "invalid cron expression '61 * * * *': minute must be 0-59, got 61"
    with pytest.raises(InvalidCronExpression, match=rf"^{re.escape(message)}$"):
        Trigger.recurring("poll", "61 * * * *")


def test_recurring_unknown_zone_rejected() -> None:
    message = (
        "unknown time zone 'Mars/Base', use an IANA name such as "
        "'Europe/Berlin' or 'UTC'"
    )
    with pytest.raises(ConfigurationError, match=rf"^{re.escape(message)}$"):
        Trigger.recurring("poll", "* * * * * *", timezone="Mars/Base")


@pytest.mark.asyncio
async def test_recurring_schedule_returns_id() -> None:
    async with Simulation(TickHandler) as sim:
        returned = await sim.app.schedule(
            "tick", Tick(1), Trigger.recurring("ticker", "0 * * * * *")
        )

    assert returned == "ticker"


@pytest.mark.asyncio
async def test_recurring_first_fire_after_now() -> None:
    async with Simulation(TickHandler) as sim:
        await sim.app.schedule(
            "tick", Tick(1), Trigger.recurring("ticker", "0 0 9 * * *")
        )
        recurring = await sim.app.get_recurring_job("ticker")

    assert recurring is not None
    assert recurring.next_fire_at == START + timedelta(hours=9)


@pytest.mark.asyncio
async def test_recurring_zone_reads_fields() -> None:
    async with Simulation(TickHandler) as sim:
        await sim.app.schedule(
            "tick",
            Tick(1),
            Trigger.recurring("ticker", "0 0 9 * * *", timezone="Europe/Berlin"),
        )
        recurring = await sim.app.get_recurring_job("ticker")

    assert recurring is not None
    assert recurring.next_fire_at == START + timedelta(hours=8)
