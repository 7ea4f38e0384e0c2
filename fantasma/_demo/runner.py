"""The demo run: schedule the example jobs, print each run, then a summary."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TextIO

from fantasma import Fantasma, Trigger
from fantasma._demo.app import (
    SUMMARY_CRON,
    CapturePayment,
    Ledger,
    PaymentReminder,
    RunNotes,
    Services,
    build_app,
)
from fantasma._demo.orders import Order, load_orders
from fantasma.cli import error_summary, format_table
from fantasma.errors import ConfigurationError
from fantasma.jobs import JobStatus, Run, RunOutcome

__all__ = ["run_demo"]

BATCH_SIZE = 30
REMINDER_COUNT = 3
# Reminders fall due at these fractions of the demo's run time, so that all
# of them run whatever --seconds is.
_REMINDER_FRACTIONS = (0.25, 0.5, 0.75)
# A table only the demo creates; its presence marks a file the demo may delete.
_MARKER_TABLE = "demo_region_totals"

_OUTCOME_TEXT = {
    RunOutcome.SUCCEEDED: "succeeded",
    RunOutcome.FAILED: "failed, will retry",
    RunOutcome.DEAD: "failed, no attempts left",
    RunOutcome.INTERRUPTED: "interrupted by shutdown",
}


@dataclass(frozen=True, slots=True)
class _Report:
    """A demo run's runs, in the order they ended, and its duration in seconds."""

    runs: Sequence[Run]
    seconds: float


class _Console:
    """Prints each run when it ends, with the note its handler left."""

    def __init__(self, stream: TextIO, notes: RunNotes) -> None:
        self._stream = stream
        self._notes = notes
        self.runs: list[Run] = []

    def line(self, text: str = "") -> None:
        # Flushed at once so that a pipe (or a test) receives each run as it ends.
        self._stream.write(text + "\n")
        self._stream.flush()

    def record(self, run: Run) -> None:
        self.runs.append(run)
        self.line(
            f"{_time(run.started_at)}  {run.name:<16}  attempt {run.attempt}"
            f"  due {_time(run.due_at)}  late {_lateness_ms(run):>4} ms"
            f"  {_OUTCOME_TEXT[run.outcome]}"
        )
        note = self._notes.pop(run.job_id, run.attempt)
        if run.error is not None and run.outcome is not RunOutcome.INTERRUPTED:
            note = error_summary(run.error)
        if note is not None:
            self.line(f"{'':14}{note}")


def _time(instant: datetime) -> str:
    return instant.strftime("%H:%M:%S.") + f"{instant.microsecond // 1000:03d}"


def _lateness_ms(run: Run) -> int:
    return round((run.started_at - run.due_at).total_seconds() * 1000)


async def run_demo(
    *,
    seconds: float,
    database: Path,
    stream: TextIO,
    stop: asyncio.Event | None = None,
) -> int:
    """Run the demo application for ``seconds`` and print what happens to ``stream``.

    ``database`` is deleted first if an earlier demo created it, and created
    again. Setting ``stop`` ends the run early, still with a summary.

    Returns:
        The exit status: 0.

    Raises:
        ConfigurationError: ``database`` exists and is not a demo database.
    """
    _remove_old_database(database)
    orders = load_orders()
    ledger = Ledger(database, orders)
    ledger.create_tables()
    notes = RunNotes()
    console = _Console(stream, notes)
    url = _sqlite_url(database)
    app = build_app(url, Services(ledger=ledger, notes=notes), batch_size=BATCH_SIZE)
    app.add_run_listener(console.record)
    stop = stop or asyncio.Event()

    _print_plan(console, database, seconds, len(orders))
    async with app:
        started = app.clock.now()
        await _schedule_one_off_jobs(app, orders, seconds)
        await app.clock.sleep_until(started + timedelta(seconds=seconds), stop)
        waiting = [
            job
            for job in await app.list_jobs(
                statuses={JobStatus.SCHEDULED, JobStatus.FAILED}
            )
            if job.recurring_id is None
        ]
        console.line("stopping: waiting for running jobs to finish")
    elapsed = (app.clock.now() - started).total_seconds()

    report = _Report(runs=console.runs, seconds=elapsed)
    _print_summary(console, report, ledger, waiting=len(waiting), url=url)
    return 0


