"""Measure how late delayed and recurring jobs start on each storage backend.

Lateness is the handler's start time (its ``context.clock.now()``) minus the
job's due time. A node with the default settings, concurrency 10, the
:class:`~fantasma.AsyncioExecutor` and the :class:`~fantasma.SystemClock`
runs the jobs:

- delayed jobs: a second process (this script with ``enqueue``) opens its
  own :class:`~fantasma.Fantasma` on the same database and stores
  ``--jobs`` jobs with ``schedule_many``, due at even steps over ``--span``
  seconds. The first one is due ``--lead`` seconds after the enqueue. That is
  longer than the default SQL poll interval (5 s), so nodes without
  notifications (SQLite, MariaDB) have seen the jobs before the first is
  due. A PostgreSQL node learns of them through LISTEN/NOTIFY at once.
  Memory storage cannot be shared between processes, so there the node's
  own process enqueues the jobs;
- a recurring job with the cron expression ``* * * * * *`` (every second),
  declared with ``add_recurring_job``, runs for ``--recurring-seconds``.

Usage::

    python benchmarks/lateness.py                       # all backends, 30 s recurring
    python benchmarks/lateness.py --backends postgres --recurring-seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar

import _support

from fantasma import Fantasma, JobContext, JobHandler, MemoryStorage, Storage, Trigger

CONCURRENCY = 10
CHILD_TIMEOUT_SECONDS = 60.0


@dataclass
class Delayed:
    """Job data of the delayed jobs."""


@dataclass
class Tick:
    """Job data of the recurring job."""


class LatenessHandler(JobHandler[Delayed]):
    """Records how late each delayed job started, in seconds."""

    type_name = "bench.delayed"
    samples: ClassVar[list[float]] = []
    expected: ClassVar[int] = 0
    done: ClassVar[asyncio.Event | None] = None

    async def handle(self, data: Delayed, context: JobContext) -> None:
        late = (context.clock.now() - context.due_at).total_seconds()
        LatenessHandler.samples.append(late)
        done = LatenessHandler.done
        if done is not None and len(LatenessHandler.samples) >= self.expected:
            done.set()


class TickHandler(JobHandler[Tick]):
    """Records how late each occurrence of the recurring job started, in seconds."""

    type_name = "bench.tick"
    samples: ClassVar[list[float]] = []

    async def handle(self, data: Tick, context: JobContext) -> None:
        fire_time = context.fire_time or context.due_at
        TickHandler.samples.append((context.clock.now() - fire_time).total_seconds())


def due_times(start: datetime, count: int, span: float) -> list[datetime]:
    """Return ``count`` instants spread evenly over ``span`` seconds from ``start``."""
    step = span / count
    return [start + timedelta(seconds=index * step) for index in range(count)]


async def enqueue(url: str, count: int, lead: float, span: float) -> None:
    """Store the delayed jobs through a Fantasma of this process (the child's part)."""
    app = Fantasma(storage=url)
    app.register(LatenessHandler)
    await app.start(background=False)
    try:
        start = app.clock.now() + timedelta(seconds=lead)
        await app.schedule_many(
            ("delayed", Delayed(), Trigger.at(due))
            for due in due_times(start, count, span)
        )
    finally:
        await app.stop()


def _storage(url: str) -> str | Storage:
    return MemoryStorage() if url == "memory://" else url


def _summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50": _support.percentile(samples, 0.50) * 1000,
        "p95": _support.percentile(samples, 0.95) * 1000,
        "max": max(samples) * 1000,
        "count": float(len(samples)),
    }


