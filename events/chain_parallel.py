"""Checking a long hash chain on several cores at once.

Every record stores its chain value, so record ``i`` can be checked from the stored value of
record ``i - 1`` and its own value alone: a partition splits into ranges, one process per range
(Python's hashing and SQLite's row reads hold the GIL, so threads would take turns). Range ``k``
trusts the stored value just before it; range ``k - 1`` has checked exactly that value, so when
every range passes the whole chain is checked, as in one pass.

This module only answers "did every range pass, and up to where": a range that meets anything
unusual (a mismatch, a gap, an unreadable record, a line it cannot split) stops, and the caller
(``events.chain``) goes on from that range's start with the one-pass check, which names the record
and says what is wrong. The fast path therefore never decides a failure on its own.

With one process the same range check runs in this one (it reads the SQLite file directly and the
export in chunks, faster per record than the one-pass check). Workers run as
``python -m events.chain_parallel REQUEST`` (JSON) and answer in JSON on stdout, so they import
almost nothing. It must never write to what it checks: SQLite files are opened read-only.
"""

from __future__ import annotations

import binascii
import contextlib
import hashlib
import itertools
import os
import re
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lz4.block
import lz4.frame
import orjson

from events.sqlite_records import CODEC_LZ4, CODEC_RAW

__all__ = ["MIN_PARALLEL", "MIN_PARALLEL_EXPORT_BYTES", "PREFIX", "Segment", "check_export", "check_sqlite",
           "workers"]

# Below this many records a process start (about 0.1 s) costs more than the second core saves.
MIN_PARALLEL = 50_000
# The same for an export file, in compressed bytes (about 40,000 lines of task events).
MIN_PARALLEL_EXPORT_BYTES = 4 << 20
_GENESIS = bytes(32)
# The chain attributes an export line starts with (``events.chain.export_line`` writes them); use
# ``match``, which anchors at the position given.
PREFIX = re.compile(
    rb'\{"chainhash":"([0-9a-f]{64})","chainpartition":(\d{1,9}),"chainoffset":(\d{1,19})'
    rb'(?:,"chainprev":"([0-9a-f]{64})")?,'
)


