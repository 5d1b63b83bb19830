"""The hash chain of a log partition, and the checks that prove a history was not altered.

Each record's chain value is ``SHA-256(previous chain value || value bytes)``, the first record's
previous value being ``GENESIS``. The value bytes are the CloudEvents JSON exactly as appended, so
the chain can be recomputed from the log, from an lz4 export, or from a backup, with nothing else.
Changing one byte of one record, deleting a record or swapping two changes the chain value of
that record and of every later one; the first record whose stored value does not match is where
the history was altered. A signed checkpoint (``services.audit``) pins a chain value, so even a
history rewritten with its chain recomputed is caught by whoever holds the public key.

Export lines carry each record's chain value as CloudEvents extension attributes put in front of
the event's own attributes (``{"chainhash": ..., "chainpartition": ..., "chainoffset": ...,``),
so ``lz4cat | jq`` still reads CloudEvents, and stripping that prefix restores the stored bytes.
A record the log could not read back is exported too, marked ``"chaincorrupt": "<why>"`` (and,
when not even its value could be rebuilt, as ``"chainstored"``, its stored bytes in base64), so
that an operator can correct or remove it (README: Repairing a log).

This module never writes: it computes and compares.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lz4.frame
import orjson

from events import chain_parallel
from events.chain_parallel import PREFIX, check_export, check_sqlite, workers
from events.log import CorruptRecord, EventLog, StoredRecord, Unreadable

GENESIS = bytes(32)
NO_CHAIN = "the record carries no chain value"
# Said of a record without a chain value in a log opened read-only before its one-time chaining.
_PENDING = (": the log was written before records kept a hash chain and has not been chained since (the "
            "service chains it, once, when it next opens the log for writing; verifying only reads it)")
# The Kafka record header that carries the chain value (hex, so Kafka tools print it).
CHAIN_HEADER = "agentbus-chain"
_READ_LIMIT = 2000


def link(prev: bytes, value: bytes) -> bytes:
    """The chain value of a record whose value is ``value``, after a record whose value is ``prev``."""
    h = hashlib.sha256(prev)
    h.update(value)
    return h.digest()


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The first record that does not match its chain."""

    topic: str
    partition: int
    offset: int
    expected: str | None  # hex of the recomputed value (None when it cannot be recomputed)
    found: str | None  # hex of the stored value (None when the record carries none)
    reason: str

    def describe(self) -> str:
        where = f"{self.topic}[{self.partition}]@{self.offset}: " if self.offset >= 0 else ""
        hashes = f" (expected {self.expected}, found {self.found})" if self.expected or self.found else ""
        return f"{where}{self.reason}{hashes}"


@dataclass(slots=True)
class ChainReport:
    """What a verification checked: records, each partition's head, and the first mismatch."""

    topic: str
    records: int = 0
    heads: dict[int, str] = field(default_factory=dict)  # partition -> hex chain value of its last record
    ends: dict[int, int] = field(default_factory=dict)  # partition -> next offset after the last checked
    mismatch: Mismatch | None = None
    seconds: float = 0.0
    legacy: int = 0  # unchained records before a partition's first chained one (Kafka, pre-chain)
    # The chain value at each wanted (partition, offset), as recomputed (for checkpoint checks).
    at: dict[tuple[int, int], str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.mismatch is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": self.ok,
            "topic": self.topic,
            "records": self.records,
            "heads": {str(p): h for p, h in sorted(self.heads.items())},
            "ends": {str(p): e for p, e in sorted(self.ends.items())},
            "seconds": round(self.seconds, 6),
            "events_per_s": round(self.records / self.seconds, 1) if self.seconds > 0 else None,
            "legacy": self.legacy,
        }
        m = self.mismatch
        out["mismatch"] = None if m is None else {
            "topic": m.topic, "partition": m.partition, "offset": m.offset,
            "expected": m.expected, "found": m.found, "reason": m.reason,
        }
        return out


