"""Point-in-time reads: the read models as they were at a log position or a time, rebuilt from the log.

Auditors ask what the system knew at a moment. The log holds the answer: the read models are a
function of the events, so applying the events up to a point (``projections.rebuild``, the same
projector the service runs) into a private read model and running the live endpoint's query on it
gives what that endpoint answered then, in the same shape.

``as_of`` is a position of the events topic as the API reports them (an event's ``position``, the
live streams' cursors): an integer, the same in every partition, or ``<partition>:<position>``
pairs joined by commas; the state includes the event at that position. Or an RFC 3339 time: every
event stamped (CloudEvents ``time``) at or before it. Times are stamped at ingest and the log is in
decision order, so the events up to a time are a prefix of the log, ending before the first event
stamped later (commands ingested within the same instant may be decided in either order).

A pool lives in one partition, so one partition, and in it only the pool's records, is rebuilt.
The work is bounded: a point must lie within the first ``MAX_EVENTS`` positions of its partition
(``AsOfTooFar`` otherwise; ``agentbus replay --until`` replays any point offline), and one
rebuild runs at a time. The last ``CACHE_SIZE`` rebuilt models are kept, each a SQLite file in a
private temporary directory, so paging through one moment rebuilds once. No database connection
is held between reads (the last read of a model closes its connections; the next one reconnects
in a few milliseconds), so nothing is left open when the process ends.

This module must never write the log or the live read models, never decide or project anything
itself (``projections`` does), and never read a clock: "now" is passed in.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import uuid
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import orjson

from events import Appended, Commit, EventLog, LogError, Record, StoredRecord
from events.codec import from_record
from projections import ProjectionStore, rebuild
from services.runtime.channels import ChannelError, Cursor, parse_cursor

__all__ = [
    "CACHE_SIZE",
    "MAX_EVENTS",
    "AsOf",
    "AsOfBeyondEnd",
    "AsOfError",
    "AsOfTooFar",
    "LogAsOf",
    "PointInTime",
    "last_stamped",
    "parse_as_of",
    "resolve",
]

T = TypeVar("T")

# How many positions of a partition one point-in-time read may rebuild. projections.rebuild applied
# about 6,000 events a second into a SQLite file (22,469 events of agents and tasks, 2 busy cores),
# so a read at the limit takes under 10 s; a cached one about 30 ms. Read module-wide on each call,
# so a deployment (or a test) can change it.
MAX_EVENTS = 50_000
# Rebuilt read models kept for further reads of the same moment (each one SQLite file).
CACHE_SIZE = 4
# Times resolved to positions, kept so that paging through one moment scans the log once.
_TIMES_KEPT = 64
# Records read per request to the log while resolving a time.
_BATCH = 2000
# A position: an integer or <partition>:<position> pairs (services.runtime.channels cursors).
_POSITION = re.compile(r"\s*-?\d+\s*|\s*\d+\s*:.*")


class AsOfError(ValueError):
    """An ``as_of`` that is neither a position nor an RFC 3339 time; the message says what is expected."""


class AsOfBeyondEnd(Exception):
    """The point is past the end of the log: a position not written yet, or a time still to come."""

    def __init__(self, message: str, partition: int, end: int, position: int) -> None:
        super().__init__(message)
        self.partition, self.end, self.position = partition, end, position


class AsOfTooFar(Exception):
    """Rebuilding up to the point would read more than ``MAX_EVENTS`` positions of the partition."""

    def __init__(self, partition: int, limit: int) -> None:
        super().__init__(
            f"as_of lies beyond the first {limit} positions of events partition {partition}, more "
            "than a read rebuilds on request; `agentbus replay --until` replays it offline")
        self.partition, self.limit = partition, limit


@dataclass(frozen=True, slots=True)
class AsOf:
    """A parsed ``as_of``: the last position included per partition, or a time."""

    text: str
    positions: Cursor | None = None
    time: datetime | None = None
    # The partitions the text named (every one for a plain integer).
    named: frozenset[int] = frozenset()


def parse_as_of(text: str, partitions: int) -> AsOf:
    """``text`` as a position (``41``, ``0:41,1:7``) or an aware RFC 3339 time; AsOfError otherwise."""
    if _POSITION.fullmatch(text):
        try:
            cursor = parse_cursor(text, partitions)
        except ChannelError as exc:
            raise AsOfError(str(exc)) from None
        if ":" in text:
            named = frozenset(int(part.partition(":")[0]) for part in text.split(","))
        else:
            named = frozenset(range(partitions))
        return AsOf(text, positions=cursor, named=named)
    stamp = text.strip()
    # RFC 3339 lets the "T" and "Z" be lower case; fromisoformat takes a "t" but not a "z".
    stamp = stamp[:-1] + "Z" if stamp.endswith("z") else stamp
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        raise AsOfError(f"{text!r} is neither a log position (an integer, or <partition>:<position> "
                        "pairs such as 0:41,1:7) nor an RFC 3339 time such as 2025-05-01T12:00:00Z") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise AsOfError(f"{text!r}: a time needs its UTC offset, e.g. 2025-05-01T12:00:00Z")
    return AsOf(text, time=moment)


async def resolve(log: EventLog, topic: str, partition: int, at: AsOf, *, pool: str | None = None,
                  now: datetime | None = None, limit: int | None = None) -> int:
    """The last position of ``topic[partition]`` the point includes (-1: none).

    A time counts only ``pool``'s events when given (the rest of the partition does not change
    its read model). ``now`` refuses times after it; ``limit`` bounds the positions a rebuild may
    read (``AsOfTooFar``).
    """
    last, _ = await _point(log, topic, partition, at, pool, now, limit)
    return last


async def _point(log: EventLog, topic: str, partition: int, at: AsOf, pool: str | None, now: datetime | None,
                 limit: int | None) -> tuple[int, bool]:
    """``resolve``, and whether the answer is final (always for a position; for a time once an
    event stamped later exists: events appended from then on cannot change it)."""
    end = await log.end_offset(topic, partition)
    if at.positions is not None:
        if partition not in at.named:
            where = "" if pool is None else f", where pool {pool!r} lives"
            raise AsOfError(f"{at.text!r} names no position in events partition {partition}{where}")
        position = at.positions[partition]
        if position >= end:
            raise AsOfBeyondEnd(
                f"as_of {position} is beyond the end of the events log: partition {partition} ends at "
                f"{end} (positions 0 to {end - 1} exist)", partition, end, position)
        if limit is not None and position >= limit:
            raise AsOfTooFar(partition, limit)
        return position, True
    assert at.time is not None
    if now is not None and at.time > now:
        raise AsOfBeyondEnd(
            f"as_of {at.text} is later than now ({now.isoformat()}): what the log will hold then is not "
            f"known yet; partition {partition} ends at {end}", partition, end, end)
    return await _until_later(log, topic, partition, at.time, pool, end, limit)


async def last_stamped(log: EventLog, topic: str, partition: int, moment: datetime, *,
                       pool: str | None = None, limit: int | None = None) -> int:
    """The position of the last event (of ``pool``, if given) before the first one stamped after
    ``moment``; -1 when there is none. With ``limit``, reads at most the first ``limit`` positions:
    AsOfTooFar when the answer may lie beyond them."""
    last, _ = await _until_later(log, topic, partition, moment, pool, await log.end_offset(topic, partition),
                                 limit)
    return last


async def _until_later(log: EventLog, topic: str, partition: int, moment: datetime, pool: str | None,
                       end: int, limit: int | None) -> tuple[int, bool]:
    """``last_stamped`` below ``end``, and whether an event stamped later was found."""
    stop = end if limit is None else min(end, limit)
    offset, last = 0, -1
    while offset < stop:
        records = await log.read(topic, partition, offset, min(_BATCH, stop - offset))
        if not records:
            break
        for rec in records:
            if rec.offset >= stop:
                break
            if pool is not None and rec.key != pool:
                continue
            if _stamped(rec) > moment:
                return last, True
            last = rec.offset
        offset = records[-1].offset + 1
    if stop < end:
        assert limit is not None
        raise AsOfTooFar(partition, limit)
    return last, False


def _stamped(rec: StoredRecord) -> datetime:
    """The record's CloudEvents time, read from its JSON without decoding the payload."""
    try:
        obj = orjson.loads(rec.value)
        return datetime.fromisoformat(obj["time"])
    except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
        return from_record(rec).time  # names the position of a record that cannot be read


