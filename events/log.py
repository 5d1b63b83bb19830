"""The EventLog port: an append-only, partitioned log with consumer-group offsets.

Adapters (``events.sqlite``, ``events.kafka``) implement it side by side and are chosen by URL
(``events.open_log``). ``EventLog`` is what every adapter provides; a capability only some have
is a protocol of its own (``TransactionalLog``) or a declared flag (``EventLog.dedupes_ids``), so
callers check for it with ``isinstance`` instead of guessing at attributes or keyword arguments.

This module holds the shapes and the argument rules every adapter applies (``check_*``); it must
never do I/O.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Record:
    """A record to append. ``key`` picks the partition (the pool); ``id`` is unique per topic."""

    key: str
    value: bytes
    id: str | None = None
    headers: Headers = ()


class StoredRecord(NamedTuple):
    """A record as read back, with its position (a tuple: built once per record read, cheaply)."""

    topic: str
    partition: int
    offset: int
    key: str
    value: bytes
    id: str | None
    headers: Headers
    timestamp_ms: int
    # The partition's hash chain at this record (events.chain): SHA-256 over the previous
    # record's chain value and this value; None where the adapter writes no chain for it.
    chain: bytes | None = None


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an appended record landed. ``duplicate``: its id was already in the topic there."""

    partition: int
    offset: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Commit:
    """A consumer-group offset (the next offset to read) committed atomically with an append."""

    group: str
    topic: str
    partition: int
    offset: int


class Extra(NamedTuple):
    """Records for another topic, written in the same transaction as a ``TransactionalLog`` append."""

    topic: str
    partition: int | None  # None routes each record by ``partition_for(key)``
    records: Sequence[Record]


class LogError(Exception):
    """Base class of log failures."""


class ConcurrencyError(LogError):
    """``expected_offset`` did not match the partition's end: someone else appended first."""

    def __init__(self, topic: str, partition: int, expected: int, actual: int) -> None:
        super().__init__(
            f"{topic}[{partition}]: expected end offset {expected}, log is at {actual}"
        )
        self.topic, self.partition, self.expected, self.actual = topic, partition, expected, actual


class UnknownTopic(LogError):
    """The topic has not been created (``ensure_topic``)."""


# What an operator does about a record that cannot be read: the log is never edited in place.
REPAIR_HINT = (
    "to repair: stop the service, run `agentbus events export FILE` (it copies every record as "
    "stored, this one included and marked \"chaincorrupt\"), correct that line of FILE (`lz4cat FILE`; "
    "drop its \"chaincorrupt\" attribute) or remove it, and run `agentbus events import --force FILE` "
    "into a new data directory or topic prefix: the edit breaks the file's hash chain, and --force "
    "imports it anyway and records that it did (README: Repairing a log)"
)


class CorruptRecord(LogError):
    """A stored record cannot be read. Names its position and the way out; never silently skipped."""

    def __init__(self, topic: str, partition: int, offset: int, reason: str) -> None:
        super().__init__(f"corrupt record at {topic}[{partition}]@{offset}: {reason}; {REPAIR_HINT}")
        self.topic, self.partition, self.offset, self.reason = topic, partition, offset, reason


class Unreadable(NamedTuple):
    """A stored record that cannot be read back, as it is stored (``SalvagingLog.read_stored``)."""

    topic: str
    partition: int
    offset: int
    stored: bytes  # the value column as stored (compressed when ``codec`` says so)
    codec: int
    chain: bytes | None  # the chain value stored with it
    reason: str  # why it cannot be read (what ``CorruptRecord`` says)
    # The value as far as it could be rebuilt (decompressed, its checksum failing), or None.
    value: bytes | None


def partition_for(key: str, partitions: int) -> int:
    """Stable key -> partition mapping shared by every adapter (CRC-32, not Python's hash)."""
    if partitions <= 1:
        return 0
    return zlib.crc32(key.encode()) % partitions


def routed(records: Sequence[Record], partition: int | None, partitions: int) -> Iterator[tuple[int, Record]]:
    """Each record with its partition: ``partition`` if given, else its key's (``partition_for``)."""
    if partition is not None:
        for rec in records:
            yield partition, rec
        return
    route: dict[str, int] = {}
    for rec in records:
        p = route.get(rec.key)
        if p is None:
            p = route[rec.key] = partition_for(rec.key, partitions)
        yield p, rec


# -- argument rules shared by every adapter (checked before anything is written or read) ----------


def check_partition_count(partitions: int) -> None:
    """A topic has at least one partition."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")


def check_partition(topic: str, partition: int, partitions: int) -> None:
    """``partition`` is one of the ``partitions`` of ``topic``."""
    if not 0 <= partition < partitions:
        raise ValueError(f"{topic} has partitions 0..{partitions - 1}, not {partition}")


def check_routing(topic: str, partitions: int, partition: int | None, expected_offset: int | None) -> None:
    """An append's explicit partition exists; an ``expected_offset`` names its partition."""
    if partition is not None:
        check_partition(topic, partition, partitions)
    elif expected_offset is not None:
        raise ValueError("expected_offset needs an explicit partition")


