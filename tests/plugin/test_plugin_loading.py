"""The plugin as users meet it: loaded from its entry point, in sync and async tests."""

from __future__ import annotations

import pytest
from plugin_support import write_project

DESIGN_EXAMPLE = """
from fantasma import Trigger

from handlers import Poll, PollHandler
import pytest


@pytest.fixture(autouse=True)
def handlers(fantasma_scheduler):
    fantasma_scheduler.register(PollHandler)


def test_poll_runs_every_ten_seconds(fantasma_scheduler, advance_time):
    fantasma_scheduler.schedule("poll", Poll(), Trigger.recurring("poll", "*/10 * * * * *"))
    advance_time(minutes=30)
    assert fantasma_scheduler.runs("poll").count == 180
"""  # noqa: E501 - the example is kept exactly as the docs print it

ANYIO_MARKERS = (
    "@pytest.mark.anyio\n@pytest.mark.parametrize('anyio_backend', ['asyncio'])"
)

ASYNC_TEST = """
from fantasma import JobStatus, Trigger
import pytest

from handlers import Poll, PollHandler

{marker}
async def test_poll_async(fantasma_scheduler, advance_time):
    fantasma_scheduler.register(PollHandler)
    await fantasma_scheduler.schedule(
        "poll", Poll(), Trigger.recurring("poll", "{cron}")
    )
    await fantasma_scheduler.schedule("once", Poll(), Trigger.after(hours=1))

    await advance_time(minutes=30)

    assert fantasma_scheduler.runs("poll").count == {count}
    waiting = await fantasma_scheduler.jobs(statuses=[JobStatus.SCHEDULED])
    assert [job.name for job in waiting] == ["once"]
    await fantasma_scheduler.assert_scheduled("once")
    assert await fantasma_scheduler.drain() == fantasma_scheduler.now()
"""


def test_fixtures_load_without_p_option(pytester: pytest.Pytester) -> None:
    write_project(pytester, DESIGN_EXAMPLE)

    result = pytester.runpytest()

    result.assert_outcomes(passed=1)


def test_disabling_plugin_hides_fixtures(pytester: pytest.Pytester) -> None:
    write_project(pytester, DESIGN_EXAMPLE)

    result = pytester.runpytest("-p", "no:fantasma")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'fantasma_scheduler' not found*"])


def test_fixtures_listed_with_docs(pytester: pytest.Pytester) -> None:
    write_project(pytester, "")

    result = pytester.runpytest("--fixtures")

    result.stdout.fnmatch_lines(
        [
            "*fixtures defined from fantasma_testing.plugin*",
            "fantasma_start*",
            "    The instant the fake clock starts at: Tuesday 2030-01-01 00:00:00*",
            "fantasma_scheduler*",
            "    A fantasma scheduler on fake time, driven only by *",
            "advance_time*",
            "    Move the fake time forward, running every job and timer that falls *",
        ]
    )


def test_marker_and_options_registered(pytester: pytest.Pytester) -> None:
    write_project(pytester, "")

    markers = pytester.runpytest("--markers")
    help_text = pytester.runpytest("--help")

    markers.stdout.fnmatch_lines(
        ["@pytest.mark.fantasma(start=None, storage=None, seed=None, freeze_time=*"]
    )
    help_text.stdout.fnmatch_lines(
        [
            "*--fantasma-storage=URL*",
            "*--fantasma-freeze-time*",
            "*fantasma_storage (string):*",
            "*fantasma_freeze_time (bool):*",
        ]
    )


