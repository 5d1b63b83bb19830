"""The write side of the Kafka log: transactional producers, group commit, partition writers, fencing.

A ``Writer`` is one transactional producer (one transactional.id) with a queue in front of it:
concurrent appends are queued and its task writes them in ONE transaction
(``events.kafka.transaction``), records and ``commit=`` offsets together. When a shared
transaction fails because of a record (too large, invalid), each append is retried alone so a
bad record only fails its own caller; other failures (broker down, timeouts) fail every caller
of the batch. After any failed transaction the producer is replaced (same transactional.id, new
epoch), because aiokafka keeps stale idempotence sequence numbers after a rejected batch.

``Writers`` holds the log's main writer (transactional.id from the URL) and its partition writers:
the writer of a (group, topic, partition) has the transactional.id
``<prefix>-<group>-<topic>-<partition>``, the same in every process, so whichever process claims
the partition next fences the previous owner (its next append fails with ``Fenced``) and the
broker aborts that owner's open transaction at once.

A partition writer also keeps the hash chain (``events.chain``) of the partitions its appends
write to, for the topics named by ``KafkaLog.chain`` (the events topic, whose partitions' deciders
are its only writers; never ``extra`` records): it reads each head once, from the log, when it
first writes there (after fencing the previous owner), and moves it only when a transaction
commits.

This module must never let a fenced writer write again, nor report an append it did not commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka import errors as kerr

from events.chain import CHAIN_HEADER, link
from events.kafka.records import Row
from events.kafka.transaction import send_and_commit, start_producer
from events.kafka.url import KafkaURL
from events.kafka.visibility import Visibility
from events.log import Appended, Commit, ConcurrencyError, LogError

logger = logging.getLogger(__name__)

# Cap one transaction so a huge backlog still acknowledges callers in steady steps.
MAX_BATCH_RECORDS = 20_000
# A partition writer's transactions are small and its successor aborts them at once (same
# transactional.id); the timeout only bounds how long a hung one blocks read_committed readers.
PARTITION_TRANSACTION_TIMEOUT_MS = 15_000
MAIN_TRANSACTION_TIMEOUT_MS = 60_000
# How long closing a writer waits for its transaction to end, and then for its producer to stop.
CLOSE_TIMEOUT_S = 30.0

# Errors caused by one record, not by the broker: a shared transaction is retried per append.
_RECORD_ERRORS: tuple[type[BaseException], ...] = (
    kerr.MessageSizeTooLargeError,
    kerr.RecordTooLargeError,
    kerr.RecordListTooLargeError,
    kerr.InvalidTimestampError,
    kerr.CorruptRecordException,
    kerr.InvalidTopicError,
    kerr.UnknownTopicOrPartitionError,
    ValueError,
    TypeError,
)


class Fenced(LogError):
    """Another process registered this writer's transactional.id: this one is a zombie now."""


@dataclass(slots=True)
class Pending:
    """One caller's append, waiting for the writer."""

    topic: str
    rows: list[Row]
    expected: int | None
    partition: int | None
    commit: Commit | None
    future: asyncio.Future[list[Appended]]
    tps: set[tuple[str, int]] = field(init=False)

    def __post_init__(self) -> None:
        self.tps = {(row[0], row[1]) for row in self.rows}


# Called once per committed transaction with the appends it settled.
OnCommit = Callable[[list[Pending]], None]
# What one append sends: its rows and its offset commit.
_Send = tuple[list[Row], Commit | None]
# Reads the chain value of a partition's last committed record (GENESIS when empty).
HeadLoader = Callable[[str, int], Awaitable[bytes]]


