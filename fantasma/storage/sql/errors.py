"""Translation of driver and SQLAlchemy exceptions into fantasma's storage errors."""

from __future__ import annotations

import logging
import socket
import sqlite3
from collections.abc import Iterator

from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError

from fantasma.errors import SchemaError, StorageError, StorageUnavailableError
from fantasma.storage.sql.engine import Backend, DatabaseTarget

__all__ = ["DRIVER_ERRORS", "translate_error"]

logger = logging.getLogger(__name__)


def _driver_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [SQLAlchemyError, OSError, sqlite3.Error]
    try:
        import asyncpg
    except ImportError:
        pass
    else:
        types += [asyncpg.PostgresError, asyncpg.InterfaceError]
    try:
        import asyncmy.errors
    except ImportError:
        pass
    else:
        types.append(asyncmy.errors.Error)
    return tuple(types)


DRIVER_ERRORS: tuple[type[BaseException], ...] = _driver_error_types()
"""Exceptions that :func:`translate_error` turns into :class:`StorageError`."""

# MariaDB/MySQL error codes that mean the connection could not be made or was
# lost. Client side: 2002 and 2003 cannot connect, 2005 unknown host, 2006
# server has gone away, 2013 and 2055 lost connection. Server side: 1053
# server shutdown, 1927 connection killed, 4031 disconnected after inactivity.
_MYSQL_CONNECTION_CODES = frozenset(
    {2002, 2003, 2005, 2006, 2013, 2055, 1053, 1927, 4031}
)
_MYSQL_NO_SUCH_TABLE = 1146
# SQLSTATE class 08 is "connection exception". Codes 57P01 to 57P03 (admin
# shutdown, crash shutdown, cannot connect now) also end the session.
_POSTGRES_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")
_POSTGRES_UNDEFINED_TABLE = "42P01"


def translate_error(
    exc: BaseException, *, operation: str, target: DatabaseTarget
) -> StorageError:
    """Return the fantasma exception to raise, ``from exc``, for a driver failure.

    Lost or refused connections give :class:`StorageUnavailableError`,
    missing tables give :class:`SchemaError`, and anything else gives
    :class:`StorageError`. Messages name the database but never its password,
    and never include statement parameters, which can hold job payloads.
    """
    chain = list(_exception_chain(exc))
    detail = _driver_message(chain)
    reason = _connection_failure(exc, chain)
    if reason is not None:
        return StorageUnavailableError(
            f"{operation} failed: cannot reach {target.description}: {reason};"
            f" check that the server is running and the URL {target.safe_url!r}"
            " is right, then retry"
        )
    if target.backend is Backend.SQLITE and _sqlite_locked(chain):
        return StorageUnavailableError(
            f"{operation} failed: {target.description} stayed locked by another"
            " connection for longer than the busy timeout; check for a process"
            " holding a long write transaction on the file, then retry"
        )
    if _missing_table(chain):
        return SchemaError(
            f"{operation} failed: fantasma's tables are missing in"
            f" {target.description} ({detail}); create them with"
            f" `fantasma db upgrade {target.safe_url}`, or start the storage with"
            " migrate=True"
        )
    return StorageError(f"{operation} failed on {target.description}: {detail}")


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """Yield ``exc`` and every exception behind it, outermost first."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, StatementError) and isinstance(
            current.orig, BaseException
        ):
            pending.append(current.orig)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)


def _driver_message(chain: list[BaseException]) -> str:
    """Return the innermost driver exception's message, without the SQL statement."""
    for candidate in reversed(chain):
        if not isinstance(candidate, SQLAlchemyError):
            text = str(candidate).strip() or type(candidate).__name__
            return f"{type(candidate).__name__}: {text}"
    outer = chain[0]
    if isinstance(outer, SQLAlchemyError):
        # SQLAlchemy's own messages carry no parameters unless a statement
        # is attached, and StatementError always has a driver cause.
        return f"{type(outer).__name__}: {outer}"
    return repr(outer)


def _connection_failure(exc: BaseException, chain: list[BaseException]) -> str | None:
    """Return why the connection failed, or ``None`` for other errors."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return "the connection was lost"
    for candidate in chain:
        if isinstance(candidate, ConnectionRefusedError):
            return "connection refused"
        if isinstance(candidate, socket.gaierror):
            return f"the host name could not be resolved ({candidate})"
        if isinstance(candidate, TimeoutError):
            return "the connection timed out"
        if isinstance(candidate, OSError):
            return f"the connection failed ({candidate})"
        reason = _postgres_connection_failure(candidate)
        if reason is None:
            reason = _mysql_connection_failure(candidate)
        if reason is not None:
            return reason
        if isinstance(candidate, sqlite3.OperationalError) and (
            "unable to open database file" in str(candidate)
        ):
            return (
                "the file cannot be opened (check that its directory exists and"
                " is writable)"
            )
    return None


def _postgres_connection_failure(candidate: BaseException) -> str | None:
    module = type(candidate).__module__
    if not module.startswith(("asyncpg", "sqlalchemy.dialects.postgresql")):
        return None
    name = type(candidate).__name__
    if name == "ConnectionDoesNotExistError":
        return "the connection was lost"
    if name == "InterfaceError" and "closed" in str(candidate):
        return "the connection was lost"
    state = getattr(candidate, "sqlstate", None)
    if isinstance(state, str) and state.startswith(_POSTGRES_CONNECTION_STATES):
        return f"the server ended the connection ({candidate})"
    return None


def _mysql_connection_failure(candidate: BaseException) -> str | None:
    if not type(candidate).__module__.startswith("asyncmy"):
        return None
    code = candidate.args[0] if candidate.args else None
    if code in _MYSQL_CONNECTION_CODES:
        if code == 2003:
            return "connection refused"
        return f"the connection was lost ({candidate})"
    return None


def _missing_table(chain: list[BaseException]) -> bool:
    for candidate in chain:
        if getattr(candidate, "sqlstate", None) == _POSTGRES_UNDEFINED_TABLE:
            return True
        module = type(candidate).__module__
        if module.startswith("asyncmy") and candidate.args[:1] == (
            _MYSQL_NO_SUCH_TABLE,
        ):
            return True
        if isinstance(candidate, sqlite3.OperationalError) and str(
            candidate
        ).startswith("no such table"):
            return True
    return False


def _sqlite_locked(chain: list[BaseException]) -> bool:
    return any(
        isinstance(candidate, sqlite3.OperationalError)
        and "database is locked" in str(candidate)
        for candidate in chain
    )
