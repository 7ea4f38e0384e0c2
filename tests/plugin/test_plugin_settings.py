"""The fantasma marker, the command-line and ini options, and storage choices."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from plugin_support import write_project

POSTGRES_URL = "postgresql+asyncpg://root@127.0.0.1/test"

STORAGE_CHECK = """
from fantasma.storage.sql import SqlStorage


def test_storage(fantasma_scheduler, fantasma_storage, tmp_path):
    assert isinstance(fantasma_storage, SqlStorage)
    assert fantasma_storage.engine.url.database == str(tmp_path / "{file}")
    assert fantasma_scheduler.jobs() == []
"""


def test_marker_sets_start(pytester: pytest.Pytester) -> None:
    write_project(
        pytester,
        """
        from datetime import UTC, datetime, timedelta, timezone

        import pytest

        PLUS_TWO = timezone(timedelta(hours=2))

        @pytest.mark.fantasma(start=datetime(2031, 6, 1, 12, tzinfo=PLUS_TWO))
        def test_start(fantasma_scheduler, fantasma_start):
            assert fantasma_scheduler.now() == datetime(2031, 6, 1, 10, tzinfo=UTC)
            assert fantasma_start.utcoffset() == timedelta(hours=2)
        """,
    )

    result = pytester.runpytest()

    result.assert_outcomes(passed=1)


def test_default_start_and_seed(pytester: pytest.Pytester) -> None:
    write_project(
        pytester,
        """
        from datetime import UTC, datetime

        def test_defaults(fantasma_scheduler, fantasma_seed):
            assert fantasma_scheduler.now() == datetime(2030, 1, 1, tzinfo=UTC)
            assert fantasma_scheduler.now().strftime("%A") == "Tuesday"
            assert fantasma_seed == 0
        """,
    )

    result = pytester.runpytest()

    result.assert_outcomes(passed=1)


def test_closest_marker_wins_per_key(pytester: pytest.Pytester) -> None:
    write_project(
        pytester,
        """
        import pytest

        pytestmark = pytest.mark.fantasma(seed=1, storage="sqlite")

        @pytest.mark.fantasma(seed=5)
        def test_merged(fantasma_simulation, fantasma_storage):
            assert fantasma_simulation.seed == 5
            assert type(fantasma_storage).__name__ == "SqlStorage"
        """,
    )

    result = pytester.runpytest()

    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            "1",
            "@pytest.mark.fantasma takes keyword arguments only (start, storage, "
            "seed, freeze_time), got positional (1,)",
        ),
        (
            "speed=2",
            "@pytest.mark.fantasma got unknown argument 'speed'; use start, "
            "storage, seed, freeze_time",
        ),
        (
            "start=datetime(2030, 1, 1)",
            "@pytest.mark.fantasma(start=...) needs an aware datetime, got "
            "datetime.datetime(2030, 1, 1, 0, 0)",
        ),
        (
            "seed='7'",
            "@pytest.mark.fantasma(seed=...) needs an int, got '7'",
        ),
        (
            "storage=3",
            "@pytest.mark.fantasma(storage=...) needs a URL or a Storage object, got 3",
        ),
        (
            "freeze_time='yes'",
            "@pytest.mark.fantasma(freeze_time=...) needs True or False, got 'yes'",
        ),
    ],
    ids=["positional", "unknown", "naive start", "seed", "storage", "freeze_time"],
)
def test_invalid_marker_reported(
    pytester: pytest.Pytester, arguments: str, message: str
) -> None:
    write_project(
        pytester,
        f"""
        from datetime import datetime

        import pytest

        @pytest.mark.fantasma({arguments})
        def test_marked(fantasma_scheduler):
            pass
        """,
    )

    result = pytester.runpytest()

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([message])


def test_sqlite_option_uses_tmp_path(pytester: pytest.Pytester) -> None:
    write_project(pytester, STORAGE_CHECK.format(file="fantasma.db"))

    result = pytester.runpytest("--fantasma-storage", "sqlite")

    result.assert_outcomes(passed=1)


def test_sqlite_ini_option(pytester: pytest.Pytester) -> None:
    write_project(
        pytester,
        STORAGE_CHECK.format(file="fantasma.db"),
        ini="fantasma_storage = sqlite",
    )

    result = pytester.runpytest()

    result.assert_outcomes(passed=1)


def test_option_overrides_ini(pytester: pytest.Pytester) -> None:
    write_project(
        pytester,
        STORAGE_CHECK.format(file="jobs.db"),
        ini="fantasma_storage = memory",
    )

    result = pytester.runpytest(
        "--fantasma-storage", "sqlite+aiosqlite:///{tmp}/jobs.db"
    )

    result.assert_outcomes(passed=1)


def test_marker_overrides_option(pytester: pytest.Pytester) -> None:
    write_project(
        pytester,
        """
        import pytest
        from fantasma import MemoryStorage

        @pytest.mark.fantasma(storage="memory")
        def test_memory(fantasma_storage):
            assert type(fantasma_storage) is MemoryStorage
        """,
    )

    result = pytester.runpytest("--fantasma-storage", "sqlite")

    result.assert_outcomes(passed=1)


def test_each_test_gets_empty_storage(pytester: pytest.Pytester) -> None:
    write_project(
        pytester,
        """
        import pytest
        from fantasma import Trigger

        from handlers import Poll, PollHandler

        @pytest.mark.parametrize("round", [1, 2, 3])
        def test_isolated(fantasma_scheduler, round):
            fantasma_scheduler.register(PollHandler)
            assert fantasma_scheduler.jobs() == []
            fantasma_scheduler.schedule("poll", Poll(), Trigger.after(hours=1))
        """,
    )

    result = pytester.runpytest("--fantasma-storage", "sqlite")

    result.assert_outcomes(passed=3)


def test_storage_object_in_marker(pytester: pytest.Pytester) -> None:
    write_project(
        pytester,
        """
        import pytest
        from fantasma import MemoryStorage

        SHARED = MemoryStorage()

        @pytest.mark.fantasma(storage=SHARED)
        def test_given(fantasma_storage):
            assert fantasma_storage is SHARED
        """,
    )

    result = pytester.runpytest()

    result.assert_outcomes(passed=1)


def test_invalid_storage_url_reported(pytester: pytest.Pytester) -> None:
    write_project(pytester, "def test_storage(fantasma_storage):\n    pass\n")

    result = pytester.runpytest("--fantasma-storage", "nonsense")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "E *fantasma.errors.ConfigurationError: invalid storage URL 'nonsense': "
            "expected 'memory://' or a database URL such as "
            "'sqlite+aiosqlite:///fantasma.db'"
        ]
    )


def _fantasma_tables() -> list[str]:
    async def query() -> list[str]:
        connection = await asyncpg.connect("postgresql://root@127.0.0.1/test")
        try:
            rows = await connection.fetch(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_name LIKE 'fantasma\\_%'"
            )
        finally:
            await connection.close()
        return sorted(row["table_name"] for row in rows)

    return asyncio.run(query())


@pytest.mark.postgres
def test_postgres_tests_isolated_and_dropped(pytester: pytest.Pytester) -> None:
    write_project(
        pytester,
        """
        import pytest
        from fantasma import Trigger

        from handlers import Poll, PollHandler

        @pytest.mark.parametrize("round", [1, 2])
        def test_isolated(fantasma_scheduler, fantasma_storage, round):
            fantasma_scheduler.register(PollHandler)
            assert fantasma_scheduler.jobs() == []
            fantasma_scheduler.schedule("poll", Poll(), Trigger.after(hours=1))
            assert fantasma_storage.tables.jobs.name.startswith("fantasma_")
        """,
    )
    before = _fantasma_tables()

    result = pytester.runpytest("--fantasma-storage", POSTGRES_URL)

    result.assert_outcomes(passed=2)
    assert _fantasma_tables() == before


@pytest.mark.mysql
def test_mariadb_storage_option(pytester: pytest.Pytester) -> None:
    write_project(
        pytester,
        """
        from fantasma import Trigger

        from handlers import Poll, PollHandler

        def test_runs(fantasma_scheduler, advance_time):
            fantasma_scheduler.register(PollHandler)
            fantasma_scheduler.schedule("poll", Poll(), Trigger.after(minutes=1))
            advance_time(minutes=1)
            assert fantasma_scheduler.runs("poll").count == 1
        """,
    )

    result = pytester.runpytest(
        "--fantasma-storage", "mysql+asyncmy://root@127.0.0.1/test"
    )

    result.assert_outcomes(passed=1)
