"""Parse cron expressions with a leading seconds field and compute their fire times."""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from fantasma.errors import ConfigurationError, InvalidCronExpression

__all__ = ["Cron"]

_ONE_SECOND: Final = timedelta(seconds=1)

# The Gregorian calendar repeats every 400 years, so a wall-clock pattern that has
# no match in 400 years has none at all. Valid expressions match at least every
# 8 years (29 February across a skipped leap year such as 2100).
_SEARCH_YEARS: Final = 400

# These keys and every key under Etc/ name zones with a fixed UTC offset in the
# IANA database, so their fire times need no daylight saving time handling.
_FIXED_OFFSET_ZONES: Final = frozenset(
    {"UTC", "UCT", "GMT", "GMT0", "GMT+0", "GMT-0", "Greenwich", "Universal", "Zulu"}
)

_MACRO_EXAMPLES: Final[Mapping[str, str]] = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}

_FIELD_ORDER: Final = (
    "6 fields (second minute hour day-of-month month day-of-week) "
    "or 5 without the second"
)

# Quartz and croniter extensions: last day (L), nearest weekday (W), nth weekday (#)
# and "no specific value" (?).
_EXTENSION_PATTERN: Final = re.compile(r"\?|[0-9]*L|[0-9]*W|LW|.*#.*", re.IGNORECASE)

_MONTH_NAMES: Final = tuple(calendar.month_name)


@dataclass(frozen=True, slots=True)
class _FieldSpec:
    """Name, value range and aliases of one cron field."""

    name: str
    minimum: int
    maximum: int
    # Last value that `*` and `N/STEP` cover. It is 6 for the day of week because
    # 7 is a second spelling of Sunday (0).
    last: int
    aliases: Mapping[str, int] = field(default_factory=dict)

    def describe_range(self) -> str:
        """Return the accepted values as text, such as ``1-12 or JAN-DEC``."""
        numbers = f"{self.minimum}-{self.maximum}"
        if not self.aliases:
            return numbers
        names = list(self.aliases)
        return f"{numbers} or {names[0]}-{names[-1]}"


_SECOND: Final = _FieldSpec("second", 0, 59, 59)
_MINUTE: Final = _FieldSpec("minute", 0, 59, 59)
_HOUR: Final = _FieldSpec("hour", 0, 23, 23)
_DAY_OF_MONTH: Final = _FieldSpec("day of month", 1, 31, 31)
_MONTH: Final = _FieldSpec(
    "month",
    1,
    12,
    12,
    {name.upper(): number for number, name in enumerate(calendar.month_abbr) if name},
)
_DAY_OF_WEEK: Final = _FieldSpec(
    "day of week",
    0,
    7,
    6,
    {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6},
)
_FIELDS: Final = (_SECOND, _MINUTE, _HOUR, _DAY_OF_MONTH, _MONTH, _DAY_OF_WEEK)

# Days in each month of a leap year, index 0 unused.
_MAX_DAYS_IN_MONTH: Final = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

_Wall = tuple[int, int, int, int, int, int]
_Fail = Callable[[str], InvalidCronExpression]


