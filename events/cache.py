"""Decoded envelopes by log position, for consumers in the process that wrote them.

In the embedded runner the decider, coordinator and projector all read what the others just
appended. Decoding the bytes again would rebuild exactly the envelope the writer already holds,
so writers ``put`` it here and readers ``decode`` through it. The log stays the only source of
truth: a record that is not cached (another process wrote it, or it was evicted) is decoded
from its bytes as usual. Never caches anything but what was encoded into that very record.
"""

from __future__ import annotations

from collections.abc import Sequence

from contracts import Envelope
from events.codec import from_record
from events.log import Appended, StoredRecord


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

    def decode(self, rec: StoredRecord) -> Envelope:
        """The envelope of ``rec``: from the cache when this process wrote it, else decoded."""
        env = self._items.get((rec.topic, rec.partition, rec.offset))
        if env is not None:
            self.hits += 1
            return env
        self.misses += 1
        return from_record(rec)


def _first(items: dict[tuple[str, int, int], Envelope], n: int) -> list[tuple[str, int, int]]:
    out = []
    for key in items:
        if len(out) >= n:
            break
        out.append(key)
    return out
