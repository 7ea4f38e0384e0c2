"""Billing handlers, next to classes that registration must pass over."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from fantasma import JobContext, JobHandler
from tests.sample_handlers import AuditHandler

T = TypeVar("T")


@dataclass
class Invoice:
    number: int


@dataclass
class Refund:
    number: int


class LoggedHandler(JobHandler[T]):
    """A generic base that fixes no data type, so it is no handler itself."""

    async def handle(self, data: T, context: JobContext) -> None:
        context.logger.info("handled %s", type(data).__name__)


class InvoiceHandler(JobHandler[Invoice]):
    def handle(self, data: Invoice, context: JobContext) -> None:
        pass


class RefundHandler(LoggedHandler[Refund]):
    pass


class InvoiceFormatter:
    """Not a handler: registration skips it."""


__all__ = ["AuditHandler", "InvoiceFormatter", "InvoiceHandler", "RefundHandler"]
