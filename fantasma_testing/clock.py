"""FakeClock: a clock that moves only when a test moves it."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["FakeClock"]

DEFAULT_START = datetime(2030, 1, 1, tzinfo=UTC)
"""Instant a FakeClock starts at unless told otherwise: 2030-01-01 00:00 UTC."""


class FakeClock:
    """A clock whose time changes only through :meth:`set` and :meth:`advance`.

    It satisfies the :class:`fantasma.Clock` protocol. Waiters in
    :meth:`sleep_until` are released when the fake time reaches their
    deadline, so a scheduler's background loop also runs on it.
    """

    def __init__(self, start: datetime = DEFAULT_START) -> None:
        self._now = _aware_utc(start, "start")
        self._waiters: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> datetime:
        return self._now

    def set(self, instant: datetime) -> None:
        """Move the clock to ``instant``, which must not be in its past.

        Raises:
            ValueError: ``instant`` is naive or earlier than the current time.
        """
        instant = _aware_utc(instant, "instant")
        if instant < self._now:
            raise ValueError(
                f"a FakeClock only moves forward: it reads {self._now.isoformat()}, "
                f"got {instant.isoformat()}"
            )
        self._now = instant
        waiters = self._waiters
        while waiters and waiters[0][0] <= instant:
            _, _, future = heapq.heappop(waiters)
            if not future.done():
                future.set_result(None)

    def advance(self, delta: timedelta) -> None:
        """Move the clock forward by ``delta``."""
        self.set(self._now + delta)

    async def sleep_until(
        self, deadline: datetime, wake: asyncio.Event | None = None
    ) -> bool:
        if deadline <= self._now:
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (deadline, next(self._order), future))
        if wake is None:
            await future
            return False
        wake_task: asyncio.Future[Any] = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait({future, wake_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake_task.cancel()
            future.cancel()
        return wake.is_set()


def _aware_utc(instant: datetime, what: str) -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(
            f"FakeClock needs an aware datetime for {what}, got {instant!r}"
        )
    return instant.astimezone(UTC)
