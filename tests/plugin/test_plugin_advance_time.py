"""advance_time and drain: which runs happen, when, and in what order."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from plugin_support import (
    Flaky,
    FlakyHandler,
    Note,
    NoteHandler,
    Order,
    OrderHandler,
    Poll,
    PollHandler,
    recorded_notes,
)

from fantasma import RunOutcome, Trigger
from fantasma_testing import AdvanceTime, SimulatedScheduler

START = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def handlers(fantasma_scheduler: SimulatedScheduler) -> None:
    recorded_notes.clear()
    for handler in (PollHandler, NoteHandler, FlakyHandler, OrderHandler):
        fantasma_scheduler.register(handler)


def test_poll_runs_every_ten_seconds(fantasma_scheduler, advance_time):
    fantasma_scheduler.schedule(
        "poll", Poll(), Trigger.recurring("poll", "*/10 * * * * *")
    )
    advance_time(minutes=30)
    assert fantasma_scheduler.runs("poll").count == 180


def test_nothing_runs_before_time_moves(fantasma_scheduler: SimulatedScheduler) -> None:
    fantasma_scheduler.schedule("note", Note("now"), Trigger.now())

    assert fantasma_scheduler.runs().count == 0


def test_drain_runs_job_due_now(fantasma_scheduler: SimulatedScheduler) -> None:
    fantasma_scheduler.schedule("note", Note("now"), Trigger.now())

    returned = fantasma_scheduler.drain()

    assert recorded_notes == [("now", START)]
    assert returned == START
    assert fantasma_scheduler.now() == START


def test_advance_by_zero_runs_due_now(
    fantasma_scheduler: SimulatedScheduler, advance_time: AdvanceTime
) -> None:
    fantasma_scheduler.schedule("note", Note("now"), Trigger.now())

    advance_time(seconds=0)

    assert recorded_notes == [("now", START)]


def test_advance_to_includes_target(
    fantasma_scheduler: SimulatedScheduler, advance_time: AdvanceTime
) -> None:
    target = datetime(2030, 1, 1, 1, 0, tzinfo=UTC)
    fantasma_scheduler.schedule("at target", Note("target"), Trigger.at(target))
    fantasma_scheduler.schedule(
        "later", Note("later"), Trigger.at(target + timedelta(microseconds=1))
    )

    returned = advance_time(to=target)

    assert recorded_notes == [("target", target)]
    assert returned == target


def test_advance_to_other_time_zone(
    fantasma_scheduler: SimulatedScheduler, advance_time: AdvanceTime
) -> None:
    berlin_noon = datetime.fromisoformat("2030-01-01T12:00:00+01:00")

    returned = advance_time(to=berlin_noon)

    assert returned == datetime(2030, 1, 1, 11, 0, tzinfo=UTC)
    assert returned.tzinfo is UTC


def test_advance_accepts_timedelta(
    fantasma_scheduler: SimulatedScheduler, advance_time: AdvanceTime
) -> None:
    returned = advance_time(timedelta(hours=2))

    assert returned == START + timedelta(hours=2)


def test_runs_in_due_then_schedule_order(
    fantasma_scheduler: SimulatedScheduler, advance_time: AdvanceTime
) -> None:
    fantasma_scheduler.schedule("b", Note("b"), Trigger.after(minutes=5))
    fantasma_scheduler.schedule("a", Note("a"), Trigger.after(minutes=5))
    fantasma_scheduler.schedule("c", Note("c"), Trigger.after(minutes=3))

    advance_time(minutes=10)

    assert [text for text, _ in recorded_notes] == ["c", "b", "a"]


def test_handler_clock_reads_due_time(
    fantasma_scheduler: SimulatedScheduler, advance_time: AdvanceTime
) -> None:
    fantasma_scheduler.schedule("note", Note("x"), Trigger.after(minutes=7, seconds=3))

    advance_time(hours=1)

    assert recorded_notes == [("x", START + timedelta(minutes=7, seconds=3))]
    assert fantasma_scheduler.now() == START + timedelta(hours=1)


def test_follow_up_runs_in_same_advance(
    fantasma_scheduler: SimulatedScheduler, advance_time: AdvanceTime
) -> None:
    fantasma_scheduler.schedule("order", Order(7), Trigger.after(minutes=2))

    advance_time(minutes=5)

    assert [("confirm 7", START + timedelta(minutes=3))] == recorded_notes
    assert fantasma_scheduler.runs().due_times == [
        START + timedelta(minutes=2),
        START + timedelta(minutes=3),
    ]


def test_follow_up_waits_for_its_time(
    fantasma_scheduler: SimulatedScheduler, advance_time: AdvanceTime
) -> None:
    fantasma_scheduler.schedule("order", Order(7), Trigger.after(minutes=2))

    advance_time(minutes=2, seconds=59)

    assert recorded_notes == []
    fantasma_scheduler.assert_scheduled("confirm", at=START + timedelta(minutes=3))


def test_retry_runs_after_backoff(
    fantasma_scheduler: SimulatedScheduler, advance_time: AdvanceTime
) -> None:
    fantasma_scheduler.schedule("flaky", Flaky(succeed_on=3), Trigger.now())

    advance_time(minutes=10)

    runs = fantasma_scheduler.runs("flaky")
    assert runs.due_times == [
        START,
        START + timedelta(seconds=60),
        START + timedelta(seconds=180),
    ]
    assert [run.outcome for run in runs] == [
        RunOutcome.FAILED,
        RunOutcome.FAILED,
        RunOutcome.SUCCEEDED,
    ]
    assert [run.attempt for run in runs] == [1, 2, 3]
    assert runs[0].error is not None
    assert runs[0].error.endswith("RuntimeError: attempt 1 failed")


def test_retry_not_before_backoff(
    fantasma_scheduler: SimulatedScheduler, advance_time: AdvanceTime
) -> None:
    job_id = fantasma_scheduler.schedule("flaky", Flaky(succeed_on=2), Trigger.now())

    advance_time(seconds=59)

    assert fantasma_scheduler.runs("flaky").count == 1
    assert fantasma_scheduler.get_job(job_id).due_at == START + timedelta(seconds=60)


@pytest.mark.fantasma(start=datetime(2030, 3, 29, tzinfo=UTC))
def test_nightly_job_across_spring_dst(
    fantasma_scheduler: SimulatedScheduler, advance_time: AdvanceTime
) -> None:
    fantasma_scheduler.add_recurring_job(
        "nightly", "nightly", "0 30 2 * * *", Poll(), timezone="Europe/Berlin"
    )

    advance_time(days=4)

    # 02:30 does not exist in Berlin on 31 March 2030: clocks jump from 02:00
    # to 03:00, so the run happens at the end of the skipped hour.
    assert fantasma_scheduler.runs("nightly").due_times == [
        datetime.fromisoformat("2030-03-29T02:30:00+01:00"),
        datetime.fromisoformat("2030-03-30T02:30:00+01:00"),
        datetime.fromisoformat("2030-03-31T03:00:00+02:00"),
        datetime.fromisoformat("2030-04-01T02:30:00+02:00"),
    ]


@pytest.mark.fantasma(start=datetime(2030, 10, 26, tzinfo=UTC))
def test_nightly_job_across_autumn_dst(
    fantasma_scheduler: SimulatedScheduler, advance_time: AdvanceTime
) -> None:
    fantasma_scheduler.add_recurring_job(
        "nightly", "nightly", "0 30 2 * * *", Poll(), timezone="Europe/Berlin"
    )

    advance_time(days=2)

    # 02:30 happens twice on 27 October 2030; the job runs on the first pass.
    assert fantasma_scheduler.runs("nightly").due_times == [
        datetime.fromisoformat("2030-10-26T02:30:00+02:00"),
        datetime.fromisoformat("2030-10-27T02:30:00+02:00"),
    ]


def test_cancelled_job_does_not_run(
    fantasma_scheduler: SimulatedScheduler, advance_time: AdvanceTime
) -> None:
    job_id = fantasma_scheduler.schedule("note", Note("x"), Trigger.after(minutes=1))

    assert fantasma_scheduler.cancel(job_id)
    advance_time(minutes=2)

    fantasma_scheduler.assert_not_run("note")


def test_removed_schedule_stops_running(
    fantasma_scheduler: SimulatedScheduler, advance_time: AdvanceTime
) -> None:
    fantasma_scheduler.add_recurring_job("poll", "poll", "0 * * * * *", Poll())
    advance_time(minutes=3)

    assert fantasma_scheduler.remove_recurring_job("poll")
    advance_time(minutes=3)

    assert fantasma_scheduler.runs("poll").count == 3
    assert fantasma_scheduler.get_recurring_job("poll") is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda advance: advance(),
            r"^advance_time takes exactly one of: a timedelta, keyword amounts "
            r"such as minutes=30, or to=<aware datetime>$",
        ),
        (
            lambda advance: advance(timedelta(minutes=1), seconds=3),
            r"^advance_time takes exactly one of: a timedelta, keyword amounts "
            r"such as minutes=30, or to=<aware datetime>$",
        ),
        (
            lambda advance: advance(minute=5),
            r"^advance_time got an unknown keyword 'minute'; use weeks, days, "
            r"hours, minutes, seconds, milliseconds, microseconds or to$",
        ),
    ],
    ids=["nothing", "two targets", "unknown keyword"],
)
def test_advance_rejects_bad_call(
    fantasma_scheduler: SimulatedScheduler,
    advance_time: AdvanceTime,
    call: Callable[[AdvanceTime], object],
    message: str,
) -> None:
    with pytest.raises(TypeError, match=message):
        call(advance_time)


def test_advance_rejects_negative_step(advance_time: AdvanceTime) -> None:
    with pytest.raises(
        ValueError,
        match=r"^advance_time needs a step of zero or more, got "
        r"datetime\.timedelta\(days=-1, seconds=86399\)$",
    ):
        advance_time(seconds=-1)


def test_advance_rejects_past_target(advance_time: AdvanceTime) -> None:
    with pytest.raises(
        ValueError,
        match=r"^cannot advance to 2029-12-31T23:00:00\+00:00: the fake clock "
        r"already reads 2030-01-01T00:00:00\+00:00$",
    ):
        advance_time(to=datetime(2029, 12, 31, 23, tzinfo=UTC))


def test_advance_rejects_naive_target(advance_time: AdvanceTime) -> None:
    with pytest.raises(
        ValueError,
        match=r"^advance_time\(to=\.\.\.\) needs an aware datetime, got "
        r"datetime\.datetime\(2030, 1, 2, 0, 0\)$",
    ):
        advance_time(to=datetime(2030, 1, 2))


@pytest.mark.slow
def test_thirty_days_of_ten_second_job(
    fantasma_scheduler: SimulatedScheduler, advance_time: AdvanceTime
) -> None:
    fantasma_scheduler.schedule(
        "poll", Poll(), Trigger.recurring("poll", "*/10 * * * * *")
    )

    advance_time(days=30)

    assert fantasma_scheduler.runs("poll").count == 259_200
