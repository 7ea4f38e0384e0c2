"""The clock port: the only place where the runtime reads time or waits."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Source of the current time and of waits until a given instant."""

    def now(self) -> datetime:
        """Return the current time as an aware UTC datetime."""
        ...

    async def sleep_until(
        self, deadline: datetime, wake: asyncio.Event | None = None
    ) -> bool:
        """Wait until ``deadline`` or until ``wake`` is set, whichever comes first.

        Returns ``True`` when ``wake`` ended the wait. Callers re-read
        :meth:`now` afterwards instead of assuming the deadline was reached.
        """
        ...


class SystemClock:
    """The real clock: wall time for instants, the monotonic clock for waits.

    A wait for ``deadline`` sleeps for the wall-clock distance measured when
    the wait starts, on the event loop's monotonic timer. A wall-clock jump
    during the wait therefore neither cuts it short nor stretches it, and the
    caller's next :meth:`now` returns the jumped time.
    """

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(
        self, deadline: datetime, wake: asyncio.Event | None = None
    ) -> bool:
        delay = max(0.0, (deadline - self.now()).total_seconds())
        if wake is None:
            await asyncio.sleep(delay)
            return False
        if wake.is_set():
            return True
        try:
            async with asyncio.timeout(delay):
                await wake.wait()
        except TimeoutError:
            return False
        return True
