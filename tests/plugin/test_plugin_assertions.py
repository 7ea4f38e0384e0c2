"""Assertion helpers: they pass on what happened and explain what did not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from plugin_support import (
    Flaky,
    FlakyHandler,
    Note,
    NoteHandler,
    Poll,
    PollHandler,
    write_project,
)

from fantasma import RunOutcome, Trigger
from fantasma_testing import SimulatedScheduler, assert_ran, assert_ran_times

START = datetime(2030, 1, 1, tzinfo=UTC)

FAILING = """
from datetime import UTC, datetime

import pytest
from fantasma import Trigger

from handlers import Poll, PollHandler

START = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def polls(fantasma_scheduler, advance_time):
    fantasma_scheduler.register(PollHandler)
    every_minute = Trigger.recurring("poll", "0 * * * * *")
    fantasma_scheduler.schedule("poll", Poll(), every_minute)
    fantasma_scheduler.schedule("report", Poll(), Trigger.after(minutes=90))
    advance_time(minutes=2)


def test_helper(fantasma_scheduler):
    {call}
"""


@pytest.fixture
def scheduler(fantasma_scheduler: SimulatedScheduler) -> SimulatedScheduler:
    for handler in (PollHandler, NoteHandler, FlakyHandler):
        fantasma_scheduler.register(handler)
    return fantasma_scheduler


def _failure_lines(pytester: pytest.Pytester, call: str) -> list[str]:
    write_project(pytester, FAILING.format(call=call))
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    return result.stdout.lines


def test_ran_times_failure_lists_runs(pytester: pytest.Pytester) -> None:
    lines = _failure_lines(pytester, 'fantasma_scheduler.assert_ran_times("poll", 3)')

    start = lines.index(
        "E       AssertionError: expected 'poll' to run 3 times, but it ran 2 times"
    )
    assert lines[start + 1 : start + 4] == [
        "E       runs in finishing order, with due time (2):",
        "E         2030-01-01 00:01:00Z  poll  succeeded  attempt 1",
        "E         2030-01-01 00:02:00Z  poll  succeeded  attempt 1",
    ]


def test_traceback_points_at_test(pytester: pytest.Pytester) -> None:
    lines = _failure_lines(pytester, 'fantasma_scheduler.assert_ran_times("poll", 3)')

    assert '>       fantasma_scheduler.assert_ran_times("poll", 3)' in lines
    assert not [line for line in lines if "fantasma_testing/assertions.py" in line]


def test_ran_at_failure_names_time(pytester: pytest.Pytester) -> None:
    lines = _failure_lines(
        pytester,
        'fantasma_scheduler.assert_ran("poll", at=START.replace(second=30))',
    )

    assert (
        "E       AssertionError: expected 'poll' to run at 2030-01-01 00:00:30Z, "
        "but no such run happened"
    ) in lines


def test_not_run_failure_counts_runs(pytester: pytest.Pytester) -> None:
    lines = _failure_lines(pytester, 'fantasma_scheduler.assert_not_run("poll")')

    assert (
        "E       AssertionError: expected 'poll' not to run, but it ran 2 times"
        in lines
    )


def test_scheduled_failure_lists_waiting(pytester: pytest.Pytester) -> None:
    lines = _failure_lines(
        pytester,
        'fantasma_scheduler.assert_scheduled("report", at=START)',
    )

    start = lines.index(
        "E       AssertionError: expected 'report' to be scheduled at "
        "2030-01-01 00:00:00Z, but it is not"
    )
    assert lines[start + 1 : start + 4] == [
        "E       waiting to run, by due time (2):",
        "E         2030-01-01 00:03:00Z  poll    recurring '0 * * * * *' in UTC",
        "E         2030-01-01 01:30:00Z  report  scheduled",
    ]


def test_long_run_list_is_shortened(scheduler: SimulatedScheduler) -> None:
    scheduler.add_recurring_job("poll", "poll", "0 * * * * *", Poll())
    scheduler.advance_time(minutes=25)

    with pytest.raises(AssertionError) as failure:
        scheduler.assert_ran_times("poll", 3)

    lines = str(failure.value).splitlines()
    assert len(lines) == 23
    assert lines[12] == "  ... 5 more runs ..."
    assert lines[-1] == "  2030-01-01 00:25:00Z  poll  succeeded  attempt 1"


def test_failed_runs_show_error(scheduler: SimulatedScheduler) -> None:
    scheduler.schedule("flaky", Flaky(succeed_on=2), Trigger.now())
    scheduler.advance_time(minutes=2)

    with pytest.raises(AssertionError) as failure:
        scheduler.assert_not_run("flaky")

    assert str(failure.value).splitlines()[2:] == [
        "  2030-01-01 00:00:00Z  flaky  failed     attempt 1  "
        "RuntimeError: attempt 1 failed",
        "  2030-01-01 00:01:00Z  flaky  succeeded  attempt 2",
    ]


def test_nothing_ran_message(scheduler: SimulatedScheduler) -> None:
    with pytest.raises(
        AssertionError,
        match=r"^expected NoteHandler to run, but no such run happened\n"
        r"no job has run$",
    ):
        scheduler.assert_ran(NoteHandler)


def test_nothing_scheduled_message(scheduler: SimulatedScheduler) -> None:
    with pytest.raises(
        AssertionError,
        match=r"^expected 'note' to be scheduled, but it is not\nnothing is scheduled$",
    ):
        scheduler.assert_scheduled("note")


def test_helpers_pass_on_what_happened(scheduler: SimulatedScheduler) -> None:
    job_id = scheduler.schedule("note", Note("x"), Trigger.after(minutes=5))
    scheduler.add_recurring_job("poll", "poll", "0 0 * * * *", Poll())
    scheduler.assert_scheduled("note", at=START + timedelta(minutes=5))
    scheduler.assert_scheduled("poll", at=START + timedelta(hours=1))

    scheduler.advance_time(minutes=5)

    scheduler.assert_ran("note", at=START + timedelta(minutes=5))
    scheduler.assert_ran(job_id, outcome=RunOutcome.SUCCEEDED)
    scheduler.assert_ran(NoteHandler)
    scheduler.assert_ran_times("note", 1)
    scheduler.assert_not_run("poll")


def test_runs_selects_by_handler_and_id(scheduler: SimulatedScheduler) -> None:
    first = scheduler.schedule("note", Note("a"), Trigger.now())
    scheduler.schedule("note", Note("b"), Trigger.now())
    scheduler.schedule("poll", Poll(), Trigger.now())

    scheduler.drain()

    assert scheduler.runs().count == 3
    assert scheduler.runs(NoteHandler).count == 2
    assert [run.job_id for run in scheduler.runs(first)] == [first]
    assert scheduler.runs(PollHandler)[0].name == "poll"
    assert scheduler.runs()[1:].count == 2
    assert len(scheduler.runs().where(outcome="succeeded")) == 3


def test_runs_rejects_other_selectors(scheduler: SimulatedScheduler) -> None:
    with pytest.raises(
        TypeError,
        match=r"^select runs by job name, job id or JobHandler subclass, got 42$",
    ):
        scheduler.runs(42)  # type: ignore[arg-type]


def test_functions_take_any_runs(scheduler: SimulatedScheduler) -> None:
    scheduler.schedule("note", Note("a"), Trigger.now())
    scheduler.drain()
    runs = list(scheduler.runs())

    assert_ran(runs, "note")
    assert_ran_times(runs, "note", 1)
    with pytest.raises(
        AssertionError,
        match=r"^expected 'note' to run 2 times, but it ran once\n"
        r"runs in finishing order, with due time \(1\):\n"
        r"  2030-01-01 00:00:00Z  note  succeeded  attempt 1$",
    ):
        assert_ran_times(runs, "note", 2)
