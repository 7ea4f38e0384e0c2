"""Tests for plan_occurrence: on-time and missed fire times under each misfire policy.

Every expected value is worked out by hand from the hourly cron ``0 0 * * * *``
(or a daily one where stated) and a grace of one second, starting from
2030-01-01 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fantasma import MisfirePolicy, RecurringJob
from fantasma.cluster import OccurrencePlan, plan_occurrence

GRACE = timedelta(seconds=1)
HOURLY = "0 0 * * * *"


def at(hour: int, minute: int = 0, second: int = 0, microsecond: int = 0) -> datetime:
    """Return that time of 2030-01-01 in UTC."""
    return datetime(2030, 1, 1, hour, minute, second, microsecond, tzinfo=UTC)


def recurring(
    next_fire_at: datetime,
    misfire: MisfirePolicy,
    *,
    cron: str = HOURLY,
    timezone: str = "UTC",
) -> RecurringJob:
    return RecurringJob(
        id="hourly",
        name="hourly",
        cron=cron,
        timezone=timezone,
        type_name="tests.Tick",
        payload="{}",
        next_fire_at=next_fire_at,
        created_at=at(0),
        updated_at=at(0),
        misfire=misfire,
    )


def plan(
    next_fire_at: datetime, now: datetime, misfire: MisfirePolicy
) -> OccurrencePlan:
    return plan_occurrence(recurring(next_fire_at, misfire), now=now, grace=GRACE)


def enqueued_until_caught_up(
    next_fire_at: datetime, now: datetime, misfire: MisfirePolicy
) -> tuple[list[datetime], datetime]:
    """Apply plans as the leader does at a fixed ``now``.

    Returns the fire times enqueued and the schedule's final position.
    """
    enqueued: list[datetime] = []
    while next_fire_at <= now:
        step = plan(next_fire_at, now, misfire)
        if step.fire_time is not None:
            enqueued.append(step.fire_time)
        next_fire_at = step.next_fire_at
    return enqueued, next_fire_at


# On time


@pytest.mark.parametrize(
    "misfire",
    [MisfirePolicy.skip(), MisfirePolicy.once(), MisfirePolicy.each(3)],
    ids=str,
)
def test_on_time_fire_enqueued(misfire: MisfirePolicy) -> None:
    assert plan(at(10), at(10, 0, 0, 500_000), misfire) == OccurrencePlan(
        at(10), at(11), missed=False
    )


def test_early_fire_enqueued() -> None:
    """Lookahead plans an occurrence before its fire time."""
    assert plan(at(10), at(9, 59, 59), MisfirePolicy.skip()) == OccurrencePlan(
        at(10), at(11), missed=False
    )


def test_grace_boundary_still_on_time() -> None:
    assert plan(at(10), at(10, 0, 1), MisfirePolicy.skip()) == OccurrencePlan(
        at(10), at(11), missed=False
    )


def test_past_grace_is_missed() -> None:
    assert plan(at(10), at(10, 0, 1, 1), MisfirePolicy.skip()) == OccurrencePlan(
        None, at(11), missed=True
    )


# skip


def test_skip_moves_past_missed() -> None:
    assert plan(at(10), at(13, 30), MisfirePolicy.skip()) == OccurrencePlan(
        None, at(14), missed=True
    )


def test_skip_keeps_fire_within_grace() -> None:
    """13:00 is half a second old at 13:00:00.5, so it still counts as on time."""
    assert plan(at(10), at(13, 0, 0, 500_000), MisfirePolicy.skip()) == OccurrencePlan(
        None, at(13), missed=True
    )


def test_skip_enqueues_nothing_missed() -> None:
    assert enqueued_until_caught_up(at(10), at(13, 30), MisfirePolicy.skip()) == (
        [],
        at(14),
    )


# once


def test_once_enqueues_first_missed() -> None:
    assert plan(at(10), at(13, 30), MisfirePolicy.once()) == OccurrencePlan(
        at(10), at(14), missed=True
    )


def test_once_enqueues_single_run() -> None:
    assert enqueued_until_caught_up(at(10), at(13, 30), MisfirePolicy.once()) == (
        [at(10)],
        at(14),
    )


def test_once_keeps_fire_within_grace() -> None:
    """At 13:00:00.5 the catch-up covers 10, 11 and 12; 13:00 is still on time."""
    assert plan(at(10), at(13, 0, 0, 500_000), MisfirePolicy.once()) == (
        OccurrencePlan(at(10), at(13), missed=True)
    )


def test_once_then_on_time_fire() -> None:
    assert enqueued_until_caught_up(
        at(10), at(13, 0, 0, 500_000), MisfirePolicy.once()
    ) == ([at(10), at(13)], at(14))


def test_once_in_other_zone() -> None:
    """09:00 in Berlin is 08:00 UTC in January."""
    daily = recurring(
        datetime(2030, 1, 1, 8, tzinfo=UTC),
        MisfirePolicy.once(),
        cron="0 0 9 * * *",
        timezone="Europe/Berlin",
    )

    result = plan_occurrence(
        daily, now=datetime(2030, 1, 3, 12, tzinfo=UTC), grace=GRACE
    )

    assert result == OccurrencePlan(
        datetime(2030, 1, 1, 8, tzinfo=UTC),
        datetime(2030, 1, 4, 8, tzinfo=UTC),
        missed=True,
    )


# each


def test_each_skips_to_latest_window() -> None:
    """Missed: 10, 11, 12, 13. The latest two are 12 and 13."""
    assert plan(at(10), at(13, 30), MisfirePolicy.each(2)) == OccurrencePlan(
        None, at(12), missed=True
    )


def test_each_enqueues_fire_in_window() -> None:
    assert plan(at(12), at(13, 30), MisfirePolicy.each(2)) == OccurrencePlan(
        at(12), at(13), missed=True
    )


def test_each_enqueues_latest_limit() -> None:
    assert enqueued_until_caught_up(at(10), at(13, 30), MisfirePolicy.each(2)) == (
        [at(12), at(13)],
        at(14),
    )


def test_each_under_limit_enqueues_all() -> None:
    assert enqueued_until_caught_up(at(10), at(13, 30), MisfirePolicy.each(5)) == (
        [at(10), at(11), at(12), at(13)],
        at(14),
    )


def test_each_limit_equal_to_missed() -> None:
    assert enqueued_until_caught_up(at(10), at(13, 30), MisfirePolicy.each(4)) == (
        [at(10), at(11), at(12), at(13)],
        at(14),
    )


def test_each_window_excludes_fire_within_grace() -> None:
    """At 13:00:00.5 only 10, 11 and 12 are missed; 13 is on time."""
    assert plan(at(10), at(13, 0, 0, 500_000), MisfirePolicy.each(2)) == (
        OccurrencePlan(None, at(11), missed=True)
    )


def test_each_then_on_time_fire() -> None:
    assert enqueued_until_caught_up(
        at(10), at(13, 0, 0, 500_000), MisfirePolicy.each(2)
    ) == ([at(11), at(12), at(13)], at(14))


def test_each_limit_below_one_rejected() -> None:
    with pytest.raises(ValueError, match=r"^misfire limit must be at least 1, got 0$"):
        MisfirePolicy.each(0)