async def measure_delayed(url: str, args: argparse.Namespace) -> dict[str, float]:
    """Run the delayed jobs on one store and return lateness figures in ms."""
    LatenessHandler.samples = []
    LatenessHandler.expected = args.jobs
    done = LatenessHandler.done = asyncio.Event()
    app = Fantasma(storage=_storage(url), concurrency=CONCURRENCY)
    app.register(LatenessHandler)
    async with app:
        if url == "memory://":
            # One process only: the node's own app enqueues.
            start = app.clock.now() + timedelta(seconds=args.lead)
            await app.schedule_many(
                ("delayed", Delayed(), Trigger.at(due))
                for due in due_times(start, args.jobs, args.span)
            )
        else:
            await _run_child(url, args)
        await _support.wait_for(
            done,
            args.lead + args.span + CHILD_TIMEOUT_SECONDS,
            lambda: f"{len(LatenessHandler.samples)} of {args.jobs} delayed jobs ran",
        )
    return _summary(LatenessHandler.samples)


async def _run_child(url: str, args: argparse.Namespace) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "enqueue",
        "--url",
        url,
        "--jobs",
        str(args.jobs),
        "--lead",
        str(args.lead),
        "--span",
        str(args.span),
    )
    try:
        code = await asyncio.wait_for(child.wait(), CHILD_TIMEOUT_SECONDS)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    if code != 0:
        raise SystemExit(f"the enqueueing process exited with status {code}")


async def measure_recurring(url: str, seconds: float) -> dict[str, float]:
    """Run the every-second job on one store for ``seconds``; return figures in ms."""
    TickHandler.samples = []
    app = Fantasma(storage=_storage(url), concurrency=CONCURRENCY)
    app.register(TickHandler)
    app.add_recurring_job("tick", "tick", "* * * * * *", Tick())
    async with app:
        # Sleeping is the measurement here: the job runs on its own meanwhile.
        await asyncio.sleep(seconds)
    if not TickHandler.samples:
        raise SystemExit("the recurring job never ran")
    return _summary(TickHandler.samples)


def _row(name: str, figures: dict[str, float]) -> str:
    return (
        f"| {name} | {figures['p50']:.1f} | {figures['p95']:.1f}"
        f" | {figures['max']:.1f} | {figures['count']:.0f} |"
    )


async def main(args: argparse.Namespace) -> None:
    backends = _support.parse_backends(args.backends)
    print(await _support.describe_machine(backends), flush=True)
    delayed: dict[str, dict[str, float]] = {}
    recurring: dict[str, dict[str, float]] = {}
    for backend in backends:
        print(f"{backend}: delayed jobs", file=sys.stderr, flush=True)
        async with _support.storage_url(backend) as url:
            delayed[backend] = await measure_delayed(url, args)
        print(f"{backend}: recurring job", file=sys.stderr, flush=True)
        async with _support.storage_url(backend) as url:
            recurring[backend] = await measure_recurring(url, args.recurring_seconds)

    for title, results in (
        (f"Delayed jobs ({args.jobs} over {args.span:g} s)", delayed),
        (f"Recurring job (every second for {args.recurring_seconds:g} s)", recurring),
    ):
        print(f"\n{title}\n")
        print("| Backend | p50 (ms) | p95 (ms) | max (ms) | runs |")
        print("| --- | --- | --- | --- | --- |")
        for backend, figures in results.items():
            print(_row(backend, figures))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    child = commands.add_parser("enqueue", help="store the delayed jobs and exit")
    child.add_argument("--url", required=True, help="storage URL")
    for target in (parser, child):
        target.add_argument(
            "--jobs", type=int, default=500, help="delayed jobs (default: 500)"
        )
        target.add_argument(
            "--span",
            type=float,
            default=5.0,
            help="seconds over which the delayed jobs fall due (default: 5)",
        )
        target.add_argument(
            "--lead",
            type=float,
            default=6.0,
            help="seconds from the enqueue to the first due time (default: 6)",
        )
    parser.add_argument(
        "--backends",
        default=",".join(_support.BACKENDS),
        help="comma-separated backends to measure (default: all four)",
    )
    parser.add_argument(
        "--recurring-seconds",
        type=float,
        default=30.0,
        help="how long the every-second job runs per backend (default: 30)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.command == "enqueue":
        asyncio.run(
            enqueue(arguments.url, arguments.jobs, arguments.lead, arguments.span)
        )
    else:
        asyncio.run(main(arguments))
