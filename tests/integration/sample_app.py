"""A small fantasma application that the command-line tests run in subprocesses.

``fantasma run tests.integration.sample_app:app`` reads its settings from
environment variables, so that each test picks its database and timings:

- ``SAMPLE_APP_DATABASE_URL``: storage URL (default ``memory://``).
- ``SAMPLE_APP_JOB_LEASE_MS``: job lease in milliseconds (default 30000).
- ``SAMPLE_APP_POLL_MS``: longest idle sleep in milliseconds (default 5000).
- ``SAMPLE_APP_LEADER_LEASE_MS``: leader lease in milliseconds (default
  10000). The other cluster timings are fractions of it: renewals every
  quarter, heartbeats every eighth, and a tenth as the allowed clock skew,
  which keeps the clock check's tolerance below the renewal margin.

Handlers print what they do to stdout, flushed at once, and every recorded
run prints ``recorded <job id> attempt <n> <outcome>``, so that a test can
wait for a line instead of sleeping.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fantasma import ClusterSettings, Fantasma, JobContext, JobHandler, Run

__all__ = [
    "BlockOnFirstAttempt",
    "Fail",
    "Greet",
    "app",
    "build_app",
]


@dataclass
class Greet:
    name: str


@dataclass
class Fail:
    message: str


@dataclass
class BlockOnFirstAttempt:
    label: str


class GreetHandler(JobHandler[Greet]):
    type_name = "sample.greet"

    async def handle(self, data: Greet, context: JobContext) -> None:
        print(f"hello {data.name}", flush=True)


class FailHandler(JobHandler[Fail]):
    type_name = "sample.fail"
    max_attempts = 1

    async def handle(self, data: Fail, context: JobContext) -> None:
        raise ValueError(data.message)


class BlockOnFirstAttemptHandler(JobHandler[BlockOnFirstAttempt]):
    """Blocks forever on attempt 1, so that the test can kill the process mid-job."""

    type_name = "sample.block-on-first-attempt"

    async def handle(self, data: BlockOnFirstAttempt, context: JobContext) -> None:
        print(f"started {context.job_id} attempt {context.attempt}", flush=True)
        if context.attempt == 1:
            await asyncio.Event().wait()
        print(f"finished {context.job_id} attempt {context.attempt}", flush=True)


def _print_run(run: Run) -> None:
    print(f"recorded {run.job_id} attempt {run.attempt} {run.outcome}", flush=True)


def _milliseconds(name: str, default: int) -> timedelta:
    return timedelta(milliseconds=int(os.environ.get(name, default)))


def build_app(url: str | None = None, **options: Any) -> Fantasma:
    """Build the application on ``url`` (default: from the environment).

    Keyword ``options`` go to :class:`~fantasma.Fantasma` and override the
    settings read from the environment.
    """
    leader_lease = _milliseconds("SAMPLE_APP_LEADER_LEASE_MS", 10_000)
    settings: dict[str, Any] = {
        "job_lease": _milliseconds("SAMPLE_APP_JOB_LEASE_MS", 30_000),
        "poll_interval": _milliseconds("SAMPLE_APP_POLL_MS", 5_000),
        "cluster": ClusterSettings(
            lease_period=leader_lease,
            renew_interval=leader_lease / 4,
            heartbeat_interval=leader_lease / 8,
            max_clock_skew=leader_lease / 10,
        ),
        **options,
    }
    app = Fantasma(
        url or os.environ.get("SAMPLE_APP_DATABASE_URL", "memory://"), **settings
    )
    app.register(GreetHandler)
    app.register(FailHandler)
    app.register(BlockOnFirstAttemptHandler)
    app.add_run_listener(_print_run)
    return app


app = build_app()
