"""The embedded SQLite adapter of the EventLog port: one file, WAL, group commit.

Appends from any number of coroutines are queued; one writer task drains the queue and writes
everything in ONE transaction, then acknowledges each caller after COMMIT (``synchronous=FULL`` by
default, so an acknowledged append survives a process crash and a power loss). A transaction is one
call, BEGIN to COMMIT, of ``events.sqlite_writer.write_batch``: a small one (at most
``INLINE_ROWS`` records) on the event loop itself, and its COMMIT (an fsync) there too while
COMMITs are quick, on the writer's thread while they are slow (``sqlite_writer.CommitPace``), and a
larger one wholly on that thread; the loop goes on with other work meanwhile. Each hand-off to a
thread and back waits behind whatever else the loop is running, and the thread waits for the
interpreter at every statement: for a transaction of a few records that cost several times the
transaction (a connection that hands every statement to its thread, as aiosqlite does, costs six
such round trips). Reads use a second, read-only connection, which WAL lets run beside the writer.
Consumers are woken in-process when the writer commits; appends made by another process on the same
file are seen by re-checking every ``POLL_INTERVAL_S`` (a low-frequency fallback, so cross-process
consumers lag by up to that).

It deduplicates record ids within a topic (``dedupes_ids``). It is a plain ``EventLog``, not a
``TransactionalLog``: an append writes one topic (plus its ``commit`` offset), and there are no
partition writers to claim or fence.

Every record carries its partition's hash chain value (``events.chain``), computed by the writer
as it numbers the record; a file written before chains existed is chained in place once, when
opened for writing (``events.sqlite_chain.migrate``). ``readonly`` opens only the read connection,
read-only (``events.sqlite_reader``): the commands that only read must leave the file as it is.

Reactors (``react``, ``events.sqlite_reactions``) add their appends to the transaction of the
append they react to.

This module must never skip or rewrite a stored record: a record that cannot be read raises
CorruptRecord naming its position (only ``read_stored``, for the export that repairs a log, hands
it out as stored), and appended rows are never updated or deleted (the one-time chain migration
only fills in missing chain values).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from zlib import crc32

import aiosqlite
import orjson

from contracts.envelope import SYSTEM_POOL
from events import sqlite_writer
from events.log import (
    Appended,
    Commit,
    CorruptRecord,
    LogError,
    Record,
    StoredRecord,
    UnknownTopic,
    Unreadable,
    check_limit,
    check_partition,
    check_partition_count,
    check_routing,
)
from events.settle import settled
from events.sqlite_reactions import Reaction, Reactions, Reactor
from events.sqlite_reader import open_reader
from events.sqlite_records import (
    CODEC_LZ4,
    CODEC_RAW,
    _original,
    _salvaged,
    _to_stored,
    _to_values,
    to_rows,
)
from events.sqlite_url import COMMIT_ON_LOOP_MS, INLINE_ROWS, parse_url
from events.sqlite_writer import SYSTEM_INDEX, CommitPace, Pending, State, Written, ensure_topic, open_writer

__all__ = ["CODEC_LZ4", "CODEC_RAW", "COMMIT_ON_LOOP_MS", "INLINE_ROWS", "Reaction", "Reactor", "SqliteLog"]

# Cross-process fallback: how often waiters re-check the file for other writers' appends.
POLL_INTERVAL_S = 0.2
# Cap one transaction so a huge backlog still acknowledges callers in steady steps.
MAX_BATCH_RECORDS = 20_000
_READ = (
    'SELECT "offset", key, value, codec, id, headers, crc, ts, chain FROM records'
    ' WHERE topic = ? AND "partition" = ? AND "offset" >= ? ORDER BY "offset" LIMIT ?'
)
_READ_VALUES = (
    'SELECT "offset", value, codec, crc FROM records'
    ' WHERE topic = ? AND "partition" = ? AND "offset" >= ? ORDER BY "offset" LIMIT ?'
)
_READ_CHAINED = (
    'SELECT "offset", value, codec, crc, chain FROM records'
    ' WHERE topic = ? AND "partition" = ? AND "offset" >= ? ORDER BY "offset" LIMIT ?'
)
_MAX_OFFSET = 'SELECT MAX("offset") FROM records WHERE topic = ? AND "partition" = ?'
logger = logging.getLogger(__name__)


# ``_encode_headers`` writes ``[["ce_type","<type>"],...`` for every record ``events.codec`` made.
_TYPE_HEADER = b'[["ce_type",'


def _matching_query(topic: str, partition: int, offset: int, end: int, types: frozenset[str] | None,
                    key: str | None, *, indexed: bool = True) -> tuple[str, tuple[object, ...]]:
    """The SELECT of ``read_matching``: rows in [offset, end) with ``key``, and whose headers do not
    start with a ``ce_type`` header or start with one of ``types`` (the exact bytes
    ``_encode_headers`` writes for it, closing quote and bracket included). ``indexed``: the system
    pool's partial index exists (a file opened read-only may predate it)."""
    args: list[object] = [topic, partition, offset, end]
    if key == SYSTEM_POOL and indexed:
        # Through the partial index of the system pool's records, named: without statistics the
        # planner ranks the primary key's range as high and scans the partition. The key is written
        # as the index's WHERE has it (a bound value cannot show SQLite the index applies).
        source, match = f"records INDEXED BY {SYSTEM_INDEX}", f" AND key = '{SYSTEM_POOL}'"
    else:
        source, match = "records", ""
        if key is not None:
            match = " AND key = ?"
            args.append(key)
    sql = (f'SELECT "offset", key, value, codec, id, headers, crc, ts, chain FROM {source}'
           ' WHERE topic = ? AND "partition" = ? AND "offset" >= ? AND "offset" < ?' + match)
    if types is not None:
        prefixes = [orjson.dumps([["ce_type", t]])[:-1] for t in sorted(types)]
        sql += " AND (headers IS NULL OR substr(headers, 1, ?) != ?"
        args += [len(_TYPE_HEADER), _TYPE_HEADER]
        for prefix in prefixes:
            sql += " OR substr(headers, 1, ?) = ?"
            args += [len(prefix), prefix]
        sql += ")"
    return sql + ' ORDER BY "offset"', tuple(args)


