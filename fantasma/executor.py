"""The executor port: where handler calls run, and how many at once."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["AsyncioExecutor", "Executor"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@runtime_checkable
class Executor(Protocol):
    """Runs job executions on behalf of a worker."""

    def free_slots(self) -> int:
        """Return how many more executions :meth:`submit` accepts right now."""
        ...

    def add_slot_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever an execution ends and frees a slot."""
        ...

    async def submit(self, execution: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start ``execution``, which must not raise: no caller awaits its result."""
        ...

    async def run_sync(self, function: Callable[[], T]) -> T:
        """Run a blocking function (a sync handler) and return its result."""
        ...

    async def shutdown(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for executions, then cancel the rest."""
        ...


class AsyncioExecutor:
    """Runs executions as asyncio tasks, at most ``concurrency`` at a time.

    Sync handlers run in a thread pool of the same size, so a blocking
    handler never stalls the event loop. At shutdown, executions still
    running after the grace period are cancelled; a sync handler's thread
    cannot be interrupted, so it finishes in the background.
    """

    def __init__(self, concurrency: int = 10) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency!r}")
        self._concurrency = concurrency
        self._tasks: set[asyncio.Task[None]] = set()
        self._listeners: list[Callable[[], None]] = []
        self._pool: ThreadPoolExecutor | None = None

    def free_slots(self) -> int:
        return self._concurrency - len(self._tasks)

    def add_slot_listener(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    async def submit(self, execution: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.create_task(execution())
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "job execution raised instead of recording its outcome",
                exc_info=task.exception(),
            )
        for callback in self._listeners:
            callback()

    async def run_sync(self, function: Callable[[], T]) -> T:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self._concurrency, thread_name_prefix="fantasma-job"
            )
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, functools.partial(context.run, function)
        )

    async def shutdown(self, grace: float) -> None:
        if self._tasks:
            logger.info(
                "waiting up to %.1f s for %d running jobs", grace, len(self._tasks)
            )
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                logger.warning(
                    "cancelled %d jobs still running after the %.1f s grace period",
                    len(pending),
                    grace,
                )
                await asyncio.wait(pending)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
