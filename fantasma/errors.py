"""Exceptions raised by fantasma.

Every exception derives from :class:`FantasmaError`. Two branches matter to a
caller: :class:`ConfigurationError` means the call itself was wrong and will
fail the same way again, while the runtime branch (:class:`StorageError`,
:class:`JobNotFoundError`, :class:`LeaseLostError`) reports trouble that may
pass on a retry or with other state::

    FantasmaError
    ├── ConfigurationError
    │   ├── InvalidCronExpression      (also a ValueError)
    │   ├── InvalidTriggerError        (also a ValueError)
    │   ├── UnknownJobTypeError        (also a LookupError)
    │   └── SerializationError         (also a TypeError)
    ├── JobNotFoundError               (also a LookupError)
    ├── LeaseLostError
    ├── JobTimeoutError
    └── StorageError
        ├── StorageUnavailableError
        └── SchemaError
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "FantasmaError",
    "InvalidCronExpression",
    "InvalidTriggerError",
    "JobNotFoundError",
    "JobTimeoutError",
    "LeaseLostError",
    "SchemaError",
    "SerializationError",
    "StorageError",
    "StorageUnavailableError",
    "UnknownJobTypeError",
]


class FantasmaError(Exception):
    """Base class of every exception fantasma raises."""


class ConfigurationError(FantasmaError):
    """The caller passed a value that can never work; fix the call."""


class InvalidCronExpression(ConfigurationError, ValueError):
    """A cron expression is malformed or can never fire.

    Attributes:
        expression: The expression as given.
        field: The name of the offending field (``"second"``, ``"minute"``,
            ...), or ``None`` when the problem is the whole expression.
    """

    def __init__(self, message: str, *, expression: str, field: str | None) -> None:
        super().__init__(message)
        self.expression = expression
        self.field = field


class InvalidTriggerError(ConfigurationError, ValueError):
    """A trigger was built from values that cannot describe a fire time."""


class UnknownJobTypeError(ConfigurationError, LookupError):
    """No handler is registered for a job's data type.

    Attributes:
        type_name: The registered name that was looked up.
    """

    def __init__(self, message: str, *, type_name: str) -> None:
        super().__init__(message)
        self.type_name = type_name


class SerializationError(ConfigurationError, TypeError):
    """Job data cannot be encoded to JSON or decoded back to its type."""


class JobNotFoundError(FantasmaError, LookupError):
    """No job with the given id exists in storage.

    Attributes:
        job_id: The id that was looked up.
    """

    def __init__(self, message: str, *, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class LeaseLostError(FantasmaError):
    """A node acted on a lease (job or leadership) that it no longer holds."""


class JobTimeoutError(FantasmaError):
    """A handler ran past its job's timeout and was cancelled."""


class StorageError(FantasmaError):
    """The storage backend failed an operation.

    The original driver exception is chained as ``__cause__``.
    """


class StorageUnavailableError(StorageError):
    """The database cannot be reached, or the connection dropped mid-operation.

    The operation most likely did not take effect. A connection lost during
    the commit itself leaves that unknown, so check the state (for example
    with ``get_job``) before repeating a write.
    """


class SchemaError(StorageError):
    """The database schema is missing or older than this version of fantasma."""