class PartitionChecker:
    """Checks one partition's records in order, from a known previous chain value."""

    __slots__ = ("chained", "dense", "legacy", "next_offset", "partition", "prev", "topic")

    def __init__(self, topic: str, partition: int, prev: bytes | None, first_offset: int, *, dense: bool):
        self.topic, self.partition = topic, partition
        self.prev = prev  # None: the first record's own stored value is taken on trust
        self.next_offset = first_offset
        # Dense logs (SQLite) number records without gaps: a missing offset is a deleted record.
        # Kafka's offsets skip transaction markers, so there only the chain can tell.
        self.dense = dense
        self.chained = False  # a record with a stored chain value was seen
        self.legacy = 0  # unchained records before the first chained one (Kafka logs from before chains)

    def check(self, offset: int, value: bytes, found: bytes | None) -> Mismatch | None:
        """Check the next record; a Mismatch if it is not the record its chain says."""
        if found is None:
            if not self.dense and not self.chained:
                self.prev = link(self.prev or GENESIS, value)
                self.legacy += 1
                self.next_offset = offset + 1
                return None
            return Mismatch(self.topic, self.partition, offset, None, None, NO_CHAIN)
        if self.dense and offset != self.next_offset:
            # Named where the record is missing, not at the one after it.
            first, last = self.next_offset, offset - 1
            gap = f"offset {first} is" if first == last else f"offsets {first}-{last} are"
            return Mismatch(self.topic, self.partition, first, None, None,
                            f"{gap} missing (deleted): the next record stored is at offset {offset}")
        if self.prev is not None:
            expected = link(self.prev, value)
            if expected != found:
                return Mismatch(self.topic, self.partition, offset, expected.hex(), found.hex(),
                                "the value does not match its chain (altered, deleted or reordered records)")
        self.prev = found
        self.chained = True
        self.next_offset = offset + 1
        return None


async def chain_at(log: EventLog, topic: str, partition: int, position: int) -> bytes:
    """The chain value covering every record of the partition below ``position``.

    ``GENESIS`` for position 0. Kafka's offsets skip transaction markers, so this reads back from
    ``position`` until a record. Kafka records are immutable, so a topic written before chains
    existed keeps its unchained prefix: its chain is recomputed from the values (``legacy``), and
    the first chained record commits to it.
    """
    position = min(position, await log.end_offset(topic, partition))
    if position <= 0:
        return GENESIS
    step = 1
    start = position - 1
    while True:
        batch = [r for r in await log.read(topic, partition, start, min(position - start, _READ_LIMIT))
                 if r.offset < position]
        if batch:
            if batch[-1].chain is not None:
                return batch[-1].chain
            return await _recompute(log, topic, partition, position)
        if start == 0:
            return GENESIS
        step = min(step * 8, _READ_LIMIT)
        start = max(0, start - step)


async def _recompute(log: EventLog, topic: str, partition: int, position: int) -> bytes:
    prev, offset = GENESIS, 0
    while offset < position:
        batch = await log.read(topic, partition, offset, _READ_LIMIT)
        if not batch:
            break
        for rec in batch:
            if rec.offset >= position:
                return prev
            prev = rec.chain if rec.chain is not None else link(prev, rec.value)
        offset = batch[-1].offset + 1
    return prev


async def verify_log(
    log: EventLog, topic: str, *, from_offset: int = 0, dense: bool | None = None,
    want: frozenset[tuple[int, int]] = frozenset(), processes: int | None = None,
) -> ChainReport:
    """Recompute the chain of every partition of ``topic`` from ``from_offset`` to its end.

    Stops at the first record that does not match (or cannot be read) and names it. ``want``:
    (partition, offset) pairs whose chain values to report in ``ChainReport.at``. ``processes``:
    how many to check a long SQLite partition with (default: one per core; 1: this one alone).
    """
    import time

    started = time.perf_counter()
    report = ChainReport(topic)
    if dense is None:
        dense = type(log).__name__ == "SqliteLog"
    for partition in range(await log.partitions(topic)):
        prev = await chain_at(log, topic, partition, from_offset) if from_offset else GENESIS
        checker = PartitionChecker(topic, partition, prev, from_offset, dense=dense)
        offset = await _parallel_prefix(log, report, checker, want, processes or workers())
        while True:
            try:
                batch = await log.read_chained(topic, partition, offset, _READ_LIMIT)
            except CorruptRecord as exc:
                report.mismatch = Mismatch(topic, partition, exc.offset, None, None,
                                           f"the record cannot be read: {exc.reason}")
                break
            if not batch:
                break
            if _check_batch(report, checker, batch, want):
                break
            offset = batch[-1][0] + 1
        if checker.prev is not None and checker.next_offset > from_offset:
            report.heads[partition] = checker.prev.hex()
        report.ends[partition] = checker.next_offset
        report.legacy += checker.legacy
        if report.mismatch is not None:
            break
    m = report.mismatch
    if m is not None and m.reason == NO_CHAIN and getattr(log, "pending_chain", False):
        report.mismatch = dataclasses.replace(m, reason=NO_CHAIN + _PENDING)
    report.seconds = time.perf_counter() - started
    return report


