"""The demo's jobs: a recurring order summary, payment reminders and a flaky capture."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from fantasma import Fantasma, JobContext, JobHandler
from fantasma._demo.orders import Order

__all__ = [
    "CapturePayment",
    "Ledger",
    "PaymentGatewayError",
    "PaymentReminder",
    "RegionTotal",
    "RunNotes",
    "Services",
    "SummariseOrders",
    "build_app",
]

T = TypeVar("T")

SUMMARY_CRON = "*/2 * * * * *"
"""Every two seconds, seconds field first."""

_CENTS = Decimal("0.01")


class RunNotes:
    """Notes on what each run did, keyed by job id and attempt.

    Handlers add a note while they run, from the event loop or from a worker
    thread. The demo prints it under the run's line once the run ends.
    """

    def __init__(self) -> None:
        self._notes: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()

    def add(self, context: JobContext, text: str) -> None:
        """Store ``text`` as the note of the run that ``context`` describes."""
        with self._lock:
            self._notes[(context.job_id, context.attempt)] = text

    def pop(self, job_id: str, attempt: int) -> str | None:
        """Remove and return the note of one run, or ``None`` if it has none."""
        with self._lock:
            return self._notes.pop((job_id, attempt), None)


@dataclass(frozen=True, slots=True)
class RegionTotal:
    """Running total of one region: order count and amount in EUR."""

    region: str
    orders: int
    amount: Decimal


class Ledger:
    """Running totals per region, kept in two tables of the demo's SQLite file.

    The tables sit beside fantasma's own in the same file. Each summary run
    reads the next slice of orders and advances the cursor in the same
    transaction as the totals. Fantasma runs a job at least once, and this
    way a run repeated after a crash never counts a slice twice.
    """

    def __init__(self, database: Path, orders: Sequence[Order]) -> None:
        self._database = database
        self._orders = orders

    @property
    def order_count(self) -> int:
        """Number of orders in the input."""
        return len(self._orders)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None lets BEGIN IMMEDIATE below take the write lock
        # up front; the timeout waits out fantasma's own short writes.
        return sqlite3.connect(self._database, timeout=30, isolation_level=None)

    def create_tables(self) -> None:
        """Create the ledger's tables, empty, with the cursor at the first order."""
        with closing(self._connect()) as connection:
            connection.executescript(
                """
                BEGIN;
                CREATE TABLE IF NOT EXISTS demo_cursor (
                    id INTEGER PRIMARY KEY CHECK (id = 1),
                    next_order INTEGER NOT NULL
                );
                CREATE TABLE IF NOT EXISTS demo_region_totals (
                    region TEXT PRIMARY KEY,
                    orders INTEGER NOT NULL,
                    amount_cents INTEGER NOT NULL
                );
                INSERT OR IGNORE INTO demo_cursor (id, next_order) VALUES (1, 0);
                COMMIT;
                """
            )

    def add_next(self, count: int) -> tuple[int, int]:
        """Add the next ``count`` orders to the totals.

        Returns:
            The 0-based index range ``(start, end)`` of the orders added, end
            exclusive; empty once every order has been added.
        """
        with closing(self._connect()) as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                (start,) = connection.execute(
                    "SELECT next_order FROM demo_cursor WHERE id = 1"
                ).fetchone()
                batch = self._orders[start : start + count]
                for order in batch:
                    connection.execute(
                        "INSERT INTO demo_region_totals (region, orders, amount_cents)"
                        " VALUES (?, 1, ?) ON CONFLICT (region) DO UPDATE SET"
                        " orders = orders + 1,"
                        " amount_cents = amount_cents + excluded.amount_cents",
                        (order.region, int(order.amount / _CENTS)),
                    )
                end = start + len(batch)
                connection.execute(
                    "UPDATE demo_cursor SET next_order = ? WHERE id = 1", (end,)
                )
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        return start, end

    def totals(self) -> list[RegionTotal]:
        """Return the running totals, largest amount first."""
        with closing(self._connect()) as connection:
            rows = connection.execute(
                "SELECT region, orders, amount_cents FROM demo_region_totals"
                " ORDER BY amount_cents DESC, region"
            ).fetchall()
        return [
            RegionTotal(region, orders, Decimal(cents) * _CENTS)
            for region, orders, cents in rows
        ]

    def orders_added(self) -> int:
        """Return how many orders the totals contain."""
        with closing(self._connect()) as connection:
            (count,) = connection.execute(
                "SELECT next_order FROM demo_cursor WHERE id = 1"
            ).fetchone()
        return int(count)


