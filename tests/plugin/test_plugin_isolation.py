"""Replays with a seed, and tests that share nothing under pytest-xdist."""

from __future__ import annotations

import pytest
from plugin_support import write_project

JITTERED_RETRIES = """
import pytest
from fantasma import JobHandler, Trigger

from handlers import Poll


class Jittered(JobHandler[Poll]):
    max_attempts = 4
    retry_jitter = 0.5

    async def handle(self, data, context):
        raise RuntimeError("always fails")


@pytest.mark.fantasma(seed={seed})
def test_retries(fantasma_scheduler, advance_time):
    fantasma_scheduler.register(Jittered)
    fantasma_scheduler.schedule("jittered", Poll(), Trigger.now())
    advance_time(hours=1)
    for run in fantasma_scheduler.runs():
        print("DUE", run.due_at.isoformat())
"""


def _due_lines(pytester: pytest.Pytester, seed: int) -> list[str]:
    write_project(pytester, JITTERED_RETRIES.format(seed=seed))
    result = pytester.runpytest("-s")
    result.assert_outcomes(passed=1)
    # The first print follows the progress line's "test_inner.py " prefix.
    return [line[line.index("DUE") :] for line in result.stdout.lines if "DUE" in line]


def test_same_seed_same_retry_times(pytester: pytest.Pytester) -> None:
    first = _due_lines(pytester, 3)

    second = _due_lines(pytester, 3)

    assert len(first) == 4
    assert first == second


def test_other_seed_other_retry_times(pytester: pytest.Pytester) -> None:
    assert _due_lines(pytester, 3) != _due_lines(pytester, 4)


ISOLATED = """
import pytest
from fantasma import Trigger

from handlers import Poll, PollHandler


@pytest.mark.parametrize("number", range(8))
def test_isolated(fantasma_scheduler, advance_time, number):
    fantasma_scheduler.register(PollHandler)
    assert fantasma_scheduler.jobs() == []
    assert fantasma_scheduler.runs().count == 0
    assert fantasma_scheduler.now().isoformat() == "2030-01-01T00:00:00+00:00"

    fantasma_scheduler.add_recurring_job("poll", "poll", "0 * * * * *", Poll())
    fantasma_scheduler.schedule("once", Poll(), Trigger.after(minutes=number))
    advance_time(minutes=10)

    assert fantasma_scheduler.runs("poll").count == 10
    assert fantasma_scheduler.runs("once").count == 1
"""


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_xdist_workers_share_nothing(pytester: pytest.Pytester, storage: str) -> None:
    write_project(pytester, ISOLATED)

    result = pytester.runpytest_subprocess(
        "-n", "2", "-p", "xdist", "--fantasma-storage", storage
    )

    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["created: 2/2 workers"])
