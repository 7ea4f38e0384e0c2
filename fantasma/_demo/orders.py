"""The demo's input: shop orders read from the CSV file shipped with the package."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from importlib import resources

__all__ = ["Order", "load_orders"]

_ORDERS_FILE = "orders.csv"


@dataclass(frozen=True, slots=True)
class Order:
    """One row of ``orders.csv``; ``ordered_at`` is an aware UTC datetime."""

    order_id: str
    customer: str
    region: str
    amount: Decimal
    paid: bool
    ordered_at: datetime


def load_orders() -> list[Order]:
    """Read every order from the packaged CSV file, in the file's (time) order."""
    text = resources.files("fantasma._demo").joinpath(_ORDERS_FILE).read_text("utf-8")
    return [
        Order(
            order_id=row["order_id"],
            customer=row["customer"],
            region=row["region"],
            amount=Decimal(row["amount_eur"]),
            paid=row["payment_status"] == "paid",
            ordered_at=datetime.fromisoformat(row["ordered_at"]),
        )
        for row in csv.DictReader(io.StringIO(text))
    ]
