"""The outbound subscriptions as the log says they are: ``SubscriptionBook`` reads the system pool's
``SubscriptionSet`` and ``SubscriptionDeleted`` events from the start of the log and follows them,
so a subscription added, changed or deleted takes effect without a restart; ``Subscription`` is one
of them with its channels parsed and the rule of which events it wants.

This module only reads the log: it never delivers, commits or appends anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from contracts import SYSTEM_POOL, Envelope
from contracts import event_types as e
from events import EventLog, StoredRecord, partition_for
from events.cache import EnvelopeCache, tail_raw
from events.matching import read_matching
from services.runtime.channels import Channel, ChannelError, event_keys, parse_channel

__all__ = ["BATCH", "Subscription", "SubscriptionBook"]

log = logging.getLogger("agentbus.deliveries")

BATCH = 500


@dataclass(frozen=True, slots=True)
class Subscription:
    """One subscription as its last ``SubscriptionSet`` left it, channels parsed."""

    name: str
    incarnation: int
    url: str
    channels: frozenset[Channel]
    secret: str  # sealed
    start: tuple[int, ...]
    max_attempts: int

    @classmethod
    def of(cls, ev: e.SubscriptionSet) -> Subscription:
        channels = set()
        for text in ev.channels:
            try:
                channels.add(parse_channel(text))
            except ChannelError as exc:  # the API refuses these; a command from elsewhere may not
                log.warning("subscription %r: %s; that channel receives nothing", ev.name, exc)
        return cls(ev.name, ev.incarnation, ev.url, frozenset(channels), ev.secret, ev.start, ev.max_attempts)

    def first(self, partition: int) -> int:
        """Where delivery starts in ``partition`` (a partition added since starts at 0)."""
        return self.start[partition] if partition < len(self.start) else 0

    def wants(self, env: Envelope) -> bool:
        # The system pool's events (token hashes, sealed secrets) are on that pool's channels only.
        return not self.channels.isdisjoint(event_keys(env))


class SubscriptionBook:
    """The current subscriptions, as the system pool's events say, followed live.

    ``on_change`` is called once the log as it was at start has been read (``ready``), then after
    every batch that changed a subscription.
    """

    def __init__(self, log: EventLog, cache: EnvelopeCache, topic: str, partitions: int,
                 on_change: Callable[[], None]) -> None:
        self.log, self.cache, self.topic = log, cache, topic
        self.partition = partition_for(SYSTEM_POOL, partitions)
        self.on_change = on_change
        self.current: dict[str, Subscription] = {}
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Read the system pool's events from the start, then follow them. Run again after a
        failure, it rebuilds the book aside and swaps it in once caught up."""
        current: dict[str, Subscription] = {}
        offset = 0
        while True:  # catch up with the log as it is now: the system pool's records only
            end = await self.log.end_offset(self.topic, self.partition)
            if end <= offset:
                break
            batches = read_matching(self.log, self.topic, self.partition, offset, end, key=SYSTEM_POOL)
            async with contextlib.aclosing(batches):
                async for recs in batches:
                    self._apply(recs, current)
            offset = end
        self.current = current
        self.ready.set()
        self.on_change()
        # Live, through the envelope cache: what this process appended is not read back from the log
        # (in the embedded runner the system pool shares its partition with every pool, and a read
        # per commit of it was a tenth of the loop in ``agentbus bench --executor http``).
        stream = tail_raw(self.log, self.cache, self.topic, self.partition, offset, limit=BATCH)
        async with contextlib.aclosing(stream):
            async for batch in stream:
                if self._apply([x for _, x in batch], self.current):
                    self.on_change()

    def _apply(self, recs: Sequence[StoredRecord | Envelope], current: dict[str, Subscription]) -> bool:
        changed = False
        for rec in recs:
            if isinstance(rec, Envelope):
                if rec.pool != SYSTEM_POOL:
                    continue
                data = rec.data
            elif rec.key != SYSTEM_POOL:
                continue  # not decoded: another pool's
            else:
                data = self.cache.decode(rec).data
            if isinstance(data, e.SubscriptionSet):
                current[data.name] = Subscription.of(data)
                changed = True
            elif isinstance(data, e.SubscriptionDeleted):
                found = current.get(data.name)
                if found is not None and found.incarnation == data.incarnation:
                    del current[data.name]
                    changed = True
        return changed
