"""DeterministicExecutor: runs each job to completion, one at a time, in order."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["DeterministicExecutor"]

T = TypeVar("T")


class DeterministicExecutor:
    """An executor with no concurrency, so that a test's outcome never varies.

    :meth:`submit` awaits the execution before returning, and sync handlers
    run directly on the event loop's thread. Jobs therefore run strictly in
    the order the worker claims them: due time, then scheduling order.
    """

    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []

    def free_slots(self) -> int:
        return 1

    def add_slot_listener(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    async def submit(self, execution: Callable[[], Coroutine[Any, Any, None]]) -> None:
        await execution()
        for callback in self._listeners:
            callback()

    async def run_sync(self, function: Callable[[], T]) -> T:
        return function()

    async def shutdown(self, grace: float) -> None:
        return None
