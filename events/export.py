"""Export a topic to, and import it from, lz4-frame compressed NDJSON files.

One line per record: the record's value bytes (the CloudEvents JSON) with its hash chain value in
front as CloudEvents extension attributes (``events.chain``), so any tool reads the file with
``lz4cat file | jq`` and ``agentbus audit verify --file`` checks it alone. Works over the EventLog
port, so it serves every adapter.

Export copies every record as stored, one the log cannot read back included (marked, see
``events.chain.unreadable_line``): the file is how such a log is repaired (README: Repairing a log).

Import must never append part of a bad file: the whole file is decompressed, its chain verified
and every line validated first, and a malformed line, a truncated frame or a broken chain fails
naming where, before anything is appended. So does a file whose records do not continue the log
(``_discontinuities``): a partial export into an empty log, or a file after another it does not
follow. ``force`` imports a file refused for either (or that has no chain): the import then appends
an ``agentbus.import`` record saying so. A line still marked as a record the log could not read is
never imported, forced or not, unless its value is the original one.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import lz4.frame
import orjson

from contracts import DEFAULT_POOL, SYSTEM_POOL, new_id, utcnow
from events.chain import (
    GENESIS,
    ExportLine,
    chain_at,
    export_line,
    export_lines,
    link,
    parse_line,
    unreadable_line,
    verify_export,
)
from events.codec import DecodeError, decode, to_record
from events.log import (
    Commit,
    CorruptRecord,
    EventLog,
    Headers,
    Record,
    SalvagingLog,
    StoredRecord,
    TransactionalLog,
    Unreadable,
    partition_for,
)

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
    """Write ``topic`` (every partition, partition then offset order) to ``path``; the count.

    Every record as stored: one the log cannot read back goes out marked (``chaincorrupt``, see
    ``events.chain.unreadable_line``) where the log can hand it out (``SalvagingLog``), since this
    file is how a log with a bad record is repaired. The file appears whole or not at all: it is
    written under a temporary name beside ``path`` and renamed once complete.
    """
    count = 0
    with _written(Path(path)) as out:
        for partition in range(await log.partitions(topic)):
            offset = from_offset
            prev = await chain_at(log, topic, partition, from_offset) if from_offset else GENESIS
            lines = ChainedLines(prev)
            while True:
                batch: Sequence[StoredRecord | Unreadable]
                try:
                    batch = await log.read(topic, partition, offset, _READ_LIMIT)
                except CorruptRecord:
                    if not isinstance(log, SalvagingLog):
                        raise
                    batch = await log.read_stored(topic, partition, offset, _READ_LIMIT)
                if not batch:
                    break
                out.write(lines.ndjson(batch))
                count += len(batch)
                offset = batch[-1].offset + 1
                if progress is not None:
                    progress(len(batch))
    return count


@contextlib.contextmanager
def _written(path: Path) -> Iterator[BinaryIO]:
    """An lz4 frame file that becomes ``path`` only when the block ends without an error.

    A failed export (an unwritable place, a full disk, an error reading the log) must not leave a
    file that looks like an export of nothing, nor replace a good one. A path that exists and is not
    a regular file (a pipe, ``/dev/stdout``) is written in place.
    """
    if path.exists() and not path.is_file():
        with lz4.frame.open(path, mode="wb") as out:
            yield out
        return
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        with open(partial, "xb") as raw, lz4.frame.open(raw, mode="wb") as out:
            yield out
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


class ChainedLines:
    """Export lines of one partition, read in order: each record's value with its chain value."""

    def __init__(self, prev: bytes) -> None:
        self.prev = prev  # the chain value before the next record
        self.first = True

    def ndjson(self, records: Sequence[StoredRecord | Unreadable]) -> bytes:
        """The lines of ``records`` (consecutive, after the ones already given), newline-ended."""
        out = self.lines(records)
        out.append(b"")
        return b"\n".join(out)

    def lines(self, records: Sequence[StoredRecord | Unreadable]) -> list[bytes]:
        """One line per record, without newlines (see ``ndjson``).

        A record the log stored without a chain value (a Kafka topic written before chains) gets
        its value recomputed, as ``events.chain.verify_log`` does. A record whose value cannot be a
        line as it is (not a JSON object, or holding a newline: a JSON value never needs one) goes
        out marked, as one the log could not read back does, rather than stopping the export.
        """
        out = []
        for rec in records:
            prev = self.prev if self.first else None
            if isinstance(rec, Unreadable):
                value = rec.value if rec.value is not None else rec.stored
                chain = rec.chain if rec.chain is not None else link(self.prev, value)
                out.append(unreadable_line(rec, chain, prev))
            else:
                chain = rec.chain if rec.chain is not None else link(self.prev, rec.value)
                try:
                    if b"\n" in rec.value:
                        raise ValueError("the value contains a newline")
                    out.append(export_line(rec, chain, prev))
                except ValueError as exc:
                    # Codec 0: the stored bytes are the value as appended.
                    odd = Unreadable(rec.topic, rec.partition, rec.offset, rec.value, 0, chain, str(exc),
                                     rec.value)
                    out.append(unreadable_line(odd, chain, prev))
            self.prev, self.first = chain, False
        return out