@final
class Cron:
    """A cron schedule in an IANA time zone.

    The expression has six fields, seconds first:
    ``second minute hour day-of-month month day-of-week``. Five fields are read as
    standard cron with the second set to 0. Day of month and day of week are OR-ed
    when both are restricted, which means any text other than a bare ``*``.

    Clock changes split jobs into two kinds. A job whose minute or hour field
    starts with ``*`` runs at every real instant whose wall time matches. It runs
    twice in a repeated hour and not at all for wall times that a clock change
    skips. Any other job runs once per matching wall time: on the first pass
    through a repeated hour, and at the end of a gap for a skipped wall time.
    All skipped wall times of one gap share that single run.

    Raises:
        InvalidCronExpression: If the expression is malformed or can never fire.
        ConfigurationError: If the time zone is not a known IANA name.
    """

    __slots__ = (
        "_day_cache",
        "_days_of_month",
        "_days_of_week",
        "_expression",
        "_fixed_offset",
        "_follows_real_time",
        "_hours",
        "_minutes",
        "_month_set",
        "_months",
        "_restrict_days_of_month",
        "_restrict_days_of_week",
        "_seconds",
        "_timezone",
        "_zone",
    )

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        self._expression = expression
        self._timezone = timezone
        self._zone = _load_zone(timezone)
        self._fixed_offset = _fixed_offset_of(self._zone)

        texts = _split_fields(expression)
        values = _expand_fields(expression, texts)
        self._seconds, self._minutes, self._hours = values[0], values[1], values[2]
        self._days_of_month = frozenset(values[3])
        self._months = values[4]
        self._month_set = frozenset(values[4])
        # 7 is a second spelling of Sunday (0).
        self._days_of_week = frozenset(day % 7 for day in values[5])
        self._restrict_days_of_month = texts[3] != "*"
        self._restrict_days_of_week = texts[5] != "*"
        self._follows_real_time = texts[1].startswith("*") or texts[2].startswith("*")
        self._day_cache: dict[int, tuple[int, ...]] = {}
        self._check_can_fire()

    @property
    def expression(self) -> str:
        """The cron expression as given to the constructor."""
        return self._expression

    @property
    def timezone(self) -> str:
        """The IANA name of the time zone that the fields are read in."""
        return self._timezone

    def __repr__(self) -> str:
        return f"Cron({self._expression!r}, timezone={self._timezone!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cron):
            return NotImplemented
        return (self._expression, self._timezone) == (
            other._expression,
            other._timezone,
        )

    def __hash__(self) -> int:
        return hash((self._expression, self._timezone))

    def next_after(self, instant: datetime) -> datetime:
        """Return the first fire time strictly after `instant`.

        Fire times fall on whole seconds, so an instant with microseconds is
        followed by the next matching whole second.

        Args:
            instant: An aware datetime in any time zone.

        Returns:
            An aware datetime in UTC.

        Raises:
            ValueError: If `instant` is naive.
            OverflowError: If the next fire time would be after the year 9999.
            InvalidCronExpression: If no fire time exists in the 400 years after
                `instant`. Only a job whose every match falls into a skipped
                daylight saving time gap can get here.
        """
        if instant.utcoffset() is None:
            raise ValueError(
                "next_after needs an aware datetime, got the naive "
                f"{instant.isoformat()}, attach a time zone such as datetime.UTC"
            )
        if self._fixed_offset is not None:
            return self._next_at_fixed_offset(instant, self._fixed_offset)
        return self._next_in_zone(instant)

    def _check_can_fire(self) -> None:
        """Raise InvalidCronExpression if no allowed day exists in an allowed month."""
        if self._restrict_days_of_week or not self._restrict_days_of_month:
            return
        max_day = max(_MAX_DAYS_IN_MONTH[month] for month in self._months)
        if min(self._days_of_month) <= max_day:
            return
        days = ",".join(str(day) for day in sorted(self._days_of_month))
        months = _join_words([_MONTH_NAMES[month] for month in self._months])
        raise InvalidCronExpression(
            f"invalid cron expression {self._expression!r}: day of month {days} "
            f"never occurs in {months}, so the expression can never fire, "
            f"use days 1-{max_day}",
            expression=self._expression,
            field=_DAY_OF_MONTH.name,
        )

    def _next_at_fixed_offset(self, instant: datetime, offset: timedelta) -> datetime:
        """Compute the next fire time in a zone without clock changes."""
        utc = instant.astimezone(UTC)
        wall = utc + offset if offset else utc
        found = self._search(
            wall.year, wall.month, wall.day, wall.hour, wall.minute, wall.second + 1
        )
        if found is None:
            raise self._no_fire_time(instant, wall.year)
        year, month, day, hour, minute, second = found
        result = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        return result - offset if offset else result

    def _next_in_zone(self, instant: datetime) -> datetime:
        """Compute the next fire time in a zone with clock changes.

        The search walks matching wall times in wall-clock order and maps each one
        to real instants. A wall time read as if it were UTC, minus the UTC offset,
        gives the instant.
        """
        start = instant.astimezone(UTC)
        local = start.astimezone(self._zone)
        start_wall = _components(local)
        cursor = (*start_wall[:5], start_wall[5] + 1)
        # Set when `instant` is in the first pass through a repeated hour, because
        # a job that follows real time may fire in the second pass before it
        # reaches any wall time after `start_wall`.
        second_pass: tuple[datetime, timedelta, timedelta] | None = None

        first, second = self._offsets(start_wall)
        if first > second:
            whole_start = start.replace(microsecond=0)
            if local.fold == 0 and self._follows_real_time:
                change = self._find_change(whole_start, whole_start + first - second)
                second_pass = (change, first, second)
            elif local.fold == 1 and not self._follows_real_time:
                # The first pass is over, so skip the rest of the repeated wall times.
                change = self._find_change(whole_start - (first - second), whole_start)
                cursor = max(cursor, _components(change + first))

        limit_year = local.year + _SEARCH_YEARS
        while True:
            wall = self._search_wall(cursor, limit_year, instant)
            first, second = self._offsets(wall)
            wall_as_utc = datetime(*wall, tzinfo=UTC)
            if first == second:
                result = wall_as_utc - first
                break
            if first > second:
                # A repeated wall time: `first` maps it into the first pass.
                if wall_as_utc - first > start:
                    result = wall_as_utc - first
                    break
                if self._follows_real_time:
                    result = wall_as_utc - second
                    break
                cursor = _components(wall_as_utc + _ONE_SECOND)
                continue
            # A skipped wall time: `first` maps it past the change and `second`
            # before it.
            change = self._find_change(wall_as_utc - second, wall_as_utc - first)
            if not self._follows_real_time and change > start:
                result = change
                break
            cursor = _components(change + second)

        if second_pass is not None:
            change, first, second = second_pass
            if result >= change:
                # The wall times from change + second to change + first repeat.
                repeated = self._search_wall(
                    _components(change + second), limit_year, instant
                )
                repeated_as_utc = datetime(*repeated, tzinfo=UTC)
                if repeated_as_utc < change + first:
                    result = min(result, repeated_as_utc - second)
        return result

    def _offsets(self, wall: _Wall) -> tuple[timedelta, timedelta]:
        """Return the UTC offsets of a wall time on its first and second pass.

        The two are equal for a wall time that occurs once. The first is larger
        for a repeated wall time and smaller for a skipped one.
        """
        first = datetime(*wall, tzinfo=self._zone).utcoffset()
        second = datetime(*wall, tzinfo=self._zone, fold=1).utcoffset()
        # ZoneInfo returns an offset for every wall time.
        assert first is not None
        assert second is not None
        return first, second

    def _offset_at(self, moment: datetime) -> timedelta:
        """Return the UTC offset of the zone at an aware instant."""
        offset = moment.astimezone(self._zone).utcoffset()
        assert offset is not None  # ZoneInfo always has offsets
        return offset

    def _find_change(self, low: datetime, high: datetime) -> datetime:
        """Return the first whole second in (low, high] with an offset other than low's.

        The caller knows that exactly one clock change lies in that interval.
        """
        low_offset = self._offset_at(low)
        low_seconds, high_seconds = 0, int((high - low).total_seconds())
        while high_seconds - low_seconds > 1:
            middle = (low_seconds + high_seconds) // 2
            if self._offset_at(low + timedelta(seconds=middle)) == low_offset:
                low_seconds = middle
            else:
                high_seconds = middle
        return low + timedelta(seconds=high_seconds)

    def _search_wall(self, cursor: _Wall, limit_year: int, instant: datetime) -> _Wall:
        """Return the first matching wall time at or after `cursor`."""
        found = None
        if cursor[0] <= limit_year:
            found = self._search(*cursor)
        if found is None or found[0] > limit_year:
            raise self._no_fire_time(instant, limit_year - _SEARCH_YEARS)
        return found

    def _no_fire_time(self, instant: datetime, start_year: int) -> Exception:
        if start_year + _SEARCH_YEARS > 9999:
            return OverflowError(
                f"cron expression {self._expression!r} has no fire time between "
                f"{instant.isoformat()} and the end of year 9999, the latest datetime"
            )
        return InvalidCronExpression(
            f"invalid cron expression {self._expression!r}: no fire time in time "
            f"zone {self._timezone} within {_SEARCH_YEARS} years after "
            f"{instant.isoformat()}, because every match falls into a skipped "
            "daylight saving time gap",
            expression=self._expression,
            field=None,
        )

    def _search(
        self, year: int, month: int, day: int, hour: int, minute: int, second: int
    ) -> _Wall | None:
        """Return the first matching wall time at or after the given one.

        `second` may be 60 and `day` may be past the end of the month, which both
        mean "carry into the next larger unit". Returns None when the match would be
        more than 400 years later or after the year 9999.
        """
        seconds, minutes, hours = self._seconds, self._minutes, self._hours
        last_year = min(year + _SEARCH_YEARS, 9999)
        while year <= last_year:
            if month not in self._month_set:
                index = bisect_left(self._months, month)
                if index == len(self._months):
                    year += 1
                    month = self._months[0]
                else:
                    month = self._months[index]
                day, hour, minute, second = 1, 0, 0, 0
                continue

            days = self._day_cache.get(year * 16 + month)
            if days is None:
                days = self._matching_days(year, month)
            index = bisect_left(days, day)
            if index == len(days):
                month += 1
                if month > 12:
                    year += 1
                    month = 1
                day, hour, minute, second = 1, 0, 0, 0
                continue
            if days[index] != day:
                day = days[index]
                hour, minute, second = 0, 0, 0

            index = bisect_left(hours, hour)
            if index == len(hours):
                day += 1
                hour, minute, second = 0, 0, 0
                continue
            if hours[index] != hour:
                hour = hours[index]
                minute, second = 0, 0

            index = bisect_left(minutes, minute)
            if index == len(minutes):
                hour += 1
                minute, second = 0, 0
                continue
            if minutes[index] != minute:
                minute = minutes[index]
                second = 0

            index = bisect_left(seconds, second)
            if index == len(seconds):
                minute += 1
                second = 0
                continue
            return year, month, day, hour, minute, seconds[index]
        return None

    def _matching_days(self, year: int, month: int) -> tuple[int, ...]:
        """Compute and cache the days of a month that the day fields allow."""
        first_weekday, length = calendar.monthrange(year, month)
        # calendar counts weekdays from Monday = 0, cron from Sunday = 0.
        first_cron_weekday = (first_weekday + 1) % 7
        days = tuple(
            day
            for day in range(1, length + 1)
            if self._day_matches(day, (first_cron_weekday + day - 1) % 7)
        )
        if len(self._day_cache) >= 1024:
            # Keeps memory bounded in a long-running scheduler. A month is cheap
            # to recompute.
            self._day_cache.clear()
        self._day_cache[year * 16 + month] = days
        return days

    def _day_matches(self, day: int, weekday: int) -> bool:
        in_month = day in self._days_of_month
        in_week = weekday in self._days_of_week
        if self._restrict_days_of_month and self._restrict_days_of_week:
            return in_month or in_week
        return in_month and in_week