def test_sync_test_gets_plain_calls(pytester: pytest.Pytester) -> None:
    write_project(
        pytester,
        """
        from fantasma_testing import AdvanceTime, SimulatedScheduler

        def test_types(fantasma_scheduler, advance_time):
            assert type(fantasma_scheduler) is SimulatedScheduler
            assert type(advance_time) is AdvanceTime
        """,
    )

    result = pytester.runpytest()

    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("marker", "ini"),
    [
        ("@pytest.mark.asyncio", "asyncio_mode = strict"),
        ("", "asyncio_mode = auto"),
        (
            ANYIO_MARKERS,
            "",
        ),
    ],
    ids=["asyncio-strict", "asyncio-auto", "anyio"],
)
def test_async_test_awaits_methods(
    pytester: pytest.Pytester, marker: str, ini: str
) -> None:
    test = ASYNC_TEST.format(marker=marker, cron="*/10 * * * * *", count=180)
    write_project(pytester, test, ini=ini)

    result = pytester.runpytest()

    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("marker", "ini"),
    [
        ("@pytest.mark.asyncio", "asyncio_mode = strict"),
        (
            ANYIO_MARKERS,
            "",
        ),
    ],
    ids=["asyncio", "anyio"],
)
def test_async_sqlite_closes_on_test_loop(
    pytester: pytest.Pytester, marker: str, ini: str
) -> None:
    """A SQL engine opened on the test's loop must be disposed of on that loop."""
    test = ASYNC_TEST.format(marker=marker, cron="0 */10 * * * *", count=3)
    write_project(pytester, test, ini=ini)

    result = pytester.runpytest("--fantasma-storage", "sqlite")

    result.assert_outcomes(passed=1)


def test_async_fixture_shares_test_loop(pytester: pytest.Pytester) -> None:
    write_project(
        pytester,
        """
        import pytest
        import pytest_asyncio
        from fantasma import Trigger

        from handlers import Poll, PollHandler


        @pytest_asyncio.fixture
        async def scheduled(fantasma_scheduler):
            fantasma_scheduler.register(PollHandler)
            return await fantasma_scheduler.schedule("poll", Poll(), Trigger.now())


        @pytest.mark.asyncio
        async def test_runs(fantasma_scheduler, scheduled):
            await fantasma_scheduler.drain()

            fantasma_scheduler.assert_ran(scheduled)
        """,
    )

    result = pytester.runpytest("--fantasma-storage", "sqlite")

    result.assert_outcomes(passed=1)


def test_scheduler_stops_after_async_test(pytester: pytest.Pytester) -> None:
    write_project(
        pytester,
        """
        import pytest

        @pytest.fixture
        def remember(fantasma_simulation):
            yield
            assert fantasma_simulation.closed


        @pytest.mark.asyncio
        async def test_runs(remember, fantasma_scheduler):
            await fantasma_scheduler.drain()
            assert not fantasma_scheduler.simulation.closed
        """,
    )

    result = pytester.runpytest()

    result.assert_outcomes(passed=1)


def test_sync_api_inside_running_loop(pytester: pytest.Pytester) -> None:
    write_project(
        pytester,
        """
        import asyncio

        import pytest
        from fantasma_testing import SimulationError


        def test_nested(fantasma_scheduler):
            async def call_sync_api():
                fantasma_scheduler.drain()

            with pytest.raises(
                SimulationError,
                match=(
                    r"^the synchronous scheduler API was called while an event "
                    r"loop is running; in async tests and async fixtures, await "
                    r"the methods of the async API instead$"
                ),
            ):
                asyncio.run(call_sync_api())
        """,
    )

    result = pytester.runpytest()

    result.assert_outcomes(passed=1)


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("marker", "ini"),
    [
        ("@pytest.mark.asyncio", "asyncio_mode = strict"),
        (
            ANYIO_MARKERS,
            "",
        ),
    ],
    ids=["asyncio", "anyio"],
)
def test_async_postgres_closes_on_test_loop(
    pytester: pytest.Pytester, marker: str, ini: str
) -> None:
    """asyncpg connections fail when closed from any loop but their own."""
    test = ASYNC_TEST.format(marker=marker, cron="0 */10 * * * *", count=3)
    write_project(pytester, test, ini=ini)

    result = pytester.runpytest(
        "--fantasma-storage", "postgresql+asyncpg://root@127.0.0.1/test"
    )

    result.assert_outcomes(passed=1)
