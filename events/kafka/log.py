"""KafkaLog: the Kafka adapter of the EventLog port, a facade over the parts of this package.

``url`` parses the URL, ``admin`` provisions topics, ``writer`` runs the transactional producers,
``reader`` the read_committed consumers, ``offsets`` the consumer-group offsets, ``visibility``
makes this log read its own writes, ``records`` is the wire format. This module checks arguments,
picks the part that does the work, and keeps the wake-ups of ``wait``.

What append() guarantees
    * Atomic and durable: every append is written inside a Kafka transaction by an idempotent
      producer with ``acks=all``; a ``commit=`` offset goes into the same transaction, so records
      and offset are applied together or not at all. On any failure the transaction is aborted and
      the error reaches the affected caller(s). Concurrent appends share one transaction (group
      commit); a bad record only fails its own caller (``events.kafka.writer``).
    * Read your writes, lazily: append() returns once Kafka acknowledged the commit; reads, end
      offsets, waits and offset fetches of this log then wait until the broker shows what it wrote
      (``events.kafka.visibility``). Another process may see it a few milliseconds late.
    * Offsets increase strictly within a partition but are NOT contiguous: each transaction leaves a
      control marker on one offset of every partition it wrote. The records of one append to one
      partition are contiguous. ``end_offset`` is the read_committed end (LSO), which is the offset
      the next record gets when this process is the partition's only writer.

What ``expected_offset`` guarantees (Kafka has no conditional append)
    * Inside one process: appends are serialized by the single writer task, and a conditional
      append is checked against the partition's LSO read from the broker right before its
      transaction, with no earlier write to that partition in the same transaction. So among the
      coroutines of one process exactly one of several racing appends with the same expected offset
      wins, and the check also sees anything other processes committed before it.
    * Partition writers (this is a ``TransactionalLog``): an append with both ``partition=`` and
      ``commit=`` goes through the writer of ``commit``'s (group, topic, partition). ``claim()``
      registers it when a process takes a partition over: the broker fences the previous owner (its
      next append fails with Fenced) and aborts its open transaction at once, so read_committed
      readers are not held back for ``transaction.timeout.ms`` (kept modest: 15 s). ``extra=`` puts
      records for other topics (dead letters, forwarded commands) into the same transaction.
    * Across processes: NOT a compare-and-set. Another process that appends to the same partition
      between the check and the commit is not detected. The service avoids that by design: each
      partition has a single writer (one decider per partition, Kafka's group assignment), and
      transactional-id fencing removes zombies: give every writer process a stable, unique
      ``client_id`` (the transactional.id is ``<transactional_id_prefix>-<client_id>``, or set
      ``transactional_id`` outright); a restarted writer then fences the old one, whose next
      append fails with LogError. Without a configured id each instance gets a random one and is
      never fenced.

What this adapter cannot do
    * Deduplicate record ids (``dedupes_ids = False``): ``Appended.duplicate`` is always False and
      an id appended twice is stored twice; the decider dedupes by command id.
    * Cancelling a caller does not abort a transaction already being written: its records may
      still land.

This module must never skip or rewrite a stored record, and never write around the writers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

from aiokafka import errors as kerr  # type: ignore[import-untyped]

from events.chain import chain_at
from events.kafka.admin import TopicAdmin
from events.kafka.offsets import GroupOffsets
from events.kafka.reader import Reader
from events.kafka.records import prepare
from events.kafka.url import parse_url
from events.kafka.visibility import Visibility
from events.kafka.writer import Pending, Writers
from events.log import (
    Appended,
    Commit,
    Extra,
    LogError,
    Record,
    StoredRecord,
    check_limit,
    check_partition,
    check_partition_count,
    check_routing,
)

# Cross-process fallback of wait(): how often it re-reads the end offset from the broker.
POLL_INTERVAL_S = 0.1


class _Part(Protocol):
    """A connected part of the log, started in order and closed in reverse."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class KafkaLog:
    """EventLog over Kafka: transactional group commit, read_committed reads, pooled consumers."""

    # Kafka cannot find a record by id; duplicates are the decider's business (command ids).
    dedupes_ids = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.settings = parse_url(url)
        self.bootstrap = self.settings.servers
        # Committed transactions (group commit batches); tests and benchmarks read it.
        self.transactions = 0
        self._admin = TopicAdmin(self.settings)
        self._offsets = GroupOffsets(self.settings, url)
        self._reader = Reader(self.settings, url)
        self._visibility = Visibility(self._reader.end_offsets, self._offsets.fetch)
        self._writers = Writers(self.settings, url, self._visibility, self._committed, self._chain_head)
        self._running = False
        self._closing = False
        # wait() wake-ups per partition, set when this log's writer commits there.
        self._events: dict[tuple[str, int], asyncio.Event] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the admin, offsets client, metadata consumer and main writer; idempotent."""
        if self._running:
            return
        started: list[Callable[[], Awaitable[None]]] = []
        parts: tuple[_Part, ...] = (self._admin, self._offsets, self._reader, self._writers)
        try:
            for part in parts:
                await part.start()
                started.append(part.close)
        except (kerr.KafkaError, OSError, TimeoutError) as exc:
            await _undo(started)
            raise LogError(f"Kafka log {self.url!r} is unavailable ({self.bootstrap}): {exc!r}") from exc
        except BaseException:
            await _undo(started)
            raise
        self._running = True
        self._closing = False

    async def close(self) -> None:
        """Write everything already queued, stop the writers, then every client."""
        if not self._running:
            return
        self._closing = True
        self._reader.closing = True
        await self._writers.close()  # each writes what is already queued, then stops its producer
        with contextlib.suppress(Exception):  # the next process reads what this one acknowledged
            await self._visibility.settle()
        self._running = False
        await self._reader.close()
        await self._offsets.close()
        await self._admin.close()
        for event in self._events.values():
            event.set()
        self._events.clear()

    def _started(self) -> None:
        if not self._running:
            raise RuntimeError(f"KafkaLog({self.url!r}) is not started: await log.start() first")

    # -- topics ------------------------------------------------------------------------------

    async def ensure_topic(
        self, topic: str, partitions: int, *, retention_ms: int | None = None
    ) -> None:
        """Create the topic if absent (existing topics keep their partition count and config)."""
        self._started()
        check_partition_count(partitions)
        await self._admin.ensure(topic, partitions, retention_ms)

    async def partitions(self, topic: str) -> int:
        """Number of partitions of ``topic``; raises UnknownTopic.

        Cached on first sight: routing by key must not change under a running process.
        """
        n = self._admin.counts.get(topic)
        if n is None:
            self._started()
            n = await self._admin.count(topic)
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
        extra: Sequence[Extra] = (),
    ) -> list[Appended]:
        """Append atomically and durably (one Kafka transaction, group-committed); positions in order.

        With ``partition`` and ``commit`` both given the append goes through the partition writer
        of ``commit`` (see ``claim``). ``extra`` adds records for other topics to the same
        transaction; their positions are not returned.
        """
        self._started()
        n = await self.partitions(topic)
        check_routing(topic, n, partition, expected_offset)
        if commit is not None:
            await self._check_partition(commit.topic, commit.partition)
        if not records and commit is None and expected_offset is None and not extra:
            return []
        rows = prepare(topic, records, partition, n)
        returned = len(rows)
        for other, other_partition, other_records in extra:
            count = await self.partitions(other)
            if other_partition is not None:
                check_partition(other, other_partition, count)
            rows += prepare(other, other_records, other_partition, count)
        writer = self._writers.main
        if partition is not None and commit is not None:
            writer = await self._writers.for_commit(commit)
        if writer is None or self._closing:
            raise RuntimeError(f"KafkaLog({self.url!r}) is closing")
        future = asyncio.get_running_loop().create_future()
        result = await writer.enqueue(Pending(topic, rows, expected_offset, partition, commit, future))
        return result[:returned]

    def chain(self, topic: str) -> None:
        """Have partition writers keep ``topic``'s hash chain on what they append (see the port)."""
        self._writers.chained.add(topic)

    async def _chain_head(self, topic: str, partition: int) -> bytes:
        """The chain value of the partition's last committed record (a partition writer's start)."""
        return await chain_at(self, topic, partition, await self.end_offset(topic, partition))

    def _committed(self, appends: list[Pending]) -> None:
        """A writer committed a transaction: count it and wake the waiters of its partitions."""
        self.transactions += 1
        for item in appends:
            for tp in item.tps:
                event = self._events.pop(tp, None)
                if event is not None:
                    event.set()

    # -- partition writers (fencing) ----------------------------------------------------------

    def partition_transactional_id(self, group: str, topic: str, partition: int) -> str:
        """The transactional.id of the writer that commits ``group``'s offset of one partition."""
        return self._writers.transactional_id(group, topic, partition)

    async def claim(self, group: str, topic: str, partition: int) -> None:
        """Become the only writer that commits ``group``'s offset of ``topic[partition]``.

        Registers the partition's transactional.id (fencing any previous owner and aborting its
        open transaction) before returning, so that what the caller reads next (committed offset,
        the log up to its end) can no longer change under it by a zombie's commit.
        """
        self._started()
        await self._check_partition(topic, partition)
        await self._writers.for_commit(Commit(group, topic, partition, 0), fresh=True)
        # Registering the id completed any transaction of ours on it, and another owner may have
        # committed since we last did: what we remember committing is no longer the offset.
        self._visibility.forget_commit(group, topic, partition)

    async def release(self, group: str, topic: str, partition: int) -> None:
        """Stop the partition writer of ``group``'s ``topic[partition]`` (after its queued appends)."""
        await self._writers.release(group, topic, partition)
        self._visibility.forget_commit(group, topic, partition)  # the next owner commits now

    # -- consumer-group offsets ----------------------------------------------------------------

    async def commit(self, group: str, topic: str, partition: int, offset: int) -> None:
        """Store the next offset ``group`` will read (a simple-group commit: generation -1)."""
        self._started()
        await self._check_partition(topic, partition)
        # A transaction's offset lands when its marker does: it must not overwrite this one.
        await self._visibility.see_commit(group, topic, partition)
        await self._offsets.commit(group, topic, partition, offset)

    async def committed(self, group: str, topic: str, partition: int) -> int:
        """The committed offset of ``group`` (0 when it never committed)."""
        self._started()
        await self._check_partition(topic, partition)
        await self._visibility.see_commit(group, topic, partition)
        return max(await self._offsets.fetch(group, topic, partition), 0)

    # -- reading -----------------------------------------------------------------------------

    async def end_offset(self, topic: str, partition: int) -> int:
        """The read_committed end (last stable offset): where the next record goes."""
        await self._check_partition(topic, partition)
        try:
            await self._visibility.see(((topic, partition),))
            return (await self._reader.end_offsets({(topic, partition)}))[(topic, partition)]
        except kerr.KafkaError as exc:
            raise LogError(f"cannot read the end of {topic}[{partition}]: {exc!r}") from exc

    async def read(
        self, topic: str, partition: int, offset: int, limit: int = 1000
    ) -> list[StoredRecord]:
        """Committed records at ``offset`` and after, at most ``limit``, in order."""
        check_limit(limit)
        end = await self.end_offset(topic, partition)
        if offset >= end:
            return []
        return await self._reader.read(topic, partition, max(offset, 0), end, limit)

    async def read_chained(
        self, topic: str, partition: int, offset: int, limit: int = 1000
    ) -> list[tuple[int, bytes, bytes | None]]:
        """``read``'s offsets, values and chain values (the consumer decodes whole records anyway)."""
        return [(r.offset, r.value, r.chain) for r in await self.read(topic, partition, offset, limit)]

    async def read_values(
        self, topic: str, partition: int, offset: int, limit: int = 1000
    ) -> list[tuple[int, bytes]]:
        """``read``'s offsets and values (the consumer decodes whole records anyway)."""
        return [(r.offset, r.value) for r in await self.read(topic, partition, offset, limit)]

    async def wait(
        self,
        topic: str,
        partition: int,
        offset: int,
        timeout: float,
    ) -> bool:
        """Wait until the end offset passes ``offset``; False on timeout.

        Woken at once by this process's writer; appends by other processes are seen by re-reading
        the end offset every POLL_INTERVAL_S.
        """
        await self._check_partition(topic, partition)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        key = (topic, partition)
        while True:
            # Take the event before checking, so a commit in between still wakes us.
            event = self._events.get(key)
            if event is None:
                event = self._events[key] = asyncio.Event()
            if await self.end_offset(topic, partition) > offset:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, POLL_INTERVAL_S)):
                    await event.wait()
            if not self._running:
                raise RuntimeError(f"KafkaLog({self.url!r}) was closed while waiting")

    async def subscribe(
        self, topic: str, partition: int, offset: int, *, limit: int = 1000
    ) -> AsyncIterator[list[StoredRecord]]:
        """Tail the partition from ``offset`` forever (a long-polling fetch), yielding batches."""
        await self._check_partition(topic, partition)
        check_limit(limit)
        async with contextlib.aclosing(self._reader.tail(topic, partition, max(offset, 0), limit)) as batches:
            async for batch in batches:
                yield batch


async def _undo(started: list[Callable[[], Awaitable[None]]]) -> None:
    """Close what a failed start() opened, newest first."""
    for close in reversed(started):
        with contextlib.suppress(Exception):
            await close()