class SqliteLog:
    """EventLog over one SQLite file: group-committed appends, WAL reads, in-process wake-ups."""

    # A record whose id is already in the topic is not appended again (Appended.duplicate).
    dedupes_ids = True
    # False only to measure what the chain costs (``agentbus bench --audit``): records are then
    # written without chain values and the log does not verify.
    chained = True

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.url = url
        # Read only, never write, create or chain the file (``events.sqlite_reader``).
        self.readonly = readonly
        # Opened read-only over a file written before chains and not chained since: its records
        # carry no chain value yet (verification says so rather than only "no chain value").
        self.pending_chain = False
        self._indexed = True  # the system pool's partial index exists (``_matching_query``)
        self.path, self.synchronous, self.inline_rows, commit_on_loop_ms = parse_url(url)
        # Where a small transaction's COMMIT runs (``_commit``).
        self._pace = CommitPace(commit_on_loop_ms / 1000)
        # Committed write transactions (group commit batches); tests and benchmarks read it.
        self.transactions = 0
        # The writer's connection and the one thread that ever touches it.
        self._writer: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._reader: aiosqlite.Connection | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._queue: deque[Pending] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._topics: dict[str, int] = {}
        # Next offset per (topic, partition), as committed by this process's writer.
        self._ends: dict[tuple[str, int], int] = {}
        # Chain value of the last record per (topic, partition), as committed (events.chain).
        self._heads: dict[tuple[str, int], bytes] = {}
        self._events: dict[tuple[str, int], asyncio.Event] = {}
        # PRAGMA data_version seen by the writer; a change means another process wrote.
        self._data_version: int | None = None
        self._writer_error: BaseException | None = None
        # Reactors by the (topic, partition) whose appends they see (``react``).
        self._reactions = Reactions(self._topics)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open both connections, create the schema, load end offsets; idempotent.

        ``readonly``: open the read connection alone, read-only (LogError when there is no log).
        """
        if self._reader is not None:
            return
        if self.readonly:
            opened = await open_reader(self.path, self.url)
            self._reader, self.pending_chain, self._indexed = (opened.conn, opened.pending_chain,
                                                               opened.indexed)
            self._closing = False
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-log-writer")
        loop = asyncio.get_running_loop()
        try:
            async with self._write_lock:
                writer, state = await loop.run_in_executor(thread, open_writer, self.path, self.synchronous)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        try:
            reader = await aiosqlite.connect(self.path, isolation_level=None)
            try:
                await reader.execute("PRAGMA busy_timeout = 10000")
                await reader.execute("PRAGMA query_only = 1")
            except BaseException:
                await reader.close()
                raise
        except BaseException:
            await loop.run_in_executor(thread, writer.close)
            thread.shutdown(wait=False)
            raise
        self._topics.update(state.topics)
        self._ends, self._heads, self._data_version = state.ends, state.heads, state.version
        self._writer, self._thread, self._reader = writer, thread, reader
        self._closing = False
        self._writer_error = None
        self._writer_task = asyncio.create_task(self._run_writer(), name=f"sqlite-writer {self.url}")

    async def close(self) -> None:
        """Write everything already queued, stop the writer, close the connections."""
        if self._writer is None:
            only, self._reader = self._reader, None
            if only is not None:  # read-only: no writer to stop
                await only.close()
            return
        self._closing = True
        self._wake.set()
        task, self._writer_task = self._writer_task, None
        if task is not None and not task.done():
            await asyncio.shield(task)
        writer, thread, reader = self._writer, self._thread, self._reader
        self._writer = self._thread = self._reader = None
        if reader is not None:
            await reader.close()
        assert thread is not None
        await asyncio.get_running_loop().run_in_executor(thread, writer.close)
        thread.shutdown(wait=False)
        for event in self._events.values():
            event.set()
        self._events.clear()

    def _conn(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise RuntimeError(f"SqliteLog({self.url!r}) is not started: await log.start() first")
        return self._reader

    def _writable(self) -> None:
        self._conn()
        if self.readonly:
            raise LogError(f"SqliteLog({self.url!r}) is open read-only: nothing can be written through it")

    # -- topics ------------------------------------------------------------------------------

    async def ensure_topic(
        self, topic: str, partitions: int, *, retention_ms: int | None = None
    ) -> None:
        """Create the topic if absent (existing topics keep their partition count)."""
        self._writable()
        check_partition_count(partitions)
        writer, thread = self._writer, self._thread
        assert writer is not None and thread is not None
        async with self._write_lock:
            n = await asyncio.get_running_loop().run_in_executor(
                thread, ensure_topic, writer, topic, partitions, retention_ms)
        self._topics[topic] = n

    async def partitions(self, topic: str) -> int:
        """Number of partitions of ``topic``; raises UnknownTopic."""
        n = self._topics.get(topic)
        if n is None:
            # Another process may have created it since we loaded.
            rows = list(
                await self._conn().execute_fetchall(
                    "SELECT partitions FROM topics WHERE name = ?", (topic,)
                )
            )
            if not rows:
                raise UnknownTopic(topic)
            n = self._topics[topic] = int(rows[0][0])
        return n

    async def _check_partition(self, topic: str, partition: int) -> None:
        check_partition(topic, partition, await self.partitions(topic))

    # -- writing -----------------------------------------------------------------------------

    async def append(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        partition: int | None = None,
        expected_offset: int | None = None,
        commit: Commit | None = None,
        envelopes: Sequence[Any] | None = None,
    ) -> list[Appended]:
        """Append atomically and durably (one group-committed transaction); positions in order.

        ``envelopes``: what ``records`` encode, for a reactor of the partition (``react``).
        """
        self._writable()
        n = await self.partitions(topic)
        check_routing(topic, n, partition, expected_offset)
        if commit is not None:
            await self._check_partition(commit.topic, commit.partition)
        if not records and commit is None:
            return []
        return await self._enqueue(
            Pending(topic, to_rows(records, partition, n), partition, expected_offset, commit,
                     asyncio.get_running_loop().create_future(),
                     envelopes=envelopes if self._reactions else None)
        )

    def react(self, topic: str, partition: int, reactor: Reactor | None) -> None:
        """Have ``reactor`` see every append to ``topic[partition]`` made with its envelopes and
        written on the event loop, inside its transaction, and add its own records to it (None: no
        more): see ``events.sqlite_reactions``. An append the reactor passes on (it answers None),
        or one written on the writer's thread, reaches it the usual way, by reading the log."""
        self._reactions.set(topic, partition, reactor)

    async def commit(self, group: str, topic: str, partition: int, offset: int) -> None:
        """Store the next offset ``group`` will read from the partition (group-committed too)."""
        self._writable()
        await self._check_partition(topic, partition)
        await self._enqueue(
            Pending(topic, [], None, None, Commit(group, topic, partition, offset),
                     asyncio.get_running_loop().create_future())
        )

    async def _enqueue(self, item: Pending) -> list[Appended]:
        if self._closing:
            raise RuntimeError(f"SqliteLog({self.url!r}) is closing")
        if self._writer_error is not None:
            raise LogError(f"the sqlite writer stopped: {self._writer_error!r}")
        self._queue.append(item)
        self._wake.set()
        return await item.future

    async def _run_writer(self) -> None:
        batch: list[Pending] = []
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                # One pass of the loop first: appends that callbacks already ready to run are
                # about to make join this transaction (fewer commits, each an fsync; measured:
                # 14-35% fewer transactions in the executor benchmark). Not when more than
                # ``INLINE_ROWS`` records wait already: under a heavy load the pass is a whole turn
                # of a busy loop (23-60 ms in `agentbus bench --subscribers 100 --rate 5000`) with
                # the writer idle and every queued append waiting.
                if self._queued_rows(INLINE_ROWS) <= INLINE_ROWS:
                    await asyncio.sleep(0)
                # Drain whole appends (each is atomic) up to the batch cap.
                batch = [self._queue.popleft()]
                size = batch[0].size
                while self._queue and size + self._queue[0].size <= MAX_BATCH_RECORDS:
                    item = self._queue.popleft()
                    size += item.size
                    batch.append(item)
                batch = [b for b in batch if not b.future.done()]  # caller gave up: not written
                if not batch:
                    continue
                try:
                    await self._write(batch)
                except Exception as exc:  # a bug in this module: fail these callers, keep going
                    for b in batch:
                        if not b.future.done():
                            b.future.set_exception(exc)
                batch = []
        except BaseException as exc:
            # Cancelled other than by close(): nobody will write the queue, so fail it, not hang.
            self._writer_error = exc
            for b in [*batch, *self._queue]:
                if not b.future.done():
                    b.future.set_exception(LogError(f"the sqlite writer stopped: {exc!r}"))
            self._queue.clear()
            raise

    def _queued_rows(self, limit: int) -> int:
        """Records waiting in the queue, counted up to just past ``limit``."""
        n = 0
        for item in self._queue:
            n += item.size
            if n > limit:
                break
        return n

    async def _write(self, batch: list[Pending]) -> None:
        """Write ``batch`` in one transaction; on a database error retry each append alone (and an
        append alone once more when what reactors added to its transaction may be what failed:
        the reactors, told of the rollback, add nothing the second time)."""
        try:
            await self._transaction(batch)
        except sqlite3.Error as exc:
            self._data_version = None  # reload end offsets: the file may not be what we think
            reacted, self._reactions.rolled_back = self._reactions.rolled_back, False
            if len(batch) > 1 or reacted:
                for item in batch:
                    await self._write([item])
                return
            error = LogError(f"sqlite append to {batch[0].topic} failed: {exc}")
            error.__cause__ = exc
            if not batch[0].future.done():
                batch[0].future.set_exception(error)

    async def _transaction(self, batch: list[Pending]) -> None:
        writer, thread = self._writer, self._thread
        assert writer is not None and thread is not None
        async with self._write_lock:
            state = State(self._topics, self._ends, self._heads, self._data_version)
            cancelled: asyncio.CancelledError | None = None
            written = None
            if sum(item.size for item in batch) <= self.inline_rows:
                inline = self._inline(writer, batch, state)  # its error, if any, for ``_write``
                if inline is not None:
                    # The COMMIT (its fsync) here, or on the writer's thread while the loop goes on
                    # (no other transaction begins meanwhile: this one holds the write lock).
                    error, cancelled = await self._commit(writer, thread)
                    if error is not None:
                        self._reactions.roll_back(inline[1], error)
                        raise cancelled if cancelled is not None else error
                    written = inline[0]
            if written is None:
                work = asyncio.get_running_loop().run_in_executor(
                    thread, sqlite_writer.write_batch, writer, batch, state, self.chained)
                # The transaction goes on in its thread through a cancel: settle it first, so the
                # offsets kept here and the callers' answers agree with the file, then stop.
                cancelled = await settled(work)
                if cancelled is not None and work.exception() is not None:
                    raise cancelled
                written = work.result()  # the thread's error, if any, for ``_write``
            self.transactions += 1
            if written.state.version != self._data_version:
                self._topics.update(written.state.topics)  # another process wrote: reloaded
            self._ends, self._heads = written.state.ends, written.state.heads
            self._data_version = written.state.version
        for item, result in written.results:
            if item.on_written is not None:  # a reactor's: before the appends it reacted to
                item.on_written(result)
        for item, result in written.results:
            if item.on_written is not None or item.future.done():
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
        for tp in written.touched:
            event = self._events.pop(tp, None)
            if event is not None:
                event.set()
        if cancelled is not None:
            raise cancelled

    async def _commit(self, writer: sqlite3.Connection, thread: ThreadPoolExecutor,
                      ) -> tuple[BaseException | None, asyncio.CancelledError | None]:
        """COMMIT the transaction ``_inline`` left open, here or on the writer's thread (here while
        COMMITs are quick, see ``sqlite_writer.CommitPace``): why it failed (it was rolled back) or
        None, and the cancel that came while the thread committed, if any."""
        pace = self._pace
        if pace.on_loop:
            try:
                pace.note(sqlite_writer.timed_commit(writer))
            except Exception as exc:
                return exc, None
            return None, None
        committing = asyncio.get_running_loop().run_in_executor(thread, sqlite_writer.timed_commit, writer)
        cancelled = await settled(committing)
        error = committing.exception()
        if error is None:
            pace.note(committing.result())
        return error, cancelled

    def _inline(self, writer: sqlite3.Connection, batch: list[Pending],
                state: State) -> tuple[Written, list[Pending]] | None:
        """A small transaction, written on the loop up to its COMMIT (see the module's doc), and
        the appends reactors added to it; None, having written nothing, when another process holds
        the write lock: the thread then waits for it."""
        reactions = self._reactions
        reactions.begin()
        try:
            written = sqlite_writer.write_batch(writer, batch, state, self.chained, wait=False,
                                                react=reactions.follow if reactions else None, commit=False)
        except sqlite_writer.Busy:
            reactions.end()
            return None  # at BEGIN: nothing was numbered, nobody reacted
        except BaseException as exc:
            reactions.roll_back(reactions.end(), exc)
            raise
        return written, reactions.end()

    # -- reading -----------------------------------------------------------------------------

    async def read(
        self, topic: str, partition: int, offset: int, limit: int = 1000
    ) -> list[StoredRecord]:
        """Records at ``offset`` and after, at most ``limit``, in order."""
        conn = self._conn()
        check_limit(limit)
        await self._check_partition(topic, partition)
        rows = await conn.execute_fetchall(_READ, (topic, partition, offset, limit))
        return _to_stored(topic, partition, rows)

    async def read_stored(
        self, topic: str, partition: int, offset: int, limit: int = 1000
    ) -> list[StoredRecord | Unreadable]:
        """``SalvagingLog.read_stored``: ``read``, with a record it cannot rebuild as it is stored."""
        conn = self._conn()
        check_limit(limit)
        await self._check_partition(topic, partition)
        rows = await conn.execute_fetchall(_READ, (topic, partition, offset, limit))
        return _salvaged(topic, partition, rows)

    async def read_values(
        self, topic: str, partition: int, offset: int, limit: int = 1000
    ) -> list[tuple[int, bytes]]:
        """(offset, value) at ``offset`` and after: replay reads nothing else, and selecting and
        building only those halves the cost of a read (no key, id, headers or timestamp)."""
        conn = self._conn()
        check_limit(limit)
        await self._check_partition(topic, partition)
        rows = await conn.execute_fetchall(_READ_VALUES, (topic, partition, offset, limit))
        return _to_values(topic, partition, rows)

    async def read_matching(
        self, topic: str, partition: int, offset: int, end: int, *,
        types: frozenset[str] | None = None, key: str | None = None,
    ) -> list[StoredRecord]:
        """``FilteringLog.read_matching``: the key and the first header are compared by SQLite, so
        the records skipped are never built (a whole partition's 86,000 scanned in about 30 ms)."""
        conn = self._conn()
        await self._check_partition(topic, partition)
        sql, args = _matching_query(topic, partition, offset, end, types, key, indexed=self._indexed)
        rows = await conn.execute_fetchall(sql, args)
        return _to_stored(topic, partition, rows)

    async def read_chained(
        self, topic: str, partition: int, offset: int, limit: int = 1000
    ) -> list[tuple[int, bytes, bytes | None]]:
        """(offset, value, chain value) at ``offset`` and after: what verification reads."""
        conn = self._conn()
        check_limit(limit)
        await self._check_partition(topic, partition)
        rows = await conn.execute_fetchall(_READ_CHAINED, (topic, partition, offset, limit))
        out: list[tuple[int, bytes, bytes | None]] = []
        append = out.append
        for at, value, codec, crc, chain in rows:
            if codec != CODEC_RAW or crc32(value) != crc:
                try:
                    value = _original(value, codec, crc)
                except Exception as exc:  # as in _to_stored: corruption, never a skip
                    raise CorruptRecord(topic, partition, at, f"{type(exc).__name__}: {exc}") from exc
            append((at, value, chain))
        return out

    async def end_offset(self, topic: str, partition: int) -> int:
        """The offset the next record appended to the partition will get."""
        conn = self._conn()
        await self._check_partition(topic, partition)
        rows = list(await conn.execute_fetchall(_MAX_OFFSET, (topic, partition)))
        stored = -1 if rows[0][0] is None else int(rows[0][0])
        return max(stored + 1, self._ends.get((topic, partition), 0))

    async def committed(self, group: str, topic: str, partition: int) -> int:
        """The committed offset of ``group`` (0 when it never committed)."""
        conn = self._conn()
        await self._check_partition(topic, partition)
        rows = list(
            await conn.execute_fetchall(
                'SELECT "offset" FROM consumer_offsets'
                ' WHERE grp = ? AND topic = ? AND "partition" = ?',
                (group, topic, partition),
            )
        )
        return int(rows[0][0]) if rows else 0

    async def wait(
        self,
        topic: str,
        partition: int,
        offset: int,
        timeout: float,
    ) -> bool:
        """Wait until a record at ``offset`` exists; False on timeout.

        Woken by this process's writer on commit; re-checks the file for appends by other
        processes every POLL_INTERVAL_S, or at once when ``nudge`` says there is one.
        """
        conn = self._conn()
        await self._check_partition(topic, partition)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        tp = (topic, partition)
        while True:
            # Take the event before checking, so a commit in between still wakes us.
            event = self._events.get(tp)
            if event is None:
                event = self._events[tp] = asyncio.Event()
            if self._ends.get(tp, 0) > offset:
                return True
            remaining = deadline - loop.time()
            if remaining > 0:
                try:
                    async with asyncio.timeout(min(remaining, POLL_INTERVAL_S)):
                        await event.wait()
                    if self._ends.get(tp, 0) > offset:
                        return True
                    # Woken by ``nudge`` (another process appended): look at the file.
                except TimeoutError:
                    pass
            if self._reader is None:
                raise RuntimeError(f"SqliteLog({self.url!r}) was closed while waiting")
            rows = list(await conn.execute_fetchall(_MAX_OFFSET, tp))
            if rows[0][0] is not None and int(rows[0][0]) >= offset:
                return True
            if remaining <= 0:
                return False

    def committed_end(self, topic: str, partition: int) -> int:
        """The end of the partition as this process's writer last committed it, without I/O (appends
        by other processes are not in it: ``end_offset`` reads the file)."""
        return self._ends.get((topic, partition), 0)

    def nudge(self, topic: str, partition: int) -> None:
        """Another process appended to the partition: wake this process's waiters now, to look at
        the file, instead of at their next ``POLL_INTERVAL_S`` check."""
        event = self._events.pop((topic, partition), None)
        if event is not None:
            event.set()

    async def subscribe(
        self, topic: str, partition: int, offset: int, *, limit: int = 1000
    ) -> AsyncIterator[list[StoredRecord]]:
        """Tail the partition from ``offset`` forever, yielding non-empty batches."""
        await self._check_partition(topic, partition)
        check_limit(limit)
        # Prefetch the next batch while the consumer handles this one: SQLite steps in the
        # connection's thread with the GIL released, so replays overlap fetching and handling.
        position = offset
        ahead = asyncio.ensure_future(self.read(topic, partition, position, limit))
        try:
            while True:
                batch = await ahead
                if batch:
                    position = batch[-1].offset + 1
                    ahead = asyncio.ensure_future(self.read(topic, partition, position, limit))
                    yield batch
                else:
                    await self.wait(topic, partition, position, timeout=60.0)
                    ahead = asyncio.ensure_future(self.read(topic, partition, position, limit))
        finally:
            if not ahead.done():
                ahead.cancel()
            elif not ahead.cancelled():
                ahead.exception()  # retrieved, so an error after close is not logged as lost

