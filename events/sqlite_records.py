"""How a SQLite log row becomes a record again: headers, codec, checksum (no I/O).

Any failure to rebuild a record is CorruptRecord naming its position, never a skip.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any
from zlib import crc32

import lz4.block
import orjson

from events.log import CorruptRecord, Headers, StoredRecord

__all__ = ["CODEC_LZ4", "CODEC_RAW"]

CODEC_RAW = 0
CODEC_LZ4 = 1


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


def _to_values(topic: str, partition: int, rows: Iterable[Any]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    append = out.append
    for offset, value, codec, crc in rows:
        try:
            append((offset, _original(value, codec, crc)))
        except Exception as exc:  # as in _to_stored: corruption, never a skip
            raise CorruptRecord(topic, partition, offset, f"{type(exc).__name__}: {exc}") from exc
    return out
