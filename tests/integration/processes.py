"""Run the ``fantasma`` command in subprocesses and wait for lines of its output."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Self

__all__ = [
    "PROCESS_TIMEOUT",
    "REPOSITORY",
    "FantasmaProcess",
    "command_env",
    "run_fantasma",
]

PROCESS_TIMEOUT = 60.0
"""Seconds a test waits for a subprocess's line or exit before it fails.

Generous because a subprocess imports SQLAlchemy and Alembic first, and CI
runs two test workers on two cores; a passing test never waits this long.
"""

REPOSITORY = Path(__file__).resolve().parents[2]
"""The checkout, put on PYTHONPATH so that subprocesses import ``tests.*``."""


def command_env(**variables: str) -> dict[str, str]:
    """Return this process's environment plus ``variables`` and the checkout path."""
    env = dict(os.environ)
    paths = [str(REPOSITORY), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(variables)
    return env


def run_fantasma(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m fantasma ARGS`` to completion and return its output."""
    return subprocess.run(
        [sys.executable, "-m", "fantasma", *args],
        cwd=cwd,
        env=command_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )


class _Lines:
    """Lines read so far from one pipe, and an event set when more arrive."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.closed = False
        self.changed = asyncio.Event()

    async def read(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            self.lines.append(raw.decode().rstrip("\n"))
            self.changed.set()
        self.closed = True
        self.changed.set()


class FantasmaProcess:
    """A long-running ``python -m fantasma`` subprocess, read line by line.

    Use :meth:`start`, then :meth:`wait_for_stdout` or :meth:`wait_for_stderr`
    to wait for a line, with a deadline instead of a sleep.
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stdout = _Lines()
        self.stderr = _Lines()
        assert process.stdout is not None
        assert process.stderr is not None
        self._readers = [
            asyncio.create_task(self.stdout.read(process.stdout)),
            asyncio.create_task(self.stderr.read(process.stderr)),
        ]

    @classmethod
    async def start(cls, *args: str, cwd: Path, env: Mapping[str, str]) -> Self:
        """Start ``python -m fantasma ARGS`` with ``env`` added to the environment."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fantasma",
            *args,
            cwd=cwd,
            env=command_env(**env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        return cls(process)

    async def wait_for_stdout(self, predicate: Callable[[str], bool]) -> str:
        """Return the first stdout line for which ``predicate`` is true.

        Raises:
            AssertionError: The process closed stdout first, or no such line
                came within :data:`PROCESS_TIMEOUT`; the message shows the
                output so far.
        """
        return await self._wait_for(self.stdout, predicate, "stdout")

    async def wait_for_stderr(self, predicate: Callable[[str], bool]) -> str:
        """Return the first stderr line for which ``predicate`` is true."""
        return await self._wait_for(self.stderr, predicate, "stderr")

    async def _wait_for(
        self, pipe: _Lines, predicate: Callable[[str], bool], name: str
    ) -> str:
        checked = 0
        try:
            async with asyncio.timeout(PROCESS_TIMEOUT):
                while True:
                    for line in pipe.lines[checked:]:
                        if predicate(line):
                            return line
                    checked = len(pipe.lines)
                    if pipe.closed:
                        raise AssertionError(
                            f"the process closed its {name} before the expected"
                            f" line\n{self.describe()}"
                        )
                    pipe.changed.clear()
                    await pipe.changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"no expected line on {name} within {PROCESS_TIMEOUT} s"
                f"\n{self.describe()}"
            ) from None

    async def wait(self) -> int:
        """Wait for the process to exit and its output to be read; return its status."""
        async with asyncio.timeout(PROCESS_TIMEOUT):
            status = await self.process.wait()
            await asyncio.gather(*self._readers)
        return status

    async def close(self) -> None:
        """Kill the process if it still runs, and wait for it."""
        if self.process.returncode is None:
            self.process.kill()
        await self.wait()

    def describe(self) -> str:
        """Return the output read so far, for failure messages."""
        return "\n".join(
            [
                "--- stdout ---",
                *self.stdout.lines,
                "--- stderr ---",
                *self.stderr.lines,
            ]
        )
