"""The SQLite log's writer thread: the schema, the append statements, and everything that runs on
the writer's connection.

``events.sqlite`` owns the queue, the callers' futures and the event loop's side; each function
here is called on the log's one writer thread (``run_in_executor``), on its connection and nowhere
else, and returns what the loop applies: a whole transaction, BEGIN to COMMIT, is one call.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.envelope import SYSTEM_POOL
from events.chain import GENESIS
from events.log import Appended, Commit, ConcurrencyError
from events.sqlite_chain import migrate
from events.sqlite_records import Row, _to_values

# Bound parameters per statement, well under SQLite's limit (32766 since 3.32, 999 before).
_ID_CHUNK = 500
# How long the writer's thread waits for another process's write lock before giving up.
BUSY_TIMEOUT_MS = 10_000

# The system pool's records (API tokens, subscriptions, webhook sources: a few among millions) are
# read at every start by the books that keep them; a partial index lists only them, so that read
# no longer scans the whole partition (about 0.3 s at 1,000,000 events from the page cache, 2 s
# from disk). Appends of other pools' records do not touch it. An older log gets it at its first
# start with this version (one scan, about 1.5 s at 1,000,000 events).
SYSTEM_INDEX = "records_system"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL CHECK (partitions > 0),
    retention_ms INTEGER
);
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL,
    "partition" INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    id TEXT,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    codec INTEGER NOT NULL,
    headers BLOB,
    crc INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    chain BLOB,
    PRIMARY KEY (topic, "partition", "offset")
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS records_topic_id ON records (topic, id) WHERE id IS NOT NULL;
CREATE INDEX IF NOT EXISTS {SYSTEM_INDEX} ON records (topic, "partition", "offset")
    WHERE key = '{SYSTEM_POOL}';
CREATE TABLE IF NOT EXISTS consumer_offsets (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    "partition" INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, "partition")
) WITHOUT ROWID;
"""

