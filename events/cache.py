"""Decoded envelopes by log position, for consumers in the process that wrote them.

In the embedded runner the decider, coordinator and projector all read what the others just
appended. Decoding the bytes again would rebuild exactly the envelope the writer already holds,
so writers ``put`` it here and readers ``decode`` through it. The log stays the only source of
truth: a record that is not cached (another process wrote it, or it was evicted) is decoded
from its bytes as usual. Never caches anything but what was encoded into that very record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from contracts import Envelope
from events.codec import from_record
from events.log import Appended, EventLog, StoredRecord


class EnvelopeCache:
    """A bounded map (topic, partition, offset) -> Envelope, oldest entries evicted first."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._items: dict[tuple[str, int, int], Envelope] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, topic: str, appended: Sequence[Appended], envelopes: Sequence[Envelope]) -> None:
        """Remember the envelopes just appended at ``appended`` positions (duplicates skipped)."""
        items = self._items
        for pos, env in zip(appended, envelopes, strict=True):
            if not pos.duplicate:
                items[(topic, pos.partition, pos.offset)] = env
        excess = len(items) - self.capacity
        if excess > 0:
            for key in list(_first(items, excess + self.capacity // 10)):
                del items[key]

    def get(self, rec: StoredRecord) -> Envelope | None:
        """The cached envelope of ``rec``, or None."""
        return self._items.get((rec.topic, rec.partition, rec.offset))

    def run(self, topic: str, partition: int, offset: int, limit: int) -> list[tuple[int, Envelope]]:
        """Cached envelopes at consecutive offsets from ``offset`` (at most ``limit``)."""
        items = self._items
        out: list[tuple[int, Envelope]] = []
        env = items.get((topic, partition, offset))
        while env is not None and len(out) < limit:
            out.append((offset, env))
            offset += 1
            env = items.get((topic, partition, offset))
        if out:
            self.hits += len(out)
        return out

    def decode(self, rec: StoredRecord) -> Envelope:
        """The envelope of ``rec``: from the cache when this process wrote it, else decoded."""
        env = self._items.get((rec.topic, rec.partition, rec.offset))
        if env is not None:
            self.hits += 1
            return env
        self.misses += 1
        return from_record(rec)


def _first(items: dict[tuple[str, int, int], Envelope], n: int) -> list[tuple[str, int, int]]:
    out: list[tuple[str, int, int]] = []
    for key in items:
        if len(out) >= n:
            break
        out.append(key)
    return out


async def tail(
    log: EventLog, cache: EnvelopeCache, topic: str, partition: int, offset: int, *, limit: int = 1000
) -> AsyncIterator[list[tuple[int, Envelope]]]:
    """Follow a partition from ``offset`` forever, yielding (offset, envelope) batches.

    Records this process appended come straight from the cache, without reading the log;
    anything else (or anything evicted) is read from the log and decoded. Only committed
    records are ever cached, so both paths see the same sequence.
    """
    async for batch in tail_raw(log, cache, topic, partition, offset, limit=limit):
        yield [(o, x if isinstance(x, Envelope) else cache.decode(x)) for o, x in batch]


async def tail_raw(
    log: EventLog, cache: EnvelopeCache, topic: str, partition: int, offset: int, *, limit: int = 1000
) -> AsyncIterator[list[tuple[int, Envelope | StoredRecord]]]:
    """Like ``tail``, but records not in the cache are yielded undecoded, for callers that
    must validate foreign records themselves (the decider, for commands others published)."""
    while True:
        batch: list[tuple[int, Envelope | StoredRecord]] = list(cache.run(topic, partition, offset, limit))
        if not batch:
            recs = await log.read(topic, partition, offset, limit)
            if not recs:
                await log.wait(topic, partition, offset, timeout=1.0)
                await asyncio.sleep(0)  # let the appender that woke us put its envelopes first
                continue
            batch = [(r.offset, cache.get(r) or r) for r in recs]
        yield batch
        offset = batch[-1][0] + 1
