"""The pytest plugin: fixtures that run a scheduler on fake time, and their options.

pytest loads it through the ``pytest11`` entry point of the ``fantasma``
distribution, so installing ``fantasma[testing]`` is enough to get the
fixtures.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import pytest

from fantasma import MemoryStorage, Storage
from fantasma.storage import storage_from_url
from fantasma_testing.clock import DEFAULT_START

# Importing a fixture into the plugin module registers it with pytest.
from fantasma_testing.cluster import cluster  # noqa: F401
from fantasma_testing.simulated_scheduler import (
    AdvanceTime,
    AsyncAdvanceTime,
    AsyncSimulatedScheduler,
    SimulatedScheduler,
)
from fantasma_testing.simulation import Simulation

__all__ = [
    "TEST_NODE_ID",
    "is_async_request",
    "open_storage",
]

T = TypeVar("T")

TEST_NODE_ID = "test-node"
"""Node id of the ``fantasma_scheduler`` fixture's scheduler."""

_MARKER = "fantasma"
_MARKER_KEYS = ("start", "storage", "seed", "freeze_time")
_SIMULATION_KEY = pytest.StashKey[Simulation]()

Scheduler: TypeAlias = SimulatedScheduler | AsyncSimulatedScheduler


# Configuration


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fantasma", "fantasma scheduler fixtures")
    group.addoption(
        "--fantasma-storage",
        dest="fantasma_storage",
        metavar="URL",
        default=None,
        help=(
            "Storage of the fantasma_scheduler fixture: 'memory' (the default), "
            "'sqlite' for a new SQLite file per test, or a database URL; "
            "'{tmp}' in a URL is replaced by the test's tmp_path."
        ),
    )
    group.addoption(
        "--fantasma-freeze-time",
        dest="fantasma_freeze_time",
        action="store_true",
        default=None,
        help=(
            "Make datetime.now(), time.time() and friends read the fake time "
            "while fantasma advances it (needs freezegun)."
        ),
    )
    parser.addini(
        "fantasma_storage",
        default="memory",
        help="Default storage of the fantasma fixtures; see --fantasma-storage.",
    )
    parser.addini(
        "fantasma_freeze_time",
        type="bool",
        default=False,
        help="Turn the freezegun bridge on for every test; see --fantasma-freeze-time.",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fantasma(start=None, storage=None, seed=None, freeze_time=None): settings "
        "of the fantasma fixtures for this test: the fake clock's start (an aware "
        "datetime), the storage (a URL, 'memory', 'sqlite' or a Storage object), "
        "the seed of node order and retry jitter, and the freezegun bridge.",
    )


@dataclass(frozen=True, slots=True)
class _MarkerSettings:
    start: datetime | None = None
    storage: str | Storage | None = None
    seed: int | None = None
    freeze_time: bool | None = None


def _marker_settings(request: pytest.FixtureRequest) -> _MarkerSettings:
    """Merge the ``fantasma`` markers on the test, the closest one winning per key."""
    found: dict[str, object] = {}
    for marker in request.node.iter_markers(_MARKER):
        if marker.args:
            pytest.fail(
                "@pytest.mark.fantasma takes keyword arguments only "
                f"({', '.join(_MARKER_KEYS)}), got positional {marker.args!r}",
                pytrace=False,
            )
        unknown = sorted(set(marker.kwargs) - set(_MARKER_KEYS))
        if unknown:
            pytest.fail(
                f"@pytest.mark.fantasma got unknown argument {unknown[0]!r}; "
                f"use {', '.join(_MARKER_KEYS)}",
                pytrace=False,
            )
        for key, value in marker.kwargs.items():
            found.setdefault(key, value)
    return _checked_settings(found)


