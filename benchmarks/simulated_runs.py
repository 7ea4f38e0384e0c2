"""Measure how many simulated runs per second the testing toolkit drives.

One recurring job fires every ten seconds (``*/10 * * * * *``) on one node of
a :class:`fantasma_testing.Simulation`, and the fake time is advanced in one
call, as ``advance_time(days=30)`` does in a test. The script reports the
wall time, runs per second, and the process's peak resident memory, which
grows with the finished jobs that storage keeps.

Usage::

    python benchmarks/simulated_runs.py        # memory: 30 days, SQLite: 1 hour
    python benchmarks/simulated_runs.py --memory-days 1 --sqlite-hours 0

Other processes on the machine skew the numbers, so the script prints the
load average it started with.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from fantasma import JobContext, JobHandler, MemoryStorage, Storage, Trigger
from fantasma.storage import storage_from_url
from fantasma_testing import Simulation


@dataclass
class Poll:
    """Job data of the benchmark's recurring job."""


class PollHandler(JobHandler[Poll]):
    """Handler that does nothing, so the numbers measure the scheduler itself."""

    async def handle(self, data: Poll, context: JobContext) -> None:
        return None


@dataclass(frozen=True)
class Result:
    """One measured scenario."""

    storage: str
    simulated: timedelta
    runs: int
    seconds: float

    @property
    def runs_per_second(self) -> float:
        """Simulated runs per wall-clock second."""
        return self.runs / self.seconds


async def measure(storage: Storage, label: str, simulated: timedelta) -> Result:
    """Advance one node by ``simulated`` with the ten-second job and time it."""
    simulation = Simulation()
    node = simulation.create_node(storage, node_id="bench")
    node.register(PollHandler)
    simulation.add_cleanup(storage.close)
    await simulation.start()
    await node.schedule("poll", Poll(), Trigger.recurring("poll", "*/10 * * * * *"))

    started = time.perf_counter()
    await simulation.advance_by(simulated)
    seconds = time.perf_counter() - started

    runs = simulation.runs().count
    await simulation.close()
    return Result(label, simulated, runs, seconds)


def _peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _describe(result: Result) -> str:
    return (
        f"{result.storage:<8} {result.simulated!s:>16} {result.runs:>9,} "
        f"{result.seconds:>9.2f} {result.runs_per_second:>10,.0f} "
        f"{result.seconds / result.runs * 1e6:>8.1f}"
    )


def main() -> None:
    """Run the scenarios chosen on the command line and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--memory-days",
        type=float,
        default=30.0,
        help="simulated days with memory storage (default 30; 0 skips it)",
    )
    parser.add_argument(
        "--sqlite-hours",
        type=float,
        default=1.0,
        help="simulated hours with SQLite storage (default 1; 0 skips it)",
    )
    args = parser.parse_args()

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"Python {platform.python_version()} on {platform.machine()}")
    print(f"load average at start (1, 5, 15 min): {load}")
    print(
        f"{'storage':<8} {'simulated':>16} {'runs':>9} {'seconds':>9} "
        f"{'runs/s':>10} {'us/run':>8}"
    )
    rss_before = _peak_rss_mib()
    if args.memory_days > 0:
        result = asyncio.run(
            measure(MemoryStorage(), "memory", timedelta(days=args.memory_days))
        )
        print(_describe(result))
        print(
            f"peak resident memory: {_peak_rss_mib():.0f} MiB "
            f"(before the memory run: {rss_before:.0f} MiB)"
        )
    if args.sqlite_hours > 0:
        with tempfile.TemporaryDirectory() as directory:
            url = f"sqlite+aiosqlite:///{Path(directory).as_posix()}/bench.db"
            result = asyncio.run(
                measure(
                    storage_from_url(url), "sqlite", timedelta(hours=args.sqlite_hours)
                )
            )
        print(_describe(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
