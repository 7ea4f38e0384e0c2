"""Shared parts of the storage benchmarks: databases, the no-op job, machine facts.

The benchmark scripts import this module by its plain name, which works
because Python puts a script's own directory first on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncmy
import asyncpg
from sqlalchemy.engine import make_url

from fantasma import JobContext, JobHandler

POSTGRES_ADMIN_URL = "postgresql://root@127.0.0.1:5432/test"
"""Existing PostgreSQL database from which the benchmark databases are created."""

MYSQL_ADMIN_URL = "mysql://root@127.0.0.1:3306/test"
"""Existing MariaDB database from which the benchmark databases are created."""

BACKENDS = ("memory", "sqlite", "postgres", "mariadb")


@dataclass
class Noop:
    """Job data of the benchmark jobs; empty, so the numbers measure the scheduler."""


class NoopHandler(JobHandler[Noop]):
    """Handler that returns at once."""

    async def handle(self, data: Noop, context: JobContext) -> None:
        return None


def unique_name(kind: str) -> str:
    """Return a database name that no other run uses."""
    return f"fantasma_bench_{kind}_{uuid.uuid4().hex[:12]}"


async def _postgres_admin() -> asyncpg.Connection:
    return await asyncpg.connect(POSTGRES_ADMIN_URL)


async def _mysql_admin() -> asyncmy.Connection:
    url = make_url(MYSQL_ADMIN_URL)
    return await asyncmy.connect(
        host=url.host, port=url.port, user=url.username, database=url.database
    )


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """Create an empty PostgreSQL database, yield its name, and drop it on exit."""
    name = unique_name("pg")
    admin = await _postgres_admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield name
    finally:
        admin = await _postgres_admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def mysql_database() -> AsyncIterator[str]:
    """Create an empty MariaDB database, yield its name, and drop it on exit."""
    name = unique_name("my")
    admin = await _mysql_admin()
    try:
        async with admin.cursor() as cursor:
            await cursor.execute(
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )
    finally:
        admin.close()
    try:
        yield name
    finally:
        admin = await _mysql_admin()
        try:
            async with admin.cursor() as cursor:
                await cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            admin.close()


def postgres_url(database: str) -> str:
    """Return the fantasma storage URL of a benchmark PostgreSQL database."""
    return f"postgresql+asyncpg://root@127.0.0.1:5432/{database}"


def mysql_url(database: str) -> str:
    """Return the fantasma storage URL of a benchmark MariaDB database."""
    return f"mysql+asyncmy://root@127.0.0.1:3306/{database}"


@contextlib.asynccontextmanager
async def storage_url(backend: str) -> AsyncIterator[str]:
    """Yield a storage URL of a new, empty store of ``backend``, removed on exit.

    ``memory`` yields ``memory://``; each benchmark builds its own
    :class:`~fantasma.MemoryStorage` from it.
    """
    if backend == "memory":
        yield "memory://"
    elif backend == "sqlite":
        directory = tempfile.mkdtemp(prefix="fantasma_bench_")
        try:
            yield f"sqlite+aiosqlite:///{Path(directory) / 'bench.db'}"
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    elif backend == "postgres":
        async with postgres_database() as name:
            yield postgres_url(name)
    elif backend == "mariadb":
        async with mysql_database() as name:
            yield mysql_url(name)
    else:
        raise ValueError(f"unknown backend {backend!r}: expected one of {BACKENDS}")


def parse_backends(text: str) -> list[str]:
    """Split a comma-separated ``--backends`` value and check each name."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if name not in BACKENDS:
            raise SystemExit(
                f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}"
            )
    return names


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of ``values`` (``fraction`` in 0..1)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


async def wait_for(
    event: asyncio.Event, seconds: float, what: Callable[[], str]
) -> None:
    """Wait for ``event``, or exit after ``seconds`` with ``what()`` as the reason."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        raise SystemExit(f"timed out after {seconds:.0f} s: {what()}") from None


class Stopwatch:
    """Wall-clock interval on the monotonic performance counter, in seconds."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        """Return the seconds since the stopwatch was created."""
        return time.perf_counter() - self.started


def _command_output(command: list[str]) -> str:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    for line in _command_output(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _memory_gib() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return float("nan")


async def server_versions(backends: Sequence[str]) -> dict[str, str]:
    """Return the version string of each database server among ``backends``."""
    versions: dict[str, str] = {}
    if "postgres" in backends:
        admin = await _postgres_admin()
        try:
            versions["PostgreSQL"] = str(await admin.fetchval("SHOW server_version"))
        finally:
            await admin.close()
    if "mariadb" in backends:
        connection = await _mysql_admin()
        try:
            async with connection.cursor() as cursor:
                await cursor.execute("SELECT VERSION()")
                row = await cursor.fetchone()
                versions["MariaDB"] = str(row[0])
        finally:
            connection.close()
    if "sqlite" in backends:
        import sqlite3

        versions["SQLite"] = sqlite3.sqlite_version
    return versions


async def describe_machine(backends: Sequence[str]) -> str:
    """Return one line of machine facts that a recorded figure needs beside it."""
    load = os.getloadavg()[0]
    servers = ", ".join(
        f"{name} {version}"
        for name, version in (await server_versions(backends)).items()
    )
    return (
        f"{_cpu_model()}, {os.cpu_count()} cores, {_memory_gib():.0f} GiB RAM,"
        f" Linux {platform.release()}, Python {platform.python_version()}"
        + (f", {servers}" if servers else "")
        + f"; load average {load:.2f} at start"
    )
