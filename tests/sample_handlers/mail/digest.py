"""A handler two package levels down."""

from __future__ import annotations

from dataclasses import dataclass

from fantasma import JobContext, JobHandler


@dataclass
class Digest:
    recipient: str


class DigestHandler(JobHandler[Digest]):
    async def handle(self, data: Digest, context: JobContext) -> None:
        pass
