"""Job handlers, the context they receive, and the registry that finds them."""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    TypeVar,
    final,
    get_args,
    get_origin,
    is_typeddict,
)

from fantasma import serialization
from fantasma.errors import ConfigurationError, UnknownJobTypeError
from fantasma.jobs import JobId

if TYPE_CHECKING:
    from fantasma.clock import Clock
    from fantasma.scheduler import Fantasma

__all__ = [
    "HandlerFactory",
    "HandlerRegistry",
    "JobContext",
    "JobHandler",
    "Registration",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class JobContext:
    """Details of the run a handler is executing.

    Attributes:
        job_id: Id of the job.
        name: Name given when the job was scheduled.
        attempt: Number of this attempt, 1 for the first run.
        max_attempts: Attempts allowed before the job is dead.
        due_at: When the job fell due (UTC).
        fire_time: For an occurrence of a recurring job, its cron fire time
            (UTC); ``None`` for one-off jobs.
        recurring_id: Id of the recurring job this run belongs to, if any.
        node_id: Id of the node executing the run.
        clock: The scheduler's clock; use it instead of reading the system
            time so that tests with a fake clock see the simulated time.
        logger: Logger whose records carry the job id and attempt.
        app: The scheduler, for scheduling follow-up jobs from async handlers.
    """

    job_id: JobId
    name: str
    attempt: int
    max_attempts: int
    due_at: datetime
    fire_time: datetime | None
    recurring_id: str | None
    node_id: str
    clock: Clock
    logger: logging.LoggerAdapter[logging.Logger]
    app: Fantasma


class JobHandler(Generic[T]):
    """Base class of job handlers: one handler class per job data type.

    Subclass it with the data type as the type argument and implement
    :meth:`handle`, as a coroutine or a plain method. Plain methods run in a
    worker thread so they cannot block the event loop. Class attributes
    tune the runs:

    - ``type_name``: the name stored with each job to find this handler
      again. Defaults to the data type's ``module.QualifiedName``; set it to
      keep stored jobs valid when the class moves.
    - ``max_attempts``: attempts before a failing job becomes dead (3).
    - ``retry_backoff``: seconds before the first retry, doubled on each
      further attempt (1.0), capped at ``retry_backoff_max`` (300.0).
    - ``retry_jitter``: fraction by which each delay is randomly stretched
      or shrunk, to spread retries of many jobs (0.1).
    - ``timeout``: seconds a run may take before it is cancelled and
      counted as failed, or ``None`` for no limit.

    Example::

        class SendReportHandler(JobHandler[SendReport]):
            max_attempts = 5

            async def handle(self, data: SendReport, context: JobContext) -> None:
                await mailer.send(data.recipient)
    """

    type_name: ClassVar[str | None] = None
    max_attempts: ClassVar[int] = 3
    retry_backoff: ClassVar[float] = 1.0
    retry_backoff_max: ClassVar[float] = 300.0
    retry_jitter: ClassVar[float] = 0.1
    timeout: ClassVar[float | None] = None

    def handle(self, data: T, context: JobContext) -> Awaitable[None] | None:
        """Run the job. Raising an exception fails this attempt."""
        raise NotImplementedError


HandlerFactory = Callable[[type[JobHandler[Any]]], JobHandler[Any]]
"""Builds a handler instance for a run; the hook for dependency injection."""


@final
@dataclass(frozen=True, slots=True)
class Registration:
    """A registered handler class with the data type it handles."""

    type_name: str
    data_type: Any
    handler_class: type[JobHandler[Any]]
    is_async: bool


def _data_type_of(handler_class: type[JobHandler[Any]]) -> Any:
    data_type = _bound_data_type(handler_class, {})
    if data_type is not None and not isinstance(data_type, TypeVar):
        return data_type
    raise ConfigurationError(
        f"cannot register {handler_class.__qualname__}: it does not name its data "
        "type; subclass JobHandler[YourDataType]"
    )


def _bound_data_type(klass: type, bindings: dict[Any, Any]) -> Any:
    """Return the argument ``klass`` passes to ``JobHandler``, or ``None``.

    ``bindings`` maps the type variables of ``klass`` to the arguments its
    subclass gave, so ``class H(Base[Report])`` over ``class Base(JobHandler[T])``
    resolves to ``Report``.
    """
    # Read the class's own bases: __orig_bases__ is inherited as an attribute,
    # and a plain subclass has none of its own.
    for base in klass.__dict__.get("__orig_bases__", klass.__bases__):
        origin = get_origin(base) or base
        args = tuple(bindings.get(arg, arg) for arg in get_args(base))
        if origin is JobHandler:
            return args[0] if args else None
        if isinstance(origin, type) and issubclass(origin, JobHandler):
            parameters = getattr(origin, "__parameters__", ())
            found = _bound_data_type(origin, dict(zip(parameters, args, strict=False)))
            if found is not None:
                return found
    return None


def _default_type_name(data_type: Any) -> str:
    origin = get_origin(data_type) or data_type
    return f"{origin.__module__}.{origin.__qualname__}"


class HandlerRegistry:
    """Maps job data types and their stored names to handler classes."""

    def __init__(self) -> None:
        self._by_name: dict[str, Registration] = {}
        self._by_type: dict[Any, Registration] = {}

    def register(self, handler_class: type[JobHandler[Any]]) -> Registration:
        """Register a handler class; registering the same class again is a no-op.

        Raises:
            ConfigurationError: The class does not subclass ``JobHandler[T]``,
                its data type cannot be serialised, or another handler
                already handles the same type or name.
        """
        if not (
            isinstance(handler_class, type) and issubclass(handler_class, JobHandler)
        ):
            raise ConfigurationError(
                f"cannot register {handler_class!r}: it is not a JobHandler subclass"
            )
        data_type = _data_type_of(handler_class)
        if not serialization.is_supported_type(data_type):
            raise ConfigurationError(
                f"cannot register {handler_class.__qualname__}: its data type "
                f"{data_type!r} is not a dataclass, dict, TypedDict or pydantic model"
            )
        type_name = handler_class.type_name or _default_type_name(data_type)
        registration = Registration(
            type_name=type_name,
            data_type=data_type,
            handler_class=handler_class,
            is_async=inspect.iscoroutinefunction(handler_class.handle),
        )
        existing = self._by_name.get(type_name) or self._by_type.get(data_type)
        if existing is not None:
            if existing.handler_class is handler_class:
                return existing
            raise ConfigurationError(
                f"cannot register {handler_class.__qualname__} for {type_name!r}: "
                f"{existing.handler_class.__qualname__} already handles it; "
                "register one handler per data type"
            )
        self._by_name[type_name] = registration
        self._by_type[data_type] = registration
        logger.debug(
            "registered handler %s for %s", handler_class.__qualname__, type_name
        )
        return registration

    def register_module(self, module: types.ModuleType) -> list[Registration]:
        """Register every concrete handler class defined in a module or package.

        For a package, its submodules are imported and searched too.
        """
        registrations = []
        for candidate in _handler_classes(_walk_modules(module)):
            registrations.append(self.register(candidate))
        return registrations

    def by_name(self, type_name: str) -> Registration:
        """Return the registration stored jobs refer to by ``type_name``.

        Raises:
            UnknownJobTypeError: No handler is registered under that name.
        """
        try:
            return self._by_name[type_name]
        except KeyError:
            raise UnknownJobTypeError(
                f"no handler is registered for job type {type_name!r}; register one "
                "with app.register(YourHandler) before the scheduler starts",
                type_name=type_name,
            ) from None

    def for_data(self, data: object, data_type: Any = None) -> Registration:
        """Return the registration that handles ``data``.

        ``data_type`` picks the handler explicitly; it is needed for dict
        data when several dict or TypedDict handlers are registered.

        Raises:
            UnknownJobTypeError: No registered handler takes this data.
        """
        if data_type is not None:
            registration = self._by_type.get(data_type)
        else:
            registration = self._by_type.get(type(data)) or self._match_dict(data)
        if registration is None:
            wanted = data_type if data_type is not None else type(data)
            name = getattr(wanted, "__qualname__", repr(wanted))
            raise UnknownJobTypeError(
                f"no handler is registered for job data of type {name}; register a "
                f"JobHandler[{name}] subclass with app.register(...)",
                type_name=name,
            )
        return registration

    def _match_dict(self, data: object) -> Registration | None:
        if not isinstance(data, dict):
            return None
        candidates = [
            registration
            for data_type, registration in self._by_type.items()
            if data_type is dict
            or get_origin(data_type) is dict
            or is_typeddict(data_type)
        ]
        if len(candidates) > 1:
            names = ", ".join(sorted(reg.type_name for reg in candidates))
            raise UnknownJobTypeError(
                f"job data is a dict and several handlers take dicts ({names}); "
                "pass data_type=... to say which",
                type_name="dict",
            )
        return candidates[0] if candidates else None

    def registrations(self) -> list[Registration]:
        """Return every registration, in the order they were made."""
        return list(self._by_name.values())


def _walk_modules(module: types.ModuleType) -> list[types.ModuleType]:
    modules = [module]
    for info in pkgutil.walk_packages(
        getattr(module, "__path__", []), f"{module.__name__}."
    ):
        modules.append(importlib.import_module(info.name))
    return modules


def _handler_classes(modules: list[types.ModuleType]) -> list[type[JobHandler[Any]]]:
    found: list[type[JobHandler[Any]]] = []
    for module in modules:
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, JobHandler)
                and value is not JobHandler
                and value.__module__ == module.__name__
                and not inspect.isabstract(value)
                # A generic base such as JobHandler[T] subclassed later with a
                # concrete type handles nothing by itself.
                and not getattr(value, "__parameters__", ())
                and "handle" in _defined_methods(value)
            ):
                found.append(value)
    return found


def _defined_methods(handler_class: type) -> set[str]:
    names: set[str] = set()
    for klass in handler_class.__mro__:
        if klass is JobHandler:
            break
        names.update(vars(klass))
    return names
