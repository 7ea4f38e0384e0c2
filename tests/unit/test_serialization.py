"""Tests for job data encoding: what round-trips through a run, and what is rejected."""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, TypedDict

import pytest
from pydantic import BaseModel

from fantasma import (
    JobContext,
    JobHandler,
    SerializationError,
    Trigger,
    UnknownJobTypeError,
)
from tests.helpers import Simulation


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass
class Address:
    street: str
    city: str


@dataclass
class Customer:
    name: str
    address: Address
    previous: list[Address] = field(default_factory=list)


@dataclass
class Order:
    """Job data with every field kind the codec rebuilds from JSON."""

    order_id: uuid.UUID
    placed_at: datetime
    delivery_day: date
    delivery_time: time
    window: timedelta
    total: Decimal
    colour: Colour
    priority: Priority
    customer: Customer
    note: str | None
    billing_address: Address | None
    coupon: Decimal | None
    tags: list[str]
    quantities: dict[str, int]
    dimensions: tuple[float, float, float]
    history: tuple[datetime, ...]
    ratio: float
    paid: bool


@dataclass
class Rectangle:
    width: int
    height: int
    area: int = field(init=False)

    def __post_init__(self) -> None:
        self.area = self.width * self.height


@dataclass
class Blob:
    content: bytes


@dataclass
class Labels:
    labels: set[str]


class MailTask(TypedDict):
    recipient: str
    sent_at: datetime


class Shipment(BaseModel):
    shipment_id: uuid.UUID
    weight: Decimal
    leaves_at: datetime
    stops: list[str]


def _order() -> Order:
    return Order(
        order_id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        placed_at=datetime(2030, 1, 1, 12, 30, 15, 123456, tzinfo=UTC),
        delivery_day=date(2030, 1, 3),
        delivery_time=time(14, 45),
        window=timedelta(hours=2, seconds=30),
        total=Decimal("19.90"),
        colour=Colour.GREEN,
        priority=Priority.HIGH,
        customer=Customer(
            name="Ana",
            address=Address("Main St 1", "Lisbon"),
            previous=[Address("Old Rd 2", "Porto")],
        ),
        note=None,
        billing_address=Address("Side St 3", "Faro"),
        coupon=Decimal("5.00"),
        tags=["fragile", "gift"],
        quantities={"apple": 3, "pear": 0},
        dimensions=(1.5, 2.0, 0.25),
        history=(datetime(2029, 12, 31, tzinfo=UTC),),
        ratio=2.0,
        paid=True,
    )


async def _received(handler_data: type[Any], data: object, **options: Any) -> object:
    """Schedule ``data`` for a handler of ``handler_data`` and return what it got."""
    received: list[object] = []

    class RecordingHandler(JobHandler[handler_data]):  # type: ignore[valid-type]
        async def handle(self, data: object, context: JobContext) -> None:
            received.append(data)

    async with Simulation(RecordingHandler) as sim:
        await sim.app.schedule("job", data, Trigger.now(), **options)
        await sim.advance()

    (value,) = received
    return value


# Round trips through a run


@pytest.mark.asyncio
async def test_dataclass_round_trip() -> None:
    assert await _received(Order, _order()) == _order()


@pytest.mark.asyncio
async def test_nested_dataclass_rebuilt() -> None:
    order = await _received(Order, _order())

    assert isinstance(order, Order)
    assert type(order.customer.address) is Address
    assert type(order.customer.previous[0]) is Address
    assert type(order.billing_address) is Address


@pytest.mark.asyncio
async def test_scalar_types_rebuilt() -> None:
    order = await _received(Order, _order())

    assert isinstance(order, Order)
    assert type(order.order_id) is uuid.UUID
    assert type(order.placed_at) is datetime
    assert type(order.delivery_day) is date
    assert type(order.total) is Decimal
    assert type(order.colour) is Colour
    assert type(order.priority) is Priority
    assert type(order.coupon) is Decimal
    assert type(order.dimensions) is tuple
    assert type(order.history[0]) is datetime


@pytest.mark.asyncio
async def test_aware_datetime_keeps_offset() -> None:
    order = await _received(Order, _order())

    assert isinstance(order, Order)
    assert order.placed_at.utcoffset() == timedelta(0)


@pytest.mark.asyncio
async def test_decimal_keeps_exponent() -> None:
    order = await _received(Order, _order())

    assert isinstance(order, Order)
    assert str(order.total) == "19.90"


@pytest.mark.asyncio
async def test_init_false_field_round_trip() -> None:
    assert await _received(Rectangle, Rectangle(2, 3)) == Rectangle(2, 3)


@pytest.mark.asyncio
async def test_plain_dict_round_trip() -> None:
    data = {"user": "ana", "count": 3, "nested": {"tags": ["a", "b"]}}

    assert await _received(dict[str, Any], data) == data


@pytest.mark.asyncio
async def test_typed_dict_round_trip() -> None:
    data = MailTask(
        recipient="ana@example.com", sent_at=datetime(2030, 1, 1, tzinfo=UTC)
    )

    assert await _received(MailTask, data) == data


