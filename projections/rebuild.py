"""Rebuild the read models from the event log, offset 0 onwards.

The result must equal the live tables exactly (tests compare them). Rebuilding drops the tables
first, so it must never run while a live projector writes the same store: stop it, or rebuild
into a fresh store and switch over.
"""

from __future__ import annotations

from events.codec import from_record
from events.log import EventLog
from projections.projector import Projector
from projections.store import MAIN_PROJECTOR, ProjectionStore

BATCH = 5000


async def rebuild(
    log: EventLog, store: ProjectionStore, topic: str = "events", *, name: str = MAIN_PROJECTOR
) -> int:
    """Reset the tables and apply every partition of ``topic``; returns the events applied."""
    await store.reset()
    projector = Projector(store, name)
    applied = 0
    for partition in range(await log.partitions(topic)):
        offset = 0
        while True:
            records = await log.read(topic, partition, offset, limit=BATCH)
            if not records:
                break
            # from_record raises CorruptRecord naming the position: a rebuild never skips one.
            batch = [(rec.offset, from_record(rec)) for rec in records]
            applied += await projector.apply(topic, partition, batch)
            offset = records[-1].offset + 1
    return applied