_INSERT = (
    'INSERT INTO records (topic, "partition", "offset", id, key, value, codec, headers, crc, ts, chain)'
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_OFFSET = (
    'INSERT INTO consumer_offsets (grp, topic, "partition", "offset") VALUES (?, ?, ?, ?)'
    ' ON CONFLICT (grp, topic, "partition") DO UPDATE SET "offset" = excluded."offset"'
)
_LAST = (
    'SELECT "offset", chain FROM records WHERE topic = ? AND "partition" = ?'
    ' ORDER BY "offset" DESC LIMIT 1'
)

@dataclass(slots=True)
class Pending:
    """One caller's append (or bare commit), waiting for the writer."""

    topic: str
    rows: list[Row]
    partition: int | None
    expected: int | None
    commit: Commit | None
    future: asyncio.Future[list[Appended]]
    # What ``rows`` encode, when the caller has it decoded (see ``React``).
    envelopes: Sequence[Any] | None = None
    # An append a ``React`` made inside the transaction: told its result, on the loop, right after
    # COMMIT (before any caller's future), instead of through ``future``.
    on_written: Callable[[list[Appended] | BaseException], None] | None = None
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = len(self.rows)


def existing_ids_sql(n: int) -> str:
    """The query for which of ``n`` ids a topic holds already: (id, partition, offset) of each.

    No "id IS NOT NULL" term: with it SQLite walks every id of the topic in the partial index
    (id > NULL) instead of looking each one up (measured at 413,000 records: 19.5 ms against
    0.16 ms for 42 ids). The IN list implies the index's condition by itself.
    """
    marks = ",".join("?" * n)
    return f'SELECT id, "partition", "offset" FROM records WHERE topic = ? AND id IN ({marks})'


@dataclass(frozen=True, slots=True)
class State:
    """What the writer knows of the file: topics, next offset and chain head per partition, and the
    ``PRAGMA data_version`` it was read at (another process's commit changes it)."""

    topics: dict[str, int]
    ends: dict[tuple[str, int], int]
    heads: dict[tuple[str, int], bytes]
    version: int | None


@dataclass(frozen=True, slots=True)
class Written:
    """One committed transaction: each append's result, the state after it, the partitions written."""

    results: list[tuple[Pending, list[Appended] | BaseException]]
    state: State
    touched: set[tuple[str, int]]


def open_writer(path: Path, synchronous: str) -> tuple[sqlite3.Connection, State]:
    """Open the writer's connection, create the schema, chain an old file, read the state."""
    # Used by one coroutine or thread at a time (the log's write lock): small transactions run
    # on the event loop, large ones on the writer's thread.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # Only takes effect on a new file (before WAL): 16 KiB pages read ~1.4x faster
        # than 4 KiB for rows of a few hundred bytes, at the same write speed.
        conn.execute("PRAGMA page_size = 16384")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.executescript(_SCHEMA)
        migrate(conn, _to_values)
        return conn, read_state(conn)
    except BaseException:
        conn.close()
        raise


def read_state(conn: sqlite3.Connection) -> State:
    """Topics and end offsets from the file (at start, or after another process wrote)."""
    version = int(conn.execute("PRAGMA data_version").fetchone()[0])
    topics = {str(name): int(n) for name, n in conn.execute("SELECT name, partitions FROM topics")}
    ends: dict[tuple[str, int], int] = {}
    heads: dict[tuple[str, int], bytes] = {}
    for topic, n in topics.items():
        for p in range(n):
            # The last row by the primary key prefix is one B-tree descent, not a scan.
            row = conn.execute(_LAST, (topic, p)).fetchone()
            if row is not None:
                ends[(topic, p)] = int(row[0]) + 1
                heads[(topic, p)] = row[1] if row[1] is not None else GENESIS
    return State(topics, ends, heads, version)


def ensure_topic(conn: sqlite3.Connection, topic: str, partitions: int, retention_ms: int | None) -> int:
    conn.execute(
        "INSERT INTO topics (name, partitions, retention_ms) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
        (topic, partitions, retention_ms),
    )
    return int(conn.execute("SELECT partitions FROM topics WHERE name = ?", (topic,)).fetchone()[0])


def _existing_ids(conn: sqlite3.Connection, batch: list[Pending]) -> dict[str, dict[str, tuple[int, int]]]:
    """Ids of the batch already in their topic: one query per topic (chunked)."""
    wanted: dict[str, set[str]] = {}
    for item in batch:
        ids = {row[1] for row in item.rows if row[1] is not None}
        if ids:
            wanted.setdefault(item.topic, set()).update(ids)
    known: dict[str, dict[str, tuple[int, int]]] = {}
    for topic, ids in wanted.items():
        found = known.setdefault(topic, {})
        listed = list(ids)
        for start in range(0, len(listed), _ID_CHUNK):
            chunk = listed[start : start + _ID_CHUNK]
            for rid, p, offset in conn.execute(existing_ids_sql(len(chunk)), (topic, *chunk)):
                found[rid] = (p, offset)
    return known


# Called inside the transaction, on the event loop, for appends just numbered (their topic, their
# positions, the envelopes they carry): another append for the same transaction, numbered right after
# them, or None.
React = Callable[[str, list[Appended], Sequence[Any]], Pending | None]


def _reaction_key(item: Pending) -> tuple[str, int] | None:
    """The (topic, partition) of an append a reactor may see together with its neighbours of the
    same partition: one carrying envelopes, all its rows in one partition, no expected offset."""
    if item.envelopes is None or item.expected is not None or not item.rows:
        return None
    p = item.rows[0][0]
    if any(row[0] != p for row in item.rows):
        return None
    return item.topic, p


def commit(conn: sqlite3.Connection) -> None:
    """End the transaction ``write_batch(commit=False)`` left open: COMMIT, or ROLLBACK if that
    fails (the error is raised)."""
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def timed_commit(conn: sqlite3.Connection) -> float:
    """``commit``, and the seconds it took."""
    began = time.perf_counter()
    commit(conn)
    return time.perf_counter() - began


class CommitPace:
    """Where a small transaction's COMMIT runs: on the event loop while recent COMMITs were quick,
    on the writer's thread while they were slow.

    Handing a COMMIT to the thread and back waits for the thread to take the interpreter and then
    for the loop's next turn: in the executor benchmark (COMMITs of 0.45 ms at p50, fsync 0.2 ms)
    a transaction took 1.8 ms on average with that hand-off, 1.3 ms without. A disk whose fsync
    takes milliseconds would instead hold the loop, every coroutine of the process waiting; from
    ``limit_s`` on, measured as a running mean (``note``), the COMMIT goes to the thread, where it
    is measured too, and comes back once COMMITs are quick again.
    """

    __slots__ = ("limit_s", "mean_s", "weight")

    def __init__(self, limit_s: float, weight: float = 0.1) -> None:
        self.limit_s = limit_s
        self.weight = weight
        self.mean_s = 0.0

    def note(self, seconds: float) -> None:
        self.mean_s += (seconds - self.mean_s) * self.weight

    @property
    def on_loop(self) -> bool:
        return self.mean_s < self.limit_s


class Busy(Exception):
    """Another connection holds the file's write lock: the transaction did not begin."""


def begin_now(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, or ``Busy`` at once instead of waiting for another process's lock (the
    event loop must never sleep in SQLite's busy handler)."""
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:  # and its extended codes (recovery, ...)
            raise Busy(str(exc)) from exc
        raise
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def write_batch(conn: sqlite3.Connection, batch: list[Pending], state: State, chained: bool,
                wait: bool = True, react: React | None = None, commit: bool = True) -> Written:
    """Number, chain and write ``batch`` in one transaction, BEGIN IMMEDIATE to COMMIT; with
    ``wait`` False, ``Busy`` rather than waiting for another connection's write lock.

    ``react`` (on the event loop only) sees the appends that carry their envelopes once they are
    numbered, and may add another to the same transaction, numbered next (the decider's events for
    the commands it decided there: see ``events.sqlite.SqliteLog.react``). Consecutive appends to one
    partition (each a command of its own caller, say) are seen together, in one call, so the
    decider decides them and the coordinator schedules for all their events at once; whatever a
    call adds is numbered before the next append of the batch. Its ids are not checked for
    duplicates beforehand: one already stored fails the transaction.

    ``commit`` False leaves the transaction open once its rows are in, for ``commit`` to end (the
    fsync then happens wherever that runs); anything failing before is rolled back here.

    Works on copies of ``state`` (the caller's stay as they were should this fail) and never
    touches the callers' futures: the event loop settles them from what this returns.
    """
    if wait:
        conn.execute("BEGIN IMMEDIATE")
    else:
        begin_now(conn)
    try:
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if version != state.version:
            state = read_state(conn)  # another process wrote since: reload inside this transaction
        known = _existing_ids(conn, batch)
        ends = dict(state.ends)
        heads = dict(state.heads)
        sha256 = hashlib.sha256
        ts = time.time_ns() // 1_000_000
        rows: list[tuple[Any, ...]] = []
        offsets: list[tuple[Any, ...]] = []
        results: list[tuple[Pending, list[Appended] | BaseException]] = []
        touched: set[tuple[str, int]] = set()
        todo = deque(batch)
        # The positions and envelopes of the consecutive appends to one partition that ``react``
        # has not seen yet, and that partition.
        group: list[Appended] = []
        group_envelopes: list[Any] = []
        group_key: tuple[str, int] | None = None
        while todo or group:
            if group and (not todo or _reaction_key(todo[0]) != group_key):
                assert react is not None and group_key is not None
                follow = react(group_key[0], group, group_envelopes)
                group, group_envelopes, group_key = [], [], None
                if follow is not None:
                    todo.appendleft(follow)
                continue
            item = todo.popleft()
            topic = item.topic
            if item.expected is not None:
                assert item.partition is not None
                actual = ends.get((topic, item.partition), 0)
                if actual != item.expected:
                    results.append((item, ConcurrencyError(topic, item.partition, item.expected, actual)))
                    continue
            seen = known.setdefault(topic, {})
            out: list[Appended] = []
            for p, rid, key, value, codec, headers, crc, original in item.rows:
                if rid is not None:
                    hit = seen.get(rid)
                    if hit is not None:
                        out.append(Appended(hit[0], hit[1], True))
                        continue
                tp = (topic, p)
                offset = ends.get(tp, 0)
                ends[tp] = offset + 1
                touched.add(tp)
                if rid is not None:
                    seen[rid] = (p, offset)
                chain: bytes | None = None
                if chained:
                    h = sha256(heads.get(tp, GENESIS))
                    h.update(original)
                    chain = heads[tp] = h.digest()
                rows.append((topic, p, offset, rid, key, value, codec, headers, crc, ts, chain))
                out.append(Appended(p, offset))
            if item.commit is not None:
                c = item.commit
                offsets.append((c.group, c.topic, c.partition, c.offset))
            results.append((item, out))
            if react is not None and item.envelopes is not None:
                joins = _reaction_key(item)
                if joins is not None:
                    group_key = joins
                    group.extend(out)
                    group_envelopes.extend(item.envelopes)
                    continue
                follow = react(topic, out, item.envelopes)
                if follow is not None:
                    todo.appendleft(follow)
        if rows:
            conn.executemany(_INSERT, rows)
        if offsets:
            conn.executemany(_UPSERT_OFFSET, offsets)
        if commit:
            conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    # Our own COMMIT bumps no data_version on this connection: the value read stays current.
    return Written(results, State(state.topics, ends, heads, version), touched)
