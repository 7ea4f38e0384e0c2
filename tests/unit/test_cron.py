"""Tests for fantasma.cron: parsing, fire times, daylight saving time and errors.

Expected fire times come from three independent sources: the hand-worked table
below, a day-by-day enumeration for UTC, and a minute-by-minute walk over real
time for zones with clock changes. None of them uses fantasma.cron or croniter.

Clock changes used in the tests, as listed by zoneinfo (tzdata 2025b and 2026f agree):

* Europe/Berlin skips 02:00-03:00 on 2026-03-29 and 2027-03-28 (01:00 UTC) and
  repeats 02:00-03:00 on 2026-10-25 and 2027-10-31 (01:00 UTC).
* America/New_York skips 02:00-03:00 on 2026-03-08 and 2027-03-14 (07:00 UTC)
  and repeats 01:00-02:00 on 2026-11-01 and 2027-11-07 (06:00 UTC).
* Australia/Lord_Howe shifts by 30 minutes. It repeats 01:30-02:00 on 2026-04-05
  (2026-04-04 15:00 UTC) and skips 02:00-02:30 on 2026-10-04 (2026-10-03 15:30 UTC).
* America/Santiago changes at midnight. It repeats 23:00-24:00 of 2026-04-04
  (2026-04-05 03:00 UTC) and skips 00:00-01:00 of 2026-09-06 (04:00 UTC), so
  that day begins at 01:00.
"""

from __future__ import annotations

import calendar
import random
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from fantasma.cron import Cron
from fantasma.errors import ConfigurationError, InvalidCronExpression

# Reference evaluator. It parses fields with its own small parser and checks every
# candidate directly, so it shares no code with the module under test.

_MONTHS = {
    name: number
    for number, name in enumerate(
        [
            "JAN",
            "FEB",
            "MAR",
            "APR",
            "MAY",
            "JUN",
            "JUL",
            "AUG",
            "SEP",
            "OCT",
            "NOV",
            "DEC",
        ],
        start=1,
    )
}
_WEEKDAYS = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}


@dataclass(frozen=True)
class _Fields:
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]
    restrict_days_of_month: bool
    restrict_days_of_week: bool
    follows_real_time: bool

    def day_matches(self, day: date) -> bool:
        in_month = day.day in self.days_of_month
        in_week = day.isoweekday() % 7 in self.days_of_week
        if self.restrict_days_of_month and self.restrict_days_of_week:
            return in_month or in_week
        return in_month and in_week

    def minute_matches(self, wall: datetime) -> bool:
        return (
            wall.month in self.months
            and wall.hour in self.hours
            and wall.minute in self.minutes
            and self.day_matches(wall.date())
        )


def _reference_values(
    text: str, low: int, last: int, names: dict[str, int]
) -> frozenset[int]:
    def number(token: str) -> int:
        return names[token.upper()] if token.upper() in names else int(token)

    values: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        step = int(step_text) if slash else 1
        if base == "*":
            first, final = low, last
        elif "-" in base:
            start_text, end_text = base.split("-")
            first, final = number(start_text), number(end_text)
        else:
            first = number(base)
            # N/STEP covers N up to the last value of the field.
            final = max(first, last) if slash else first
        values.update(range(first, final + 1, step))
    return frozenset(values)


def _reference_fields(expression: str) -> _Fields:
    texts = expression.split()
    if len(texts) == 5:
        texts = ["0", *texts]
    second, minute, hour, day_of_month, month, day_of_week = texts
    weekdays = _reference_values(day_of_week, 0, 6, _WEEKDAYS)
    return _Fields(
        seconds=_reference_values(second, 0, 59, {}),
        minutes=_reference_values(minute, 0, 59, {}),
        hours=_reference_values(hour, 0, 23, {}),
        days_of_month=_reference_values(day_of_month, 1, 31, {}),
        months=_reference_values(month, 1, 12, _MONTHS),
        days_of_week=frozenset(day % 7 for day in weekdays),
        restrict_days_of_month=day_of_month != "*",
        restrict_days_of_week=day_of_week != "*",
        follows_real_time=minute.startswith("*") or hour.startswith("*"),
    )


def _reference_utc(expression: str, start: datetime, count: int) -> list[datetime]:
    """Enumerate the first `count` fire times after `start` in UTC, day by day."""
    fields = _reference_fields(expression)
    found: list[datetime] = []
    day = start.date()
    while len(found) < count:
        if day.month in fields.months and fields.day_matches(day):
            for hour in sorted(fields.hours):
                for minute in sorted(fields.minutes):
                    for second in sorted(fields.seconds):
                        moment = datetime(
                            day.year,
                            day.month,
                            day.day,
                            hour,
                            minute,
                            second,
                            tzinfo=UTC,
                        )
                        if moment > start and len(found) < count:
                            found.append(moment)
        day += timedelta(days=1)
    return found


