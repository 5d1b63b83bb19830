"""How a record becomes a SQLite log row and back again: routing, headers, codec, checksum (no I/O).

Any failure to rebuild a record is CorruptRecord naming its position, never a skip.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from typing import Any
from zlib import crc32

import lz4.block
import orjson

from events.log import CorruptRecord, Headers, Record, StoredRecord, Unreadable, routed

__all__ = ["CODEC_LZ4", "CODEC_RAW", "COMPRESS_MAX_RATIO", "COMPRESS_MIN_BYTES", "Row", "to_rows"]

CODEC_RAW = 0
CODEC_LZ4 = 1
# Values this large are worth compressing. Below it, every consumer paying lz4 on every read
# costs more than the space saved (measured: events are mostly well under 2 KiB).
COMPRESS_MIN_BYTES = 2048
# Keep the compressed form only when it saves at least 10% (otherwise reads pay for nothing).
COMPRESS_MAX_RATIO = 0.9

# (partition, id, key, stored value, codec, encoded headers, crc of the original value,
#  the original value: what the chain covers)
Row = tuple[int, str | None, str, bytes, int, bytes | None, int, bytes]


def to_rows(records: Sequence[Record], partition: int | None, partitions: int) -> list[Row]:
    """Route, checksum, compress and encode on the caller's turn, so the writer only numbers."""
    rows: list[Row] = []
    compress = lz4.block.compress
    for p, rec in routed(records, partition, partitions):
        original = value = bytes(rec.value)
        crc = crc32(value)
        codec = CODEC_RAW
        if len(value) >= COMPRESS_MIN_BYTES:
            packed = compress(value, store_size=True)
            if len(packed) <= len(value) * COMPRESS_MAX_RATIO:
                value, codec = packed, CODEC_LZ4
        rows.append(
            (p, rec.id, rec.key, value, codec, _encode_headers(rec.headers) if rec.headers else None, crc,
             original)
        )
    return rows


def _encode_headers(headers: Headers) -> bytes:
    # JSON keeps headers readable with the sqlite3 shell; non-UTF-8 values go as base64 triples.
    out: list[tuple[str, ...]] = []
    for name, value in headers:
        try:
            out.append((name, value.decode()))
        except UnicodeDecodeError:
            out.append((name, base64.b64encode(value).decode(), "b64"))
    return orjson.dumps(out)


def _decode_headers(raw: bytes) -> Headers:
    items = orjson.loads(raw)
    try:
        # Fast path (reads are hot): every value was UTF-8, so every item is a pair.
        return tuple([(name, value.encode()) for name, value in items])
    except ValueError:
        return tuple(
            (h[0], h[1].encode()) if len(h) == 2 else (h[0], base64.b64decode(h[1])) for h in items
        )


def _original(value: bytes, codec: int, crc: int) -> bytes:
    """The value as appended: decompressed, its checksum checked (ValueError or lz4's error if not)."""
    if codec == CODEC_LZ4:
        value = lz4.block.decompress(value)
    elif codec != CODEC_RAW:
        raise ValueError(f"unknown codec {codec!r}")
    if crc32(value) != crc:
        raise ValueError("checksum mismatch")
    return value


def _to_stored(topic: str, partition: int, rows: Iterable[Any]) -> list[StoredRecord]:
    out: list[StoredRecord] = []
    append = out.append
    for offset, key, value, codec, rid, headers, crc, ts, chain in rows:
        try:
            value = _original(value, codec, crc)
            hdrs = _decode_headers(headers) if headers is not None else ()
        except Exception as exc:  # any failure to rebuild the record is corruption, never a skip
            raise CorruptRecord(topic, partition, offset, f"{type(exc).__name__}: {exc}") from exc
        append(StoredRecord(topic, partition, offset, key, value, rid, hdrs, ts, chain))
    return out


def _salvaged(topic: str, partition: int, rows: Iterable[Any]) -> list[StoredRecord | Unreadable]:
    """``_to_stored``, except that a row it cannot rebuild comes as ``Unreadable``, as stored: for
    the export that repairs a log, which must copy every record, the bad one included."""
    out: list[StoredRecord | Unreadable] = []
    for row in rows:
        try:
            out.extend(_to_stored(topic, partition, [row]))
        except CorruptRecord as exc:
            offset, _, stored, codec, _, _, _, _, chain = row
            value: bytes | None = stored if codec == CODEC_RAW else None
            if codec == CODEC_LZ4:
                try:
                    value = lz4.block.decompress(stored)
                except Exception:  # nothing to rebuild: the stored bytes alone go out
                    value = None
            out.append(Unreadable(topic, partition, offset, bytes(stored), codec, chain, exc.reason, value))
    return out


def _to_values(topic: str, partition: int, rows: Iterable[Any]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    append = out.append
    for offset, value, codec, crc in rows:
        try:
            append((offset, _original(value, codec, crc)))
        except Exception as exc:  # as in _to_stored: corruption, never a skip
            raise CorruptRecord(topic, partition, offset, f"{type(exc).__name__}: {exc}") from exc
    return out
