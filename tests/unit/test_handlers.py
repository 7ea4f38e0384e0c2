"""Tests for job handlers: registration, module discovery, the factory hook, lookup."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import pytest

import tests.sample_handlers
import tests.sample_handlers.billing
from fantasma import (
    ConfigurationError,
    JobContext,
    JobHandler,
    JobStatus,
    MemoryStorage,
    RunOutcome,
    Trigger,
    UnknownJobTypeError,
)
from fantasma.handlers import Registration
from tests.helpers import Simulation
from tests.sample_handlers import AuditHandler
from tests.sample_handlers.billing import InvoiceHandler, RefundHandler
from tests.sample_handlers.mail.digest import DigestHandler

T = TypeVar("T")


@dataclass
class Ping:
    number: int


@dataclass
class Pong:
    number: int


@dataclass
class Unhandled:
    number: int


class PingHandler(JobHandler[Ping]):
    async def handle(self, data: Ping, context: JobContext) -> None:
        pass


class OtherPingHandler(JobHandler[Ping]):
    async def handle(self, data: Ping, context: JobContext) -> None:
        pass


class NamedPongHandler(JobHandler[Pong]):
    type_name = "games.pong"

    async def handle(self, data: Pong, context: JobContext) -> None:
        pass


class ClashingNameHandler(JobHandler[Unhandled]):
    type_name = "games.pong"

    async def handle(self, data: Unhandled, context: JobContext) -> None:
        pass


class NotAHandler:
    async def handle(self, data: Ping, context: JobContext) -> None:
        pass


class UntypedHandler(JobHandler):  # type: ignore[type-arg]  # the case under test
    async def handle(self, data: Ping, context: JobContext) -> None:
        pass


class IntHandler(JobHandler[int]):
    async def handle(self, data: int, context: JobContext) -> None:
        pass


class GenericBase(JobHandler[T]):
    async def handle(self, data: T, context: JobContext) -> None:
        pass


class PingViaBaseHandler(GenericBase[Ping]):
    pass


class PingViaBaseSubclass(PingViaBaseHandler):
    pass


def _ping_name() -> str:
    return f"{Ping.__module__}.Ping"


# Handlers run


@pytest.mark.asyncio
async def test_async_handler_receives_data() -> None:
    received: list[Ping] = []

    class RecordingHandler(JobHandler[Ping]):
        async def handle(self, data: Ping, context: JobContext) -> None:
            received.append(data)

    async with Simulation(RecordingHandler) as sim:
        await sim.app.schedule("ping", Ping(7), Trigger.now())
        await sim.advance()

    assert received == [Ping(7)]


@pytest.mark.asyncio
async def test_sync_handler_receives_data() -> None:
    received: list[Ping] = []

    class RecordingHandler(JobHandler[Ping]):
        def handle(self, data: Ping, context: JobContext) -> None:
            received.append(data)

    async with Simulation(RecordingHandler) as sim:
        await sim.app.schedule("ping", Ping(7), Trigger.now())
        await sim.advance()

    assert received == [Ping(7)]


# Registration


def test_register_returns_registration() -> None:
    registration = Simulation().app.register(PingHandler)

    assert registration == Registration(
        type_name=_ping_name(),
        data_type=Ping,
        handler_class=PingHandler,
        is_async=True,
    )


def test_register_same_class_twice() -> None:
    app = Simulation().app
    first = app.register(PingHandler)

    second = app.register(PingHandler)

    assert second is first


def test_second_handler_for_type_rejected() -> None:
    app = Simulation().app
    app.register(PingHandler)

    message = (
        f"cannot register OtherPingHandler for {_ping_name()!r}: PingHandler "
        "already handles it; register one handler per data type"
    )
    with pytest.raises(ConfigurationError, match=rf"^{re.escape(message)}$"):
        app.register(OtherPingHandler)


def test_second_handler_for_name_rejected() -> None:
    app = Simulation().app
    app.register(NamedPongHandler)

    message = (
        "cannot register ClashingNameHandler for 'games.pong': NamedPongHandler "
        "already handles it; register one handler per data type"
    )
    with pytest.raises(ConfigurationError, match=rf"^{re.escape(message)}$"):
        app.register(ClashingNameHandler)


def test_non_handler_class_rejected() -> None:
    app = Simulation().app

    message = f"cannot register {NotAHandler!r}: it is not a JobHandler subclass"
    with pytest.raises(ConfigurationError, match=rf"^{re.escape(message)}$"):
        app.register(NotAHandler)  # type: ignore[arg-type]  # the case under test


def test_handler_without_type_argument_rejected() -> None:
    app = Simulation().app

    message = (
        "cannot register UntypedHandler: it does not name its data type; "
        "subclass JobHandler[YourDataType]"
    )
    with pytest.raises(ConfigurationError, match=rf"^{re.escape(message)}$"):
        app.register(UntypedHandler)


def test_generic_base_alone_rejected() -> None:
    app = Simulation().app

    message = (
        "cannot register GenericBase: it does not name its data type; "
        "subclass JobHandler[YourDataType]"
    )
    with pytest.raises(ConfigurationError, match=rf"^{re.escape(message)}$"):
        app.register(GenericBase)


def test_unsupported_data_type_rejected() -> None:
    app = Simulation().app

    message = (
        "cannot register IntHandler: its data type <class 'int'> is not a "
        "dataclass, dict, TypedDict or pydantic model"
    )
    with pytest.raises(ConfigurationError, match=rf"^{re.escape(message)}$"):
        app.register(IntHandler)


def test_type_argument_through_generic_base() -> None:
    registration = Simulation().app.register(PingViaBaseHandler)

    assert registration.data_type is Ping


def test_type_argument_through_two_levels() -> None:
    registration = Simulation().app.register(PingViaBaseSubclass)

    assert registration.data_type is Ping


def test_custom_type_name_registered() -> None:
    registration = Simulation().app.register(NamedPongHandler)

    assert registration.type_name == "games.pong"


@pytest.mark.asyncio
async def test_custom_type_name_stored() -> None:
    async with Simulation(NamedPongHandler) as sim:
        job_id = await sim.app.schedule("pong", Pong(1), Trigger.now())
        job = await sim.app.get_job(job_id)

    assert job.type_name == "games.pong"


# Module and package discovery


def test_register_module_finds_handlers() -> None:
    app = Simulation().app

    registrations = app.register_handlers_in_module(tests.sample_handlers.billing)

    assert [r.handler_class for r in registrations] == [InvoiceHandler, RefundHandler]


def test_register_module_detects_sync_handle() -> None:
    app = Simulation().app

    registrations = app.register_handlers_in_module(tests.sample_handlers.billing)

    assert [r.is_async for r in registrations] == [False, True]


def test_register_package_finds_submodules() -> None:
    app = Simulation().app

    registrations = app.register_handlers_in_module(tests.sample_handlers)

    assert {r.handler_class for r in registrations} == {
        AuditHandler,
        InvoiceHandler,
        RefundHandler,
        DigestHandler,
    }


def test_register_package_twice_is_harmless() -> None:
    app = Simulation().app
    first = app.register_handlers_in_module(tests.sample_handlers)

    second = app.register_handlers_in_module(tests.sample_handlers)

    assert second == first


# Handler factory


@pytest.mark.asyncio
async def test_factory_builds_handler_each_run() -> None:
    built: list[type[JobHandler[Any]]] = []
    greetings: list[str] = []

    class GreetingHandler(JobHandler[Ping]):
        def __init__(self, greeting: str) -> None:
            self.greeting = greeting

        async def handle(self, data: Ping, context: JobContext) -> None:
            greetings.append(f"{self.greeting} {data.number}")

    def factory(handler_class: type[JobHandler[Any]]) -> JobHandler[Any]:
        built.append(handler_class)
        return GreetingHandler("hello")

    async with Simulation(GreetingHandler, handler_factory=factory) as sim:
        await sim.app.schedule("ping", Ping(1), Trigger.now())
        await sim.app.schedule("ping", Ping(2), Trigger.after(seconds=1))
        await sim.advance(timedelta(seconds=1))

    assert built == [GreetingHandler, GreetingHandler]
    assert greetings == ["hello 1", "hello 2"]


@pytest.mark.asyncio
async def test_default_factory_new_instance_per_run() -> None:
    instances: list[JobHandler[Ping]] = []

    class CountingHandler(JobHandler[Ping]):
        async def handle(self, data: Ping, context: JobContext) -> None:
            instances.append(self)

    async with Simulation(CountingHandler) as sim:
        await sim.app.schedule("ping", Ping(1), Trigger.now())
        await sim.app.schedule("ping", Ping(2), Trigger.now())
        await sim.advance()

    assert len(instances) == 2
    assert instances[0] is not instances[1]


# Lookup of data and stored jobs


@pytest.mark.asyncio
async def test_data_without_handler_rejected() -> None:
    async with Simulation(PingHandler) as sim:
        message = (
            "no handler is registered for job data of type Unhandled; register a "
            "JobHandler[Unhandled] subclass with app.register(...)"
        )
        with pytest.raises(UnknownJobTypeError, match=rf"^{re.escape(message)}$"):
            await sim.app.schedule("x", Unhandled(1), Trigger.now())

        stored = await sim.app.list_jobs()

    assert stored == []


@pytest.mark.asyncio
async def test_unknown_stored_type_ends_dead() -> None:
    """A stored job whose handler is gone uses up its attempts and stays visible."""
    storage = MemoryStorage()
    async with Simulation(PingHandler, storage=storage) as first:
        job_id = await first.app.schedule("ping", Ping(1), Trigger.after(seconds=5))

    async with Simulation(storage=storage, clock=first.clock) as second:
        await second.advance(timedelta(minutes=5))
        job = await second.app.get_job(job_id)

    assert second.outcomes() == [RunOutcome.FAILED, RunOutcome.FAILED, RunOutcome.DEAD]
    assert job.status is JobStatus.DEAD
    assert job.attempts == 3
    assert job.last_error is not None
    assert job.last_error.endswith(
        "UnknownJobTypeError: no handler is registered for job type "
        f"{_ping_name()!r}; register one with app.register(YourHandler) before "
        "the scheduler starts"
    )
