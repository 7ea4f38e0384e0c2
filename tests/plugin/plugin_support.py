"""Job types, handlers and pytester helpers shared by the plugin tests."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from datetime import datetime

import pytest

from fantasma import JobContext, JobHandler, Trigger


@dataclass
class Poll:
    """Data of a job that only records that it ran."""


class PollHandler(JobHandler[Poll]):
    async def handle(self, data: Poll, context: JobContext) -> None:
        return None


@dataclass
class Note:
    """Data of a job that records its text and clock reading in ``recorded_notes``."""

    text: str


recorded_notes: list[tuple[str, datetime]] = []
"""What :class:`NoteHandler` recorded; tests clear it first."""


class NoteHandler(JobHandler[Note]):
    async def handle(self, data: Note, context: JobContext) -> None:
        recorded_notes.append((data.text, context.clock.now()))


@dataclass
class Flaky:
    """Data of a job that fails until its attempt number reaches ``succeed_on``."""

    succeed_on: int


class FlakyHandler(JobHandler[Flaky]):
    max_attempts = 3
    retry_backoff = 60.0
    retry_jitter = 0.0

    async def handle(self, data: Flaky, context: JobContext) -> None:
        if context.attempt < data.succeed_on:
            raise RuntimeError(f"attempt {context.attempt} failed")


@dataclass
class Order:
    """Data of a job that schedules a follow-up ``Note`` one minute later."""

    number: int


class OrderHandler(JobHandler[Order]):
    async def handle(self, data: Order, context: JobContext) -> None:
        await context.app.schedule(
            "confirm", Note(f"confirm {data.number}"), Trigger.after(minutes=1)
        )


INNER_INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""
"""pytest.ini of the test runs that pytester starts; warnings fail them too."""

INNER_HANDLERS = """
from dataclasses import dataclass

from fantasma import JobContext, JobHandler


@dataclass
class Poll:
    pass


class PollHandler(JobHandler[Poll]):
    async def handle(self, data: Poll, context: JobContext) -> None:
        return None
"""
"""A ``handlers`` module for the test files that pytester writes."""


def write_project(pytester: pytest.Pytester, tests: str, *, ini: str = "") -> None:
    """Write ``handlers.py``, ``pytest.ini`` (plus ``ini``) and ``test_inner.py``."""
    pytester.makeini(INNER_INI + textwrap.dedent(ini))
    pytester.makepyfile(handlers=INNER_HANDLERS)
    pytester.makepyfile(test_inner=textwrap.dedent(tests))
