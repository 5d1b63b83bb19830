"""The EventLog port: an append-only, partitioned log with consumer-group offsets.

Adapters (``events.sqlite``, ``events.kafka``) implement it side by side and are chosen by URL
(``events.open_log``). This module holds only the shapes; it must never do I/O.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Sequence
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


class CorruptRecord(LogError):
    """A stored record cannot be read. Names its position; it is never silently skipped."""

    def __init__(self, topic: str, partition: int, offset: int, reason: str) -> None:
        super().__init__(f"corrupt record at {topic}[{partition}]@{offset}: {reason}")
        self.topic, self.partition, self.offset, self.reason = topic, partition, offset, reason


def partition_for(key: str, partitions: int) -> int:
    """Stable key -> partition mapping shared by every adapter (CRC-32, not Python's hash)."""
    if partitions <= 1:
        return 0
    return zlib.crc32(key.encode()) % partitions


@runtime_checkable
class EventLog(Protocol):
    """What every log adapter provides."""

    url: str

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