def _checked_settings(found: dict[str, object]) -> _MarkerSettings:
    start = found.get("start")
    if start is not None and not (
        isinstance(start, datetime) and start.utcoffset() is not None
    ):
        pytest.fail(
            f"@pytest.mark.fantasma(start=...) needs an aware datetime, got {start!r}",
            pytrace=False,
        )

    storage = found.get("storage")
    if storage is not None and not isinstance(storage, str | Storage):
        pytest.fail(
            "@pytest.mark.fantasma(storage=...) needs a URL or a Storage object, "
            f"got {storage!r}",
            pytrace=False,
        )

    seed = found.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        pytest.fail(
            f"@pytest.mark.fantasma(seed=...) needs an int, got {seed!r}",
            pytrace=False,
        )

    freeze_time = found.get("freeze_time")
    if freeze_time is not None and not isinstance(freeze_time, bool):
        pytest.fail(
            "@pytest.mark.fantasma(freeze_time=...) needs True or False, "
            f"got {freeze_time!r}",
            pytrace=False,
        )

    return _MarkerSettings(start, storage, seed, freeze_time)


def is_async_request(request: pytest.FixtureRequest) -> bool:
    """Return whether the test that ``request`` serves is a coroutine function.

    Fixtures use it to hand async tests an API to await and sync tests one
    to call.
    """
    function = request.function
    # A hypothesis test wraps the coroutine function in a plain one.
    inner = getattr(getattr(function, "hypothesis", None), "inner_test", function)
    return inspect.iscoroutinefunction(inner)


# Storage


def open_storage(
    choice: str | Storage, *, simulation: Simulation, request: pytest.FixtureRequest
) -> Storage:
    """Build the storage ``choice`` names for one test, and close it after the test.

    - A :class:`~fantasma.Storage` object is used as it is.
    - ``"memory"`` or ``"memory://"`` gives a new
      :class:`~fantasma.MemoryStorage`.
    - ``"sqlite"`` gives a SQLite database in a new file under the test's
      ``tmp_path``.
    - A URL containing ``{tmp}`` has it replaced by the test's ``tmp_path``,
      so each test gets its own database file.
    - Any other database URL gets tables with a prefix unique to the test,
      which are dropped after the test, so tests sharing one PostgreSQL or
      MariaDB database do not see each other's rows.

    The storage is closed by a cleanup of ``simulation``, on the loop the
    test ran on, after every node has stopped.

    Raises:
        ConfigurationError: The URL names no supported backend.
    """
    if isinstance(choice, Storage):
        simulation.add_cleanup(choice.close)
        return choice
    if choice in ("memory", "memory://"):
        return MemoryStorage()
    if choice == "sqlite" or "{tmp}" in choice:
        tmp_path: Path = request.getfixturevalue("tmp_path")
        if choice == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path.as_posix()}/fantasma.db"
        else:
            url = choice.replace("{tmp}", tmp_path.as_posix())
        storage = storage_from_url(url)
        simulation.add_cleanup(storage.close)
        return storage
    if choice.startswith("memory:"):
        return storage_from_url(choice)
    return _open_isolated_sql(choice, simulation)


def _open_isolated_sql(url: str, simulation: Simulation) -> Storage:
    # Up to 30 characters are allowed; this uses 22.
    prefix = f"fantasma_{uuid.uuid4().hex[:12]}_"
    storage = storage_from_url(url, table_prefix=prefix)

    async def drop_and_close() -> None:
        try:
            await _drop_tables(storage, prefix)
        finally:
            await storage.close()

    simulation.add_cleanup(drop_and_close)
    return storage


async def _drop_tables(storage: Storage, prefix: str) -> None:
    from sqlalchemy import MetaData, Table

    from fantasma.storage.sql import SqlStorage
    from fantasma.storage.sql.migrate import version_table_name

    if not isinstance(storage, SqlStorage):  # pragma: no cover - other backends
        return
    version_table = Table(version_table_name(prefix), MetaData())
    async with storage.engine.begin() as connection:
        await connection.run_sync(storage.tables.metadata.drop_all, checkfirst=True)
        await connection.run_sync(version_table.drop, checkfirst=True)


