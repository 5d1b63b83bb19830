"""Reading only the records a reader wants: by key (a pool) and by event type.

``read_matching`` yields, batch by batch, the records of ``topic[partition]`` in [``offset``,
``end``) whose key is ``key`` and whose ``ce_type`` header is one of ``types`` (each when given).
On a log that can skip records where it stores them (``FilteringLog``: SQLite compares the key and
the first header itself) the others are never built; on any other log the records are read and
filtered here. Either way a record without a type header is kept (only its decoded envelope says
what it is), so callers still check what they get; they never miss a record they want.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from events.log import EventLog, FilteringLog, StoredRecord

__all__ = ["WINDOW", "read_matching", "wanted"]

# Offsets scanned per query on a filtering log (each query's result is at most this many records).
WINDOW = 50_000
# Records read at a time on any other log.
BATCH = 5000


def _type(rec: StoredRecord) -> str | None:
    name, value = rec.headers[0] if rec.headers else ("", b"")
    return value.decode(errors="replace") if name == "ce_type" else None


def wanted(rec: StoredRecord, types: frozenset[str] | None = None, key: str | None = None) -> bool:
    """Whether ``read_matching`` keeps ``rec`` (the rule ``FilteringLog.read_matching`` applies)."""
    if key is not None and rec.key != key:
        return False
    if types is None:
        return True
    kind = _type(rec)
    return kind is None or kind in types


async def read_matching(log: EventLog, topic: str, partition: int, offset: int, end: int, *,
                        types: frozenset[str] | None = None,
                        key: str | None = None) -> AsyncGenerator[list[StoredRecord], None]:
    """Non-empty batches of the wanted records in [``offset``, ``end``), in order (see the module)."""
    if isinstance(log, FilteringLog):
        while offset < end:
            upto = min(end, offset + WINDOW)
            batch = await log.read_matching(topic, partition, offset, upto, types=types, key=key)
            if batch:
                yield batch
            offset = upto
        return
    while offset < end:
        recs = await log.read(topic, partition, offset, min(BATCH, end - offset))
        if not recs:
            return  # nothing below end (Kafka may end on a transaction marker)
        batch = [r for r in recs if r.offset < end and wanted(r, types, key)]
        if batch:
            yield batch
        offset = recs[-1].offset + 1