def _components(moment: datetime) -> _Wall:
    return (
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
    )


def _load_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as error:
        raise ConfigurationError(
            f"unknown time zone {name!r}, "
            "use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from error


def _fixed_offset_of(zone: ZoneInfo) -> timedelta | None:
    """Return the UTC offset of a zone that never changes its offset, else None."""
    if zone.key in _FIXED_OFFSET_ZONES or zone.key.startswith("Etc/"):
        return zone.utcoffset(datetime(2000, 1, 1))
    return None


def _split_fields(expression: str) -> list[str]:
    """Split an expression into 6 field texts, adding second 0 to a 5-field one."""
    texts = expression.split()
    if not texts:
        raise InvalidCronExpression(
            f"invalid cron expression {expression!r}: the expression is empty, "
            f"expected {_FIELD_ORDER}",
            expression=expression,
            field=None,
        )
    if texts[0].startswith("@"):
        example = _MACRO_EXAMPLES.get(texts[0].lower())
        hint = f", such as {example!r} for {texts[0]}" if example else ""
        raise InvalidCronExpression(
            f"invalid cron expression {expression!r}: macros such as {texts[0]} are "
            f"not supported, write the fields instead{hint}",
            expression=expression,
            field=None,
        )
    if len(texts) == 5:
        texts.insert(0, "0")
    if len(texts) != 6:
        raise InvalidCronExpression(
            f"invalid cron expression {expression!r}: expected {_FIELD_ORDER}, "
            f"got {len(texts)}",
            expression=expression,
            field=None,
        )
    return texts


def _expand_fields(expression: str, texts: list[str]) -> list[tuple[int, ...]]:
    """Validate the 6 field texts and return the sorted values each one allows.

    The fields are checked here and rewritten into plain numeric lists, ranges and
    steps before croniter expands them. croniter 7 accepts reversed ranges and
    expands an equal range such as ``5-5`` to the whole field, so it cannot be
    given the raw text.
    """
    normalized = [
        _normalize_field(expression, spec, text)
        for spec, text in zip(_FIELDS, texts, strict=True)
    ]
    expanded, _ = croniter.expand(" ".join(normalized), second_at_beginning=True)
    # croniter returns the seconds last: minute, hour, day, month, weekday, second.
    by_field = [expanded[5], *expanded[:5]]
    values: list[tuple[int, ...]] = []
    for spec, items in zip(_FIELDS, by_field, strict=True):
        if items == ["*"]:
            values.append(tuple(range(spec.minimum, spec.last + 1)))
            continue
        numbers = sorted({item for item in items if isinstance(item, int)})
        values.append(tuple(numbers))
    return values


def _normalize_field(expression: str, spec: _FieldSpec, text: str) -> str:
    """Validate one field and rewrite it as numeric N, A-B and A-B/S items."""
    items = []
    for item in text.split(","):
        first, last, step = _parse_item(expression, spec, text, item)
        if spec is _DAY_OF_WEEK and first == 7:
            # 7 can only start the range 7-7, which is Sunday.
            first = last = 0
        if first == last:
            items.append(str(first))
        elif step == 1:
            items.append(f"{first}-{last}")
        else:
            items.append(f"{first}-{last}/{step}")
    return ",".join(items)


def _parse_item(
    expression: str, spec: _FieldSpec, text: str, item: str
) -> tuple[int, int, int]:
    """Parse one list item into its first value, last value and step."""

    def fail(reason: str) -> InvalidCronExpression:
        return InvalidCronExpression(
            f"invalid cron expression {expression!r}: {reason}",
            expression=expression,
            field=spec.name,
        )

    if not item:
        raise fail(
            f"{spec.name} {text!r} has an empty list item, remove the extra comma"
        )
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not (step_text.isascii() and step_text.isdigit()) or int(step_text) == 0:
            displayed_step = (
                step_text
                if step_text.isascii() and step_text.isdigit()
                else repr(step_text)
            )
            raise fail(
                f"{spec.name} step must be a positive integer, got {displayed_step}"
            )
        step = int(step_text)

    if base == "*":
        return spec.minimum, spec.last, step
    start_text, dash, end_text = base.partition("-")
    if not dash:
        first = _parse_value(spec, base, item, fail)
        # N/STEP runs from N to the end of the field, as in croniter and Quartz.
        return first, (spec.last if slash and first <= spec.last else first), step
    if not start_text or not end_text:
        raise fail(
            f"{spec.name} has a malformed item {item!r}, "
            "write N, A-B or *, optionally followed by /STEP"
        )
    first = _parse_value(spec, start_text, item, fail)
    last = _parse_value(spec, end_text, item, fail)
    if first > last:
        wrap_high = f"{first}-{spec.last}" if first < spec.last else f"{first}"
        wrap_low = (
            f"{spec.minimum}-{last}" if last > spec.minimum else f"{spec.minimum}"
        )
        raise fail(
            f"{spec.name} range {base} is reversed, write the smaller value first "
            f"or split it into a list such as {wrap_high},{wrap_low}"
        )
    return first, last, step


def _parse_value(
    spec: _FieldSpec,
    text: str,
    item: str,
    fail: _Fail,
) -> int:
    if text.isascii() and text.isdigit():
        value = int(text)
        if spec.minimum <= value <= spec.maximum:
            return value
        raise fail(f"{spec.name} must be {spec.describe_range()}, got {value}")
    alias = spec.aliases.get(text.upper())
    if alias is not None:
        return alias
    if _EXTENSION_PATTERN.fullmatch(text):
        raise fail(
            f"{spec.name} must be {spec.describe_range()}, got {item!r} "
            "(the L, W, # and ? extensions are not supported)"
        )
    if "-" in text or not text:
        raise fail(
            f"{spec.name} has a malformed item {item!r}, "
            "write N, A-B or *, optionally followed by /STEP"
        )
    raise fail(f"{spec.name} must be {spec.describe_range()}, got {text!r}")


def _join_words(words: list[str]) -> str:
    if len(words) == 1:
        return words[0]
    return f"{', '.join(words[:-1])} or {words[-1]}"