# Fixtures


@pytest.fixture
def fantasma_start(request: pytest.FixtureRequest) -> datetime:
    """The instant the fake clock starts at: Tuesday 2030-01-01 00:00:00 UTC.

    ``@pytest.mark.fantasma(start=...)`` changes it for one test; override
    this fixture to change it for a module or a whole suite.
    """
    start = _marker_settings(request).start
    return DEFAULT_START if start is None else start


@pytest.fixture
def fantasma_seed(request: pytest.FixtureRequest) -> int:
    """Seed of the simulation's node order and of retry jitter: 0 by default.

    ``@pytest.mark.fantasma(seed=...)`` changes it for one test. The same
    seed always replays the same run order and the same retry delays.
    """
    seed = _marker_settings(request).seed
    return 0 if seed is None else seed


@pytest.fixture
def fantasma_freeze_time(request: pytest.FixtureRequest) -> bool:
    """Whether the freezegun bridge is on: off unless marker, ini or option turns it on.

    When on, ``datetime.now()``, ``datetime.utcnow()``, ``time.time()`` and
    friends return the fake time while ``advance_time`` or ``drain`` runs
    handlers. Set it with ``@pytest.mark.fantasma(freeze_time=True)``, the
    ``fantasma_freeze_time`` ini option or ``--fantasma-freeze-time``.
    """
    marked = _marker_settings(request).freeze_time
    if marked is not None:
        return marked
    if request.config.getoption("fantasma_freeze_time"):
        return True
    return bool(request.config.getini("fantasma_freeze_time"))


@pytest.fixture
def fantasma_simulation(
    request: pytest.FixtureRequest,
    fantasma_start: datetime,
    fantasma_seed: int,
    fantasma_freeze_time: bool,
) -> Iterator[Simulation]:
    """The test's Simulation: fake clock, scheduler nodes and their run log.

    Function scope. Every fantasma fixture of one test shares it; fixtures
    that add nodes (such as a simulated cluster) add them here, and
    ``advance_time`` drives every live node. In an async test the nodes
    stop when the test function returns, on the test's event loop; in a
    sync test, at teardown. Cleanups registered with ``add_cleanup`` run
    after the nodes stop.
    """
    simulation = Simulation(
        start=fantasma_start, seed=fantasma_seed, freeze_time=fantasma_freeze_time
    )
    request.node.stash[_SIMULATION_KEY] = simulation
    yield simulation
    simulation.close_sync()


@pytest.fixture
def fantasma_storage(
    request: pytest.FixtureRequest, fantasma_simulation: Simulation
) -> Storage:
    """The storage the test's scheduler nodes share; memory by default.

    Function scope: a new, empty storage per test, closed after the test.
    ``@pytest.mark.fantasma(storage=...)``, ``--fantasma-storage`` or the
    ``fantasma_storage`` ini option choose another: ``"sqlite"`` for a new
    SQLite file under ``tmp_path``, a URL with ``{tmp}`` in it, or any
    database URL, whose tables get a prefix unique to the test and are
    dropped afterwards. Override the fixture to return your own
    :class:`~fantasma.Storage`; close it with
    ``fantasma_simulation.add_cleanup(storage.close)``.
    """
    choice = _marker_settings(request).storage
    if choice is None:
        option = request.config.getoption("fantasma_storage")
        choice = option or str(request.config.getini("fantasma_storage"))
    return open_storage(choice, simulation=fantasma_simulation, request=request)


