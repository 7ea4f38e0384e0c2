"""Measure enqueue and drain rates of each storage backend, beside a raw asyncpg queue.

Every fantasma figure goes through the public API (``Fantasma.schedule``,
``schedule_many``, a node running its loop with the default
:class:`~fantasma.AsyncioExecutor` and :class:`~fantasma.SystemClock`), on
a fresh store per measurement:

- single enqueue: ``schedule`` calls awaited one after another, on a node
  started with ``background=False`` so that no worker competes;
- batch enqueue: ``schedule_many`` calls of ``--batch`` jobs each;
- drain from a backlog: ``--jobs`` no-op jobs are stored first, then a node
  with concurrency 10 starts, and the time runs until its run listener has
  seen every run (outcomes recorded);
- drain while enqueuing: the node is already running while a task of the
  same process enqueues the jobs in ``schedule_many`` batches of 100.

The raw PostgreSQL loop uses asyncpg and a two-column table, with no
fantasma code: single-row INSERTs in autocommit, one COPY per batch, and
ten connections that each repeat ``UPDATE ... WHERE id IN (SELECT ... FOR
UPDATE SKIP LOCKED LIMIT n) RETURNING id`` with n = 1 and n = 50. That loop
claims and completes a job in one statement, with no lease, so it is the
ceiling for a queue on this server, not a like-for-like rival.

Each round measures the raw loop and then every backend, so the figures of
one round share the machine's load. The script prints the median of the
rounds and, in brackets, the lowest and highest.

Usage::

    python benchmarks/throughput.py                        # all backends, 3 rounds
    python benchmarks/throughput.py --backends memory,postgres --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import _support
import asyncpg

from fantasma import Fantasma, MemoryStorage, Run, Storage, Trigger

CONCURRENCY = 10
LIVE_BATCH = 100
TIMEOUT_SECONDS = 600.0

RAW_TABLE = """
CREATE TABLE raw_jobs (
    id bigserial PRIMARY KEY,
    payload text NOT NULL,
    done boolean NOT NULL DEFAULT false
)
"""
RAW_INDEX = "CREATE INDEX raw_jobs_todo ON raw_jobs (id) WHERE NOT done"
RAW_CLAIM = """
UPDATE raw_jobs SET done = true
WHERE id IN (
    SELECT id FROM raw_jobs WHERE NOT done ORDER BY id
    LIMIT $1 FOR UPDATE SKIP LOCKED
)
RETURNING id
"""


@dataclass
class Figures:
    """Rates in jobs per second, one list entry per round, keyed by measurement."""

    rates: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, rate: float) -> None:
        self.rates.setdefault(key, []).append(rate)
        print(f"  {key}: {rate:,.0f} jobs/s", file=sys.stderr, flush=True)


def _storage(url: str) -> str | Storage:
    # Two nodes of one benchmark share a memory store only as one object.
    return MemoryStorage() if url == "memory://" else url


def _node(storage: str | Storage) -> Fantasma:
    app = Fantasma(storage=storage, concurrency=CONCURRENCY)
    app.register(_support.NoopHandler)
    return app


async def enqueue_single(url: str, count: int) -> float:
    """Return ``schedule`` calls per second, awaited one after another."""
    app = _node(_storage(url))
    await app.start(background=False)
    try:
        data = _support.Noop()
        trigger = Trigger.now()
        watch = _support.Stopwatch()
        for _ in range(count):
            await app.schedule("noop", data, trigger)
        return count / watch.elapsed()
    finally:
        await app.stop()


async def enqueue_many(url: str, count: int, batch: int) -> float:
    """Return jobs per second stored by ``schedule_many`` calls of ``batch`` jobs."""
    app = _node(_storage(url))
    await app.start(background=False)
    try:
        items = [("noop", _support.Noop(), Trigger.now())] * batch
        watch = _support.Stopwatch()
        for _ in range(count // batch):
            await app.schedule_many(items)
        return (count // batch) * batch / watch.elapsed()
    finally:
        await app.stop()


class RunCounter:
    """Run listener that sets an event once ``target`` runs were reported."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.failed = 0
        self.done = asyncio.Event()

    def __call__(self, run: Run) -> None:
        self.count += 1
        if run.error is not None:
            self.failed += 1
        if self.count >= self.target:
            self.done.set()

    def progress(self) -> str:
        return f"{self.count} of {self.target} runs reported"


async def drain_backlog(url: str, count: int, *, analyze: bool = False) -> float:
    """Return jobs per second that a node runs from a backlog of ``count`` jobs.

    With ``analyze``, PostgreSQL gathers the jobs table's statistics before
    the node starts, as autovacuum does within a minute of a burst and as
    the raw loop's ``VACUUM ANALYZE`` does.
    """
    storage = _storage(url)
    filler = _node(storage)
    await filler.start(background=False)
    try:
        items = [("noop", _support.Noop(), Trigger.now())] * 1000
        for start in range(0, count, len(items)):
            await filler.schedule_many(items[: min(len(items), count - start)])
    finally:
        await filler.stop()
    if analyze:
        await _analyze_postgres(url)

    app = _node(storage)
    counter = RunCounter(count)
    app.add_run_listener(counter)
    await app.start()
    try:
        watch = _support.Stopwatch()
        await _support.wait_for(counter.done, TIMEOUT_SECONDS, counter.progress)
        rate = count / watch.elapsed()
    finally:
        await app.stop()
    _check_no_failures(counter)
    return rate