def _items(path: Path) -> Iterator[tuple[int, ExportLine]]:
    """(line number, the line split: ``events.chain.parse_line``) of each non-blank line."""
    try:
        for number, line in export_lines(path):
            yield number, parse_line(line)
    except (RuntimeError, EOFError) as exc:
        # lz4 reports a damaged frame as RuntimeError and a truncated one as EOFError.
        raise ImportFileError(f"{path}: not a complete lz4 frame file: {exc}") from exc


@dataclass(frozen=True, slots=True)
class _Start:
    """Where a partition's lines start in the file: the first offset and the chain value before it
    (None: the line names none and is not offset 0)."""

    line: int
    offset: int
    prev: bytes | None


@dataclass(slots=True)
class _Scan:
    """What reading every line of a file before importing it found (nothing is appended before)."""

    meta: list[tuple[str, str, Headers]] = field(default_factory=list)  # key, id, headers per line
    starts: dict[int, _Start] = field(default_factory=dict)  # the file's partition -> its first line
    # The file's partition -> the offset of its line whose chain value is the log's head there.
    meets: dict[int, int] = field(default_factory=dict)
    ends: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # partition -> its last offset, chain
    routing: str | None = None  # the first line whose pool goes to another partition in this log


def _scan(path: Path, partitions: int, heads: dict[int, tuple[int, bytes]]) -> _Scan:
    """Decode every line first (key, id, headers per line), so a bad file appends nothing; and note
    where each partition starts, and where the file meets each partition's head in the log."""
    scan = _Scan()
    last: dict[int, bytes] = {}  # the chain value of the file's previous line, per partition
    for number, item in _items(path):
        if item.corrupt is not None:
            _check_marked(path, number, item, last)
        try:
            env = decode(item.value)
        except DecodeError as exc:
            raise ImportFileError(f"{path}: line {number}: {exc}") from exc
        # to_record gives the id and headers this service writes; the key is the event's pool.
        rec = to_record(env)
        key = env.pool or DEFAULT_POOL
        scan.meta.append((key, env.id, rec.headers))
        p, offset, chain = item.partition, item.offset, item.chain
        if p is None or offset is None or chain is None:
            continue  # no chain: the chain check refuses the file (unless forced)
        if p not in scan.starts:
            scan.starts[p] = _Start(number, offset, GENESIS if offset == 0 else item.prev)
        last[p] = chain
        scan.ends[p] = (offset, chain)
        end, head = heads.get(p, (0, GENESIS))
        if end and chain == head:
            scan.meets[p] = offset
        routed = partition_for(key, partitions)
        if scan.routing is None and routed != p:
            scan.routing = (f"line {number}: its pool {key!r} goes to partition {routed} of this log "
                            f"({partitions} partitions), not to partition {p} as in the file: the file comes "
                            "from a log with another number of partitions; import it into a log with as many "
                            "(--partitions)")
    return scan


def _check_marked(path: Path, number: int, item: ExportLine, last: dict[int, bytes]) -> None:
    """A line still marked as a record the log could not read back is imported only when its value
    is the original one (its chain value matches): else it is the bad record itself, which the
    operator was to correct (dropping the mark) or remove, and even --force does not import it."""
    where = f"partition {item.partition}, offset {item.offset},"
    if item.stored is None and item.chain is not None and item.partition is not None:
        prev = last.get(item.partition)
        if prev is None:
            prev = GENESIS if item.offset == 0 else item.prev
        if prev is not None and link(prev, item.value) == item.chain:
            return  # only its checksum was damaged: the value is the one appended
    raise ImportFileError(
        f"{path}: line {number}: the record at {where} could not be read from the log ({item.corrupt}) and "
        "is still as exported: correct its value and drop its \"chaincorrupt\" attribute, or remove the "
        "line (README: Repairing a log); nothing imported")