@pytest.fixture
def fantasma_scheduler(
    request: pytest.FixtureRequest,
    fantasma_simulation: Simulation,
    fantasma_storage: Storage,
) -> Scheduler:
    """A fantasma scheduler on fake time, driven only by ``advance_time`` and ``drain``.

    Function scope. The scheduler reads a FakeClock that starts at Tuesday
    2030-01-01 00:00:00 UTC (see ``fantasma_start``), runs handlers one at
    a time with the DeterministicExecutor, stores jobs in memory unless told
    otherwise (see ``fantasma_storage``), and uses the fixed seed 0 for
    retry jitter (see ``fantasma_seed``). Nothing runs until time moves.
    Teardown stops it and closes its storage.

    In a sync test every method is a plain call. In an async test
    (pytest-asyncio or anyio on asyncio) the methods that touch storage or
    move time are awaited: ``schedule``, ``schedule_many``,
    ``add_recurring_job``, ``remove_recurring_job``, ``get_recurring_job``,
    ``cancel``, ``get_job``, ``jobs``, ``advance_time``, ``drain`` and
    ``assert_scheduled``. ``register``, ``runs``, ``now`` and the run
    assertions ``assert_ran``, ``assert_not_run`` and ``assert_ran_times``
    are plain calls in both. ``app`` is the underlying Fantasma.

    Example::

        def test_poll(fantasma_scheduler, advance_time):
            fantasma_scheduler.register(PollHandler)
            fantasma_scheduler.schedule("poll", Poll(), Trigger.after(minutes=5))
            advance_time(minutes=5)
            fantasma_scheduler.assert_ran("poll")
    """
    node = fantasma_simulation.create_node(
        fantasma_storage, node_id=TEST_NODE_ID, seed=fantasma_simulation.seed
    )
    if is_async_request(request):
        return AsyncSimulatedScheduler(node, fantasma_simulation)
    fantasma_simulation.run_sync(fantasma_simulation.start())
    return SimulatedScheduler(node, fantasma_simulation)


@pytest.fixture
def advance_time(
    request: pytest.FixtureRequest, fantasma_simulation: Simulation
) -> AdvanceTime | AsyncAdvanceTime:
    """Move the fake time forward, running every job and timer that falls due.

    Function scope. Call it with timedelta keywords (``advance_time(minutes=30)``),
    a timedelta (``advance_time(timedelta(days=1))``) or an aware instant
    (``advance_time(to=datetime(2030, 3, 31, tzinfo=UTC))``). The clock jumps
    to each instant where something is due, runs everything due then (in
    due order, then scheduling order), lets handlers add more work to the
    same loop, and stops at the target. Handlers see their due time on
    ``context.clock``. It returns the new fake time. Await it in async tests.

    Example::

        def test_reminder(fantasma_scheduler, advance_time):
            fantasma_scheduler.schedule("remind", Remind(), Trigger.after(hours=1))
            advance_time(hours=1)
            assert fantasma_scheduler.runs("remind").count == 1
    """
    if is_async_request(request):
        return AsyncAdvanceTime(fantasma_simulation)
    return AdvanceTime(fantasma_simulation)


# Event loop ownership in async tests


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Stop an async test's simulated nodes on its own loop, before the loop closes.

    pytest-asyncio and anyio both close the test's event loop before sync
    fixtures are torn down, so the test function is wrapped instead: the
    wrapper awaits the test and then closes the simulation.
    """
    simulation = item.stash.get(_SIMULATION_KEY, None)
    if (
        simulation is None
        or not isinstance(item, pytest.Function)
        or not inspect.iscoroutinefunction(item.obj)
    ):
        return (yield)
    original = item.obj
    item.obj = _close_after(original, simulation)
    try:
        return (yield)
    finally:
        item.obj = original


def _close_after(
    test_function: Callable[..., Coroutine[Any, Any, T]], simulation: Simulation
) -> Callable[..., Awaitable[T]]:
    @functools.wraps(test_function)
    async def run_then_close(*args: Any, **kwargs: Any) -> T:
        try:
            result = await test_function(*args, **kwargs)
        except BaseException:
            # The test's own failure is the one to report; close() has
            # already logged its errors.
            with contextlib.suppress(Exception):
                await simulation.close()
            raise
        await simulation.close()
        return result

    return run_then_close
