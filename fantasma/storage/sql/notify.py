"""PostgreSQL LISTEN connection that wakes workers when other processes change jobs."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

__all__ = ["PostgresListener"]

logger = logging.getLogger(__name__)


class PostgresListener:
    """A dedicated asyncpg connection that LISTENs on a channel and reconnects.

    Every notification calls ``on_notify`` from the event loop. After a
    reconnection ``on_notify`` is called once as well, because notifications
    sent while the connection was down are lost.
    """

    def __init__(
        self,
        *,
        connect_options: Mapping[str, Any],
        channel: str,
        on_notify: Callable[[], None],
        description: str,
        keepalive_interval: float = 30.0,
        max_reconnect_delay: float = 30.0,
    ) -> None:
        accepted = inspect.signature(asyncpg.connect).parameters
        self._connect_options = {
            key: value for key, value in connect_options.items() if key in accepted
        }
        self._channel = channel
        self._on_notify = on_notify
        self._description = description
        self._keepalive_interval = keepalive_interval
        self._max_reconnect_delay = max_reconnect_delay
        self._task: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Future[None] | None = None
        self._connected = asyncio.Event()

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection is up right now."""
        return self._connected.is_set()

    def start(self) -> None:
        """Start listening in a background task of the running event loop.

        A failed connection attempt is logged and retried in the background,
        so workers fall back to polling until the connection comes up.
        """
        if self._task is not None and not self._task.done():
            return
        self._first_attempt = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(
            self._run(self._first_attempt), name=f"fantasma LISTEN {self._channel}"
        )

    async def wait_first_attempt(self) -> None:
        """Wait until the first connection attempt since :meth:`start` has ended."""
        if self._task is None or self._first_attempt is None:
            return
        await asyncio.wait(
            [self._first_attempt, self._task], return_when=asyncio.FIRST_COMPLETED
        )

    async def wait_listening(self) -> None:
        """Wait until the LISTEN connection is up."""
        await self._connected.wait()

    async def stop(self) -> None:
        """Close the LISTEN connection and stop reconnecting."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self, first_attempt: asyncio.Future[None]) -> None:
        delay = 0.5
        failures = 0
        connected_before = False
        while True:
            try:
                connection, lost = await self._connect()
            except Exception as exc:
                # This background task has no caller to report to, so every
                # error is logged and retried: the server may be restarting.
                failures += 1
                self._log_failure(exc, failures)
                if not first_attempt.done():
                    first_attempt.set_result(None)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_reconnect_delay)
                continue
            if connected_before:
                logger.info(
                    "listening for job notifications on %s again (%d failed"
                    " reconnection attempts)",
                    self._description,
                    failures,
                )
                self._notify()
            connected_before = True
            failures = 0
            delay = 0.5
            self._connected.set()
            if not first_attempt.done():
                first_attempt.set_result(None)
            try:
                await self._watch(connection, lost)
            finally:
                self._connected.clear()
                await self._close(connection)
            logger.warning(
                "lost the LISTEN connection to %s; reconnecting, and polling until"
                " it is back",
                self._description,
            )

    async def _connect(self) -> tuple[asyncpg.Connection, asyncio.Event]:
        lost = asyncio.Event()
        connection = await asyncpg.connect(**self._connect_options)
        try:
            connection.add_termination_listener(lambda _connection: lost.set())
            await connection.add_listener(self._channel, self._on_notification)
        except BaseException:
            await self._close(connection)
            raise
        return connection, lost

    async def _watch(self, connection: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Return once ``connection`` is closed or stops responding."""
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._keepalive_interval):
                    await lost.wait()
                    return
            # A silent network failure never closes the socket, so probe it.
            try:
                await connection.fetchval("SELECT 1", timeout=self._keepalive_interval)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                logger.debug("LISTEN keepalive query failed", exc_info=True)
                return

    def _on_notification(
        self, connection: object, pid: int, channel: str, payload: object
    ) -> None:
        self._notify()

    def _notify(self) -> None:
        try:
            self._on_notify()
        except Exception:
            logger.exception("job notification callback failed")

    def _log_failure(self, exc: BaseException, failures: int) -> None:
        # Repeats are counted, not logged each time, while the server is down.
        if failures == 1 or failures % 10 == 0:
            logger.warning(
                "cannot LISTEN for job notifications on %s (%d failed attempts):"
                " %s; retrying, and polling meanwhile",
                self._description,
                failures,
                exc,
            )

    async def _close(self, connection: asyncpg.Connection) -> None:
        try:
            await connection.close(timeout=5)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            connection.terminate()
