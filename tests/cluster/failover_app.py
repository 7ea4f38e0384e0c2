"""An application with an every-second job, for failover runs in separate processes.

``fantasma run tests.cluster.failover_app:app`` reads its settings from
environment variables:

- ``FAILOVER_APP_DATABASE_URL``: storage URL (required).
- ``FAILOVER_APP_NODE_ID``: the node id (required, unique per process).
- ``FAILOVER_APP_TIMINGS``: ``short`` or ``default`` (the default).
  ``short`` means a 2 s leader lease renewed every 0.5 s, heartbeats every
  0.25 s, a misfire grace of 0.25 s, a 3 s job lease and 0.2 s polling.
  A test then fails over in seconds, and the fire times missed meanwhile
  go to the misfire policy. ``default`` keeps the library's defaults.

Each run of the every-second job prints ``ran <fire time> on <node id>
attempt <n>`` to stdout, flushed at once. The benchmark script and the
tests read the leader lease from the database and the log lines
(``... became leader ...``, ``... took over as leader ...``) from stderr.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fantasma import ClusterSettings, Fantasma, JobContext, JobHandler

__all__ = ["EVERY_SECOND", "Second", "app", "build_app"]

EVERY_SECOND = "* * * * * *"

SHORT_TIMINGS: dict[str, Any] = {
    "job_lease": timedelta(seconds=3),
    "poll_interval": timedelta(milliseconds=200),
    "cluster": ClusterSettings(
        lease_period=timedelta(seconds=2),
        renew_interval=timedelta(milliseconds=500),
        heartbeat_interval=timedelta(milliseconds=250),
        lookahead=timedelta(milliseconds=500),
        misfire_grace=timedelta(milliseconds=250),
        max_clock_skew=timedelta(milliseconds=500),
        poll_interval=timedelta(milliseconds=200),
    ),
}
"""Options of the ``short`` timings; the clock check tolerance (1 s) stays
below the lease's renewal margin (1.5 s)."""


@dataclass
class Second:
    """Data of the every-second job."""


class SecondHandler(JobHandler[Second]):
    type_name = "failover.second"

    async def handle(self, data: Second, context: JobContext) -> None:
        assert context.fire_time is not None
        print(
            f"ran {context.fire_time.isoformat()} on {context.node_id} "
            f"attempt {context.attempt}",
            flush=True,
        )


def build_app() -> Fantasma:
    """Build the application from the environment variables."""
    options: dict[str, Any] = {}
    if os.environ.get("FAILOVER_APP_TIMINGS", "default") == "short":
        options.update(SHORT_TIMINGS)
    else:
        # Polling stays short so that a node without LISTEN/NOTIFY (MariaDB)
        # still runs each second's job within the second.
        options["poll_interval"] = timedelta(milliseconds=200)
    app = Fantasma(
        os.environ["FAILOVER_APP_DATABASE_URL"],
        node_id=os.environ["FAILOVER_APP_NODE_ID"],
        **options,
    )
    app.register(SecondHandler)
    app.add_recurring_job("every second", "second", EVERY_SECOND, Second())
    return app


app = build_app