def _reference_zone(
    expression: str, zone_name: str, begin: datetime, end: datetime
) -> list[datetime]:
    """Return every fire time in (begin, end] by walking real time minute by minute.

    The rules are applied to each real instant as the policy states them. A job that
    follows real time fires at every instant whose wall time matches. Any other job
    fires only where the wall time occurs for the first time, and the walk tracks
    that with the highest wall time seen so far. It also fires at the first instant
    after a gap when a skipped wall time matches. Every clock change in the tested
    zones falls on a whole minute, so the offset is constant within each minute.
    """
    fields = _reference_fields(expression)
    zone = ZoneInfo(zone_name)
    seconds = sorted(fields.seconds)
    minute = timedelta(minutes=1)
    # Starting 3 hours early sets the highest wall time seen before a repeated hour.
    moment = begin.astimezone(UTC).replace(second=0, microsecond=0) - timedelta(hours=3)
    previous_wall: datetime | None = None
    highest_wall: datetime | None = None
    fires: list[datetime] = []
    while moment <= end:
        wall = moment.astimezone(zone).replace(tzinfo=None)
        if previous_wall is not None and wall - previous_wall > minute:
            skipped = previous_wall + minute
            skipped_match = False
            while skipped < wall:
                skipped_match = skipped_match or fields.minute_matches(skipped)
                skipped += minute
            if skipped_match and not fields.follows_real_time:
                fires.append(moment)
        if fields.minute_matches(wall):
            for second in seconds:
                first_time = (
                    highest_wall is None
                    or wall + timedelta(seconds=second) > highest_wall
                )
                if fields.follows_real_time or first_time:
                    fires.append(moment + timedelta(seconds=second))
        if highest_wall is None or wall + timedelta(seconds=59) > highest_wall:
            highest_wall = wall + timedelta(seconds=59)
        previous_wall = wall
        moment += minute
    unique = sorted(set(fires))
    return [fire for fire in unique if begin < fire <= end]


def _can_never_fire(fields: _Fields) -> bool:
    """Return whether an expression can never fire.

    That is the case when only the day of month is restricted and no allowed month
    has any of its days.
    """
    if fields.restrict_days_of_week or not fields.restrict_days_of_month:
        return False
    # 2028 is a leap year, so February has 29 days.
    month_lengths = [calendar.monthrange(2028, month)[1] for month in fields.months]
    return min(fields.days_of_month) > max(month_lengths)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# Hand-worked cases: expression, time zone, start instant, expected fire time.
