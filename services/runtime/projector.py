"""The projector loop: feeds every events partition into the read models.

Each batch's rows and its position commit together (``projections.Projector``), so a restart
resumes after the last applied event and never applies one twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from events import EventLog
from events.cache import EnvelopeCache, tail
from projections import Projector
from services.runtime.topics import EVENTS


@dataclass
class ProjectorLoop:
    """Feeds every events partition into the read models."""

    log: EventLog
    projector: Projector
    partitions: int
    cache: EnvelopeCache = field(default_factory=EnvelopeCache)

    async def run(self) -> None:
        await asyncio.gather(*(self._tail(p) for p in range(self.partitions)))

    async def _tail(self, partition: int) -> None:
        start = await self.projector.position(EVENTS, partition)
        batches = tail(self.log, self.cache, EVENTS, partition, start, limit=2000)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                await self.projector.apply(EVENTS, partition, batch)
