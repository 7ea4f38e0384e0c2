"""Assertion helpers whose failure messages list what actually ran or is scheduled."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from fantasma import Job, JobStatus, RecurringJob, Run, RunOutcome
from fantasma_testing.simulation import RunSelector, describe_selector, run_predicate

__all__ = [
    "assert_not_run",
    "assert_ran",
    "assert_ran_times",
    "assert_scheduled",
    "format_instant",
]

# Failure messages show this many runs or jobs from each end of a long list.
_SHOWN_AT_EACH_END = 10


def format_instant(instant: datetime) -> str:
    """Format an aware datetime in UTC for failure messages: ``2030-01-01 02:00:00Z``.

    Microseconds are shown only when they are not zero, as with retry delays.
    """
    utc = instant.astimezone(UTC)
    text = f"{utc:%Y-%m-%d %H:%M:%S}"
    if utc.microsecond:
        text += f".{utc.microsecond:06d}"
    return text + "Z"


def assert_ran(
    runs: Iterable[Run],
    selector: RunSelector,
    *,
    at: datetime | None = None,
    outcome: RunOutcome | str | None = None,
) -> None:
    """Assert that at least one run matches ``selector``.

    Args:
        runs: The runs to search, such as ``fantasma_scheduler.runs()``.
        selector: A job name or job id, or a handler class.
        at: Only count runs due at this instant (any time zone).
        outcome: Only count runs that ended this way.

    Raises:
        AssertionError: No run matches; the message lists every run.
    """
    __tracebackhide__ = True
    runs = list(runs)
    matches = run_predicate(selector)
    found = [
        run
        for run in runs
        if matches(run)
        and (at is None or run.due_at == at)
        and (outcome is None or run.outcome == outcome)
    ]
    if found:
        return
    expected = f"expected {describe_selector(selector)} to run"
    if at is not None:
        expected += f" at {format_instant(at)}"
    if outcome is not None:
        expected += f" with outcome {RunOutcome(outcome).value}"
    raise AssertionError(f"{expected}, but no such run happened\n{_list_runs(runs)}")


def assert_not_run(runs: Iterable[Run], selector: RunSelector) -> None:
    """Assert that no run matches ``selector``.

    Raises:
        AssertionError: Some run matches; the message lists every run.
    """
    __tracebackhide__ = True
    runs = list(runs)
    matches = run_predicate(selector)
    count = sum(1 for run in runs if matches(run))
    if count:
        raise AssertionError(
            f"expected {describe_selector(selector)} not to run, but it ran "
            f"{_times(count)}\n{_list_runs(runs)}"
        )


def assert_ran_times(runs: Iterable[Run], selector: RunSelector, count: int) -> None:
    """Assert that exactly ``count`` runs match ``selector``, retries included.

    Raises:
        AssertionError: Another number of runs matches; the message lists
            every run.
    """
    __tracebackhide__ = True
    runs = list(runs)
    matches = run_predicate(selector)
    actual = sum(1 for run in runs if matches(run))
    if actual != count:
        raise AssertionError(
            f"expected {describe_selector(selector)} to run {_times(count)}, but "
            f"it ran {_times(actual)}\n{_list_runs(runs)}"
        )


def assert_scheduled(
    jobs: Iterable[Job],
    name: str,
    *,
    at: datetime | None = None,
    recurring: Iterable[RecurringJob] = (),
) -> None:
    """Assert that a job called ``name`` waits to run, optionally due at ``at``.

    A job waits while it is scheduled or failed and due for a retry. A
    recurring schedule called ``name`` counts too, with its next fire time
    as its due time.

    Args:
        jobs: Stored jobs; those in other statuses are ignored.
        name: The job name given when scheduling.
        at: The due time to expect (any time zone).
        recurring: Stored recurring schedules.

    Raises:
        AssertionError: Nothing called ``name`` waits (at ``at``); the
            message lists what does.
    """
    __tracebackhide__ = True
    waiting = [
        job for job in jobs if job.status in (JobStatus.SCHEDULED, JobStatus.FAILED)
    ]
    schedules = list(recurring)
    due_times = [job.due_at for job in waiting if job.name == name]
    due_times += [entry.next_fire_at for entry in schedules if entry.name == name]
    if due_times and (at is None or at in due_times):
        return
    expected = f"expected {name!r} to be scheduled"
    if at is not None:
        expected += f" at {format_instant(at)}"
    raise AssertionError(
        f"{expected}, but it is not\n{_list_waiting(waiting, schedules)}"
    )


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _shown(items: Sequence[str], noun: str) -> list[str]:
    """Indent ``items``, keeping both ends of a long list."""
    if len(items) <= 2 * _SHOWN_AT_EACH_END:
        return [f"  {item}" for item in items]
    hidden = len(items) - 2 * _SHOWN_AT_EACH_END
    return [
        *(f"  {item}" for item in items[:_SHOWN_AT_EACH_END]),
        f"  ... {hidden} more {noun} ...",
        *(f"  {item}" for item in items[-_SHOWN_AT_EACH_END:]),
    ]


def _list_runs(runs: Sequence[Run]) -> str:
    if not runs:
        return "no job has run"
    due_times = [format_instant(run.due_at) for run in runs]
    due_width = max(len(due) for due in due_times)
    width = max(len(run.name) for run in runs)
    outcome_width = max(len(run.outcome.value) for run in runs)
    several_nodes = len({run.node_id for run in runs}) > 1
    lines = []
    for run, due in zip(runs, due_times, strict=True):
        line = (
            f"{due:<{due_width}}  {run.name:<{width}}  "
            f"{run.outcome.value:<{outcome_width}}  attempt {run.attempt}"
        )
        if several_nodes:
            line += f"  on {run.node_id}"
        if run.error:
            line += f"  {run.error.strip().splitlines()[-1]}"
        lines.append(line)
    title = f"runs in finishing order, with due time ({len(runs)}):"
    return "\n".join([title, *_shown(lines, "runs")])


def _list_waiting(jobs: Sequence[Job], schedules: Sequence[RecurringJob]) -> str:
    if not jobs and not schedules:
        return "nothing is scheduled"
    entries: list[tuple[datetime, str, str]] = []
    for job in jobs:
        state = (
            "scheduled"
            if job.status is JobStatus.SCHEDULED
            else f"retry after attempt {job.attempts}"
        )
        entries.append((job.due_at, job.name, state))
    for schedule in schedules:
        entries.append(
            (
                schedule.next_fire_at,
                schedule.name,
                f"recurring {schedule.cron!r} in {schedule.timezone}",
            )
        )
    entries.sort(key=lambda entry: entry[0])
    due_width = max(len(format_instant(due)) for due, _, _ in entries)
    width = max(len(name) for _, name, _ in entries)
    lines = [
        f"{format_instant(due):<{due_width}}  {name:<{width}}  {state}"
        for due, name, state in entries
    ]
    title = f"waiting to run, by due time ({len(entries)}):"
    return "\n".join([title, *_shown(lines, "entries")])