def format_totals(totals: Sequence[RegionTotal]) -> str:
    """Format the amounts on one line: ``eu-west 2,050.10, us-west 1,330.00``."""
    return ", ".join(f"{total.region} {total.amount:,.2f}" for total in totals)


# Job data. Each type selects its handler; the fields are stored as JSON.


@dataclass(frozen=True)
class SummariseOrders:
    """Add the next ``batch_size`` orders to the running totals."""

    batch_size: int


@dataclass(frozen=True)
class PaymentReminder:
    """Remind a customer of an unpaid order."""

    order_id: str
    customer: str
    amount: Decimal


@dataclass(frozen=True)
class CapturePayment:
    """Capture an order's payment through the (simulated) payment gateway.

    The simulated gateway times out on the first ``gateway_failures``
    attempts and accepts the next one.
    """

    order_id: str
    amount: Decimal
    gateway_failures: int = 1


class PaymentGatewayError(Exception):
    """The simulated payment gateway timed out."""


@dataclass(frozen=True, slots=True)
class Services:
    """Dependencies of the demo's handlers, passed in by the handler factory."""

    ledger: Ledger
    notes: RunNotes


class DemoHandler(JobHandler[T]):
    """Base of the demo's handlers: built with the shared services."""

    def __init__(self, services: Services) -> None:
        self.ledger = services.ledger
        self.notes = services.notes


class SummariseOrdersHandler(DemoHandler[SummariseOrders]):
    """Adds the next slice of orders to the totals and prints them.

    A plain (sync) method: fantasma runs it in a worker thread, so the
    blocking sqlite3 calls do not stall the event loop.
    """

    type_name = "demo.summarise-orders"

    def handle(self, data: SummariseOrders, context: JobContext) -> None:
        start, end = self.ledger.add_next(data.batch_size)
        total = self.ledger.order_count
        if start == end:
            self.notes.add(context, f"all {total} orders were summarised already")
            return
        self.notes.add(
            context,
            f"orders {start + 1}-{end} of {total} added; totals in EUR:"
            f" {format_totals(self.ledger.totals())}",
        )


class PaymentReminderHandler(DemoHandler[PaymentReminder]):
    """Prints the reminder a real service would e-mail."""

    type_name = "demo.payment-reminder"

    async def handle(self, data: PaymentReminder, context: JobContext) -> None:
        self.notes.add(
            context,
            f"reminded {data.customer} that order {data.order_id} over"
            f" {data.amount:,.2f} EUR is unpaid",
        )


class CapturePaymentHandler(DemoHandler[CapturePayment]):
    """Captures a payment; the gateway fails the first attempts, then accepts."""

    type_name = "demo.capture-payment"
    max_attempts = 3
    # A short, exact backoff so that the retry shows up one second later.
    retry_backoff = 1.0
    retry_jitter = 0.0

    async def handle(self, data: CapturePayment, context: JobContext) -> None:
        if context.attempt <= data.gateway_failures:
            raise PaymentGatewayError(
                f"payment gateway timed out capturing order {data.order_id}"
                f" (simulated failure on attempt {context.attempt})"
            )
        self.notes.add(
            context,
            f"captured {data.amount:,.2f} EUR for order {data.order_id}"
            f" on attempt {context.attempt}",
        )


def build_app(url: str, services: Services, *, batch_size: int) -> Fantasma:
    """Build the demo's scheduler on ``url`` with its handlers and recurring job."""

    def build_handler(handler_class: type[JobHandler[Any]]) -> JobHandler[Any]:
        if issubclass(handler_class, DemoHandler):
            return handler_class(services)
        return handler_class()

    app = Fantasma(
        url,
        handler_factory=build_handler,
        node_id="demo",
        shutdown_grace=timedelta(seconds=5),
    )
    app.register(SummariseOrdersHandler)
    app.register(PaymentReminderHandler)
    app.register(CapturePaymentHandler)
    app.add_recurring_job(
        "summarise-orders",
        "summarise-orders",
        SUMMARY_CRON,
        SummariseOrders(batch_size=batch_size),
    )
    return app