async def _parallel_prefix(log: EventLog, report: ChainReport, checker: PartitionChecker,
                           want: frozenset[tuple[int, int]], processes: int) -> int:
    """Check a long SQLite partition on every core (``events.chain_parallel``); where to go on from.

    The one-pass loop takes over from there: after the records appended meanwhile, or from the
    start of the range that did not pass, to name the record.
    """
    start, path = checker.next_offset, getattr(log, "path", None)
    if checker.prev is None or not isinstance(path, Path) or not checker.dense:
        return start
    end = await log.end_offset(report.topic, checker.partition)
    if end - start < chain_parallel.MIN_PARALLEL:
        return start
    checked_to, head = await check_sqlite(str(path), report.topic, checker.partition, start, end,
                                          checker.prev, processes)
    if checked_to > start:
        checker.prev, checker.next_offset, checker.chained = head, checked_to, True
        report.records += checked_to - start
        # Below checked_to every stored chain value equals the one recomputed: read the wanted ones.
        for partition, offset in sorted(want):
            if partition == checker.partition and start <= offset < checked_to:
                found = await log.read_chained(report.topic, partition, offset, 1)
                if found and found[0][0] == offset and found[0][2] is not None:
                    report.at[(partition, offset)] = found[0][2].hex()
    return checked_to


def _check_batch(report: ChainReport, checker: PartitionChecker,
                 batch: list[tuple[int, bytes, bytes | None]], want: frozenset[tuple[int, int]]) -> bool:
    if not want and checker.prev is not None:
        # The common case in a tight loop (verification speed is what an audit of a big log
        # waits for): consecutive chained records; anything else goes through ``check``.
        sha256, prev, dense = hashlib.sha256, checker.prev, checker.dense
        expected_offset = checker.next_offset
        done = 0
        for offset, value, found in batch:
            if found is None or (dense and offset != expected_offset):
                break
            h = sha256(prev)
            h.update(value)
            digest = h.digest()
            if digest != found:
                break
            prev, expected_offset = digest, offset + 1
            done += 1
        if done:
            checker.prev, checker.next_offset, checker.chained = prev, expected_offset, True
            report.records += done
        batch = batch[done:]
    check = checker.check
    partition = checker.partition
    for offset, value, found in batch:
        bad = check(offset, value, found)
        if bad is not None:
            report.mismatch = bad
            return True
        if want and (partition, offset) in want and checker.prev is not None:
            report.at[(partition, offset)] = checker.prev.hex()
        report.records += 1
    return False


# -- export lines ------------------------------------------------------------------------------

_ATTRIBUTES = ("chainhash", "chainpartition", "chainoffset", "chainprev")
_PREFIX = PREFIX
# After the prefix, on the line of a record the log could not read back: why (a JSON string), then
# either the rest of its value or, when not even that could be rebuilt, its stored bytes alone.
_CORRUPT = re.compile(rb'"chaincorrupt":("(?:[^"\\]|\\.)*"),')
_STORED = re.compile(rb'"chainstored":"([A-Za-z0-9+/=]*)","chaincodec":(\d{1,3})\}')


def _head(partition: int, offset: int, chain: bytes, prev: bytes | None) -> bytes:
    head = b'{"chainhash":"%s","chainpartition":%d,"chainoffset":%d' % (
        chain.hex().encode(), partition, offset)
    if prev is not None:
        head += b',"chainprev":"%s"' % prev.hex().encode()
    return head


def export_line(rec: StoredRecord, chain: bytes, prev: bytes | None = None) -> bytes:
    """An export line: the stored value with its chain value in front (see the module doc).

    ``prev`` (the chain value before ``rec``) goes on the first line of each partition, so a file
    that does not start at offset 0 verifies on its own.
    """
    value = rec.value
    if value[:1] != b"{":
        raise ValueError(f"{rec.topic}[{rec.partition}]@{rec.offset}: value is not a JSON object")
    rest = value[1:]
    if rest.lstrip()[:1] == b"}":
        raise ValueError(f"{rec.topic}[{rec.partition}]@{rec.offset}: value is an empty JSON object")
    return _head(rec.partition, rec.offset, chain, prev) + b"," + rest