# Times are written with their UTC offset, so a local time reads as shown.
HAND_CASES = [
    # Basic steps, lists and ranges in UTC. 2026-05-04 is a Monday.
    ("*/10 * * * * *", "UTC", "2026-05-04T10:00:00+00:00", "2026-05-04T10:00:10+00:00"),
    ("*/10 * * * * *", "UTC", "2026-05-04T10:00:09+00:00", "2026-05-04T10:00:10+00:00"),
    (
        "*/10 * * * * *",
        "UTC",
        "2026-05-04T10:00:09.999999+00:00",
        "2026-05-04T10:00:10+00:00",
    ),
    ("*/10 * * * * *", "UTC", "2026-05-04T10:00:10+00:00", "2026-05-04T10:00:20+00:00"),
    ("*/10 * * * * *", "UTC", "2026-05-04T10:00:55+00:00", "2026-05-04T10:01:00+00:00"),
    ("*/10 * * * * *", "UTC", "2026-05-04T10:59:55+00:00", "2026-05-04T11:00:00+00:00"),
    (
        "0 * * * * *",
        "UTC",
        "2026-05-04T10:00:00.000001+00:00",
        "2026-05-04T10:01:00+00:00",
    ),
    ("5,35 * * * * *", "UTC", "2026-05-04T10:00:36+00:00", "2026-05-04T10:01:05+00:00"),
    (
        "10-12 * * * * *",
        "UTC",
        "2026-05-04T10:00:12+00:00",
        "2026-05-04T10:01:10+00:00",
    ),
    # 10-40/15 is 10, 25 and 40.
    (
        "10-40/15 * * * * *",
        "UTC",
        "2026-05-04T10:00:26+00:00",
        "2026-05-04T10:00:40+00:00",
    ),
    (
        "10-40/15 * * * * *",
        "UTC",
        "2026-05-04T10:00:40+00:00",
        "2026-05-04T10:01:10+00:00",
    ),
    # 5/20 is 5, 25 and 45.
    ("5/20 * * * * *", "UTC", "2026-05-04T10:00:45+00:00", "2026-05-04T10:01:05+00:00"),
    ("0 */15 * * * *", "UTC", "2026-05-04T10:14:59+00:00", "2026-05-04T10:15:00+00:00"),
    # An equal range is that single value, not the whole field.
    ("0 5-5 * * * *", "UTC", "2026-05-04T10:05:00+00:00", "2026-05-04T11:05:00+00:00"),
    ("0 0 9,17 * * *", "UTC", "2026-05-04T09:00:00+00:00", "2026-05-04T17:00:00+00:00"),
    ("0 0 9,17 * * *", "UTC", "2026-05-04T17:00:00+00:00", "2026-05-05T09:00:00+00:00"),
    # Five fields: the second is 0.
    ("*/5 * * * *", "UTC", "2026-05-04T10:02:30+00:00", "2026-05-04T10:05:00+00:00"),
    ("30 8 * * *", "UTC", "2026-05-04T08:30:00+00:00", "2026-05-05T08:30:00+00:00"),
    # 2026-05-09 is a Saturday, so the next weekday is Monday 2026-05-11.
    (
        "0 12 * * MON-FRI",
        "UTC",
        "2026-05-09T12:00:00+00:00",
        "2026-05-11T12:00:00+00:00",
    ),
    # Names, any case.
    (
        "0 0 0 1 JAN,jul *",
        "UTC",
        "2026-02-01T00:00:00+00:00",
        "2026-07-01T00:00:00+00:00",
    ),
    (
        "0 0 0 1 mar-May *",
        "UTC",
        "2026-05-01T00:00:00+00:00",
        "2027-03-01T00:00:00+00:00",
    ),
    (
        "0 0 12 * * sat,Sun",
        "UTC",
        "2026-05-06T00:00:00+00:00",
        "2026-05-09T12:00:00+00:00",
    ),
    # Sunday is 0 and 7. From Monday 2026-05-04 the next Sunday is 2026-05-10.
    ("0 0 0 * * 0", "UTC", "2026-05-04T00:00:00+00:00", "2026-05-10T00:00:00+00:00"),
    ("0 0 0 * * 7", "UTC", "2026-05-04T00:00:00+00:00", "2026-05-10T00:00:00+00:00"),
    ("0 0 0 * * SUN", "UTC", "2026-05-04T00:00:00+00:00", "2026-05-10T00:00:00+00:00"),
    ("0 0 0 * * 7-7", "UTC", "2026-05-04T00:00:00+00:00", "2026-05-10T00:00:00+00:00"),
    # 5-7 is Friday to Sunday. Saturday 2026-05-09 is the start, Sunday comes next.
    ("0 0 0 * * 5-7", "UTC", "2026-05-09T00:00:00+00:00", "2026-05-10T00:00:00+00:00"),
    # Day of month OR day of week when both are restricted. The 13th is a
    # Wednesday, and Friday 2026-05-08 comes first.
    ("0 0 0 13 * FRI", "UTC", "2026-05-04T00:00:00+00:00", "2026-05-08T00:00:00+00:00"),
    # From Tuesday 2026-05-12: Friday the 15th matches the day of month...
    ("0 0 0 15 * MON", "UTC", "2026-05-12T00:00:00+00:00", "2026-05-15T00:00:00+00:00"),
    # ...and after it Monday the 18th matches the day of week.
    ("0 0 0 15 * MON", "UTC", "2026-05-15T00:00:00+00:00", "2026-05-18T00:00:00+00:00"),
    # Only one day field restricted: only that one applies.
    ("0 0 0 13 * *", "UTC", "2026-05-04T00:00:00+00:00", "2026-05-13T00:00:00+00:00"),
    ("0 0 0 * * FRI", "UTC", "2026-05-04T00:00:00+00:00", "2026-05-08T00:00:00+00:00"),
    # */2 counts as restricted, so the OR applies. Tuesday the 5th is odd.
    (
        "0 0 0 */2 * MON",
        "UTC",
        "2026-05-04T00:00:00+00:00",
        "2026-05-05T00:00:00+00:00",
    ),
    # Day of week */2 is Sunday, Tuesday, Thursday and Saturday, so Tuesday the 5th
    # comes before the 10th.
    ("0 0 0 10 * */2", "UTC", "2026-05-04T00:00:00+00:00", "2026-05-05T00:00:00+00:00"),
    # Month ends: April has no 31st, June neither.
    ("0 0 0 31 * *", "UTC", "2026-04-01T00:00:00+00:00", "2026-05-31T00:00:00+00:00"),
    ("0 0 0 31 * *", "UTC", "2026-05-31T00:00:00+00:00", "2026-07-31T00:00:00+00:00"),
    ("0 0 0 30 1-3 *", "UTC", "2027-01-30T00:00:00+00:00", "2027-03-30T00:00:00+00:00"),
    # Year ends.
    (
        "59 59 23 31 12 *",
        "UTC",
        "2026-12-31T23:59:59+00:00",
        "2027-12-31T23:59:59+00:00",
    ),
    ("*/10 * * * * *", "UTC", "2026-12-31T23:59:55+00:00", "2027-01-01T00:00:00+00:00"),
    ("0 0 0 * * *", "UTC", "2026-12-31T12:00:00+00:00", "2027-01-01T00:00:00+00:00"),
    # Leap days: 29 February exists in 2028 and 2032, but not in 2100.
    ("0 0 0 29 2 *", "UTC", "2026-03-01T00:00:00+00:00", "2028-02-29T00:00:00+00:00"),
    ("0 0 0 29 2 *", "UTC", "2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"),
    ("0 0 0 29 2 *", "UTC", "2096-03-01T00:00:00+00:00", "2104-02-29T00:00:00+00:00"),
    (
        "0 0 0 28-31 2 *",
        "UTC",
        "2027-02-28T00:00:00+00:00",
        "2028-02-28T00:00:00+00:00",
    ),
    # Mondays in February or the 29th: Monday 2027-02-22 is past, and the first
    # Monday of February 2028 is the 7th, before Tuesday the 29th.
    ("0 0 0 29 2 MON", "UTC", "2027-02-23T00:00:00+00:00", "2028-02-07T00:00:00+00:00"),
    # Input in another zone: 13:00+02:00 is 11:00 UTC.
    ("0 0 12 * * *", "UTC", "2026-05-04T13:00:00+02:00", "2026-05-04T12:00:00+00:00"),
    # Fixed offsets: Etc/GMT-3 is UTC+3, Asia/Kolkata is UTC+5:30 without DST.
    (
        "0 0 9 * * *",
        "Etc/GMT-3",
        "2026-05-04T00:00:00+00:00",
        "2026-05-04T09:00:00+03:00",
    ),
    (
        "0 0 9 * * *",
        "Asia/Kolkata",
        "2026-05-04T00:00:00+00:00",
        "2026-05-04T09:00:00+05:30",
    ),
    # Europe/Berlin, 2027-03-28: 02:00-03:00 is skipped. A fixed job whose wall
    # time is skipped runs at the end of the gap, 03:00+02:00 (01:00 UTC).
    (
        "0 30 2 * * *",
        "Europe/Berlin",
        "2027-03-27T12:00:00+00:00",
        "2027-03-28T03:00:00+02:00",
    ),
    (
        "0 30 2 * * *",
        "Europe/Berlin",
        "2027-03-28T01:00:00+00:00",
        "2027-03-29T02:30:00+02:00",
    ),
    # Four skipped wall times collapse into one run at 03:00, then the next day.
    (
        "0 0,15,30,45 2 * * *",
        "Europe/Berlin",
        "2027-03-27T12:00:00+00:00",
        "2027-03-28T03:00:00+02:00",
    ),
    (
        "0 0,15,30,45 2 * * *",
        "Europe/Berlin",
        "2027-03-28T01:00:00+00:00",
        "2027-03-29T02:00:00+02:00",
    ),
    # The skipped 02:00 and the real 03:00 are the same instant, so one run.
    (
        "0 0 2,3 * * *",
        "Europe/Berlin",
        "2027-03-28T01:00:00+00:00",
        "2027-03-29T02:00:00+02:00",
    ),
    # Jobs that follow real time skip the gap: hour 2 does not exist that day.
    (
        "0 */15 2 * * *",
        "Europe/Berlin",
        "2027-03-28T00:00:00+00:00",
        "2027-03-29T02:00:00+02:00",
    ),
    (
        "0 0 * * * *",
        "Europe/Berlin",
        "2027-03-28T00:00:00+00:00",
        "2027-03-28T03:00:00+02:00",
    ),
    # Europe/Berlin, 2026-10-25: 02:00-03:00 repeats. A fixed job runs on the
    # first pass (+02:00) only.
    (
        "0 30 2 * * *",
        "Europe/Berlin",
        "2026-10-24T12:00:00+00:00",
        "2026-10-25T02:30:00+02:00",
    ),
    (
        "0 30 2 * * *",
        "Europe/Berlin",
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ),
    (
        "0 30 2 * * *",
        "Europe/Berlin",
        "2026-10-25T02:10:00+01:00",
        "2026-10-26T02:30:00+01:00",
    ),
    (
        "0 30 2 * * *",
        "Europe/Berlin",
        "2026-10-25T02:10:00+02:00",
        "2026-10-25T02:30:00+02:00",
    ),
    # A job that follows real time runs in both passes.
    (
        "0 0,30 * * * *",
        "Europe/Berlin",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:00:00+01:00",
    ),
    (
        "0 0,30 * * * *",
        "Europe/Berlin",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T02:30:00+01:00",
    ),
    (
        "0 0,30 * * * *",
        "Europe/Berlin",
        "2026-10-25T02:30:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ),
    # From the last minute of the first pass, the next 02:xx is in the second pass.
    (
        "0 * 2 * * *",
        "Europe/Berlin",
        "2026-10-25T02:59:00+02:00",
        "2026-10-25T02:00:00+01:00",
    ),
    (
        "*/10 * * * * *",
        "Europe/Berlin",
        "2026-10-25T02:59:55+02:00",
        "2026-10-25T02:00:00+01:00",
    ),
    # America/New_York, 2026-03-08: 02:00-03:00 is skipped.
    (
        "0 30 2 * * *",
        "America/New_York",
        "2026-03-07T12:00:00+00:00",
        "2026-03-08T03:00:00-04:00",
    ),
    (
        "0 30 * * * *",
        "America/New_York",
        "2026-03-08T01:30:00-05:00",
        "2026-03-08T03:30:00-04:00",
    ),
    # 2027-03-14 is a Sunday with the same gap.
    (
        "0 0 2 * * SUN",
        "America/New_York",
        "2027-03-13T00:00:00+00:00",
        "2027-03-14T03:00:00-04:00",
    ),
    # America/New_York, 2026-11-01: 01:00-02:00 repeats.
    (
        "0 30 1 * * *",
        "America/New_York",
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:30:00-04:00",
    ),
    (
        "0 30 1 * * *",
        "America/New_York",
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
    ),
    (
        "0 0 * * * *",
        "America/New_York",
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:00:00-05:00",
    ),
    (
        "0 0 * * * *",
        "America/New_York",
        "2026-11-01T01:00:00-05:00",
        "2026-11-01T02:00:00-05:00",
    ),
    # Australia/Lord_Howe, 2026-10-04: 02:00-02:30 is skipped (+10:30 to +11:00).
    (
        "0 15 2 * * *",
        "Australia/Lord_Howe",
        "2026-10-03T12:00:00+00:00",
        "2026-10-04T02:30:00+11:00",
    ),
    (
        "0 */15 * * * *",
        "Australia/Lord_Howe",
        "2026-10-04T01:59:00+10:30",
        "2026-10-04T02:30:00+11:00",
    ),
    # Australia/Lord_Howe, 2026-04-05: 01:30-02:00 repeats (+11:00 to +10:30).
    (
        "0 45 1 * * *",
        "Australia/Lord_Howe",
        "2026-04-05T01:00:00+11:00",
        "2026-04-05T01:45:00+11:00",
    ),
    (
        "0 45 1 * * *",
        "Australia/Lord_Howe",
        "2026-04-05T01:45:00+11:00",
        "2026-04-06T01:45:00+10:30",
    ),
    # Five minutes after 01:50+11:00 the clock reads 01:30+10:30, which matches.
    (
        "0 */15 * * * *",
        "Australia/Lord_Howe",
        "2026-04-05T01:50:00+11:00",
        "2026-04-05T01:30:00+10:30",
    ),
    (
        "0 */15 * * * *",
        "Australia/Lord_Howe",
        "2026-04-05T01:45:00+10:30",
        "2026-04-05T02:00:00+10:30",
    ),
    # America/Santiago, 2026-09-06: 00:00-01:00 is skipped, so the day starts at
    # 01:00 and a midnight job runs then.
    (
        "0 0 0 * * *",
        "America/Santiago",
        "2026-09-05T12:00:00+00:00",
        "2026-09-06T01:00:00-03:00",
    ),
    (
        "0 */20 0 * * *",
        "America/Santiago",
        "2026-09-05T12:00:00+00:00",
        "2026-09-07T00:00:00-03:00",
    ),
    # America/Santiago, 2026-04-04: 23:00-24:00 repeats.
    (
        "0 30 23 * * *",
        "America/Santiago",
        "2026-04-04T12:00:00+00:00",
        "2026-04-04T23:30:00-03:00",
    ),
    (
        "0 30 23 * * *",
        "America/Santiago",
        "2026-04-04T23:30:00-03:00",
        "2026-04-05T23:30:00-04:00",
    ),
    (
        "0 30 * * * *",
        "America/Santiago",
        "2026-04-04T23:30:00-03:00",
        "2026-04-04T23:30:00-04:00",
    ),
    # Midnight after the repeated hour is 00:00-04:00, not the second 23:00.
    (
        "0 0 0 * * *",
        "America/Santiago",
        "2026-04-04T23:30:00-03:00",
        "2026-04-05T00:00:00-04:00",
    ),
]


def _case_id(case: tuple[str, str, str, str]) -> str:
    expression, zone, start, _ = case
    return f"{expression} {zone} after {start}"


@pytest.mark.parametrize(
    ("expression", "zone", "start", "expected"),
    HAND_CASES,
    ids=[_case_id(c) for c in HAND_CASES],
)
def test_next_after_hand_cases(
    expression: str, zone: str, start: str, expected: str
) -> None:
    result = Cron(expression, zone).next_after(datetime.fromisoformat(start))

    assert result == datetime.fromisoformat(expected)
    assert result.tzinfo is UTC


def test_hand_cases_agree_with_reference() -> None:
    for expression, zone, start, expected in HAND_CASES:
        if zone in ("UTC", "Etc/GMT-3"):
            continue
        begin = _utc(start)
        fires = _reference_zone(expression, zone, begin, begin + timedelta(days=2))
        if fires:
            assert fires[0] == _utc(expected), (expression, zone, start)


# Windows of 8 hours around each 2026 clock change, as (zone, change in UTC).
CLOCK_CHANGES = [
    ("Europe/Berlin", "2026-03-29T01:00:00+00:00"),
    ("Europe/Berlin", "2026-10-25T01:00:00+00:00"),
    ("America/New_York", "2026-03-08T07:00:00+00:00"),
    ("America/New_York", "2026-11-01T06:00:00+00:00"),
    ("Australia/Lord_Howe", "2026-04-04T15:00:00+00:00"),
    ("Australia/Lord_Howe", "2026-10-03T15:30:00+00:00"),
    ("America/Santiago", "2026-04-05T03:00:00+00:00"),
    ("America/Santiago", "2026-09-06T04:00:00+00:00"),
]

DST_EXPRESSIONS = [
    # Jobs that follow real time.
    "*/10 * * * * *",
    "0 */15 * * * *",
    "0 0 * * * *",
    "30 */7 * * * *",
    "0 * 0-3 * * *",
    "0 0 */2 * * *",
    "5 0-59/20 * * * *",
    "0 */10 23 * * *",
    # Fixed jobs.
    "0 30 2 * * *",
    "0 0,15,30,45 2 * * *",
    "0 0 0 * * *",
    "0 30 1 * * *",
    "15 45 1 * * *",
    "0 0-59/20 0-3 * * *",
    "0 30 23 * * *",
    "0 0 2,3 * * *",
    "*/20 15 2 * * *",
    "0 15 0 * * SUN",
]


@pytest.mark.parametrize(
    ("zone", "change"), CLOCK_CHANGES, ids=[" ".join(c) for c in CLOCK_CHANGES]
)
def test_next_after_near_clock_changes(zone: str, change: str) -> None:
    begin = _utc(change) - timedelta(hours=4)
    end = _utc(change) + timedelta(hours=4)
    generator = random.Random(f"{zone} {change}")
    for expression in DST_EXPRESSIONS:
        cron = Cron(expression, zone)
        expected = _reference_zone(expression, zone, begin, end)

        chained: list[datetime] = []
        moment = cron.next_after(begin)
        while moment <= end:
            chained.append(moment)
            moment = cron.next_after(moment)
        assert chained == expected, expression

        for _ in range(10):
            offset = timedelta(seconds=generator.randrange(8 * 3600), microseconds=123)
            start = begin + offset
            later = [fire for fire in expected if fire > start]
            result = cron.next_after(start)
            if later:
                assert result == later[0], (expression, start)
            else:
                assert result > end, (expression, start)


def _random_field(
    generator: random.Random, low: int, high: int, names: list[str]
) -> str:
    def value() -> str:
        number = generator.randint(low, high)
        if names and generator.random() < 0.3:
            return names[number % len(names)]
        return str(number)

    def item() -> str:
        kind = generator.randrange(6)
        if kind == 0:
            return "*"
        if kind == 1:
            return f"*/{generator.randint(1, high - low + 2)}"
        if kind == 2:
            return value()
        first = generator.randint(low, high)
        last = generator.randint(first, high)
        if kind == 3:
            return f"{first}-{last}"
        if kind == 4:
            return f"{first}-{last}/{generator.randint(1, 10)}"
        return f"{first}/{generator.randint(1, 10)}"

    if generator.random() < 0.3:
        return ",".join(item() for _ in range(generator.randint(2, 3)))
    return item()


def _random_expression(generator: random.Random) -> str:
    month_names = ["DEC", "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP"]
    month_names += ["OCT", "NOV"]
    weekday_names = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
    fields = [
        _random_field(generator, 0, 59, []),
        _random_field(generator, 0, 59, []),
        _random_field(generator, 0, 23, []),
        _random_field(generator, 1, 31, []),
        _random_field(generator, 1, 12, month_names),
        _random_field(generator, 0, 7, weekday_names),
    ]
    if generator.random() < 0.15:
        # Month ends: some of these fire only in leap years, some never.
        fields[3] = generator.choice(["29", "30", "31", "29-31", "30,31"])
        fields[4] = generator.choice(["2", "FEB", "4,6", "2,4", "APR-JUN", "2/2"])
        fields[5] = "*"
    if generator.random() < 0.2:
        fields = fields[1:]
    return " ".join(fields)


def test_next_after_random_utc_expressions() -> None:
    generator = random.Random(20260504)
    checked = 0
    while checked < 300:
        expression = _random_expression(generator)
        if _can_never_fire(_reference_fields(expression)):
            with pytest.raises(InvalidCronExpression, match="can never fire"):
                Cron(expression)
            continue
        cron = Cron(expression)
        start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(
            seconds=generator.randrange(5 * 365 * 86400),
            microseconds=generator.randrange(10**6),
        )
        expected = _reference_utc(expression, start, 5)
        chained: list[datetime] = []
        moment = start
        for _ in range(5):
            moment = cron.next_after(moment)
            chained.append(moment)
        assert chained == expected, (expression, start)
        checked += 1


@pytest.mark.parametrize(
    ("expression", "zone"),
    [
        ("*/10 * * * * *", "UTC"),
        ("*/10 * * * * *", "Europe/Berlin"),
        ("0 0,15,30,45 2 * * *", "Europe/Berlin"),
        ("0 */15 * * * *", "Australia/Lord_Howe"),
        ("0 0 0 * * *", "America/Santiago"),
        ("0 30 1 * * *", "America/New_York"),
    ],
)
def test_next_after_strictly_increasing(expression: str, zone: str) -> None:
    cron = Cron(expression, zone)
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(3000):
        following = cron.next_after(moment)
        assert following > moment
        moment = following


def test_fixed_daily_job_once_per_day() -> None:
    # Every fixed daily job runs exactly once per local day, gap and repeat included.
    cron = Cron("0 30 2 * * *", "Europe/Berlin")
    zone = ZoneInfo("Europe/Berlin")
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    days: list[date] = []
    for _ in range(365):
        moment = cron.next_after(moment)
        days.append(moment.astimezone(zone).date())
    assert days == [date(2026, 1, 1) + timedelta(days=number) for number in range(365)]


INVALID_CASES = [
    ("61 * * * * *", "second", "second must be 0-59, got 61"),
    ("0 60 * * * *", "minute", "minute must be 0-59, got 60"),
    ("0 0 24 * * *", "hour", "hour must be 0-23, got 24"),
    ("0 0 0 0 * *", "day of month", "day of month must be 1-31, got 0"),
    ("0 0 0 32 * *", "day of month", "day of month must be 1-31, got 32"),
    ("0 0 0 * 13 *", "month", "month must be 1-12 or JAN-DEC, got 13"),
    ("0 0 0 * * 8", "day of week", "day of week must be 0-7 or SUN-SAT, got 8"),
    ("*/0 * * * * *", "second", "second step must be a positive integer, got 0"),
    (
        "0 0 0 * * 1-5/0",
        "day of week",
        "day of week step must be a positive integer, got 0",
    ),
    ("*/x * * * * *", "second", "second step must be a positive integer, got 'x'"),
    (
        "0 5-2 * * * *",
        "minute",
        "minute range 5-2 is reversed, write the smaller value first "
        "or split it into a list such as 5-59,0-2",
    ),
    (
        "0 0 0 * * SAT-SUN",
        "day of week",
        "day of week range SAT-SUN is reversed, write the smaller value first "
        "or split it into a list such as 6,0",
    ),
    ("0 0 0 * FOO *", "month", "month must be 1-12 or JAN-DEC, got 'FOO'"),
    (
        "0 0 0 * * MON-FOO",
        "day of week",
        "day of week must be 0-7 or SUN-SAT, got 'FOO'",
    ),
    ("0 0 0 * * JAN", "day of week", "day of week must be 0-7 or SUN-SAT, got 'JAN'"),
    ("1.5 * * * * *", "second", "second must be 0-59, got '1.5'"),
    (
        "1,,2 * * * * *",
        "second",
        "second '1,,2' has an empty list item, remove the extra comma",
    ),
    (
        "1- * * * * *",
        "second",
        "second has a malformed item '1-', "
        "write N, A-B or *, optionally followed by /STEP",
    ),
    (
        "-1 * * * * *",
        "second",
        "second has a malformed item '-1', "
        "write N, A-B or *, optionally followed by /STEP",
    ),
    (
        "",
        None,
        "the expression is empty, expected 6 fields "
        "(second minute hour day-of-month month day-of-week) or 5 without the second",
    ),
    (
        "   ",
        None,
        "the expression is empty, expected 6 fields "
        "(second minute hour day-of-month month day-of-week) or 5 without the second",
    ),
    (
        "* * * *",
        None,
        "expected 6 fields (second minute hour day-of-month month day-of-week) "
        "or 5 without the second, got 4",
    ),
    (
        "0 0 0 1 1 * 2027",
        None,
        "expected 6 fields (second minute hour day-of-month month day-of-week) "
        "or 5 without the second, got 7",
    ),
    (
        "@hourly",
        None,
        "macros such as @hourly are not supported, write the fields instead, "
        "such as '0 0 * * * *' for @hourly",
    ),
    (
        "0 0 0 L * *",
        "day of month",
        "day of month must be 1-31, got 'L' "
        "(the L, W, # and ? extensions are not supported)",
    ),
    (
        "0 0 0 15W * *",
        "day of month",
        "day of month must be 1-31, got '15W' "
        "(the L, W, # and ? extensions are not supported)",
    ),
    (
        "0 0 0 * * 5#3",
        "day of week",
        "day of week must be 0-7 or SUN-SAT, got '5#3' "
        "(the L, W, # and ? extensions are not supported)",
    ),
    (
        "0 0 0 ? * MON",
        "day of month",
        "day of month must be 1-31, got '?' "
        "(the L, W, # and ? extensions are not supported)",
    ),
    (
        "0 0 0 30 2 *",
        "day of month",
        "day of month 30 never occurs in February, so the expression can never fire, "
        "use days 1-29",
    ),
    (
        "0 0 0 31 4,6,9,11 *",
        "day of month",
        "day of month 31 never occurs in April, June, September or November, "
        "so the expression can never fire, use days 1-30",
    ),
    (
        "0 0 0 30,31 FEB *",
        "day of month",
        "day of month 30,31 never occurs in February, "
        "so the expression can never fire, use days 1-29",
    ),
]


@pytest.mark.parametrize(
    ("expression", "field", "reason"),
    INVALID_CASES,
    ids=[c[0] or "empty" for c in INVALID_CASES],
)
def test_invalid_expression_rejected(
    expression: str, field: str | None, reason: str
) -> None:
    message = f"invalid cron expression {expression!r}: {reason}"

    with pytest.raises(
        InvalidCronExpression, match=f"^{re.escape(message)}$"
    ) as caught:
        Cron(expression)

    assert caught.value.field == field
    assert caught.value.expression == expression


def test_leap_day_expression_accepted() -> None:
    cron = Cron("0 0 0 29 2 *")

    assert cron.expression == "0 0 0 29 2 *"


def test_properties_and_repr() -> None:
    cron = Cron("0 30 2 * * *", "Europe/Berlin")

    assert cron.expression == "0 30 2 * * *"
    assert cron.timezone == "Europe/Berlin"
    assert repr(cron) == "Cron('0 30 2 * * *', timezone='Europe/Berlin')"
    assert cron == Cron("0 30 2 * * *", "Europe/Berlin")
    assert cron != Cron("0 30 2 * * *")


def test_default_timezone_is_utc() -> None:
    assert Cron("* * * * * *").timezone == "UTC"


@pytest.mark.parametrize(
    "name", ["Mars/Olympus", "europe/berlin", "", "../etc/passwd", "Europe"]
)
def test_unknown_timezone_rejected(name: str) -> None:
    message = (
        f"unknown time zone {name!r}, use an IANA name such as 'Europe/Berlin' or 'UTC'"
    )

    with pytest.raises(ConfigurationError, match=f"^{re.escape(message)}$") as caught:
        Cron("* * * * * *", name)

    assert not isinstance(caught.value, InvalidCronExpression)


def test_naive_datetime_rejected() -> None:
    message = (
        "next_after needs an aware datetime, got the naive 2026-05-04T10:00:00, "
        "attach a time zone such as datetime.UTC"
    )

    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Cron("* * * * * *").next_after(datetime(2026, 5, 4, 10))


def test_next_after_past_year_9999_overflows() -> None:
    cron = Cron("0 0 0 1 1 *")

    with pytest.raises(OverflowError, match="no fire time between"):
        cron.next_after(datetime(9999, 6, 1, tzinfo=UTC))