async def _heads(log: EventLog, topic: str, partitions: int) -> dict[int, tuple[int, bytes]]:
    """Each partition's end offset and the chain value there (``GENESIS`` when empty)."""
    out = {}
    for p in range(partitions):
        end = await log.end_offset(topic, p)
        out[p] = (end, await chain_at(log, topic, p, end) if end else GENESIS)
    return out


async def _held(log: EventLog, topic: str, scan: _Scan, heads: dict[int, tuple[int, bytes]]) -> set[int]:
    """The file's partitions whose every line the log holds already, at the same offset (an older
    export of this log): nothing of them would be appended where the log skips them (dedupes_ids)."""
    held = set()
    if log.dedupes_ids:
        for p, (offset, chain) in scan.ends.items():
            if p in heads and offset < heads[p][0] and await chain_at(log, topic, p, offset + 1) == chain:
                held.add(p)
    return held


def _discontinuities(scan: _Scan, heads: dict[int, tuple[int, bytes]], dedupes: bool,
                     held: set[int]) -> list[str]:
    """Why the file's records would not continue the log, partition by partition (none: they do).

    A partition's lines continue the log when the chain value before them is the log's head there
    (``GENESIS`` for an empty one). A file that holds the log's records and goes on from them (its
    own export, imported again), or that the log holds already (``held``), continues it too where
    the log skips the records it has (``dedupes_ids``). Anything else would put records after ones
    they do not follow: a partial export into an empty log would start without its beginning, and
    a file imported after another would land out of order.
    """
    out = [scan.routing] if scan.routing is not None else []
    for p, start in sorted(scan.starts.items()):
        end, head = heads.get(p, (0, GENESIS))
        if start.prev == head or p in held:
            continue
        if p in scan.meets:
            if dedupes:
                continue
            out.append(f"partition {p}: the file's records up to offset {scan.meets[p]} are in the log "
                       "already, and this log cannot skip them (it does not dedupe record ids): they would "
                       f"be appended twice; export from offset {scan.meets[p] + 1} (--from) and import that")
        elif end == 0:
            out.append(f"partition {p}: the file starts at offset {start.offset} (line {start.line}) and "
                       f"the log's partition {p} is empty: the records before offset {start.offset} are not "
                       "in the file (a partial export); import the whole export, or what comes before first")
        else:
            out.append(f"partition {p}: the file's records do not continue the log: its partition {p} "
                       f"ends at offset {end} (chain value {head.hex()}), and the file's start at offset "
                       f"{start.offset} (line {start.line}) after "
                       f"{'an unknown history' if start.prev is None else 'chain value ' + start.prev.hex()}:"
                       " they would land after records they do not follow")
    return out


async def import_log(
    log: EventLog,
    topic: str,
    path: str | Path,
    *,
    progress: Progress | None = None,
    force: bool = False,
) -> ImportResult:
    """Append every event in ``path`` to ``topic``; ids already there are skipped and counted.

    Refuses (ImportFileError) a file whose chain does not verify, or whose records do not continue
    the log (each partition's first line must follow the log's last record there), unless ``force``.
    """
    source = Path(path)
    partitions = await log.partitions(topic)  # UnknownTopic before anything is appended
    heads = await _heads(log, topic, partitions)
    # Two passes: validate everything (keeping only key, id and headers in memory), then
    # append the exact stored bytes, so values round-trip byte for byte.
    scan = _scan(source, partitions, heads)
    report = verify_export(source, topic)
    problems = []
    if not report.ok:
        assert report.mismatch is not None
        problems.append(f"the hash chain does not verify: {report.mismatch.describe()}")
    problems += _discontinuities(scan, heads, log.dedupes_ids, await _held(log, topic, scan, heads))
    forced = None
    if problems:
        if not force:
            raise ImportFileError(f"{source}: {'; '.join(problems)}; nothing imported (--force imports it "
                                  "anyway, recorded as forced)")
        forced = "; ".join(problems)
    appended = duplicates = 0
    chunk: list[Record] = []
    items = _items(source)
    for (key, rid, headers), (_, item) in zip(scan.meta, items, strict=True):
        chunk.append(Record(key=key, value=item.value, id=rid, headers=headers))
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