def unreadable_line(rec: Unreadable, chain: bytes, prev: bytes | None = None) -> bytes:
    """The export line of a record the log could not read back, marked ``chaincorrupt``.

    Its value as far as it was rebuilt, when that still fits on one line as a JSON object (so the
    operator can correct it in place), else its stored bytes in base64 (``chainstored``).
    """
    head = _head(rec.partition, rec.offset, chain, prev) + b',"chaincorrupt":' + orjson.dumps(rec.reason)
    value = rec.value
    if value is not None and value[:1] == b"{" and b"\n" not in value:
        rest = value[1:]
        if rest.lstrip()[:1] not in (b"}", b""):
            return head + b"," + rest
    return head + b',"chainstored":"%s","chaincodec":%d}' % (base64.b64encode(rec.stored), rec.codec)


@dataclass(frozen=True, slots=True)
class ExportLine:
    """One export line split into the stored value and the chain it carried (None: no chain)."""

    value: bytes
    chain: bytes | None = None
    partition: int | None = None
    offset: int | None = None
    prev: bytes | None = None
    corrupt: str | None = None  # why the log could not read the record back (``unreadable_line``)
    stored: bytes | None = None  # its stored bytes, when not even its value could be rebuilt (value b"")


def parse_line(line: bytes) -> ExportLine:
    """Split an export line into its stored value and its chain attributes."""
    m = _PREFIX.match(line)
    if m is None:
        if b'"chainhash"' in line[:200]:
            return _reserialized(line)
        return ExportLine(line)
    chain, partition, offset, prev = m.groups()
    at, corrupt, stored = m.end(), None, None
    flag = _CORRUPT.match(line, at)
    if flag is not None:
        corrupt, at = orjson.loads(flag.group(1)), flag.end()
        raw = _STORED.fullmatch(line, at)
        if raw is not None:
            try:
                stored = base64.b64decode(raw.group(1), validate=True)
            except binascii.Error:
                stored = raw.group(1)
            at = len(line)
    value = b"" if stored is not None else b"{" + line[at:]
    return ExportLine(value, bytes.fromhex(chain.decode()), int(partition), int(offset),
                      None if prev is None else bytes.fromhex(prev.decode()), corrupt, stored)


def _reserialized(line: bytes) -> ExportLine:
    """A line re-serialized by a tool (an edited line): the attributes dropped; the value is no longer
    the stored bytes, and its chain will not verify, which is the point."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return ExportLine(line)
    if type(obj) is not dict or "chainhash" not in obj:
        return ExportLine(line)
    found = [obj.pop(name, None) for name in _ATTRIBUTES]
    corrupt, stored = obj.pop("chaincorrupt", None), obj.pop("chainstored", None)
    obj.pop("chaincodec", None)
    try:
        chain, partition, offset, prev = found
        return ExportLine(b"" if stored is not None else orjson.dumps(obj), bytes.fromhex(chain),
                          int(partition), int(offset), None if prev is None else bytes.fromhex(prev),
                          None if corrupt is None else str(corrupt),
                          None if stored is None else str(stored).encode())
    except (TypeError, ValueError):
        return ExportLine(orjson.dumps(obj))


def _parallel_export(source: Path, report: ChainReport, want: frozenset[tuple[int, int]], processes: int,
                     ) -> bool:
    """Check a big export on every core (``events.chain_parallel``); False: use the one-pass check.

    Any line a worker cannot pass sends the whole file to the one-pass check, which names it.
    """
    try:
        if source.stat().st_size < chain_parallel.MIN_PARALLEL_EXPORT_BYTES:
            return False
    except OSError:
        return False
    checked = check_export(source, processes, want)
    if checked is None:
        return False
    segments, report.at = checked
    for seg in segments:
        report.heads[seg.partition] = seg.head.hex()
        report.ends[seg.partition] = seg.last_offset + 1
        report.records += seg.records
    return True


def export_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of each non-blank line of an lz4 export (``parse_line`` splits one)."""
    with lz4.frame.open(path, mode="rb") as src:
        for number, line in enumerate(src, start=1):
            line = line.rstrip(b"\n")
            if line.strip():
                yield number, line