def _sqlite_url(database: Path) -> str:
    return f"sqlite+aiosqlite:///{database.resolve()}"


def _remove_old_database(database: Path) -> None:
    if not database.parent.is_dir():
        raise ConfigurationError(
            f"cannot create {str(database)!r}: the folder"
            f" {str(database.parent)!r} does not exist; create it or pass another"
            " --database path"
        )
    if database.exists() and not _is_demo_database(database):
        raise ConfigurationError(
            f"will not replace {str(database)!r}: it is not a database that"
            " fantasma demo created; pass another --database path"
        )
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)


def _is_demo_database(database: Path) -> bool:
    if database.is_file() and database.stat().st_size == 0:
        return True
    try:
        with closing(
            sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
        ) as connection:
            row = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                (_MARKER_TABLE,),
            ).fetchone()
    except sqlite3.DatabaseError:
        return False
    return row is not None


def _print_plan(
    console: _Console, database: Path, seconds: float, order_count: int
) -> None:
    delays = ", ".join(f"{seconds * fraction:g}" for fraction in _REMINDER_FRACTIONS)
    console.line(
        f"fantasma demo: {order_count} shop orders, SQLite database {str(database)!r},"
        f" {seconds:g} s (Ctrl+C stops sooner)"
    )
    console.line(
        f"  summarise-orders  recurring, cron {SUMMARY_CRON!r}: adds the next"
        f" {BATCH_SIZE} orders to running totals per region"
    )
    console.line(
        f"  payment-reminder  {REMINDER_COUNT} one-off jobs, due after {delays} s"
    )
    console.line(
        "  capture-payment   one-off job, due now: the simulated payment gateway"
        " fails the first attempt, and the retry 1 s later succeeds"
    )
    console.line("Each line is one run; times are UTC, late = start - due time.")
    console.line()


async def _schedule_one_off_jobs(
    app: Fantasma, orders: Sequence[Order], seconds: float
) -> None:
    paid = next(order for order in orders if order.paid)
    await app.schedule(
        "capture-payment",
        CapturePayment(order_id=paid.order_id, amount=paid.amount),
        Trigger.now(),
    )
    unpaid = [order for order in orders if not order.paid][:REMINDER_COUNT]
    for order, fraction in zip(unpaid, _REMINDER_FRACTIONS, strict=True):
        await app.schedule(
            "payment-reminder",
            PaymentReminder(
                order_id=order.order_id, customer=order.customer, amount=order.amount
            ),
            Trigger.after(seconds=seconds * fraction),
        )


def _print_summary(
    console: _Console, report: _Report, ledger: Ledger, *, waiting: int, url: str
) -> None:
    by_name: dict[str, list[Run]] = defaultdict(list)
    for run in report.runs:
        by_name[run.name].append(run)
    rows = []
    for name, runs in by_name.items():
        outcomes = [run.outcome for run in runs]
        rows.append(
            [
                name,
                str(len(runs)),
                str(outcomes.count(RunOutcome.SUCCEEDED)),
                str(len(runs) - outcomes.count(RunOutcome.SUCCEEDED)),
                str(sum(1 for run in runs if run.attempt > 1)),
                f"{max(_lateness_ms(run) for run in runs)} ms",
            ]
        )

    console.line()
    console.line(f"summary after {report.seconds:.1f} s, {len(report.runs)} runs:")
    for line in format_table(
        ("job", "runs", "succeeded", "failed", "retries", "max late"),
        rows,
        right_aligned=frozenset({1, 2, 3, 4, 5}),
    ):
        console.line(f"  {line}")
    if report.runs:
        latest = max(report.runs, key=_lateness_ms)
        console.line(
            f"max lateness: {_lateness_ms(latest)} ms ({latest.name},"
            f" attempt {latest.attempt}, due {_time(latest.due_at)})"
        )
    console.line(f"orders summarised: {ledger.orders_added()} of {ledger.order_count}")
    totals = [
        [total.region, str(total.orders), f"{total.amount:,.2f}"]
        for total in ledger.totals()
    ]
    if totals:
        for line in format_table(
            ("region", "orders", "EUR"), totals, right_aligned=frozenset({1, 2})
        ):
            console.line(f"  {line}")
    if waiting:
        console.line(f"one-off jobs still waiting at the stop: {waiting}")
    console.line(f"list the stored jobs with: fantasma jobs {url}")
