"""Export a topic to, and import it from, lz4-frame compressed NDJSON files.

One line per record: the record's value bytes (the CloudEvents JSON) with its hash chain value in
front as CloudEvents extension attributes (``events.chain``), so any tool reads the file with
``lz4cat file | jq`` and ``agentbus audit verify --file`` checks it alone. Works over the EventLog
port, so it serves every adapter.

Import must never append part of a bad file: the whole file is decompressed, its chain verified
and every line validated first, and a malformed line, a truncated frame or a broken chain fails
naming where, before anything is appended. ``force`` imports a file whose chain does not verify
(or that has none): the import then appends an ``agentbus.import`` record saying so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import lz4.frame
import orjson

from contracts import DEFAULT_POOL, SYSTEM_POOL, new_id, utcnow
from events.chain import GENESIS, chain_at, export_line, link, parse_line, verify_export
from events.codec import DecodeError, decode, to_record
from events.log import Commit, EventLog, Headers, Record, StoredRecord, TransactionalLog, partition_for

Progress = Callable[[int], object]

# Records per append on import: one group-committed transaction each, bounded memory per call.
IMPORT_BATCH = 1000
_READ_LIMIT = 1000


class ImportFileError(ValueError):
    """The import file is unreadable or has a line that is not a valid event."""


# The consumer group whose partition writers append imports on a TransactionalLog (Kafka), so the
# records carry the chain like the decider's; the offset it commits means nothing.
IMPORT_GROUP = "agentbus-import"
# The type of the record a forced import appends (not a domain event: no decider reads it).
FORCED_IMPORT_TYPE = "agentbus.import"


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import did: records appended, skipped as already present, and whether forced."""

    appended: int
    duplicates: int
    forced: str | None = None  # why the chain did not verify, when imported anyway


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
            prev = await chain_at(log, topic, partition, from_offset) if from_offset else GENESIS
            lines = ChainedLines(prev)
            while True:
                batch = await log.read(topic, partition, offset, _READ_LIMIT)
                if not batch:
                    break
                out.write(lines.ndjson(batch))
                count += len(batch)
                offset = batch[-1].offset + 1
                if progress is not None:
                    progress(len(batch))
    return count


class ChainedLines:
    """Export lines of one partition, read in order: each record's value with its chain value."""

    def __init__(self, prev: bytes) -> None:
        self.prev = prev  # the chain value before the next record
        self.first = True

    def ndjson(self, records: Sequence[StoredRecord]) -> bytes:
        """The lines of ``records`` (consecutive, after the ones already given), newline-ended."""
        out = self.lines(records)
        out.append(b"")
        return b"\n".join(out)

    def lines(self, records: Sequence[StoredRecord]) -> list[bytes]:
        """One line per record, without newlines (see ``ndjson``).

        A record the log stored without a chain value (a Kafka topic written before chains) gets
        its value recomputed, as ``events.chain.verify_log`` does.
        """
        out = []
        for rec in records:
            if b"\n" in rec.value:
                # A raw newline would split the record; JSON never needs one.
                raise ValueError(f"{rec.topic}[{rec.partition}]@{rec.offset}: value contains a newline")
            chain = rec.chain if rec.chain is not None else link(self.prev, rec.value)
            out.append(export_line(rec, chain, self.prev if self.first else None))
            self.prev, self.first = chain, False
        return out


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, stored value: the line without its chain attributes) of each non-blank line."""
    try:
        with lz4.frame.open(path, mode="rb") as src:
            for number, line in enumerate(src, start=1):
                line = line.rstrip(b"\n")
                if line.strip():
                    yield number, parse_line(line).value
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
    force: bool = False,
) -> ImportResult:
    """Append every event in ``path`` to ``topic``; ids already there are skipped and counted.

    Refuses (ImportFileError) a file whose chain does not verify unless ``force``.
    """
    source = Path(path)
    # Two passes: validate everything (keeping only key, id and headers in memory), then
    # append the exact stored bytes, so values round-trip byte for byte.
    meta = _validate(source)
    report = verify_export(source, topic)
    forced = None
    if not report.ok:
        assert report.mismatch is not None
        if not force:
            raise ImportFileError(f"{source}: the hash chain does not verify: {report.mismatch.describe()};"
                                  " nothing imported (--force imports it anyway, recorded as forced)")
        forced = report.mismatch.describe()
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
    if forced is not None:
        note = {"specversion": "1.0", "id": new_id(), "source": "agentbus/import", "type": FORCED_IMPORT_TYPE,
                "time": utcnow().isoformat(), "pool": SYSTEM_POOL, "datacontenttype": "application/json",
                "data": {"file": str(source), "appended": appended, "duplicates": duplicates,
                         "forced": True, "chain_error": forced}}
        await _append(log, topic, [Record(key=SYSTEM_POOL, value=orjson.dumps(note))], None)
    return ImportResult(appended, duplicates, forced)


async def _append(
    log: EventLog, topic: str, chunk: list[Record], progress: Progress | None
) -> tuple[int, int]:
    if isinstance(log, TransactionalLog):
        # Through each partition's own writer, so the records carry the chain (see IMPORT_GROUP).
        n = await log.partitions(topic)
        log.chain(topic)
        parts: dict[int, list[Record]] = {}
        for rec in chunk:
            parts.setdefault(partition_for(rec.key, n), []).append(rec)
        duplicates = 0
        for p, recs in parts.items():
            await log.claim(IMPORT_GROUP, topic, p)
            try:
                done = await log.append(topic, recs, partition=p, commit=Commit(IMPORT_GROUP, topic, p, 0))
            finally:
                await log.release(IMPORT_GROUP, topic, p)
            duplicates += sum(1 for pos in done if pos.duplicate)
    else:
        duplicates = sum(1 for pos in await log.append(topic, chunk) if pos.duplicate)
    if progress is not None:
        progress(len(chunk))
    return len(chunk) - duplicates, duplicates