def _unchained_line(topic: str, number: int, line: bytes, checker: PartitionChecker | None) -> Mismatch:
    """What is wrong with a line that carries no chain: an event exported without one, or not a record
    at all. Named by its line (and the record before it), since it has no position of its own."""
    after = "" if checker is None else f" (after {topic}[{checker.partition}]@{checker.next_offset - 1})"
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return Mismatch(topic, -1, -1, None, None, f"line {number}{after} is not a record: not JSON ({exc})")
    if type(obj) is not dict:
        return Mismatch(topic, -1, -1, None, None, f"line {number}{after} is not a record: not a JSON object")
    if "specversion" not in obj:
        return Mismatch(topic, -1, -1, None, None, f"line {number}{after} is not a record: not a CloudEvent")
    return Mismatch(topic, -1, -1, None, None,
                    f"line {number}{after} carries no chain (exported without one)")


def _partial(topic: str, number: int, partition: int, offset: int) -> Mismatch:
    """A partition whose first line is not offset 0 and names no chain value before it (``chainprev``,
    which every export writes there): nothing links it to what came before, so it could only be
    taken on trust; lines were removed from the start of that partition."""
    missing = "offset 0 is" if offset == 1 else f"offsets 0-{offset - 1} are"
    return Mismatch(topic, partition, offset, None, None,
                    f"line {number}: partition {partition} starts at offset {offset} with no chain value "
                    f"before it (no chainprev): {missing} missing and nothing links its first record to "
                    "them, so it would be taken on trust (a partial export: lines removed from its start?)")


def _unread(item: ExportLine) -> str:
    """The reason to give for a line marked as a record the log could not read back ("" if not one)."""
    if item.corrupt is None:
        return ""
    if item.stored is not None:
        return (f"the record could not be read from the log ({item.corrupt}) and the line holds only its "
                "stored bytes (chainstored): correct it into the event, or remove the line")
    return (f"the record could not be read from the log ({item.corrupt}) and its value does not match its "
            "chain: correct it (and drop its chaincorrupt attribute), or remove the line")


def verify_export(path: str | Path, topic: str = "events", want: frozenset[tuple[int, int]] = frozenset(),
                  processes: int | None = None) -> ChainReport:
    """Recompute the chain over an lz4 export file; a Mismatch names the record and its line.

    ``processes``: how many to check a big file with (default: one per core; 1: this one alone).
    """
    import time

    started = time.perf_counter()
    report = ChainReport(topic)
    checker: PartitionChecker | None = None
    source = Path(path)
    if _parallel_export(source, report, want, processes or workers()):
        report.seconds = time.perf_counter() - started
        return report
    try:
        for number, line in export_lines(source):
            item = parse_line(line)
            if item.chain is None or item.partition is None or item.offset is None:
                report.mismatch = _unchained_line(topic, number, line, checker)
                break
            if checker is None or item.partition != checker.partition:
                if checker is not None and checker.prev is not None:
                    report.heads[checker.partition] = checker.prev.hex()
                    report.ends[checker.partition] = checker.next_offset
                # A segment from offset 0 starts at GENESIS; a later one names its previous value.
                prev = GENESIS if item.offset == 0 else item.prev
                if prev is None:
                    report.mismatch = _partial(topic, number, item.partition, item.offset)
                    break
                checker = PartitionChecker(topic, item.partition, prev, item.offset, dense=False)
            bad = checker.check(item.offset, item.value, item.chain)
            if bad is None and item.stored is not None:
                bad = Mismatch(topic, item.partition, item.offset, None, item.chain.hex(), "")
            if bad is not None:
                unread = _unread(item)
                reason = unread or bad.reason
                if not unread and item.offset > checker.next_offset:
                    # Kafka's offsets skip transaction markers, so a gap alone is no proof; with the
                    # chain broken right after it, it is where to look.
                    first, last = checker.next_offset, item.offset - 1
                    gap = f"offset {first}" if first == last else f"offsets {first}-{last}"
                    reason += f"; the file has no line for {gap} before it (a removed line?)"
                report.mismatch = Mismatch(bad.topic, bad.partition, bad.offset, bad.expected, bad.found,
                                           f"line {number}: {reason}")
                break
            report.records += 1
            if want and (item.partition, item.offset) in want and checker.prev is not None:
                report.at[(item.partition, item.offset)] = checker.prev.hex()
    except (RuntimeError, EOFError, OSError) as exc:
        report.mismatch = Mismatch(topic, -1, -1, None, None,
                                   f"{source}: not a complete lz4 frame file: {exc}")
    if checker is not None and checker.prev is not None and report.mismatch is None:
        report.heads[checker.partition] = checker.prev.hex()
        report.ends[checker.partition] = checker.next_offset
    report.seconds = time.perf_counter() - started
    return report