@pytest.mark.asyncio
async def test_typed_dict_rebuilds_fields() -> None:
    data = MailTask(
        recipient="ana@example.com", sent_at=datetime(2030, 1, 1, tzinfo=UTC)
    )

    received = await _received(MailTask, data)

    assert isinstance(received, dict)
    assert type(received["sent_at"]) is datetime


@pytest.mark.asyncio
async def test_pydantic_model_round_trip() -> None:
    shipment = Shipment(
        shipment_id=uuid.UUID(int=7),
        weight=Decimal("1.250"),
        leaves_at=datetime(2030, 1, 2, 6, tzinfo=UTC),
        stops=["Lisbon", "Madrid"],
    )

    assert await _received(Shipment, shipment) == shipment


# Data that cannot be stored


async def _rejection(data: object) -> tuple[SerializationError, list[object]]:
    """Schedule ``data`` and return the error and the jobs stored afterwards."""

    class BlobHandler(JobHandler[Blob]):
        async def handle(self, data: Blob, context: JobContext) -> None:
            pass

    class LabelsHandler(JobHandler[Labels]):
        async def handle(self, data: Labels, context: JobContext) -> None:
            pass

    class DictHandler(JobHandler[dict[str, Any]]):
        async def handle(self, data: dict[str, Any], context: JobContext) -> None:
            pass

    async with Simulation(BlobHandler, LabelsHandler, DictHandler) as sim:
        with pytest.raises(SerializationError) as caught:
            await sim.app.schedule("job", data, Trigger.now())
        stored: list[object] = list(await sim.app.list_jobs())
    return caught.value, stored


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            object(),
            "cannot serialise job data of type object: use a dataclass instance, "
            "a dict (or TypedDict) or a pydantic model",
            id="object",
        ),
        pytest.param(
            {"a", "b"},
            "cannot serialise job data of type set: use a dataclass instance, "
            "a dict (or TypedDict) or a pydantic model",
            id="set",
        ),
        pytest.param(
            Blob(b"\x00"),
            f"cannot serialise job data of type {__name__}.Blob: bytes is not "
            "JSON serialisable; use str, int, float, bool, None, list, dict, "
            "a dataclass, an enum, datetime, date, time, timedelta, UUID or "
            "Decimal",
            id="bytes-field",
        ),
        pytest.param(
            Labels({"a"}),
            f"cannot serialise job data of type {__name__}.Labels: set is not "
            "JSON serialisable; use str, int, float, bool, None, list, dict, "
            "a dataclass, an enum, datetime, date, time, timedelta, UUID or "
            "Decimal",
            id="set-field",
        ),
        pytest.param(
            {1: "one"},
            "cannot serialise job data of type dict: dict keys must be str, got int",
            id="int-keys",
        ),
        pytest.param(
            {"nested": {2: "two"}},
            "cannot serialise job data of type dict: dict keys must be str, got int",
            id="nested-int-keys",
        ),
    ],
)
async def test_unserialisable_data_rejected(data: object, message: str) -> None:
    error, _ = await _rejection(data)

    assert str(error) == message


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(object(), id="object"),
        pytest.param({"a"}, id="set"),
        pytest.param(Blob(b"\x00"), id="bytes-field"),
        pytest.param({1: "one"}, id="int-keys"),
    ],
)
async def test_unserialisable_data_not_stored(data: object) -> None:
    _, stored = await _rejection(data)

    assert stored == []


@pytest.mark.asyncio
async def test_rejection_raises_type_error() -> None:
    error, _ = await _rejection(object())

    assert isinstance(error, TypeError)


@pytest.mark.asyncio
async def test_ambiguous_dict_needs_data_type() -> None:
    class DictHandler(JobHandler[dict[str, Any]]):
        async def handle(self, data: dict[str, Any], context: JobContext) -> None:
            pass

    class MailHandler(JobHandler[MailTask]):
        async def handle(self, data: MailTask, context: JobContext) -> None:
            pass

    message = (
        f"job data is a dict and several handlers take dicts (builtins.dict, "
        f"{__name__}.MailTask); pass data_type=... to say which"
    )
    async with Simulation(DictHandler, MailHandler) as sim:
        with pytest.raises(UnknownJobTypeError, match=rf"^{re.escape(message)}$"):
            await sim.app.schedule("job", {"recipient": "ana"}, Trigger.now())


@pytest.mark.asyncio
async def test_data_type_picks_dict_handler() -> None:
    received: list[str] = []

    class DictHandler(JobHandler[dict[str, Any]]):
        async def handle(self, data: dict[str, Any], context: JobContext) -> None:
            received.append("dict")

    class MailHandler(JobHandler[MailTask]):
        async def handle(self, data: MailTask, context: JobContext) -> None:
            received.append("mail")

    data = MailTask(recipient="ana", sent_at=datetime(2030, 1, 1, tzinfo=UTC))
    async with Simulation(DictHandler, MailHandler) as sim:
        await sim.app.schedule("job", data, Trigger.now(), data_type=MailTask)
        await sim.advance()

    assert received == ["mail"]