class Writer:
    """One transactional producer (one transactional.id) and the group-commit queue in front of it."""

    def __init__(self, settings: KafkaURL, url: str, tid: str, timeout_ms: int, visibility: Visibility,
                 on_commit: OnCommit, load_head: HeadLoader | None = None) -> None:
        self.settings, self.url, self.tid, self.timeout_ms = settings, url, tid, timeout_ms
        self.visibility, self.on_commit = visibility, on_commit
        # Partition writers chain what they write; the main writer (many processes share the
        # topics it writes) does not.
        self.load_head = load_head
        self.chain_topics: set[str] = set()  # the topics to chain (shared with Writers.chained)
        self.heads: dict[tuple[str, int], bytes] = {}
        self.producer: AIOKafkaProducer | None = None
        self.queue: deque[Pending] = deque()
        self.wake = asyncio.Event()
        self.closing = False
        self.fatal: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        # What the previous transaction wrote: (partitions, offset commits).
        self.previous: tuple[set[tuple[str, int]], list[tuple[str, str, int]]] = (set(), [])

    async def start(self) -> None:
        """Register the transactional.id (fencing any other holder), then start writing."""
        self.producer = await self.start_producer()
        self.task = asyncio.create_task(self.run(), name=f"kafka-writer {self.tid}")

    async def close(self) -> None:
        """Write what is already queued, then stop the producer; within ``CLOSE_TIMEOUT_S`` each.

        A transaction that does not end by then is abandoned (its appends fail): after a broker
        restart the client can wait for an end that never comes, and whoever registers this
        transactional.id next aborts it anyway.
        """
        self.closing = True
        self.wake.set()
        task, self.task = self.task, None
        if task is not None and not task.done():
            done, _ = await asyncio.wait([task], timeout=CLOSE_TIMEOUT_S)
            if not done:
                logger.warning("Kafka writer %s still in a transaction after %.0f s; abandoning it",
                               self.tid, CLOSE_TIMEOUT_S)
                task.cancel()
                await asyncio.wait([task])
        if task is not None and task.done() and not task.cancelled():
            task.exception()  # its appends failed with it (run), nothing to report twice
        producer, self.producer = self.producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), CLOSE_TIMEOUT_S)

    async def enqueue(self, item: Pending) -> list[Appended]:
        """Queue an append; its positions once its transaction committed."""
        if self.closing:
            raise RuntimeError(f"KafkaLog({self.url!r}) is closing")
        if self.fatal is not None:
            if isinstance(self.fatal, kerr.ProducerFenced):
                raise Fenced(f"fenced: another writer uses transactional.id {self.tid!r}")
            raise LogError(f"the Kafka writer {self.tid!r} of {self.url!r} stopped: {self.fatal!r}")
        self.queue.append(item)
        self.wake.set()
        return await item.future

    def take_batch(self) -> list[Pending]:
        """Whole appends from the queue head, in order, up to the cap.

        Stops before a conditional append to a partition this batch already writes, so every
        ``expected_offset`` is checked against the broker, not against a guess of our own.
        """
        batch = [self.queue.popleft()]
        size = len(batch[0].rows)
        touched = set(batch[0].tps)
        while self.queue:
            item = self.queue[0]
            if size + len(item.rows) > MAX_BATCH_RECORDS:
                break
            if item.expected is not None and (item.topic, item.partition) in touched:
                break
            self.queue.popleft()
            batch.append(item)
            size += len(item.rows)
            touched |= item.tps
        return batch

    async def run(self) -> None:
        """Write the queue, a batch per transaction, until closed."""
        batch: list[Pending] = []
        try:
            while True:
                if not self.queue:
                    if self.closing:
                        return
                    self.wake.clear()
                    await self.wake.wait()
                    continue
                batch = [b for b in self.take_batch() if not b.future.done()]  # gave up: skip
                if batch:
                    await self.write(batch)
                batch = []
        except BaseException as exc:
            # Cancelled other than by close(): nobody will write the queue, so fail it, not hang.
            self.fatal = exc
            for b in [*batch, *self.queue]:
                if not b.future.done():
                    b.future.set_exception(LogError(f"the Kafka writer stopped: {exc!r}"))
            self.queue.clear()
            raise

    async def check_expected(self, batch: list[Pending]) -> list[Pending]:
        """Fail the appends whose ``expected_offset`` is not their partition's end; the rest go on.

        Kafka has no conditional append: the end is read from the broker right before the
        transaction, after this log's own earlier writes there became visible.
        """
        conditional = {(b.topic, b.partition) for b in batch if b.expected is not None}
        if not conditional:
            return batch
        await self.visibility.see(conditional)  # type: ignore[arg-type]
        ends = await self.visibility.end_offsets(conditional)  # type: ignore[arg-type]
        accepted: list[Pending] = []
        for item in batch:
            if item.expected is not None:
                assert item.partition is not None
                actual = ends[(item.topic, item.partition)]
                if actual != item.expected:
                    _fail(item, ConcurrencyError(item.topic, item.partition, item.expected, actual))
                    continue
            if item.rows or item.commit is not None:
                accepted.append(item)
            elif not item.future.done():
                item.future.set_result([])  # a bare check that passed
        return accepted

    async def write(self, batch: list[Pending]) -> None:
        """Check expected offsets, write the rest in one transaction; settle every future."""
        if self.fatal is not None:
            error = LogError(f"the Kafka writer of {self.url!r} stopped: {self.fatal!r}")
            for item in batch:
                _fail(item, error)
            return
        try:
            accepted = await self.check_expected(batch)
        except Exception as exc:
            error = LogError(f"cannot read end offsets from {self.settings.servers}: {exc!r}")
            error.__cause__ = exc
            for item in batch:
                _fail(item, error)
            return
        if not accepted:
            return
        try:
            results = await self.transaction(accepted)
        except kerr.ProducerFenced as exc:
            # Another process took over our transactional.id: this writer is a zombie now.
            self.fatal = exc
            producer, self.producer = self.producer, None
            if producer is not None:  # its sender's failed futures go with it
                with contextlib.suppress(Exception):
                    await producer.stop()
            error = Fenced(f"fenced: another writer uses transactional.id {self.tid!r}")
            error.__cause__ = exc
            for item in accepted:
                _fail(item, error)
            return
        except Exception as exc:
            if len(accepted) > 1 and isinstance(exc, _RECORD_ERRORS):
                for item in accepted:  # the aborted batch had a bad record: find its owner
                    await self.write([item])
                return
            error = LogError(f"Kafka append to {accepted[0].topic} failed: {exc!r}")
            error.__cause__ = exc
            for item in accepted:
                _fail(item, error)
            return
        for item, result in zip(accepted, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)
        self.on_commit(accepted)

    async def transaction(self, batch: list[Pending]) -> list[list[Appended]]:
        """One transaction for ``batch``, remembered until the broker shows it (read your writes)."""
        producer = self.producer
        if producer is None:  # a failed restart: try again now
            producer = self.producer = await self.start_producer()
        await self.previous_complete()
        appends, heads = await self.chained(batch)
        await producer.begin_transaction()
        try:
            done = await send_and_commit(producer, appends)
        except BaseException as exc:
            await self.abort(exc)
            raise
        self.heads = heads
        self.visibility.wrote(done.last, done.offsets)
        commits = [(group, tp.topic, tp.partition) for group, tps in done.offsets.items() for tp in tps]
        self.previous = (set(done.last), commits)
        return done.positions

    async def chained(self, batch: list[Pending]) -> tuple[list[_Send], dict[tuple[str, int], bytes]]:
        """The batch's rows with the chain header on each record of its appends' own topics.

        The heads it returns are the ones to keep once the transaction commits; an aborted one
        leaves ``self.heads`` as it was, so a retry chains from the same values again.
        """
        if self.load_head is None:
            return [(item.rows, item.commit) for item in batch], self.heads
        heads = dict(self.heads)
        out: list[_Send] = []
        for item in batch:
            rows: list[Row] = []
            for row in item.rows:
                topic, p, key, value, headers = row
                if topic != item.topic or topic not in self.chain_topics:
                    rows.append(row)
                    continue
                prev = heads.get((topic, p))
                if prev is None:
                    prev = await self.load_head(topic, p)
                chain = heads[(topic, p)] = link(prev, value)
                rows.append((topic, p, key, value, [*headers, (CHAIN_HEADER, chain.hex().encode())]))
            out.append((rows, item.commit))
        return out, heads

    async def previous_complete(self) -> None:
        """Wait for the previous transaction's markers before starting the next one.

        Until the broker has written them it answers AddPartitionsToTxn with
        CONCURRENT_TRANSACTIONS and aiokafka backs off 20 ms (measured: p90 of back-to-back
        appends 3 -> 25 ms). Waiting here rather than in append() lets the caller go on (decide
        its next batch) while the markers are written; the appends queued meanwhile share the
        next transaction.
        """
        tps, commits = self.previous
        self.previous = (set(), [])
        if tps:
            await self.visibility.see(tps)
        else:  # only an offset commit: its marker is on the offsets topic
            for group, topic, partition in commits:
                await self.visibility.see_commit(group, topic, partition)

    async def abort(self, cause: BaseException) -> None:
        """Abort the open transaction, then replace the producer.

        A fresh producer with the same transactional.id gets a new epoch: aiokafka does not reset
        the idempotent sequence numbers after a rejected batch, so the old one would fail every
        later transaction with OutOfOrderSequenceNumber. A fenced producer is left alone.
        """
        producer = self.producer
        if producer is None or isinstance(cause, kerr.ProducerFenced):
            return
        try:
            await asyncio.shield(producer.abort_transaction())
        except Exception as exc:
            if isinstance(exc, kerr.ProducerFenced):
                return
            logger.warning("Kafka producer of %s failed to abort (%r); restarting it", self.url, exc)
        self.producer = None
        with contextlib.suppress(Exception):
            await producer.stop()
        try:
            self.producer = await self.start_producer()
        except Exception as exc:  # broker gone: the next append tries again
            logger.warning("Kafka producer of %s could not restart: %r", self.url, exc)

    async def start_producer(self) -> AIOKafkaProducer:
        """A started producer with this writer's transactional.id registered (fencing any zombie)."""
        return await start_producer(self.settings, self.tid, self.timeout_ms)


