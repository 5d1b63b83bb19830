"""How a Record travels as a plain Kafka record, and how a fetched one becomes a StoredRecord.

Key = the Record key (the pool) as UTF-8, value = the Record value unchanged (the CloudEvents
JSON), headers = the Record headers plus ``("ce_id", id)`` when the record has an id and no
``ce_id`` header yet; any Kafka tool reads it. ``StoredRecord.id`` is read back from the
``ce_id`` header (so that header shows in ``StoredRecord.headers``); the ``agentbus-chain`` header
a partition writer adds becomes ``StoredRecord.chain``. Records are sent with an
explicit partition, ``partition_for(key, n)`` or the caller's, never Kafka's partitioner.

This module must never skip a record it cannot read: no key, no value, a non-UTF-8 key or id
raises CorruptRecord naming its position.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from events.chain import CHAIN_HEADER
from events.log import CorruptRecord, Record, StoredRecord, routed

ID_HEADER = "ce_id"

# (topic, partition, key, value, headers) as sent
Row = tuple[str, int, bytes, bytes, list[tuple[str, bytes]]]


def prepare(topic: str, records: Sequence[Record], partition: int | None, partitions: int) -> list[Row]:
    """Route and encode on the caller's turn, so the writer only sends."""
    rows: list[Row] = []
    for p, rec in routed(records, partition, partitions):
        headers = [(name, bytes(value)) for name, value in rec.headers]
        if rec.id is not None and not any(name == ID_HEADER for name, _ in headers):
            headers.append((ID_HEADER, rec.id.encode()))
        rows.append((topic, p, rec.key.encode(), bytes(rec.value), headers))
    return rows


def to_stored(topic: str, partition: int, records: Iterable[Any]) -> list[StoredRecord]:
    """aiokafka's ConsumerRecords of one partition as StoredRecords; CorruptRecord if unreadable."""
    out: list[StoredRecord] = []
    append = out.append
    for r in records:
        key, value = r.key, r.value
        try:
            if key is None:
                raise ValueError("record has no key (the pool)")
            if value is None:
                raise ValueError("record has no value (a tombstone)")
            rid = chain = None
            headers: tuple[tuple[str, bytes], ...] = ()
            if r.headers:
                kept = []
                for name, v in r.headers:
                    if name == CHAIN_HEADER:
                        chain = bytes.fromhex(bytes(v).decode())
                        continue
                    if name == ID_HEADER and rid is None:
                        rid = bytes(v).decode()
                    kept.append((name, bytes(v)))
                headers = tuple(kept)
            append(StoredRecord(topic, partition, r.offset, key.decode(), value, rid, headers, r.timestamp,
                                chain))
        except Exception as exc:  # any failure to rebuild the record is corruption, never a skip
            raise CorruptRecord(topic, partition, r.offset, f"{type(exc).__name__}: {exc}") from exc
    return out
