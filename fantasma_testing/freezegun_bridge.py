"""Freezegun bridge: the standard time functions read a FakeClock while handlers run.

freezegun is imported only when the bridge is used, so the plugin works
without it when the bridge is off.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from datetime import datetime
from types import ModuleType

from fantasma_testing.clock import FakeClock
from fantasma_testing.driver import SimulationError

__all__ = ["check_freezegun", "follow_clock"]


def _import_freezegun() -> ModuleType:
    try:
        return importlib.import_module("freezegun")
    except ImportError as exc:
        raise SimulationError(
            "freeze_time needs freezegun, which is not installed; install it "
            "with: pip install 'fantasma[testing]'"
        ) from exc


def check_freezegun() -> None:
    """Raise :class:`SimulationError` now if freezegun cannot be imported."""
    _import_freezegun()


@contextlib.contextmanager
def follow_clock(clock: FakeClock) -> Iterator[None]:
    """Freeze the standard time functions at ``clock``'s time, following it as it moves.

    Inside the block, ``datetime.now()``, ``datetime.utcnow()``,
    ``date.today()``, ``time.time()``, ``time.monotonic()`` and
    ``time.perf_counter()`` return the fake time, except in the modules
    freezegun ignores by default. The event loop keeps reading the real
    monotonic clock (freezegun's ``real_asyncio``), so ``asyncio.sleep``,
    timeouts and ``call_later`` keep working in real time.

    Raises:
        SimulationError: freezegun is not installed.
    """
    freezegun = _import_freezegun()
    freezer = freezegun.freeze_time(clock.now(), tick=False, real_asyncio=True)
    factory = freezer.start()

    def move(instant: datetime) -> None:
        factory.move_to(instant)

    clock.add_listener(move)
    try:
        yield
    finally:
        clock.remove_listener(move)
        freezer.stop()
