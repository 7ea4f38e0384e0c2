"""The ``fantasma`` command: run an application, list jobs, migrate a database, demo.

Every command that fails because of its input (an unknown module, an invalid
URL, an unreachable database) prints one ``fantasma: error: ...`` line to stderr
and exits with status 2, the status argparse uses for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from fantasma.errors import ConfigurationError, FantasmaError
from fantasma.jobs import Job, JobStatus
from fantasma.scheduler import Fantasma

__all__ = ["error_summary", "format_table", "load_app", "main"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_USAGE = 2
# Exit status of a process ended by SIGINT, by shell convention (128 + 2).
EXIT_INTERRUPTED = 130

_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_DEFAULT_JOB_LIMIT = 100
_DEFAULT_DEMO_DATABASE = Path("fantasma-demo.db")
_MAX_ERROR_WIDTH = 100
_TRACEBACK_HEADER = "Traceback (most recent call last):"
_GROUP_TRACEBACK_HEADER = "+ Exception Group Traceback (most recent call last):"


# Formatting helpers, shared with the demo.


def error_summary(error: str) -> str:
    """Return the summary line of a stored job error.

    A failed handler's error is stored as a formatted traceback, whose first
    line is only a ``Traceback`` header. For those, the line naming the last
    exception's type and message is returned, also when the exception is
    chained to others or is an exception group. Other errors return their
    first line.
    """
    lines = [line for line in error.strip("\n").splitlines() if line.strip()]
    if not lines:
        return ""
    headers = [
        index
        for index, line in enumerate(lines)
        if line.strip() in (_TRACEBACK_HEADER, _GROUP_TRACEBACK_HEADER)
    ]
    if not headers:
        return lines[0].strip()

    # Chained exceptions are printed oldest first, so the last block belongs
    # to the exception that was raised.
    block = lines[headers[-1] :]
    if block[0].strip() == _TRACEBACK_HEADER:
        # Frames are indented. The first line that is not starts the
        # exception's message, which may continue over more lines.
        candidates = [line for line in block[1:] if not line[0].isspace()]
        return candidates[0].strip() if candidates else block[0].strip()
    # An exception group's own lines start with "  | "; its frames are
    # indented further, and its sub-exceptions sit deeper.
    group_lines = [
        line[4:]
        for line in block[1:]
        if line.startswith("  | ") and not line[4:5].isspace()
    ]
    return group_lines[0].strip() if group_lines else block[0].strip()


def format_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right_aligned: frozenset[int] = frozenset(),
) -> list[str]:
    """Lay out ``rows`` under ``header`` in columns two spaces apart.

    Columns whose index is in ``right_aligned`` are padded on the left.
    Lines carry no trailing spaces.
    """
    widths = [len(title) for title in header]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(widths[index])
            if index in right_aligned
            else cell.ljust(widths[index])
            for index, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


# Loading the application of `fantasma run`.


def load_app(spec: str) -> Fantasma:
    """Import the Fantasma application that ``spec`` (``module:attribute``) names.

    The attribute may be a :class:`~fantasma.Fantasma` or a callable taking
    no arguments that returns one. The current working directory is put on
    ``sys.path`` first, as ``python -m`` does, so that modules of the project
    the command runs in are found.

    Raises:
        ConfigurationError: The spec is malformed, the module or attribute
            does not exist, or the attribute is not a Fantasma.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"invalid application {spec!r}: expected 'module:attribute',"
            " for example 'myservice.jobs:app'"
        )
    if module_name.endswith(".py"):
        # Checked before importing: import_module("jobs.py") would run jobs.py
        # and only then fail to find a submodule named "py".
        raise ConfigurationError(
            f"invalid application {spec!r}: name the module, not the file,"
            f" for example '{module_name.removesuffix('.py').replace('/', '.')}"
            f":{attribute}'"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name or module_name.startswith(f"{exc.name}."):
            raise ConfigurationError(
                f"cannot import module {module_name!r}: no module named"
                f" {exc.name!r}; check the name, and run fantasma from the folder"
                " that contains the module or add that folder to PYTHONPATH"
            ) from None
        raise ConfigurationError(
            f"cannot import module {module_name!r}: it imports {exc.name!r},"
            " which is not installed; install it in this environment"
        ) from None

    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(
                f"module {module_name!r} has no attribute {attribute!r};"
                " check the name after the colon"
            ) from None
    if isinstance(target, Fantasma):
        return target
    if callable(target) and not isinstance(target, type):
        return _call_factory(spec, target)
    raise ConfigurationError(
        f"{spec!r} is {_describe(target)}, not a Fantasma: point to a Fantasma"
        " instance or to a function that takes no arguments and returns one"
    )


def _describe(value: object) -> str:
    if isinstance(value, type):
        return f"the class {value.__qualname__}"
    if inspect.ismodule(value):
        return f"the module {value.__name__}"
    return f"a value of type {type(value).__qualname__}"


def _call_factory(spec: str, factory: Callable[..., object]) -> Fantasma:
    try:
        inspect.signature(factory).bind()
    except TypeError:
        raise ConfigurationError(
            f"{spec!r} needs arguments: point to a Fantasma instance or to a"
            " function that takes no arguments and returns one"
        ) from None
    except ValueError:  # pragma: no cover - builtins without a signature
        pass
    app = factory()
    if not isinstance(app, Fantasma):
        raise ConfigurationError(
            f"{spec!r} returned {_describe(app)}, not a Fantasma:"
            " the function must return the application"
        )
    return app


# Commands. Each returns the process exit status.


def _run_command(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    return _run_until_signal(lambda stop: _serve(app, args.app, stop))


async def _serve(app: Fantasma, spec: str, stop: asyncio.Event) -> int:
    async with app:
        logger.info(
            "running %s as node %s; stop with SIGINT (Ctrl+C) or SIGTERM",
            spec,
            app.node_id,
        )
        await stop.wait()
        logger.info("stopping %s: waiting for running jobs to finish", spec)
    logger.info("stopped %s", spec)
    return EXIT_OK


def _jobs_command(args: argparse.Namespace) -> int:
    return asyncio.run(_list_jobs(args))


async def _list_jobs(args: argparse.Namespace) -> int:
    from fantasma.storage import storage_from_url

    url: str = args.url
    if url.startswith("memory:"):
        raise ConfigurationError(
            "memory:// storage lives inside the process that uses it, so there"
            " are no jobs to list here: pass the database URL of the application"
        )
    _check_sqlite_file_exists(url)
    options: dict[str, Any] = {"migrate": False, "table_prefix": args.table_prefix}
    if args.schema is not None:
        options["schema"] = args.schema
    storage = storage_from_url(url, **options)
    await storage.start()
    try:
        statuses = {JobStatus(status) for status in args.status} or None
        limit = args.limit if args.limit > 0 else None
        jobs = await storage.list_jobs(statuses=statuses, limit=limit)
    finally:
        await storage.close()

    if not jobs:
        print("no jobs found")
        return EXIT_OK
    for line in format_table(
        ("ID", "NAME", "STATUS", "DUE (UTC)", "ATTEMPTS", "LAST ERROR"),
        [_job_row(job) for job in jobs],
        right_aligned=frozenset({4}),
    ):
        print(line)
    if limit is not None and len(jobs) == limit:
        print(
            f"showing the first {limit} jobs by due time; pass --limit to see more",
            file=sys.stderr,
        )
    return EXIT_OK


def _job_row(job: Job) -> list[str]:
    error = "" if job.last_error is None else error_summary(job.last_error)
    return [
        job.id,
        job.name,
        job.status.value,
        job.due_at.strftime("%Y-%m-%d %H:%M:%S"),
        f"{job.attempts}/{job.max_attempts}",
        _shorten(error, _MAX_ERROR_WIDTH),
    ]


def _check_sqlite_file_exists(url: str) -> None:
    # Connecting would create an empty file in place of a mistyped path, and
    # the error would then blame missing tables instead of the path.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return  # the storage reports the malformed URL
    if not parsed.drivername.startswith("sqlite") or not parsed.database:
        return
    if parsed.database == ":memory:":
        raise ConfigurationError(
            "an in-memory SQLite database is empty in every new process, so there"
            " are no jobs to list: pass the URL of the SQLite file the app uses"
        )
    if not Path(parsed.database).is_file():
        raise ConfigurationError(
            f"SQLite database file {parsed.database!r} does not exist: check the"
            " path in the URL (three slashes before a relative path, four before"
            " an absolute one)"
        )


def _db_upgrade_command(args: argparse.Namespace) -> int:
    from fantasma.storage.sql import upgrade_database

    asyncio.run(
        upgrade_database(args.url, table_prefix=args.table_prefix, schema=args.schema)
    )
    print(f"fantasma's tables are up to date in {_safe_url(args.url)}")
    return EXIT_OK


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _demo_command(args: argparse.Namespace) -> int:
    from fantasma._demo import run_demo

    if args.seconds < 1:
        raise ConfigurationError(f"--seconds must be at least 1, got {args.seconds!r}")
    database: Path = args.database
    return _run_until_signal(
        lambda stop: run_demo(
            seconds=args.seconds, database=database, stream=sys.stdout, stop=stop
        )
    )


def _run_until_signal(
    main: Callable[[asyncio.Event], Coroutine[Any, Any, int]],
) -> int:
    """Run ``main`` with an event that SIGINT or SIGTERM sets, for a graceful stop.

    After the first signal the handlers are removed, so that a second one
    ends the process the default way when a graceful stop takes too long.
    """

    async def run() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = (signal.SIGINT, signal.SIGTERM)

        def request_stop(signum: int) -> None:
            logger.info("received %s", signal.Signals(signum).name)
            stop.set()
            for handled in signals:
                loop.remove_signal_handler(handled)

        for handled in signals:
            loop.add_signal_handler(handled, request_stop, handled)
        return await main(stop)

    return asyncio.run(run())


# Argument parsing.


def _build_parser() -> argparse.ArgumentParser:
    from fantasma import __version__
    from fantasma.storage.sql.schema import DEFAULT_TABLE_PREFIX

    parser = argparse.ArgumentParser(
        prog="fantasma",
        description="Run and inspect fantasma job schedulers.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    commands = parser.add_subparsers(title="commands", required=True)

    run = commands.add_parser(
        "run",
        help="run an application's scheduler until SIGINT or SIGTERM",
        description=(
            "Import a Fantasma application and run its workers until SIGINT"
            " (Ctrl+C) or SIGTERM, then stop gracefully: running jobs get the"
            " application's shutdown grace period to finish."
        ),
    )
    run.add_argument(
        "app",
        metavar="MODULE:ATTRIBUTE",
        help=(
            "the application, as 'module:attribute': a Fantasma instance, or a"
            " function that takes no arguments and returns one"
        ),
    )
    _add_log_level(run, default="info")
    run.set_defaults(handler=_run_command)

    jobs = commands.add_parser(
        "jobs",
        help="list stored jobs in due order",
        description=(
            "List the jobs stored in a database, earliest due time first, with"
            " their status, attempts and the summary line of their last error."
        ),
    )
    jobs.add_argument("url", metavar="URL", help="database URL of the application")
    jobs.add_argument(
        "--status",
        action="append",
        default=[],
        choices=[status.value for status in JobStatus],
        help="show only jobs with this status; repeat to allow several",
    )
    jobs.add_argument(
        "--limit",
        type=int,
        default=_DEFAULT_JOB_LIMIT,
        metavar="N",
        help=f"show at most N jobs, 0 for all (default {_DEFAULT_JOB_LIMIT})",
    )
    _add_table_options(jobs, DEFAULT_TABLE_PREFIX)
    _add_log_level(jobs, default="warning")
    jobs.set_defaults(handler=_jobs_command)

    database = commands.add_parser(
        "db",
        help="manage fantasma's database tables",
        description="Manage fantasma's database tables.",
    )
    database_commands = database.add_subparsers(title="commands", required=True)
    upgrade = database_commands.add_parser(
        "upgrade",
        help="create fantasma's tables or migrate them to this version",
        description=(
            "Create fantasma's tables in the database, or migrate them to this"
            " version of fantasma. Running it again does nothing."
        ),
    )
    upgrade.add_argument("url", metavar="URL", help="database URL")
    _add_table_options(upgrade, DEFAULT_TABLE_PREFIX)
    _add_log_level(upgrade, default="warning")
    upgrade.set_defaults(handler=_db_upgrade_command)

    demo = commands.add_parser(
        "demo",
        help="run the example application for a few seconds",
        description=(
            "Run the example order-processing application on a SQLite file,"
            " print every job run with its due and start time, and stop with a"
            " summary. The file is deleted and created again on each run."
        ),
    )
    demo.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        metavar="N",
        help="how long to run, in seconds (default 20)",
    )
    demo.add_argument(
        "--database",
        type=Path,
        default=_DEFAULT_DEMO_DATABASE,
        metavar="PATH",
        help=f"SQLite file to create (default {str(_DEFAULT_DEMO_DATABASE)!r})",
    )
    # fantasma's own log lines are hidden by default, because the demo prints
    # every run itself and a logged traceback of the planned failure would
    # look like a crash.
    _add_log_level(demo, default="critical")
    demo.set_defaults(handler=_demo_command)
    return parser


def _add_table_options(parser: argparse.ArgumentParser, default_prefix: str) -> None:
    parser.add_argument(
        "--table-prefix",
        default=default_prefix,
        metavar="P",
        help=f"prefix of fantasma's table names (default {default_prefix!r})",
    )
    parser.add_argument(
        "--schema",
        metavar="S",
        help="PostgreSQL schema or MariaDB/MySQL database of the tables",
    )


def _add_log_level(parser: argparse.ArgumentParser, *, default: str) -> None:
    parser.add_argument(
        "--log-level",
        choices=_LOG_LEVELS,
        default=default,
        help=f"lowest level of log lines printed to stderr (default {default})",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fantasma`` command with ``argv`` and return the exit status."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format=_LOG_FORMAT, stream=sys.stderr
    )
    # Alembic reports its migration context at INFO on every start, which is
    # noise next to the scheduler's own start and stop lines.
    logging.getLogger("alembic").setLevel(
        max(logging.WARNING, logging.getLogger().level)
    )
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except FantasmaError as exc:
        # One line, so that the message stays readable in logs and scripts.
        message = " ".join(str(exc).split("\n"))
        print(f"fantasma: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fantasma: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