def check_limit(limit: int) -> None:
    """A read returns at least one record."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")


@runtime_checkable
class EventLog(Protocol):
    """What every log adapter provides."""

    url: str

    @property
    def dedupes_ids(self) -> bool:
        """True when a record whose id is already in its topic is not appended again.

        The repeat is answered with the first position and ``Appended.duplicate``. False: ids are
        stored as given and a repeat is appended again (the decider drops repeated command ids).
        """

    async def start(self) -> None:
        """Open connections; idempotent."""

    async def close(self) -> None:
        """Flush pending appends and close."""

    async def ensure_topic(
        self, topic: str, partitions: int, *, retention_ms: int | None = None
    ) -> None:
        """Create the topic if absent (existing topics keep their partition count)."""

    async def partitions(self, topic: str) -> int:
        """Number of partitions of ``topic``; raises UnknownTopic."""

    async def append(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        partition: int | None = None,
        expected_offset: int | None = None,
        commit: Commit | None = None,
    ) -> list[Appended]:
        """Append atomically and durably; returns positions in order.

        ``partition`` None routes each record by ``partition_for(key)``. ``expected_offset``
        (needs ``partition``) fails with ConcurrencyError unless the partition ends there.
        ``commit`` stores a consumer-group offset in the same transaction as the records.
        """

    async def read(
        self, topic: str, partition: int, offset: int, limit: int = 1000
    ) -> list[StoredRecord]:
        """Records at ``offset`` and after, at most ``limit``, in order."""

    async def read_values(
        self, topic: str, partition: int, offset: int, limit: int = 1000
    ) -> list[tuple[int, bytes]]:
        """``read`` for replay: (offset, value) only, checked as ``read`` checks them."""

    async def read_chained(
        self, topic: str, partition: int, offset: int, limit: int = 1000
    ) -> list[tuple[int, bytes, bytes | None]]:
        """``read`` for verification: (offset, value, chain value) only."""

    async def end_offset(self, topic: str, partition: int) -> int:
        """The offset the next record appended to the partition will get."""

    async def commit(self, group: str, topic: str, partition: int, offset: int) -> None:
        """Store the next offset ``group`` will read from the partition."""

    async def committed(self, group: str, topic: str, partition: int) -> int:
        """The committed offset of ``group`` (0 when it never committed)."""

    async def wait(self, topic: str, partition: int, offset: int, timeout: float) -> bool:
        """Wait until a record at ``offset`` exists; False on timeout."""

    def subscribe(
        self, topic: str, partition: int, offset: int, *, limit: int = 1000
    ) -> AsyncIterator[list[StoredRecord]]:
        """Tail the partition from ``offset`` forever, yielding non-empty batches."""


@runtime_checkable
class FilteringLog(EventLog, Protocol):
    """A log that can skip, where it stores them, the records a reader does not want.

    A start-up reader that wants a few event types (the timers) or one pool's records (the
    subscriptions) out of a whole partition otherwise builds every record only to drop most of
    them. ``events.matching.read_matching`` uses this where the log has it and filters what
    ``read`` returns where it does not, so callers need not check.
    """

    async def read_matching(
        self, topic: str, partition: int, offset: int, end: int, *,
        types: frozenset[str] | None = None, key: str | None = None,
    ) -> list[StoredRecord]:
        """Records in [``offset``, ``end``), in order, whose key is ``key`` and whose ``ce_type``
        header is one of ``types`` (each when given). A record whose first header is not
        ``ce_type`` is returned whatever its type: the caller decodes it to find out. A superset
        of the wanted records, never fewer."""


@runtime_checkable
class TransactionalLog(EventLog, Protocol):
    """A log whose appends are transactions across topics, with one fenced writer per partition.

    A partition's writer commits one consumer group's offset of that partition; whoever claims it
    next fences the previous owner, whose later appends through it fail. Kafka provides this.
    """

    async def append(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        partition: int | None = None,
        expected_offset: int | None = None,
        commit: Commit | None = None,
        extra: Sequence[Extra] = (),
    ) -> list[Appended]:
        """``EventLog.append``, plus ``extra`` records for other topics in the same transaction.

        With ``partition`` and ``commit`` both given the append goes through the partition writer
        of ``commit`` (see ``claim``). Positions are returned for ``records`` only.
        """

    async def claim(self, group: str, topic: str, partition: int) -> None:
        """Become the only writer that commits ``group``'s offset of ``topic[partition]``.

        Fences any previous owner before returning, so what the caller reads next (committed
        offset, the log up to its end) can no longer change under it by a zombie's commit.
        """

    async def release(self, group: str, topic: str, partition: int) -> None:
        """Stop the partition writer of ``group``'s ``topic[partition]`` (after its queued appends)."""

    def chain(self, topic: str) -> None:
        """Have partition writers keep ``topic``'s hash chain (``events.chain``) on what they append.

        Only for a topic whose every record goes through partition writers (the events topic:
        its partitions' deciders), since each writer chains from the head it last wrote.
        """


@runtime_checkable
class SalvagingLog(EventLog, Protocol):
    """A log that can hand out a record it cannot read back, as stored, instead of failing.

    Only an export made to repair the log wants that (README: Repairing a log), so that the file
    holds every record and the operator decides what becomes of the bad one; every other reader
    stops at it (``CorruptRecord``), never skipping or guessing.
    """

    async def read_stored(
        self, topic: str, partition: int, offset: int, limit: int = 1000
    ) -> list[StoredRecord | Unreadable]:
        """``read``, except that a record that cannot be read back comes as ``Unreadable``."""
