"""Decoded envelopes by log position, for consumers in the process that wrote them.

In the embedded runner the decider, coordinator and projector all read what the others just
appended. Decoding the bytes again would rebuild exactly the envelope the writer already holds,
so writers ``put`` it here and readers ``decode`` through it. The log stays the only source of
truth: a record that is not cached (another process wrote it, or it was evicted) is decoded
from its bytes as usual. Never caches anything but what was encoded into that very record.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncGenerator, Sequence

from contracts import Envelope
from events.codec import from_record, to_record
from events.log import Appended, Commit, EventLog, Record, StoredRecord
from events.sqlite import SqliteLog

# Entries held at most (about 1.5 kB each): a deeper backlog is decoded from the log in its turn.
CAPACITY = 50_000


class EnvelopeCache:
    """A map (topic, partition, offset) -> Envelope, bounded two ways.

    An entry leaves as soon as every follower of its partition in this process (``tail``) has read
    past it: nobody here asks for it again, and a late reader decodes the bytes. At most
    ``capacity`` entries are kept: when full, a followed partition caches nothing new until its
    followers catch up (they read the oldest next), and a partition nobody follows loses its
    oldest entries, the fullest partition first.
    """

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._parts: dict[tuple[str, int], dict[int, Envelope]] = {}
        self._size = 0
        # The topics whose records' bytes are kept beside their envelopes (``keep_values``), and
        # those bytes, entry for entry.
        self._valued: set[str] = set()
        self._values: dict[tuple[str, int], dict[int, bytes]] = {}
        # The next offset each follower of a partition reads, and the offset below which its
        # followers have let every entry go.
        self._followers: dict[tuple[str, int], dict[Follower, int]] = {}
        self._floor: dict[tuple[str, int], int] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return self._size

    def keep_values(self, topic: str) -> None:
        """Keep the bytes of ``topic``'s records too, beside their envelopes (when the appender
        gives them to ``put``), until ``take_values`` takes them or their entry leaves: for one
        follower that sends records on as they are stored (the event hub), which would otherwise
        encode each envelope again."""
        self._valued.add(topic)

    def take_values(self, topic: str, partition: int, offsets: Sequence[int]) -> list[bytes | None]:
        """The bytes kept for the records of ``topic[partition]`` at ``offsets`` (None where none
        are), let go at once: the follower they were kept for has them now, and the others do not
        read them."""
        kept = self._values.get((topic, partition))
        if not kept:
            return [None] * len(offsets)
        return [kept.pop(o, None) for o in offsets]

    def put(self, topic: str, appended: Sequence[Appended], envelopes: Sequence[Envelope],
            records: Sequence[Record] | None = None) -> None:
        """Remember the envelopes just appended at ``appended`` positions (duplicates skipped, and
        positions every follower has read past already), and the bytes of ``records`` (those
        envelopes as written) when the topic keeps them."""
        if self.capacity <= 0:
            return
        parts = self._parts
        valued = records if records is not None and topic in self._valued else None
        for i, (pos, env) in enumerate(zip(appended, envelopes, strict=True)):
            if pos.duplicate:
                continue
            key = (topic, pos.partition)
            if pos.offset < self._floor.get(key, 0):
                continue
            if self._size >= self.capacity and key in self._followers:
                # Full, with followers this far behind: they read the oldest entries next, so the
                # newest are left out (decoded from the log when their turn comes) rather than
                # the oldest evicted.
                continue
            part = parts.get(key)
            if part is None:
                part = parts[key] = {}
            if pos.offset not in part:
                self._size += 1
            part[pos.offset] = env
            if valued is not None:
                kept = self._values.get(key)
                if kept is None:
                    kept = self._values[key] = {}
                kept[pos.offset] = valued[i].value
        if self._size > self.capacity:
            self._evict(self._size - self.capacity + self.capacity // 10)

    async def append(self, log: EventLog, topic: str, envelopes: Sequence[Envelope], *,
                     partition: int | None = None, commit: Commit | None = None) -> list[Appended]:
        """Append ``envelopes`` to ``log`` and remember them; on a SQLite log they go with their
        records, so a reactor in this process (the partition's decider) can take them as they are
        written (``SqliteLog.react``)."""
        records = [to_record(x) for x in envelopes]
        if isinstance(log, SqliteLog):
            appended = await log.append(topic, records, partition=partition, commit=commit,
                                        envelopes=envelopes)
        else:
            appended = await log.append(topic, records, partition=partition, commit=commit)
        self.put(topic, appended, envelopes, records)
        return appended

    def _evict(self, n: int) -> None:
        """Drop ``n`` entries, the oldest of the fullest partition first."""
        while n > 0 and self._size:
            key, part = max(self._parts.items(), key=lambda kv: len(kv[1]))
            drop = list(itertools.islice(part, min(n, len(part))))
            values = self._values.get(key, {})
            for offset in drop:
                del part[offset]
                values.pop(offset, None)
            self._size -= len(drop)
            n -= len(drop)

    def get(self, rec: StoredRecord) -> Envelope | None:
        """The cached envelope of ``rec``, or None."""
        part = self._parts.get((rec.topic, rec.partition))
        return None if part is None else part.get(rec.offset)

    def run(self, topic: str, partition: int, offset: int, limit: int) -> list[tuple[int, Envelope]]:
        """Cached envelopes at consecutive offsets from ``offset`` (at most ``limit``)."""
        part = self._parts.get((topic, partition))
        if not part:
            return []
        out: list[tuple[int, Envelope]] = []
        env = part.get(offset)
        while env is not None and len(out) < limit:
            out.append((offset, env))
            offset += 1
            env = part.get(offset)
        if out:
            self.hits += len(out)
        return out

    def decode(self, rec: StoredRecord) -> Envelope:
        """The envelope of ``rec``: from the cache when this process wrote it, else decoded."""
        env = self.get(rec)
        if env is not None:
            self.hits += 1
            return env
        self.misses += 1
        return from_record(rec)

    def follow(self, topic: str, partition: int, offset: int) -> Follower:
        """A reader of the partition from ``offset`` on: entries stay until it has read them
        (``advance``) or stops following (``unfollow``)."""
        follower = Follower(topic, partition)
        self._followers.setdefault((topic, partition), {})[follower] = offset
        return follower

    def advance(self, follower: Follower, offset: int) -> None:
        """``follower`` has read everything below ``offset``: let go what every follower has read."""
        key = (follower.topic, follower.partition)
        followers = self._followers[key]
        followers[follower] = offset
        low = min(followers.values())
        floor = self._floor.get(key, 0)
        if low <= floor:
            return
        self._floor[key] = low
        part = self._parts.get(key)
        if not part:
            return
        below = [o for o in part if o < low] if low - floor > len(part) else range(floor, low)
        values = self._values.get(key, {})
        for o in below:
            if part.pop(o, None) is not None:
                self._size -= 1
                values.pop(o, None)

    def followers(self, topic: str, partition: int) -> int:
        """How many followers the partition has now."""
        return len(self._followers.get((topic, partition), ()))

    def unfollow(self, follower: Follower) -> None:
        """``follower`` reads no more; the partition's last follower gone, only ``capacity`` bounds it."""
        key = (follower.topic, follower.partition)
        followers = self._followers.get(key)
        if followers is None:
            return
        followers.pop(follower, None)
        if not followers:
            del self._followers[key]
            self._floor.pop(key, None)


class Follower:
    """One ``tail`` of a partition, as the cache knows it (compared by identity)."""

    __slots__ = ("partition", "topic")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition


async def tail(
    log: EventLog, cache: EnvelopeCache, topic: str, partition: int, offset: int, *, limit: int = 1000
) -> AsyncGenerator[list[tuple[int, Envelope]], None]:
    """Follow a partition from ``offset`` forever, yielding (offset, envelope) batches.

    Records this process appended come straight from the cache, without reading the log;
    anything else (or anything evicted) is read from the log and decoded. Only committed
    records are ever cached, so both paths see the same sequence.
    """
    async with contextlib.aclosing(tail_raw(log, cache, topic, partition, offset, limit=limit)) as batches:
        async for batch in batches:
            decoded = [(o, x if isinstance(x, Envelope) else cache.decode(x)) for o, x in batch]
            del batch  # the records: only the caller's batch is kept while it is handled
            yield decoded
            del decoded  # handled: not kept while the next batch is read and decoded


async def tail_raw(
    log: EventLog, cache: EnvelopeCache, topic: str, partition: int, offset: int, *, limit: int = 1000
) -> AsyncGenerator[list[tuple[int, Envelope | StoredRecord]], None]:
    """Like ``tail``, but records not in the cache are yielded undecoded, for callers that
    must validate foreign records themselves (the decider, for commands others published)."""
    follower = cache.follow(topic, partition, offset)
    # The last batch came from the cache and ended short of the limit: what follows is not committed
    # yet, most likely, so wait for it rather than query the log for it (a read per wake otherwise).
    # A record that is there but was not cached (evicted, or another process's) is read after the
    # wait, which returns at once for it.
    # Nothing of a handled batch is kept while the next one is read: a reader holding batches of a
    # few thousand records would otherwise hold two at its peak.
    ran_out = False
    woken = False
    try:
        while True:
            batch: list[tuple[int, Envelope | StoredRecord]] = list(
                cache.run(topic, partition, offset, limit))
            if batch:
                ran_out = len(batch) < limit
            else:
                if woken:
                    # Woken by a commit whose envelopes are not cached yet: let the appender that
                    # woke us put them first (it runs ahead of us in the loop's next pass).
                    woken = False
                    await asyncio.sleep(0)
                    continue
                recs = [] if ran_out else await log.read(topic, partition, offset, limit)
                ran_out = False
                if not recs:
                    await log.wait(topic, partition, offset, timeout=1.0)
                    woken = True
                    continue
                batch = [(r.offset, cache.get(r) or r) for r in recs]
                del recs
            offset = batch[-1][0] + 1
            yield batch
            del batch
            cache.advance(follower, offset)  # the batch is handled: the caller asked for the next
    finally:
        cache.unfollow(follower)