class Writers:
    """The log's main writer and its partition writers, one transactional.id each."""

    def __init__(self, settings: KafkaURL, url: str, visibility: Visibility, on_commit: OnCommit,
                 load_head: HeadLoader | None = None) -> None:
        self.settings, self.url, self.visibility, self.on_commit = settings, url, visibility, on_commit
        self.load_head = load_head
        # Topics whose records partition writers chain (KafkaLog.chain).
        self.chained: set[str] = set()
        self.main: Writer | None = None
        # Partition writers by transactional.id: one per (group, topic, partition) they commit.
        self._partitions: dict[str, Writer] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.closing = False

    def _new(self, tid: str, timeout_ms: int, load_head: HeadLoader | None = None) -> Writer:
        writer = Writer(self.settings, self.url, tid, timeout_ms, self.visibility, self.on_commit, load_head)
        writer.chain_topics = self.chained
        return writer

    async def start(self) -> None:
        """Start the main writer (fencing a previous process with the same transactional.id)."""
        writer = self._new(self.settings.transactional_id, MAIN_TRANSACTION_TIMEOUT_MS)
        await writer.start()
        self.main = writer
        self.closing = False

    async def close(self) -> None:
        """Stop every writer, each after writing what is already queued."""
        self.closing = True
        writers = [*self._partitions.values(), *([self.main] if self.main is not None else [])]
        self._partitions.clear()
        self.main = None
        for writer in writers:
            await writer.close()

    def transactional_id(self, group: str, topic: str, partition: int) -> str:
        """The transactional.id of the writer that commits ``group``'s offset of one partition.

        The same in every process, so whichever process owns the partition next fences the
        previous owner, and the broker aborts that owner's open transaction at once.
        """
        return f"{self.settings.transactional_id_prefix}-{group}-{topic}-{partition}"

    async def for_commit(self, commit: Commit, *, fresh: bool = False) -> Writer:
        """The partition writer of ``commit``'s (group, topic, partition), started if need be.

        ``fresh`` registers the transactional.id again even if this process holds it already.
        """
        tid = self.transactional_id(commit.group, commit.topic, commit.partition)
        writer = self._partitions.get(tid)
        if writer is not None and (writer.fatal is not None or fresh):
            # Fenced (someone else owned it since), or a new ownership: register the id again.
            del self._partitions[tid]
            await writer.close()
            writer = None
        if writer is None:
            lock = self._locks.setdefault(tid, asyncio.Lock())
            async with lock:
                writer = self._partitions.get(tid)
                if writer is None:
                    writer = self._new(tid, PARTITION_TRANSACTION_TIMEOUT_MS, self.load_head)
                    try:
                        await writer.start()
                    except (kerr.KafkaError, OSError, TimeoutError) as exc:
                        raise LogError(f"cannot start the Kafka writer {tid!r}: {exc!r}") from exc
                    if self.closing:
                        await writer.close()
                        raise RuntimeError(f"KafkaLog({self.url!r}) is closing")
                    self._partitions[tid] = writer
        return writer

    async def release(self, group: str, topic: str, partition: int) -> None:
        """Stop the partition writer of ``group``'s ``topic[partition]`` (after its queued appends)."""
        writer = self._partitions.pop(self.transactional_id(group, topic, partition), None)
        if writer is not None:
            await writer.close()


def _fail(item: Pending, error: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(error)
