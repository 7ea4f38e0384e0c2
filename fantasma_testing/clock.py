"""FakeClock: a clock that moves only when a test moves it."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["DEFAULT_START", "FakeClock"]

DEFAULT_START = datetime(2030, 1, 1, tzinfo=UTC)
"""Default first reading of a FakeClock: Tuesday 2030-01-01 00:00 UTC."""


class FakeClock:
    """A clock whose time changes only through :meth:`set` and :meth:`advance`.

    It satisfies the :class:`fantasma.Clock` protocol. Waiters in
    :meth:`sleep_until` are released when the fake time reaches their
    deadline, so a scheduler's background loop also runs on it.

    Args:
        start: The first reading, an aware datetime in any time zone;
            :data:`DEFAULT_START` by default.

    Raises:
        ValueError: ``start`` is naive.
    """

    def __init__(self, start: datetime = DEFAULT_START) -> None:
        self._now = _aware_utc(start, "start")
        self._waiters: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._listeners: list[Callable[[datetime], None]] = []

    def now(self) -> datetime:
        return self._now

    def set(self, instant: datetime) -> None:
        """Move the clock to ``instant``, which must not be in its past.

        Listeners added with :meth:`add_listener` are called with the new
        time, then waiters whose deadline has come are released.

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
        for listener in self._listeners:
            listener(instant)
        waiters = self._waiters
        while waiters and waiters[0][0] <= instant:
            _, _, future = heapq.heappop(waiters)
            if not future.done():
                future.set_result(None)

    def advance(self, delta: timedelta) -> None:
        """Move the clock forward by ``delta``."""
        self.set(self._now + delta)

    def add_listener(self, callback: Callable[[datetime], None]) -> None:
        """Call ``callback`` with the new time (UTC) whenever the clock is set."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[datetime], None]) -> None:
        """Stop calling a callback added with :meth:`add_listener`.

        Raises:
            ValueError: ``callback`` is not a listener of this clock.
        """
        self._listeners.remove(callback)

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
    # The simulation loop sets the clock once per instant, so skip the
    # conversion for the datetimes in UTC that the scheduler hands it.
    if instant.tzinfo is UTC:
        return instant
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(
            f"FakeClock needs an aware datetime for {what}, got {instant!r}"
        )
    return instant.astimezone(UTC)
