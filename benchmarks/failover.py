"""Measure how long ``fantasma run`` processes take to replace a killed leader.

Three processes run ``tests.cluster.failover_app:app`` (an every-second
job) on a PostgreSQL database that the script creates and drops. Each
trial waits a random 0 to 3 s (one renew interval, so that the kill lands
anywhere between two renewals), kills the leader with SIGKILL, and
measures two intervals from the kill:

- until another node holds the lease: the new lease's expiry minus the
  lease period, read from the leader row, which the script polls every
  20 ms;
- until the new leader enqueued its first occurrence: the earliest
  ``created_at`` of the jobs created after the kill.

A replacement process with a new node id then joins, so every trial starts
with three nodes. Every process runs on this machine's clock.

Usage::

    python benchmarks/failover.py                      # default timings, 10 trials
    python benchmarks/failover.py --timings short --trials 5

``--admin-url`` names an existing PostgreSQL database to create the
benchmark's database from (default ``postgresql://root@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from fantasma import ClusterSettings, LeaderLease
from fantasma.storage.sql import SqlStorage

REPOSITORY = Path(__file__).resolve().parents[1]
APP = "tests.cluster.failover_app:app"
POLL_SECONDS = 0.02
STARTUP_TIMEOUT = 60.0


async def create_database(admin_url: str) -> str:
    name = f"fantasma_failover_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    base = admin_url.rsplit("/", 1)[0]
    return f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://", 1)


async def drop_database(admin_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def start_node(url: str, node_id: str, timings: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPOSITORY), env.get("PYTHONPATH")])
    )
    env.update(
        FAILOVER_APP_DATABASE_URL=url,
        FAILOVER_APP_NODE_ID=node_id,
        FAILOVER_APP_TIMINGS=timings,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "fantasma", "run", APP, "--log-level", "warning"],
        cwd=REPOSITORY,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


async def wait_for_lease(
    storage: SqlStorage, *, newer_than: int, within: float
) -> LeaderLease:
    """Poll the leader row until it holds a lease of a term above ``newer_than``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        lease = await storage.get_leader()
        if lease is not None and lease.term > newer_than:
            return lease
        await asyncio.sleep(POLL_SECONDS)
    raise TimeoutError(f"no leader of a term above {newer_than} within {within} s")


async def first_enqueued_after(storage: SqlStorage, instant: datetime) -> datetime:
    """Poll the jobs until one was created after ``instant``; return when it was."""
    while True:
        jobs = await storage.list_jobs(recurring_id="second")
        created = [job.created_at for job in jobs if job.created_at > instant]
        if created:
            return min(created)
        await asyncio.sleep(POLL_SECONDS)


async def measure(args: argparse.Namespace, settings: ClusterSettings) -> None:
    url = await create_database(args.admin_url)
    storage = SqlStorage(url)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    takeovers: list[float] = []
    first_enqueues: list[float] = []
    try:
        await storage.start()
        for number in range(3):
            node_id = f"node-{number}"
            processes[node_id] = start_node(url, node_id, args.timings)
        lease = await wait_for_lease(storage, newer_than=0, within=STARTUP_TIMEOUT)
        for trial in range(args.trials):
            # Let every node heartbeat for a while, then kill at a random phase.
            await asyncio.sleep(2 * settings.lease_period.total_seconds())
            await asyncio.sleep(
                random.uniform(0, settings.renew_interval.total_seconds())
            )
            lease = await wait_for_lease(
                storage, newer_than=lease.term - 1, within=STARTUP_TIMEOUT
            )
            killed_at = datetime.now(UTC)
            processes.pop(lease.holder).send_signal(signal.SIGKILL)
            new_lease = await wait_for_lease(
                storage, newer_than=lease.term, within=STARTUP_TIMEOUT
            )
            acquired_at = new_lease.expires_at - settings.lease_period
            enqueued_at = await first_enqueued_after(storage, killed_at)
            takeovers.append((acquired_at - killed_at).total_seconds())
            first_enqueues.append((enqueued_at - killed_at).total_seconds())
            print(
                f"trial {trial + 1}: {lease.holder} killed; {new_lease.holder} "
                f"leads after {takeovers[-1]:.2f} s, enqueues after "
                f"{first_enqueues[-1]:.2f} s",
                flush=True,
            )
            lease = new_lease
            replacement = f"node-{3 + trial}"
            processes[replacement] = start_node(url, replacement, args.timings)
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for process in processes.values():
            process.wait(timeout=STARTUP_TIMEOUT)
        await storage.close()
        await drop_database(args.admin_url, url)

    print(
        f"timings: {args.timings} (lease_period {settings.lease_period},"
        f" renew_interval {settings.renew_interval},"
        f" heartbeat_interval {settings.heartbeat_interval})"
    )
    for name, values in (
        ("kill -> new leader holds the lease", takeovers),
        ("kill -> new leader's first occurrence", first_enqueues),
    ):
        median = statistics.median(values)
        print(
            f"{name}: min {min(values):.2f} s, median {median:.2f} s,"
            f" max {max(values):.2f} s over {len(values)} trials"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--timings",
        choices=("default", "short"),
        default="default",
        help="cluster timings of the nodes (default: the library's defaults)",
    )
    parser.add_argument(
        "--trials", type=int, default=10, help="number of leaders killed (default 10)"
    )
    parser.add_argument(
        "--admin-url",
        default="postgresql://root@127.0.0.1:5432/test",
        help="existing PostgreSQL database to create the benchmark database from",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(REPOSITORY))
    from tests.cluster.failover_app import SHORT_TIMINGS

    settings: ClusterSettings = (
        SHORT_TIMINGS["cluster"] if args.timings == "short" else ClusterSettings()
    )
    print(f"python {platform.python_version()}, load average {os.getloadavg()}")
    asyncio.run(measure(args, settings))


if __name__ == "__main__":
    main()
