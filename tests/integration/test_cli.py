"""The ``fantasma`` command, run as a real subprocess."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

import fantasma
from fantasma import JobId, Trigger
from fantasma.cli import error_summary
from fantasma_testing import DeterministicExecutor, FakeClock
from tests.integration import sample_app
from tests.integration.processes import (
    PROCESS_TIMEOUT,
    FantasmaProcess,
    run_fantasma,
)

APP = "tests.integration.sample_app:app"
START = datetime(2030, 1, 1, tzinfo=UTC)
UNREACHABLE_POSTGRES = "postgresql+asyncpg://fantasma@127.0.0.1:1/fantasma"
UNREACHABLE_MESSAGE = (
    "reading the schema version failed: cannot reach PostgreSQL at 127.0.0.1:1"
    " (database 'fantasma'): connection refused; check that the server is running"
    f" and the URL {UNREACHABLE_POSTGRES!r} is right, then retry"
)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "cli.db"


@pytest.fixture
def database_url(database: Path) -> str:
    return f"sqlite+aiosqlite:///{database}"


async def _store_sample_jobs(url: str) -> dict[str, JobId]:
    app = sample_app.build_app(
        url, clock=FakeClock(START), executor=DeterministicExecutor(), seed=0
    )
    await app.start(background=False)
    try:
        ids = {
            "greet": await app.schedule(
                "greet", sample_app.Greet("ana"), Trigger.now()
            ),
            "fail": await app.schedule(
                "fail", sample_app.Fail("card declined"), Trigger.now()
            ),
            "later": await app.schedule(
                "later", sample_app.Greet("bo"), Trigger.after(hours=1)
            ),
        }
        await app.run_pending()
    finally:
        await app.stop()
    return ids


@pytest.fixture
def sample_jobs(database_url: str) -> dict[str, JobId]:
    """Store a succeeded, a dead and a scheduled job, on fake time 2030-01-01."""
    return asyncio.run(_store_sample_jobs(database_url))


# fantasma jobs


def test_jobs_prints_aligned_table(
    tmp_path: Path, database_url: str, sample_jobs: dict[str, JobId]
) -> None:
    result = run_fantasma("jobs", database_url, cwd=tmp_path)

    assert result.stdout.splitlines() == [
        f"{'ID':32}  NAME   STATUS     DUE (UTC)            ATTEMPTS  LAST ERROR",
        f"{sample_jobs['greet']}  greet  succeeded  2030-01-01 00:00:00       1/3",
        f"{sample_jobs['fail']}  fail   dead       2030-01-01 00:00:00       1/1"
        "  ValueError: card declined",
        f"{sample_jobs['later']}  later  scheduled  2030-01-01 01:00:00       0/3",
    ]
    assert result.stderr == ""
    assert result.returncode == 0


def test_jobs_filters_by_status(
    tmp_path: Path, database_url: str, sample_jobs: dict[str, JobId]
) -> None:
    result = run_fantasma(
        "jobs", database_url, "--status", "dead", "--status", "scheduled", cwd=tmp_path
    )

    listed = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert listed == [sample_jobs["fail"], sample_jobs["later"]]


def test_jobs_limit_notes_truncation(
    tmp_path: Path, database_url: str, sample_jobs: dict[str, JobId]
) -> None:
    result = run_fantasma("jobs", database_url, "--limit", "1", cwd=tmp_path)

    listed = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert listed == [sample_jobs["greet"]]
    assert result.stderr == (
        "showing the first 1 jobs by due time; pass --limit to see more\n"
    )


def test_jobs_missing_file_not_created(tmp_path: Path, database: Path) -> None:
    result = run_fantasma("jobs", f"sqlite:///{database}", cwd=tmp_path)

    assert result.stderr == (
        f"fantasma: error: SQLite database file {str(database)!r} does not exist:"
        " check the path in the URL (three slashes before a relative path, four"
        " before an absolute one)\n"
    )
    assert result.returncode == 2
    assert not database.exists()


# fantasma db upgrade


def test_db_upgrade_is_idempotent(tmp_path: Path, sql_url: str) -> None:
    first = run_fantasma("db", "upgrade", sql_url, cwd=tmp_path)
    second = run_fantasma("db", "upgrade", sql_url, cwd=tmp_path)
    listing = run_fantasma("jobs", sql_url, cwd=tmp_path)

    safe_url = make_url(sql_url).render_as_string(hide_password=True)
    expected = f"fantasma's tables are up to date in {safe_url}\n"
    assert first.stdout == expected
    assert first.returncode == 0
    assert second.stdout == expected
    assert second.returncode == 0
    assert listing.stdout == "no jobs found\n"


def test_db_upgrade_table_prefix(
    tmp_path: Path, database: Path, database_url: str
) -> None:
    run_fantasma("db", "upgrade", database_url, "--table-prefix", "shop_", cwd=tmp_path)

    prefixed = run_fantasma(
        "jobs", database_url, "--table-prefix", "shop_", cwd=tmp_path
    )
    default = run_fantasma("jobs", database_url, cwd=tmp_path)

    assert prefixed.stdout == "no jobs found\n"
    assert default.stderr == (
        f"fantasma: error: fantasma's tables are missing in SQLite database"
        f" {str(database)!r}: create them with `fantasma db upgrade"
        f" {database_url}`, or start the storage with migrate=True\n"
    )
    assert default.returncode == 2


# fantasma run


@pytest.mark.asyncio
async def test_run_executes_and_stops_on_sigterm(
    tmp_path: Path, database_url: str
) -> None:
    app = sample_app.build_app(database_url)
    await app.start(background=False)
    job_id = await app.schedule("greet", sample_app.Greet("ana"), Trigger.now())
    await app.stop()
    node = await FantasmaProcess.start(
        "run", APP, cwd=tmp_path, env={"SAMPLE_APP_DATABASE_URL": database_url}
    )
    try:
        await node.wait_for_stderr(lambda line: "fantasma.cli: running " in line)
        greeting = await node.wait_for_stdout(lambda line: line.startswith("hello"))
        recorded = await node.wait_for_stdout(lambda line: line.startswith("recorded"))
        node.process.send_signal(signal.SIGTERM)
        status = await node.wait()
    finally:
        await node.close()

    assert greeting == "hello ana"
    assert recorded == f"recorded {job_id} attempt 1 succeeded"
    assert status == 0
    assert node.stderr.lines[-1].endswith(f" INFO fantasma.cli: stopped {APP}")


# Bad input: one error line on stderr, exit status 2.

BAD_INPUT = [
    pytest.param(
        ["run", "tests.integration.sample_app"],
        "invalid application 'tests.integration.sample_app': expected"
        " 'module:attribute', for example 'myservice.jobs:app'",
        id="run-without-attribute",
    ),
    pytest.param(
        ["run", "tests/integration/sample_app.py:app"],
        "invalid application 'tests/integration/sample_app.py:app': name the"
        " module, not the file, for example 'tests.integration.sample_app:app'",
        id="run-file-name",
    ),
    pytest.param(
        ["run", "tests.integration.no_such_module:app"],
        "cannot import module 'tests.integration.no_such_module': no module named"
        " 'tests.integration.no_such_module'; check the name, and run fantasma"
        " from the folder that contains the module or add that folder to"
        " PYTHONPATH",
        id="run-unknown-module",
    ),
    pytest.param(
        ["run", "tests.integration.sample_app:missing"],
        "module 'tests.integration.sample_app' has no attribute 'missing'; check"
        " the name after the colon",
        id="run-unknown-attribute",
    ),
    pytest.param(
        ["run", "tests.integration.sample_app:Greet"],
        "'tests.integration.sample_app:Greet' is the class Greet, not a Fantasma:"
        " point to a Fantasma instance or to a function that takes no arguments"
        " and returns one",
        id="run-not-a-fantasma",
    ),
    pytest.param(
        ["run", "tests.integration.sample_app:_milliseconds"],
        "'tests.integration.sample_app:_milliseconds' needs arguments: point to a"
        " Fantasma instance or to a function that takes no arguments and returns"
        " one",
        id="run-factory-with-arguments",
    ),
    pytest.param(
        ["jobs", "not-a-url"],
        "invalid storage URL 'not-a-url': expected 'memory://' or a database URL"
        " such as 'sqlite+aiosqlite:///fantasma.db'",
        id="jobs-invalid-url",
    ),
    pytest.param(
        ["jobs", "memory://"],
        "memory:// storage lives inside the process that uses it, so there are no"
        " jobs to list here: pass the database URL of the application",
        id="jobs-memory-url",
    ),
    pytest.param(
        ["jobs", "sqlite+aiosqlite:///:memory:"],
        "an in-memory SQLite database is empty in every new process, so there"
        " are no jobs to list: pass the URL of the SQLite file the app uses",
        id="jobs-in-memory-sqlite",
    ),
    pytest.param(
        ["jobs", UNREACHABLE_POSTGRES],
        UNREACHABLE_MESSAGE,
        id="jobs-unreachable-database",
    ),
    pytest.param(
        ["db", "upgrade", "oracle://scott@127.0.0.1/orders"],
        "unsupported database 'oracle' in URL 'oracle://scott@127.0.0.1/orders':"
        " fantasma supports sqlite+aiosqlite, postgresql+asyncpg, mysql+asyncmy"
        " and mariadb+asyncmy",
        id="db-upgrade-unsupported-database",
    ),
    pytest.param(
        ["demo", "--database", "missing/demo.db"],
        "cannot create 'missing/demo.db': the folder 'missing' does not exist;"
        " create it or pass another --database path",
        id="demo-missing-folder",
    ),
    pytest.param(
        ["demo", "--seconds", "0.5"],
        "--seconds must be at least 1, got 0.5",
        id="demo-too-short",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_bad_input_prints_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = run_fantasma(*args, "--log-level", "warning", cwd=tmp_path)

    assert result.stderr == f"fantasma: error: {message}\n"
    assert result.returncode == 2


def test_run_unreachable_database(tmp_path: Path) -> None:
    result = run_fantasma(
        "run",
        APP,
        "--log-level",
        "warning",
        cwd=tmp_path,
        env={"SAMPLE_APP_DATABASE_URL": UNREACHABLE_POSTGRES},
    )

    assert result.stderr == f"fantasma: error: {UNREACHABLE_MESSAGE}\n"
    assert result.returncode == 2


# fantasma demo


def test_demo_summary_shows_retry(tmp_path: Path) -> None:
    result = run_fantasma("demo", "--seconds", "5", cwd=tmp_path)

    summary = result.stdout.partition("\nsummary after ")[2].splitlines()
    assert re.fullmatch(r"5\.\d s, \d+ runs:", summary[0])
    capture = [line for line in summary if line.startswith("  capture-payment ")]
    assert len(capture) == 1
    assert capture[0].split()[1:5] == ["2", "1", "1", "1"]
    assert result.returncode == 0
    assert (tmp_path / "fantasma-demo.db").is_file()


def test_demo_keeps_foreign_file(tmp_path: Path) -> None:
    precious = tmp_path / "precious.db"
    precious.write_text("not a demo database")

    result = run_fantasma("demo", "--database", "precious.db", cwd=tmp_path)

    assert result.stderr == (
        "fantasma: error: will not replace 'precious.db': it is not a database"
        " that fantasma demo created; pass another --database path\n"
    )
    assert result.returncode == 2
    assert precious.read_text() == "not a demo database"


# The installed entry point


def test_entry_point_prints_version(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("fantasma")

    result = subprocess.run(
        [str(script), "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )

    assert result.stdout == f"fantasma {fantasma.__version__}\n"


# Summary lines of stored errors


def _formatted(error: BaseException) -> str:
    try:
        raise error
    except BaseException as raised:
        return "".join(traceback.format_exception(raised))


def _chained() -> str:
    try:
        try:
            raise KeyError("order-7")
        except KeyError as cause:
            raise RuntimeError("lookup failed") from cause
    except RuntimeError as raised:
        return "".join(traceback.format_exception(raised))


ERROR_SUMMARIES = [
    pytest.param("lease expired", "lease expired", id="plain-message"),
    pytest.param("lease expired\nsecond line", "lease expired", id="plain-two-lines"),
    pytest.param(
        _formatted(ValueError("card declined")),
        "ValueError: card declined",
        id="traceback",
    ),
    pytest.param(
        _formatted(ValueError("card declined\nretry later")),
        "ValueError: card declined",
        id="traceback-two-line-message",
    ),
    pytest.param(_chained(), "RuntimeError: lookup failed", id="chained"),
    pytest.param(
        _formatted(ExceptionGroup("two failed", [ValueError("a"), KeyError("b")])),
        "ExceptionGroup: two failed (2 sub-exceptions)",
        id="exception-group",
    ),
    pytest.param("", "", id="empty"),
]


@pytest.mark.parametrize(("error", "summary"), ERROR_SUMMARIES)
def test_error_summary_line(error: str, summary: str) -> None:
    assert error_summary(error) == summary
