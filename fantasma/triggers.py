"""Triggers: when a scheduled job runs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import final

from fantasma.cron import Cron
from fantasma.errors import InvalidTriggerError
from fantasma.jobs import MisfirePolicy

__all__ = ["OneOffTrigger", "RecurringTrigger", "Trigger"]


@final
@dataclass(frozen=True, slots=True)
class OneOffTrigger:
    """A trigger that runs a job once: now, at an instant, or after a delay.

    Exactly one of ``at`` and ``delay`` is set, or neither for "now".
    """

    at: datetime | None = None
    delay: timedelta | None = None

    def due_at(self, now: datetime) -> datetime:
        """Return the UTC instant the job falls due, given the current time."""
        if self.at is not None:
            return self.at.astimezone(UTC)
        if self.delay is not None:
            return now + self.delay
        return now


@final
@dataclass(frozen=True, slots=True)
class RecurringTrigger:
    """A trigger that runs a job on every occurrence of a cron schedule."""

    recurring_id: str
    cron: Cron
    misfire: MisfirePolicy
    allow_overlap: bool


class Trigger:
    """Constructors for the triggers :meth:`Fantasma.schedule` accepts.

    Example::

        await app.schedule("report", SendReport("ana"), Trigger.now())
        await app.schedule("report", SendReport("bo"), Trigger.after(minutes=5))
        await app.schedule("poll", Poll(), Trigger.recurring("poll", "*/10 * * * * *"))
    """

    @staticmethod
    def now() -> OneOffTrigger:
        """Run as soon as a worker is free."""
        return OneOffTrigger()

    @staticmethod
    def at(when: datetime) -> OneOffTrigger:
        """Run at ``when``, an aware datetime in any time zone.

        An instant in the past runs at once.

        Raises:
            InvalidTriggerError: ``when`` is naive.
        """
        if when.tzinfo is None or when.utcoffset() is None:
            raise InvalidTriggerError(
                f"Trigger.at needs an aware datetime, got naive {when!r}; "
                "attach a time zone, e.g. when.replace(tzinfo=UTC)"
            )
        return OneOffTrigger(at=when)

    @staticmethod
    def after(
        delay: timedelta | None = None,
        *,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
        milliseconds: float = 0,
    ) -> OneOffTrigger:
        """Run once ``delay`` (or the sum of the keyword amounts) has passed.

        Raises:
            InvalidTriggerError: The delay is negative, or both a timedelta and
                keyword amounts were given.
        """
        amounts = timedelta(
            days=days,
            hours=hours,
            minutes=minutes,
            seconds=seconds,
            milliseconds=milliseconds,
        )
        if delay is not None and amounts:
            raise InvalidTriggerError(
                "Trigger.after takes a timedelta or keyword amounts, not both"
            )
        total = amounts if delay is None else delay
        if total < timedelta(0):
            raise InvalidTriggerError(
                f"Trigger.after needs a delay of zero or more, got {total!r}"
            )
        return OneOffTrigger(delay=total)

    @staticmethod
    def recurring(
        recurring_id: str,
        cron: str,
        *,
        timezone: str = "UTC",
        misfire: MisfirePolicy | None = None,
        allow_overlap: bool = False,
    ) -> RecurringTrigger:
        """Run on every occurrence of ``cron`` in ``timezone``.

        Args:
            recurring_id: Stable id of the schedule; scheduling again with the
                same id updates it.
            cron: Six fields with seconds first (``"*/10 * * * * *"``), or
                five fields meaning second 0.
            timezone: IANA time zone name the cron fields are read in.
            misfire: What to do with occurrences missed while no node could
                run them; one catch-up run by default.
            allow_overlap: Let an occurrence start while the previous one of
                the same schedule is still active.

        Raises:
            InvalidCronExpression: ``cron`` is malformed or never fires.
            ConfigurationError: ``timezone`` is not a known IANA name.
            InvalidTriggerError: ``recurring_id`` is empty.
        """
        if not recurring_id:
            raise InvalidTriggerError(
                "Trigger.recurring needs a non-empty recurring_id"
            )
        return RecurringTrigger(
            recurring_id=recurring_id,
            cron=Cron(cron, timezone),
            misfire=MisfirePolicy.once() if misfire is None else misfire,
            allow_overlap=allow_overlap,
        )