def workers() -> int:
    """Processes to check with by default: one per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# One check at a time may spread over worker processes; others meanwhile (concurrent HTTP
# requests) check in their own process, so requests cannot multiply processes.
_SPREADING = threading.Lock()


@contextlib.contextmanager
def _cores(processes: int) -> Iterator[int]:
    """How many processes this check may use: ``processes``, or 1 while another check spreads."""
    if processes > 1 and _SPREADING.acquire(blocking=False):
        try:
            yield processes
        finally:
            _SPREADING.release()
    else:
        yield 1


# ------------------------------------------------------------------ SQLite log


async def check_sqlite(path: str, topic: str, partition: int, start: int, end: int, prev: bytes,
                       processes: int) -> tuple[int, bytes]:
    """Check records ``[start, end)`` of a partition of the SQLite log at ``path``.

    ``prev`` is the chain value before ``start``. Returns ``(checked_to, head)``: every record
    below ``checked_to`` matches its chain, and ``head`` is the chain value there. ``checked_to``
    is ``end`` when all passed, else the start of the first range that did not.
    """
    with _cores(processes) as processes:
        return await _check_sqlite(path, topic, partition, start, end, prev, processes)


async def _check_sqlite(path: str, topic: str, partition: int, start: int, end: int, prev: bytes,
                        processes: int) -> tuple[int, bytes]:
    import asyncio  # here, not at the top: a worker process never needs it (~0.1 s to start)

    bounds = [start + (end - start) * k // processes for k in range(processes + 1)]
    requests: list[dict[str, Any]] = [{"kind": "sqlite", "path": path, "topic": topic, "partition": partition,
                 "start": a, "end": b, "prev": prev.hex() if k == 0 else None}
                for k, (a, b) in enumerate(itertools.pairwise(bounds)) if b > a]
    if len(requests) == 1:  # no process to start: this one reads as a worker would, in a thread
        answers = [await asyncio.to_thread(_sqlite_range, requests[0])]
    else:
        answers = list(await asyncio.gather(*(_run_async(r) for r in requests)))
    checked_to, head = start, prev
    for request, answer in zip(requests, answers, strict=True):
        if not answer.get("ok"):
            break
        checked_to, head = int(request["end"]), bytes.fromhex(answer["head"])
    return checked_to, head


async def _run_async(request: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        *_command(request), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return _answer(proc.returncode, out, err)


def _command(request: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "events.chain_parallel", orjson.dumps(request).decode()]


def _answer(returncode: int | None, out: bytes, err: bytes) -> dict[str, Any]:
    if returncode != 0:
        # A worker that could not run is not a verdict: the one-pass check takes over.
        return {"ok": False, "error": err.decode(errors="replace")[-500:]}
    answer: dict[str, Any] = orjson.loads(out)
    return answer


_CHAIN_AT = 'SELECT chain FROM records WHERE topic = ? AND "partition" = ? AND "offset" = ?'


def _sqlite_range(request: dict[str, Any]) -> dict[str, Any]:
    topic, partition = request["topic"], request["partition"]
    start, end = int(request["start"]), int(request["end"])
    conn = sqlite3.connect(f"file:{request['path']}?mode=ro", uri=True)
    try:
        if request["prev"] is not None:
            prev = bytes.fromhex(request["prev"])
        else:
            row = conn.execute(_CHAIN_AT, (topic, partition, start - 1)).fetchone()
            if row is None or row[0] is None:
                return {"ok": False, "at": start}
            prev = row[0]
        # No "offset" column: the rows are the range's, in order and unique (the primary key), so
        # there are end - start of them exactly when none is missing. Reading one column fewer
        # per row is ~10% of a worker's time; a deleted record also breaks the next one's chain.
        cursor = conn.execute(
            'SELECT value, chain, codec FROM records WHERE topic = ? AND "partition" = ?'
            ' AND "offset" >= ? AND "offset" < ? ORDER BY "offset"', (topic, partition, start, end))
        # A copy of an empty hash costs less than a new one (no digest look-up in OpenSSL).
        empty, decompress, offset = hashlib.sha256(), lz4.block.decompress, start
        while rows := cursor.fetchmany(8192):
            for value, found, codec in rows:
                if codec != CODEC_RAW:
                    if codec != CODEC_LZ4:
                        return {"ok": False, "at": offset}
                    try:
                        value = decompress(value)
                    except Exception:  # the one-pass check names the corruption
                        return {"ok": False, "at": offset}
                h = empty.copy()
                h.update(prev)
                h.update(value)
                digest = h.digest()
                if digest != found:
                    return {"ok": False, "at": offset}
                prev = digest
                offset += 1
        if offset != end:
            return {"ok": False, "at": offset}
        return {"ok": True, "head": prev.hex()}
    finally:
        conn.close()


# ------------------------------------------------------------------ export files


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of one partition's lines in an export: its last offset, chain value and line count."""

    partition: int
    last_offset: int
    head: bytes
    records: int


def check_export(path: str | Path, processes: int, want: frozenset[tuple[int, int]] = frozenset(),
                 ) -> tuple[list[Segment], dict[tuple[int, int], str]] | None:
    """Check every line of an lz4 export: its segments in file order and the chain value (hex) at
    each wanted (partition, offset) found, or None if any range did not pass.

    None is no verdict: the caller runs the one-pass check, which finds and names the line.
    """
    with _cores(processes) as processes:
        requests = [{"kind": "export", "path": str(path), "index": k, "of": processes, "read": READ_BYTES,
                     "want": sorted(want)} for k in range(processes)]
        if processes == 1:
            answers = [_export_chunks(requests[0])]
        else:
            answers = _run_all(requests)
    if not all(a.get("ok") for a in answers):
        return None
    at = {(int(p), int(o)): str(h) for answer in answers for p, o, h in answer["at"]}
    # Each worker answered for its chunks; in chunk order they are the file's.
    chunks = sorted((chunk for answer in answers for chunk in answer["chunks"]), key=lambda c: int(c[0]))
    segments: list[Segment] = []
    for _, found in chunks:
        for partition, last_offset, head, records in found:
            seg = Segment(partition, last_offset, bytes.fromhex(head), records)
            if segments and segments[-1].partition == partition:
                seg = Segment(partition, last_offset, seg.head, segments[-1].records + records)
                segments[-1] = seg
            else:
                segments.append(seg)
    return segments, at