# --- the log as it was ----------------------------------------------------------------------------


class LogAsOf:
    """A read-only view of a log as it was: ``topic`` holds, per partition, the records up to
    ``last[partition]`` (a partition not in ``last`` is empty) and, with ``pool``, only that
    pool's records. Anything that replays a log (``projections.rebuild``, the deciders' rebuild)
    replays it as of that point."""

    def __init__(self, log: EventLog, topic: str, last: dict[int, int], pool: str | None = None) -> None:
        self.url = log.url
        self._log, self._topic, self._last, self._pool = log, topic, dict(last), pool

    @property
    def dedupes_ids(self) -> bool:
        return self._log.dedupes_ids

    def _check(self, topic: str) -> None:
        if topic != self._topic:
            raise LogError(f"a view of {self._topic!r} as it was has no topic {topic!r}")

    async def start(self) -> None:
        """The view is over a started log: nothing to open."""

    async def close(self) -> None:
        """The underlying log stays open: whoever opened it closes it."""

    async def ensure_topic(self, topic: str, partitions: int, *, retention_ms: int | None = None) -> None:
        raise LogError("a view of the log as it was is read-only")

    async def partitions(self, topic: str) -> int:
        self._check(topic)
        return await self._log.partitions(topic)

    async def append(self, topic: str, records: Sequence[Record], *, partition: int | None = None,
                     expected_offset: int | None = None, commit: Commit | None = None) -> list[Appended]:
        raise LogError("a view of the log as it was is read-only")

    async def read(self, topic: str, partition: int, offset: int, limit: int = 1000) -> list[StoredRecord]:
        """The view's records at ``offset`` and after, at most ``limit``: empty only at its end."""
        self._check(topic)
        last = self._last.get(partition, -1)
        while offset <= last:
            records = await self._log.read(topic, partition, offset, min(limit, last - offset + 1))
            records = [r for r in records if r.offset <= last]
            if not records:
                return []
            kept = records if self._pool is None else [r for r in records if r.key == self._pool]
            if kept:
                return kept
            offset = records[-1].offset + 1  # a page of other pools: the view goes on after it
        return []

    async def read_values(self, topic: str, partition: int, offset: int,
                          limit: int = 1000) -> list[tuple[int, bytes]]:
        if self._pool is None:
            self._check(topic)
            last = self._last.get(partition, -1)
            if offset > last:
                return []
            values = await self._log.read_values(topic, partition, offset, min(limit, last - offset + 1))
            return [(at, value) for at, value in values if at <= last]
        return [(r.offset, r.value) for r in await self.read(topic, partition, offset, limit)]

    async def read_chained(self, topic: str, partition: int, offset: int,
                           limit: int = 1000) -> list[tuple[int, bytes, bytes | None]]:
        """The view's records with the chain value each has in the whole log."""
        return [(r.offset, r.value, r.chain) for r in await self.read(topic, partition, offset, limit)]

    async def end_offset(self, topic: str, partition: int) -> int:
        self._check(topic)
        return self._last.get(partition, -1) + 1

    async def commit(self, group: str, topic: str, partition: int, offset: int) -> None:
        raise LogError("a view of the log as it was is read-only")

    async def committed(self, group: str, topic: str, partition: int) -> int:
        raise LogError("a view of the log as it was has no consumer groups")

    async def wait(self, topic: str, partition: int, offset: int, timeout: float) -> bool:
        """Nothing is ever appended to the past: true only for a record the view holds."""
        return offset < await self.end_offset(topic, partition)

    def subscribe(self, topic: str, partition: int, offset: int, *,
                  limit: int = 1000) -> AsyncIterator[list[StoredRecord]]:
        raise LogError("a view of the log as it was cannot be tailed: read it")


