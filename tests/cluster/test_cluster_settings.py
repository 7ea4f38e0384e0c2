"""ClusterSettings validation and bounds, and the misfire plan's grace window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fantasma import ClusterSettings, ConfigurationError, MisfirePolicy, RecurringJob
from fantasma.cluster import OccurrencePlan, plan_occurrence


def at(second: float) -> datetime:
    return datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=second)


def every_second(next_fire_at: datetime, misfire: MisfirePolicy) -> RecurringJob:
    return RecurringJob(
        id="tick",
        name="tick",
        cron="* * * * * *",
        timezone="UTC",
        type_name="tests.Tick",
        payload="{}",
        next_fire_at=next_fire_at,
        created_at=at(0),
        updated_at=at(0),
        misfire=misfire,
    )


def test_default_takeover_bound() -> None:
    assert ClusterSettings().takeover_bound == timedelta(seconds=11)


def test_default_takeover_within_15_s() -> None:
    assert ClusterSettings().takeover_bound <= timedelta(seconds=15)


def test_tolerance_below_renewal_margin() -> None:
    """A clock fast enough to see a renewed lease as expired is always caught."""
    settings = ClusterSettings()

    margin = settings.lease_period - settings.renew_interval

    assert settings.clock_check_tolerance < margin


def test_renew_not_shorter_rejected() -> None:
    with pytest.raises(
        ConfigurationError,
        match=(
            r"^renew_interval \(0:00:10\) must be shorter than lease_period "
            r"\(0:00:10\), or the lease lapses between renewals$"
        ),
    ):
        ClusterSettings(renew_interval=timedelta(seconds=10))


@pytest.mark.parametrize(
    "name", ["lease_period", "renew_interval", "heartbeat_interval", "poll_interval"]
)
def test_zero_interval_rejected(name: str) -> None:
    with pytest.raises(
        ConfigurationError, match=rf"^{name} must be positive, got 0:00:00$"
    ):
        ClusterSettings(**{name: timedelta(0)})


@pytest.mark.parametrize("name", ["lookahead", "misfire_grace", "max_clock_skew"])
def test_negative_margin_rejected(name: str) -> None:
    with pytest.raises(
        ConfigurationError,
        match=rf"^{name} must not be negative, got -1 day, 23:59:59$",
    ):
        ClusterSettings(**{name: timedelta(seconds=-1)})


@pytest.mark.parametrize(
    "misfire",
    [MisfirePolicy.skip(), MisfirePolicy.once(), MisfirePolicy.each(3)],
    ids=str,
)
def test_no_policy_drops_fire_within_grace(misfire: MisfirePolicy) -> None:
    """At 00:00:30.5 with 1 s of grace, 00:00:30 is on time under every policy."""
    plan = plan_occurrence(
        every_second(at(10), misfire), now=at(30.5), grace=timedelta(seconds=1)
    )

    assert plan.next_fire_at <= at(30)


def test_once_keeps_fire_within_grace() -> None:
    plan = plan_occurrence(
        every_second(at(10), MisfirePolicy.once()),
        now=at(30.5),
        grace=timedelta(seconds=1),
    )

    assert plan == OccurrencePlan(at(10), at(30), missed=True)