def _run_all(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # All started before any is waited for: they run at once.
    procs = [subprocess.Popen(_command(r), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for r in requests]
    answers = []
    for proc in procs:
        out, err = proc.communicate()
        answers.append(_answer(proc.returncode, out, err))
    return answers


# Compressed bytes read at a time: each becomes one chunk of whole lines (a few MB decompressed).
READ_BYTES = 1 << 20


def _chunks(path: str, read_bytes: int) -> Iterator[bytes]:
    """The decompressed file as chunks of whole lines: the same chunks for every reader of the file.

    Raises ValueError when the file ends inside a frame (cut short). Memory stays at a chunk.
    """
    decompressor = lz4.frame.LZ4FrameDecompressor()
    inside = False  # part of a frame given, its end not yet seen
    rest = b""
    with open(path, "rb") as src:
        while piece := src.read(read_bytes):
            data = rest
            while piece:
                data += decompressor.decompress(piece)
                inside, piece = True, b""
                if decompressor.eof:  # frames written one after another: go on with the next
                    piece = decompressor.unused_data
                    decompressor, inside = lz4.frame.LZ4FrameDecompressor(), False
            cut = data.rfind(b"\n") + 1
            yield data[:cut]
            rest = data[cut:]
    if inside:
        raise ValueError("the file ends inside an lz4 frame")
    if rest:
        yield rest


def _export_chunks(request: dict[str, Any]) -> dict[str, Any]:
    """Check the chunks ``index``, ``index + of``, ... of the file; the segments of each."""
    k, n = int(request["index"]), int(request["of"])
    wanted = frozenset((int(p), int(o)) for p, o in request.get("want") or ())
    answered: list[list[Any]] = []
    at: list[list[Any]] = []
    last_line = b""
    try:
        for number, chunk in enumerate(_chunks(request["path"], int(request["read"]))):
            if number % n == k:
                found = _check_chunk(chunk, last_line, wanted, at)
                if found is None:
                    return {"ok": False}
                answered.append([number, found])
            if chunk.strip():
                cut = chunk.rfind(b"\n", 0, len(chunk) - 1) + 1
                last_line = chunk[cut:].rstrip(b"\n")
    except (ValueError, RuntimeError):
        return {"ok": False}
    return {"ok": True, "chunks": answered, "at": at}


def _check_chunk(chunk: bytes, before: bytes, wanted: frozenset[tuple[int, int]], at: list[list[Any]],
                 ) -> list[list[Any]] | None:
    """The segments of one chunk's lines, from the line ``before`` it (b"" at the file's start);
    the chain value of each ``wanted`` (partition, offset) met goes to ``at``."""
    match, sha256, hexlify = PREFIX.match, hashlib.sha256, binascii.hexlify
    segments: list[list[Any]] = []
    partition = offset = -1
    prev = _GENESIS
    if before:
        m = match(before)
        if m is None:
            return None
        partition, offset, prev = int(m.group(2)), int(m.group(3)), bytes.fromhex(m.group(1).decode())
    count = 0
    for line in chunk.split(b"\n"):
        if not line:
            continue
        m = match(line)
        if m is None:
            return None
        chain, p_text, o_text, prev_text = m.groups()
        p, o = int(p_text), int(o_text)
        if p != partition:
            # A partition's first line starts from GENESIS at offset 0, else from the value it names.
            if count:
                segments.append([partition, offset, prev.hex(), count])
            count = 0
            if o == 0:
                prev = _GENESIS
            elif prev_text is not None:
                prev = bytes.fromhex(prev_text.decode())
            else:
                return None
        elif o <= offset:
            return None
        h = sha256(prev)
        h.update(b"{")
        h.update(memoryview(line)[m.end():])
        digest = h.digest()
        if hexlify(digest) != chain:
            return None
        prev, partition, offset = digest, p, o
        count += 1
        if wanted and (p, o) in wanted:
            at.append([p, o, digest.hex()])
    if count:
        segments.append([partition, offset, prev.hex(), count])
    return segments


def _main() -> None:
    request = orjson.loads(sys.argv[1])
    handler = _sqlite_range if request["kind"] == "sqlite" else _export_chunks
    sys.stdout.buffer.write(orjson.dumps(handler(request)))


if __name__ == "__main__":
    _main()
