"""Handler classes spread over a package, for the module registration tests."""

from __future__ import annotations

from dataclasses import dataclass

from fantasma import JobContext, JobHandler


@dataclass
class Audit:
    entry: str


class AuditHandler(JobHandler[Audit]):
    async def handle(self, data: Audit, context: JobContext) -> None:
        pass
