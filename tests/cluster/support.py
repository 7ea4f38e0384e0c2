"""Job types and handlers shared by the simulated cluster tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from fantasma import Cron, JobContext, JobHandler

EVERY_10_S = "*/10 * * * * *"
DAILY_3AM = "0 0 3 * * *"


@dataclass
class Tick:
    """Data of a recurring job whose runs the tests count."""


class TickHandler(JobHandler[Tick]):
    async def handle(self, data: Tick, context: JobContext) -> None:
        return None


@dataclass
class Chore:
    """Data of a one-off job."""

    label: str


class ChoreHandler(JobHandler[Chore]):
    async def handle(self, data: Chore, context: JobContext) -> None:
        return None


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def fire_times(cron: str, after: datetime, until: datetime) -> list[datetime]:
    """Return the fire times of ``cron`` (UTC) in ``(after, until]``."""
    schedule = Cron(cron, "UTC")
    found = []
    fire = schedule.next_after(after)
    while fire <= until:
        found.append(fire)
        fire = schedule.next_after(fire)
    return found