async def drain_live(url: str, count: int) -> float:
    """Return jobs per second from the first enqueue until ``count`` runs ended."""
    app = _node(_storage(url))
    counter = RunCounter(count)
    app.add_run_listener(counter)
    await app.start()
    try:
        items = [("noop", _support.Noop(), Trigger.now())] * LIVE_BATCH
        watch = _support.Stopwatch()
        for start in range(0, count, LIVE_BATCH):
            await app.schedule_many(items[: min(LIVE_BATCH, count - start)])
        await _support.wait_for(counter.done, TIMEOUT_SECONDS, counter.progress)
        rate = count / watch.elapsed()
    finally:
        await app.stop()
    _check_no_failures(counter)
    return rate


async def _analyze_postgres(url: str) -> None:
    connection = await asyncpg.connect(url.replace("+asyncpg", "", 1))
    try:
        await connection.execute("ANALYZE fantasma_jobs")
    finally:
        await connection.close()


def _check_no_failures(counter: RunCounter) -> None:
    if counter.failed:
        raise SystemExit(f"{counter.failed} benchmark runs failed; see the log")


async def raw_postgres(figures: Figures, single: int, batch: int, jobs: int) -> None:
    """Measure the raw asyncpg queue on a database of its own."""
    async with _support.postgres_database() as name:
        dsn = f"postgresql://root@127.0.0.1:5432/{name}"
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(RAW_TABLE)
            await connection.execute(RAW_INDEX)

            watch = _support.Stopwatch()
            for _ in range(single):
                await connection.execute(
                    "INSERT INTO raw_jobs (payload) VALUES ($1)", "{}"
                )
            figures.add("raw single INSERT", single / watch.elapsed())

            records = [("{}",)] * batch
            watch = _support.Stopwatch()
            for _ in range(jobs // batch):
                await connection.copy_records_to_table(
                    "raw_jobs", records=records, columns=["payload"]
                )
            figures.add("raw COPY", (jobs // batch) * batch / watch.elapsed())

            for claim_batch in (1, 50):
                await connection.execute("TRUNCATE raw_jobs")
                await connection.copy_records_to_table(
                    "raw_jobs", records=[("{}",)] * jobs, columns=["payload"]
                )
                await connection.execute("VACUUM ANALYZE raw_jobs")
                rate = await _raw_drain(dsn, claim_batch, jobs)
                figures.add(f"raw drain, batch {claim_batch}", rate)
        finally:
            await connection.close()


async def _raw_drain(dsn: str, claim_batch: int, jobs: int) -> float:
    connections = [await asyncpg.connect(dsn) for _ in range(CONCURRENCY)]

    async def consume(connection: asyncpg.Connection) -> int:
        claimed = 0
        while rows := await connection.fetch(RAW_CLAIM, claim_batch):
            claimed += len(rows)
        return claimed

    try:
        watch = _support.Stopwatch()
        claimed = sum(await asyncio.gather(*(consume(c) for c in connections)))
        seconds = watch.elapsed()
    finally:
        for connection in connections:
            await connection.close()
    if claimed != jobs:
        raise SystemExit(f"raw drain claimed {claimed} jobs, expected {jobs}")
    return jobs / seconds


async def measure_backend(
    backend: str, figures: Figures, args: argparse.Namespace
) -> None:
    """Measure every fantasma figure of one backend, each on a fresh store."""
    single = args.single * 10 if backend == "memory" else args.single
    steps: list[tuple[str, Callable[[str], Awaitable[float]]]] = [
        ("single schedule", lambda url: enqueue_single(url, single)),
        ("schedule_many", lambda url: enqueue_many(url, args.jobs, args.batch)),
        ("drain, backlog", lambda url: drain_backlog(url, args.jobs)),
        ("drain, while enqueuing", lambda url: drain_live(url, args.jobs)),
    ]
    if backend == "postgres":
        steps.append(
            (
                "drain, backlog after ANALYZE",
                lambda url: drain_backlog(url, args.jobs, analyze=True),
            )
        )
    for label, step in steps:
        async with _support.storage_url(backend) as url:
            figures.add(f"{backend} {label}", await step(url))


def _summary(rates: list[float]) -> str:
    median = statistics.median(rates)
    if len(rates) == 1:
        return f"{median:,.0f}"
    return f"{median:,.0f} ({min(rates):,.0f} to {max(rates):,.0f})"


async def main(args: argparse.Namespace) -> Figures:
    backends = _support.parse_backends(args.backends)
    print(await _support.describe_machine(backends), flush=True)
    figures = Figures()
    for round_number in range(1, args.rounds + 1):
        print(f"round {round_number} of {args.rounds}", file=sys.stderr, flush=True)
        if "postgres" in backends and not args.no_raw:
            await raw_postgres(figures, args.single, args.batch, args.jobs)
        for backend in backends:
            await measure_backend(backend, figures, args)

    print()
    print("| Measurement | Jobs per second: median (lowest to highest) |")
    print("| --- | --- |")
    for key, rates in figures.rates.items():
        print(f"| {key} | {_summary(rates)} |")
    return figures


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backends",
        default=",".join(_support.BACKENDS),
        help="comma-separated backends to measure (default: all four)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds to run (default: 3)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=10_000,
        help="jobs per batch-enqueue and drain measurement (default: 10000)",
    )
    parser.add_argument(
        "--single",
        type=int,
        default=2_000,
        help="schedule calls in the single-enqueue measurement, ten times as many"
        " on memory (default: 2000)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=1_000,
        help="jobs per schedule_many call and per raw COPY (default: 1000)",
    )
    parser.add_argument(
        "--no-raw", action="store_true", help="skip the raw asyncpg measurements"
    )
    parser.add_argument("--json", help="also write every round's figures to this file")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    results = asyncio.run(main(arguments))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(results.rates, indent=2))