# --- rebuilt read models, cached ------------------------------------------------------------------

Key = tuple[str, str, int, str, int]  # (log URL, topic, partition, pool, last position)


@dataclass(eq=False)
class _Model:
    """One rebuilt read model: its store (a file), and the reads using it."""

    path: Path
    store: ProjectionStore
    readers: int = 0
    evicted: bool = False
    # Held while the connections are closed: a read that came meanwhile waits, then reconnects.
    gate: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def release(self) -> None:
        """One read is done. The last one closes the store's connections (an evicted model's file
        goes with them), so none is left open between reads."""
        self.readers -= 1
        if self.readers > 0:
            return
        async with self.gate:
            if self.readers > 0:
                return  # a read came meanwhile: the last one closes them
            if self.evicted:
                await self.store.close()
                for suffix in ("", "-wal", "-shm", "-journal"):
                    self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
            else:
                await self.store.engine.dispose()  # the engine stays usable: the next read reconnects


@dataclass(eq=False)
class PointInTime:
    """Reads of one pool's read models as of a point, each rebuilt once and kept for the next reads."""

    size: int = CACHE_SIZE
    builds: int = 0  # rebuilds done (a read answered from the cache adds none)
    _models: OrderedDict[Key, _Model] = field(default_factory=OrderedDict)
    # Times already resolved, where the answer cannot change any more (a later event exists).
    _times: OrderedDict[tuple[str, str, int, str, datetime], int] = field(default_factory=OrderedDict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _dir: Path | None = None

    async def read(self, log: EventLog, topic: str, partition: int, pool: str, at: AsOf,
                   query: Callable[[ProjectionStore], Awaitable[T]], *, now: datetime | None = None) -> T:
        """``query`` on ``pool``'s read models as of ``at`` (rebuilt if not kept)."""
        last = await self._resolve(log, topic, partition, pool, at, now)
        model = await self._model(log, (log.url, topic, partition, pool, last))
        try:
            async with model.gate:  # a release closing the connections finishes first
                pass
            return await query(model.store)
        finally:
            await model.release()

    async def _resolve(self, log: EventLog, topic: str, partition: int, pool: str, at: AsOf,
                       now: datetime | None) -> int:
        if at.time is None:
            return await resolve(log, topic, partition, at, pool=pool, limit=MAX_EVENTS)
        key = (log.url, topic, partition, pool, at.time)
        last = self._times.get(key)
        if last is not None:
            self._times.move_to_end(key)
            return last
        last, final = await _point(log, topic, partition, at, pool, now, MAX_EVENTS)
        if final:
            self._times[key] = last
            while len(self._times) > _TIMES_KEPT:
                self._times.popitem(last=False)
        return last

    async def _model(self, log: EventLog, key: Key) -> _Model:
        """The kept model for ``key``, rebuilt if absent; counted as in use until ``release``."""
        model = self._models.get(key)
        if model is not None:  # kept: no wait for a rebuild of another point
            self._models.move_to_end(key)
            model.readers += 1
            return model
        async with self._lock:  # one rebuild at a time: a second read of the same point waits for it
            model = self._models.get(key)
            if model is None:
                model = await self._build(log, key)
                self._models[key] = model
                while len(self._models) > self.size:
                    _, old = self._models.popitem(last=False)
                    old.evicted = True
                    old.readers += 1
                    await old.release()  # now, or when its last read is done
            else:
                self._models.move_to_end(key)
            model.readers += 1
            return model

    async def _build(self, log: EventLog, key: Key) -> _Model:
        _, topic, partition, pool, last = key
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="agentbus-as-of-"))
            # Removed when this object goes, or at exit: never left behind, never a warning.
            weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        path = self._dir / f"{uuid.uuid4().hex}.db"
        model = _Model(path, ProjectionStore(f"sqlite+aiosqlite:///{path}"), readers=1)
        await model.store.start()
        try:
            await rebuild(LogAsOf(log, topic, {partition: last}, pool), model.store, topic)
        except BaseException:
            model.evicted = True
            await model.release()
            raise
        model.readers = 0
        await model.store.engine.dispose()
        self.builds += 1
        return model
