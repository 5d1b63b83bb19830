"""Export a topic to, and import it from, lz4-frame compressed NDJSON files.

One line per record: the record's value bytes exactly (the CloudEvents JSON), so any tool reads
the file with ``lz4cat file | jq``. Works over the EventLog port, so it serves every adapter.

Import must never append part of a bad file: the whole file is decompressed and validated first,
and a malformed line or a truncated frame fails naming where, before anything is appended.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import lz4.frame

from contracts import DEFAULT_POOL
from events.codec import DecodeError, decode, to_record
from events.log import EventLog, Headers, Record, StoredRecord

Progress = Callable[[int], object]

# Records per append on import: one group-committed transaction each, bounded memory per call.
IMPORT_BATCH = 1000
_READ_LIMIT = 1000


class ImportFileError(ValueError):
    """The import file is unreadable or has a line that is not a valid event."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import did: records appended, and records skipped as already present."""

    appended: int
    duplicates: int


async def export_log(
    log: EventLog,
    topic: str,
    path: str | Path,
    *,
    from_offset: int = 0,
    progress: Progress | None = None,
) -> int:
    """Write ``topic`` (every partition, partition then offset order) to ``path``; the count."""
    count = 0
    with lz4.frame.open(Path(path), mode="wb") as out:
        for partition in range(await log.partitions(topic)):
            offset = from_offset
            while True:
                batch = await log.read(topic, partition, offset, _READ_LIMIT)
                if not batch:
                    break
                out.write(ndjson(batch))
                count += len(batch)
                offset = batch[-1].offset + 1
                if progress is not None:
                    progress(len(batch))
    return count


def ndjson(records: Sequence[StoredRecord]) -> bytes:
    """The export lines of ``records``: each record's value exactly as stored, then a newline."""
    for rec in records:
        if b"\n" in rec.value:
            # A raw newline would split the record; JSON never needs one.
            raise ValueError(f"{rec.topic}[{rec.partition}]@{rec.offset}: value contains a newline")
    return b"".join([rec.value + b"\n" for rec in records])


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line without its newline) for each non-blank line; ImportFileError."""
    try:
        with lz4.frame.open(path, mode="rb") as src:
            for number, line in enumerate(src, start=1):
                line = line.rstrip(b"\n")
                if line.strip():
                    yield number, line
    except (RuntimeError, EOFError) as exc:
        # lz4 reports a damaged frame as RuntimeError and a truncated one as EOFError.
        raise ImportFileError(f"{path}: not a complete lz4 frame file: {exc}") from exc


def _validate(path: Path) -> list[tuple[str, str, Headers]]:
    """Decode every line first (key, id, headers per line), so a bad file appends nothing."""
    meta: list[tuple[str, str, Headers]] = []
    for number, line in _lines(path):
        try:
            env = decode(line)
        except DecodeError as exc:
            raise ImportFileError(f"{path}: line {number}: {exc}") from exc
        # to_record gives the id and headers this service writes; the key is the event's pool.
        rec = to_record(env)
        meta.append((env.pool or DEFAULT_POOL, env.id, rec.headers))
    return meta


async def import_log(
    log: EventLog,
    topic: str,
    path: str | Path,
    *,
    progress: Progress | None = None,
) -> ImportResult:
    """Append every event in ``path`` to ``topic``; ids already there are skipped and counted."""
    source = Path(path)
    # Two passes: validate everything (keeping only key, id and headers in memory), then
    # append the exact line bytes, so values round-trip byte for byte.
    meta = _validate(source)
    await log.partitions(topic)  # UnknownTopic before anything is appended
    appended = duplicates = 0
    chunk: list[Record] = []
    lines = _lines(source)
    for (key, rid, headers), (_, line) in zip(meta, lines, strict=True):
        chunk.append(Record(key=key, value=line, id=rid, headers=headers))
        if len(chunk) == IMPORT_BATCH:
            a, d = await _append(log, topic, chunk, progress)
            appended, duplicates, chunk = appended + a, duplicates + d, []
    if chunk:
        a, d = await _append(log, topic, chunk, progress)
        appended, duplicates = appended + a, duplicates + d
    return ImportResult(appended, duplicates)


async def _append(
    log: EventLog, topic: str, chunk: list[Record], progress: Progress | None
) -> tuple[int, int]:
    duplicates = sum(1 for pos in await log.append(topic, chunk) if pos.duplicate)
    if progress is not None:
        progress(len(chunk))
    return len(chunk) - duplicates, duplicates
