"""The freezegun bridge: standard time functions read the fake time in handlers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from plugin_support import write_project

from fantasma import JobContext, JobHandler, Trigger
from fantasma_testing import SimulatedScheduler

START = datetime(2030, 1, 1, tzinfo=UTC)


@dataclass
class Readings:
    """Job data of a handler that reads every clock it can."""


READ: dict[str, Any] = {}


class ReadingsHandler(JobHandler[Readings]):
    async def handle(self, data: Readings, context: JobContext) -> None:
        READ["now"] = datetime.now(UTC)
        READ["utcnow"] = datetime.utcnow()
        READ["time"] = time.time()
        READ["today"] = date.today()
        READ["loop"] = asyncio.get_running_loop().time()
        # The loop's own timers must still run while time is frozen.
        await asyncio.wait_for(asyncio.sleep(0), timeout=5)


@pytest.fixture
def scheduler(fantasma_scheduler: SimulatedScheduler) -> SimulatedScheduler:
    READ.clear()
    fantasma_scheduler.register(ReadingsHandler)
    fantasma_scheduler.schedule("read", Readings(), Trigger.after(days=3, minutes=5))
    return fantasma_scheduler


@pytest.mark.fantasma(freeze_time=True)
def test_handler_reads_fake_time(scheduler: SimulatedScheduler) -> None:
    due = START + timedelta(days=3, minutes=5)

    scheduler.advance_time(days=4)

    assert READ["now"] == due
    assert READ["utcnow"] == due.replace(tzinfo=None)
    assert READ["time"] == due.timestamp()
    assert READ["today"] == date(2030, 1, 4)


@pytest.mark.fantasma(freeze_time=True)
def test_event_loop_clock_stays_real(scheduler: SimulatedScheduler) -> None:
    real_before = time.monotonic()

    scheduler.advance_time(days=4)

    assert real_before <= READ["loop"] <= time.monotonic()


@pytest.mark.fantasma(freeze_time=True)
def test_time_unfrozen_after_advance(scheduler: SimulatedScheduler) -> None:
    real_before = time.time()

    scheduler.advance_time(days=4)

    assert real_before <= time.time() < real_before + 60


def test_bridge_off_by_default(scheduler: SimulatedScheduler) -> None:
    real_before = time.time()

    scheduler.advance_time(days=4)

    assert real_before <= READ["time"] < real_before + 60


@pytest.mark.parametrize(
    ("args", "ini"),
    [(["--fantasma-freeze-time"], ""), ([], "fantasma_freeze_time = true")],
    ids=["option", "ini"],
)
def test_bridge_turned_on_globally(
    pytester: pytest.Pytester, args: list[str], ini: str
) -> None:
    write_project(
        pytester,
        """
        import time
        from fantasma import JobHandler, Trigger

        from handlers import Poll, PollHandler

        SEEN = []

        class Clocked(PollHandler):
            type_name = "clocked"

            async def handle(self, data, context):
                SEEN.append(time.time())

        def test_frozen(fantasma_scheduler, fantasma_freeze_time):
            assert fantasma_freeze_time
            fantasma_scheduler.register(Clocked)
            fantasma_scheduler.schedule("poll", Poll(), Trigger.after(hours=1))
            fantasma_scheduler.advance_time(hours=1)
            assert SEEN == [fantasma_scheduler.now().timestamp()]
        """,
        ini=ini,
    )

    result = pytester.runpytest(*args)

    result.assert_outcomes(passed=1)


def test_marker_overrides_ini(pytester: pytest.Pytester) -> None:
    write_project(
        pytester,
        """
        import pytest

        @pytest.mark.fantasma(freeze_time=False)
        def test_off(fantasma_freeze_time):
            assert not fantasma_freeze_time
        """,
        ini="fantasma_freeze_time = true",
    )

    result = pytester.runpytest()

    result.assert_outcomes(passed=1)


def test_plugin_works_without_freezegun(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import sys

        # Make "import freezegun" fail as if it were not installed.
        sys.modules["freezegun"] = None
        """
    )
    write_project(
        pytester,
        """
        import pytest

        def test_off(fantasma_scheduler, advance_time):
            advance_time(hours=1)

        @pytest.mark.fantasma(freeze_time=True)
        def test_on(fantasma_scheduler):
            pass
        """,
    )

    result = pytester.runpytest_subprocess()

    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "E *SimulationError: freeze_time needs freezegun, which is not "
            "installed; install it with: pip install 'fantasma?testing?'"
        ]
    )
