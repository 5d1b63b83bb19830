"""The Kafka adapter of the EventLog port (aiokafka): transactional group commit, read_committed reads.

URL: ``kafka://host:port[,host2:port2][?client_id=..&transactional_id=..&transactional_id_prefix=..
&replication_factor=..&max_request_size=..]``.

On the wire a record is plain Kafka: key = the Record key (the pool) as UTF-8, value = the Record
value unchanged (the CloudEvents JSON), headers = the Record headers plus ``("ce_id", id)`` when the
record has an id and no ``ce_id`` header yet; batches are lz4-compressed by Kafka itself. Any Kafka
tool reads it. ``StoredRecord.id`` is read back from the ``ce_id`` header (so that header shows in
``StoredRecord.headers``), and ``StoredRecord.partition`` is always ``partition_for(key, n)`` or the
explicit partition: records are sent with an explicit partition, never Kafka's partitioner.

What append() guarantees
    * Atomic and durable: every append is written inside a Kafka transaction by an idempotent
      producer with ``acks=all``; a ``commit=`` offset goes into the same transaction
      (``send_offsets_to_transaction``), so records and offset are applied together or not at all.
      On any failure the transaction is aborted and the error reaches the affected caller(s).
    * Group commit: concurrent appends are queued and one writer task writes them in ONE
      transaction; when a shared transaction fails because of a record (too large, invalid),
      each append is retried alone so a bad record only fails its own caller. Other failures
      (broker down, timeouts) fail every caller of the batch. After any failed transaction the
      producer is replaced (same transactional.id, new epoch), because aiokafka keeps stale
      idempotence sequence numbers after a rejected batch.
    * Read your writes, lazily: append() returns as soon as Kafka has acknowledged the commit
      (durable: the broker completes a committed transaction even if this process dies). Kafka
      writes the transaction markers just after that, and only then are the records below the
      partition's last stable offset (visible to read_committed readers) and the ``commit=``
      offset returned by OffsetFetch. So this log remembers what it wrote and the calls that
      would show it (read, end_offset, wait, committed, commit, an ``expected_offset`` check,
      close) first wait until the broker shows it. Waiting in every append instead cost two
      broker requests per poll and ~20% of a transaction's time, for nothing in the common case:
      consumers tail (they get records once visible) and in-process readers use the envelope
      cache. Another process may see an acknowledged append a few milliseconds late.
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
    * Partition writers: an append with both ``partition=`` and ``commit=`` goes through the
      writer of ``commit``'s (group, topic, partition), whose transactional.id
      ``<prefix>-<group>-<topic>-<partition>`` is the same in every process. ``claim()`` registers
      it when a process takes a partition over: the broker fences the previous owner (its next
      append fails with Fenced) and aborts its open transaction at once, so read_committed readers
      are not held back for ``transaction.timeout.ms`` (kept modest: 15 s). ``extra=`` puts records
      for other topics (dead letters, forwarded commands) into the same transaction.
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

This module must never skip or rewrite a stored record: a record it cannot turn into a
StoredRecord (no key, no value, a non-UTF-8 key or id) raises CorruptRecord naming its position.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka import errors as kerr
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.client import CoordinationType  # type: ignore[import-untyped]
from aiokafka.protocol.commit import OffsetCommitRequest, OffsetFetchRequest  # type: ignore[import-untyped]
from aiokafka.structs import OffsetAndMetadata, TopicPartition  # type: ignore[import-untyped]

from events.log import (
    Appended,
    Commit,
    ConcurrencyError,
    CorruptRecord,
    LogError,
    Record,
    StoredRecord,
    UnknownTopic,
    partition_for,
)

logger = logging.getLogger(__name__)

# Cap one transaction so a huge backlog still acknowledges callers in steady steps.
MAX_BATCH_RECORDS = 20_000
# Cross-process fallback of wait(): how often it re-reads the end offset from the broker.
POLL_INTERVAL_S = 0.1
# subscribe() long poll: how long one fetch waits on the broker for new records.
SUBSCRIBE_POLL_MS = 1_000
SUBSCRIBE_FETCH_WAIT_MS = 500
# read() consumers fetch only below a known end; a short broker wait keeps a seek from queueing
# behind a long poll at the end.
READ_FETCH_WAIT_MS = 10
# How long a read waits for the markers of this log's own transactions before giving up on them.
VISIBLE_TIMEOUT_S = 30.0
# Idle assigned consumers kept for reads (one partition each, so sequential reads hit prefetch).
MAX_IDLE_CONSUMERS = 16
# A read that gets nothing below the end offset for this long fails rather than hangs.
READ_TIMEOUT_S = 30.0
# One producer batch per partition per request: large, so a 1,000-record append is one request.
PRODUCER_BATCH_BYTES = 1 << 20
CONSUMER_PARTITION_FETCH_BYTES = 4 << 20

# A partition writer's transactions are small and its successor aborts them at once (same
# transactional.id); the timeout only bounds how long a hung one blocks read_committed readers.
PARTITION_TRANSACTION_TIMEOUT_MS = 15_000
MAIN_TRANSACTION_TIMEOUT_MS = 60_000

_ID_HEADER = "ce_id"
# Coordinator moved or is loading: look it up again and retry.
_RETRY_COORDINATOR = {14, 15, 16}  # COORDINATOR_LOAD_IN_PROGRESS, _NOT_AVAILABLE, NOT_COORDINATOR
_UNKNOWN_TOPIC = kerr.UnknownTopicOrPartitionError.errno
_TOPIC_EXISTS = kerr.TopicAlreadyExistsError.errno
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

# (topic, partition, key, value, headers) as sent
_Row = tuple[str, int, bytes, bytes, list[tuple[str, bytes]]]


class Fenced(LogError):
    """Another process registered this writer's transactional.id: this one is a zombie now."""


@dataclass(slots=True)
class _Pending:
    """One caller's append, waiting for the writer."""

    topic: str
    rows: list[_Row]
    expected: int | None
    partition: int | None
    commit: Commit | None
    future: asyncio.Future[list[Appended]]
    tps: set[tuple[str, int]] = field(init=False)

    def __post_init__(self) -> None:
        self.tps = {(row[0], row[1]) for row in self.rows}


@dataclass(frozen=True, slots=True)
class KafkaURL:
    """A parsed ``kafka://`` URL."""

    bootstrap: tuple[str, ...]
    client_id: str
    transactional_id: str
    transactional_id_prefix: str
    replication_factor: int
    max_request_size: int


def parse_url(url: str) -> KafkaURL:
    """``kafka://h:9092[,h2:9092][?client_id=..&transactional_id_prefix=..]`` -> settings."""
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "kafka" or not sep:
        raise ValueError(f"not a kafka log URL: {url!r}")
    location, _, query = rest.partition("?")
    hosts = tuple(h.strip() for h in location.rstrip("/").split(",") if h.strip())
    if not hosts:
        raise ValueError(f"kafka log URL needs host:port: {url!r}")
    for host in hosts:
        name, colon, port = host.rpartition(":")
        if not colon or not name or not port.isdigit():
            raise ValueError(f"kafka log URL needs host:port, got {host!r} in {url!r}")
    options = dict(parse_qsl(query, keep_blank_values=True))
    known = {"client_id", "transactional_id", "transactional_id_prefix", "replication_factor",
             "max_request_size"}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unsupported kafka log URL option(s) {sorted(unknown)} in {url!r}")
    client_id = options.get("client_id") or ""
    prefix = options.get("transactional_id_prefix") or "agentbus"
    # A stable id (from client_id) is what lets a restarted writer fence its zombie.
    tid = options.get("transactional_id") or f"{prefix}-{client_id or uuid.uuid4().hex}"
    try:
        rf = int(options.get("replication_factor", "1"))
        max_request = int(options.get("max_request_size", str(1 << 20)))
    except ValueError:
        raise ValueError(f"replication_factor and max_request_size must be integers: {url!r}") from None
    if rf < 1 or max_request < 1024:
        raise ValueError(f"replication_factor must be >= 1, max_request_size >= 1024: {url!r}")
    return KafkaURL(hosts, client_id or "agentbus", tid, prefix, rf, max_request)


def _prepare(topic: str, records: Sequence[Record], partition: int | None, partitions: int) -> list[_Row]:
    """Route and encode on the caller's turn, so the writer only sends."""
    rows: list[_Row] = []
    route: dict[str, int] = {}
    for rec in records:
        if partition is None:
            p = route.get(rec.key)
            if p is None:
                p = route[rec.key] = partition_for(rec.key, partitions)
        else:
            p = partition
        headers = [(name, bytes(value)) for name, value in rec.headers]
        if rec.id is not None and not any(name == _ID_HEADER for name, _ in headers):
            headers.append((_ID_HEADER, rec.id.encode()))
        rows.append((topic, p, rec.key.encode(), bytes(rec.value), headers))
    return rows


def _to_stored(topic: str, partition: int, records: Iterable[Any]) -> list[StoredRecord]:
    out: list[StoredRecord] = []
    append = out.append
    for r in records:
        key, value = r.key, r.value
        try:
            if key is None:
                raise ValueError("record has no key (the pool)")
            if value is None:
                raise ValueError("record has no value (a tombstone)")
            headers = tuple([(name, bytes(v)) for name, v in r.headers]) if r.headers else ()
            rid = None
            for name, v in headers:
                if name == _ID_HEADER:
                    rid = v.decode()
                    break
            append(StoredRecord(topic, partition, r.offset, key.decode(), value, rid, headers, r.timestamp))
        except Exception as exc:  # any failure to rebuild the record is corruption, never a skip
            raise CorruptRecord(topic, partition, r.offset, f"{type(exc).__name__}: {exc}") from exc
    return out


class KafkaLog:
    """EventLog over Kafka: transactional group commit, read_committed reads, pooled consumers."""

    # Kafka cannot find a record by id; duplicates are the decider's business (command ids).
    dedupes_ids = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.settings = parse_url(url)
        self.bootstrap = ",".join(self.settings.bootstrap)
        # Committed transactions (group commit batches); tests and benchmarks read it.
        self.transactions = 0
        self._main: _Writer | None = None
        # Partition writers: one transactional.id per (group, topic, partition) they commit.
        self._writers: dict[str, _Writer] = {}
        self._writer_locks: dict[str, asyncio.Lock] = {}
        self._admin: AIOKafkaAdminClient | None = None
        self._client: AIOKafkaClient | None = None
        self._meta: AIOKafkaConsumer | None = None
        self._closing = False
        self._topics: dict[str, int] = {}
        self._events: dict[tuple[str, int], asyncio.Event] = {}
        # Read your writes (see the module docstring): per partition the last offset this log
        # wrote whose markers may not be visible yet, per (group, topic, partition) the offset
        # it committed in a transaction that OffsetFetch may not return yet.
        self._unseen: dict[tuple[str, int], int] = {}
        self._unseen_commits: dict[tuple[str, str, int], int] = {}
        self._coordinators: dict[str, int] = {}
        # Idle consumers by partition, least recently used first; busy ones are tracked to close.
        self._idle: OrderedDict[int, tuple[TopicPartition, AIOKafkaConsumer]] = OrderedDict()
        self._busy: set[AIOKafkaConsumer] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    def _common(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap, "client_id": self.settings.client_id}

    def _new_producer(self, transactional_id: str, timeout_ms: int) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **self._common(),
            acks="all",
            enable_idempotence=True,
            compression_type="lz4",
            transactional_id=transactional_id,
            transaction_timeout_ms=timeout_ms,
            max_batch_size=min(PRODUCER_BATCH_BYTES, self.settings.max_request_size),
            max_request_size=self.settings.max_request_size,
            linger_ms=0,
        )

    def _new_consumer(self, fetch_wait_ms: int = READ_FETCH_WAIT_MS) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            **self._common(),
            group_id=None,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=CONSUMER_PARTITION_FETCH_BYTES,
            fetch_max_wait_ms=fetch_wait_ms,
        )

    async def start(self) -> None:
        """Connect the producer, admin, offsets client and metadata consumer; idempotent."""
        if self._meta is not None:
            return
        started: list[Any] = []
        try:
            admin = AIOKafkaAdminClient(**self._common())
            await admin.start()
            started.append(admin)
            client = AIOKafkaClient(**self._common())
            await client.bootstrap()
            started.append(client)
            meta = self._new_consumer()
            await meta.start()
            started.append(meta)
            writer = _Writer(self, self.settings.transactional_id, MAIN_TRANSACTION_TIMEOUT_MS)
            await writer.start()
            started.append(writer)
        except (kerr.KafkaError, OSError, TimeoutError) as exc:
            for part in reversed(started):
                with contextlib.suppress(Exception):
                    await (part.close() if isinstance(part, AIOKafkaClient | _Writer) else part.stop())
            raise LogError(f"Kafka log {self.url!r} is unavailable ({self.bootstrap}): {exc!r}") from exc
        except BaseException:
            for part in reversed(started):
                with contextlib.suppress(Exception):
                    await (part.close() if isinstance(part, AIOKafkaClient | _Writer) else part.stop())
            raise
        self._admin, self._client, self._meta, self._main = admin, client, meta, writer
        self._closing = False

    async def close(self) -> None:
        """Write everything already queued, stop the writer, then every client."""
        if self._meta is None:
            return
        self._closing = True
        writers = [*self._writers.values(), *([self._main] if self._main is not None else [])]
        self._writers.clear()
        self._main = None
        for writer in writers:  # each writes what is already queued, then stops its producer
            await writer.close()
        with contextlib.suppress(Exception):  # the next process reads what this one acknowledged
            await self._see(set(self._unseen))
            for group, topic, partition in list(self._unseen_commits):
                await self._see_commit(group, topic, partition)
        admin, client, meta = self._admin, self._client, self._meta
        self._admin = self._client = self._meta = None
        consumers = [c for _, c in self._idle.values()] + list(self._busy)
        self._idle.clear()
        self._busy.clear()
        for consumer in [*consumers, meta]:
            if consumer is not None:
                with contextlib.suppress(Exception):
                    await consumer.stop()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
        for event in self._events.values():
            event.set()
        self._events.clear()

    def _started(self) -> AIOKafkaConsumer:
        if self._meta is None:
            raise RuntimeError(f"KafkaLog({self.url!r}) is not started: await log.start() first")
        return self._meta

    # -- topics ------------------------------------------------------------------------------

    async def ensure_topic(
        self, topic: str, partitions: int, *, retention_ms: int | None = None
    ) -> None:
        """Create the topic if absent (existing topics keep their partition count and config)."""
        self._started()
        assert self._admin is not None
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        configs = {} if retention_ms is None else {"retention.ms": str(retention_ms)}
        new = NewTopic(topic, partitions, self.settings.replication_factor, topic_configs=configs)
        try:
            response = await self._admin.create_topics([new])
        except kerr.KafkaError as exc:
            raise LogError(f"cannot create topic {topic!r} on {self.bootstrap}: {exc!r}") from exc
        for name, code, *rest in response.topic_errors:
            if code not in (0, _TOPIC_EXISTS):
                detail = rest[0] if rest else ""
                raise LogError(f"cannot create topic {name!r}: {kerr.for_code(code).__name__} {detail}")
        # Creation is asynchronous on the broker: wait until metadata shows every partition.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            try:
                n = await self._describe(topic)
            except UnknownTopic:  # the broker's metadata cache lags the controller
                n = None
            if n is not None:
                self._topics[topic] = n
                return
            if loop.time() > deadline:
                raise LogError(f"topic {topic!r} was created but its metadata never appeared")
            await asyncio.sleep(0.05)

    async def _describe(self, topic: str) -> int | None:
        """Partition count with a leader for each, None while not ready; raises UnknownTopic."""
        assert self._admin is not None
        try:
            [meta] = await self._admin.describe_topics([topic])
        except kerr.KafkaError as exc:
            raise LogError(f"cannot describe topic {topic!r} on {self.bootstrap}: {exc!r}") from exc
        code = meta["error_code"]
        if code == _UNKNOWN_TOPIC:
            raise UnknownTopic(topic)
        parts = meta["partitions"]
        if code != 0 or not parts or any(p["error_code"] != 0 or p["leader"] < 0 for p in parts):
            return None
        return len(parts)

    async def partitions(self, topic: str) -> int:
        """Number of partitions of ``topic``; raises UnknownTopic.

        Cached on first sight: routing by key must not change under a running process.
        """
        n = self._topics.get(topic)
        if n is None:
            self._started()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while (found := await self._describe(topic)) is None:
                if loop.time() > deadline:
                    raise LogError(f"topic {topic!r} has partitions without a leader")
                await asyncio.sleep(0.05)
            n = self._topics[topic] = found
        return n

    async def _check_partition(self, topic: str, partition: int) -> None:
        n = await self.partitions(topic)
        if not 0 <= partition < n:
            raise ValueError(f"{topic} has partitions 0..{n - 1}, not {partition}")

    # -- writing -----------------------------------------------------------------------------

    async def append(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        partition: int | None = None,
        expected_offset: int | None = None,
        commit: Commit | None = None,
        extra: Sequence[tuple[str, int | None, Sequence[Record]]] = (),
    ) -> list[Appended]:
        """Append atomically and durably (one Kafka transaction, group-committed); positions in order.

        With ``partition`` and ``commit`` both given the append goes through the partition writer
        of ``commit`` (see ``claim``). ``extra`` (Kafka only) adds records for other topics,
        ``(topic, partition or None to route by key, records)``, to the same transaction; their
        positions are not returned.
        """
        self._started()
        n = await self.partitions(topic)
        if partition is not None:
            await self._check_partition(topic, partition)
        elif expected_offset is not None:
            raise ValueError("expected_offset needs an explicit partition")
        if commit is not None:
            await self._check_partition(commit.topic, commit.partition)
        if not records and commit is None and expected_offset is None and not extra:
            return []
        rows = _prepare(topic, records, partition, n)
        returned = len(rows)
        for other, other_partition, other_records in extra:
            count = await self.partitions(other)
            if other_partition is not None:
                await self._check_partition(other, other_partition)
            rows += _prepare(other, other_records, other_partition, count)
        writer = self._main
        if partition is not None and commit is not None:
            writer = await self._writer_for(commit)
        if writer is None or self._closing:
            raise RuntimeError(f"KafkaLog({self.url!r}) is closing")
        future = asyncio.get_running_loop().create_future()
        result = await writer.enqueue(_Pending(topic, rows, expected_offset, partition, commit, future))
        return result[:returned]

    # -- partition writers (fencing) ----------------------------------------------------------

    def partition_transactional_id(self, group: str, topic: str, partition: int) -> str:
        """The transactional.id of the writer that commits ``group``'s offset of one partition.

        The same in every process, so whichever process owns the partition next fences the
        previous owner, and the broker aborts that owner's open transaction at once.
        """
        return f"{self.settings.transactional_id_prefix}-{group}-{topic}-{partition}"

    async def claim(self, group: str, topic: str, partition: int) -> None:
        """Become the only writer that commits ``group``'s offset of ``topic[partition]``.

        Registers the partition's transactional.id (fencing any previous owner and aborting its
        open transaction) before returning, so that what the caller reads next (committed offset,
        the log up to its end) can no longer change under it by a zombie's commit.
        """
        self._started()
        await self._check_partition(topic, partition)
        await self._writer_for(Commit(group, topic, partition, 0), fresh=True)
        # Registering the id completed any transaction of ours on it, and another owner may have
        # committed since we last did: what we remember committing is no longer the offset.
        self._unseen_commits.pop((group, topic, partition), None)

    async def release(self, group: str, topic: str, partition: int) -> None:
        """Stop the partition writer of ``group``'s ``topic[partition]`` (after its queued appends)."""
        writer = self._writers.pop(self.partition_transactional_id(group, topic, partition), None)
        if writer is not None:
            await writer.close()
        self._unseen_commits.pop((group, topic, partition), None)  # the next owner commits now

    async def _writer_for(self, commit: Commit, *, fresh: bool = False) -> _Writer:
        tid = self.partition_transactional_id(commit.group, commit.topic, commit.partition)
        writer = self._writers.get(tid)
        if writer is not None and (writer.fatal is not None or fresh):
            # Fenced (someone else owned it since), or a new ownership: register the id again.
            del self._writers[tid]
            await writer.close()
            writer = None
        if writer is None:
            lock = self._writer_locks.setdefault(tid, asyncio.Lock())
            async with lock:
                writer = self._writers.get(tid)
                if writer is None:
                    writer = _Writer(self, tid, PARTITION_TRANSACTION_TIMEOUT_MS)
                    try:
                        await writer.start()
                    except (kerr.KafkaError, OSError, TimeoutError) as exc:
                        raise LogError(f"cannot start the Kafka writer {tid!r}: {exc!r}") from exc
                    if self._closing:
                        await writer.close()
                        raise RuntimeError(f"KafkaLog({self.url!r}) is closing")
                    self._writers[tid] = writer
        return writer

    async def _check_expected(self, batch: list[_Pending]) -> list[_Pending]:
        conditional = {(b.topic, b.partition) for b in batch if b.expected is not None}
        if not conditional:
            return batch
        await self._see(conditional)  # type: ignore[arg-type]
        ends = await self._end_offsets(conditional)  # type: ignore[arg-type]
        accepted: list[_Pending] = []
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

    def _written(self, accepted: list[_Pending]) -> None:
        for item in accepted:
            for tp in item.tps:
                event = self._events.pop(tp, None)
                if event is not None:
                    event.set()

    def _wrote(
        self, last: dict[tuple[str, int], int], commits: dict[str, dict[TopicPartition, OffsetAndMetadata]]
    ) -> None:
        """Remember a committed transaction until the broker shows it (read your writes)."""
        unseen = self._unseen
        for tp, offset in last.items():
            if offset > unseen.get(tp, -1):
                unseen[tp] = offset
        for group, offsets in commits.items():
            for tp, om in offsets.items():
                self._unseen_commits[(group, tp.topic, tp.partition)] = om.offset

    async def _see(self, tps: Iterable[tuple[str, int]]) -> None:
        """Wait until the markers of this log's committed transactions on ``tps`` are written."""
        pending = {tp: self._unseen[tp] for tp in tps if tp in self._unseen}
        if not pending:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + VISIBLE_TIMEOUT_S
        delay = 0.0005
        while True:
            ends = await self._end_offsets(set(pending))
            for tp, end in ends.items():
                if end > pending[tp]:
                    if self._unseen.get(tp) == pending[tp]:  # nothing newer written meanwhile
                        del self._unseen[tp]
                    del pending[tp]
            if not pending:
                return
            if loop.time() > deadline:
                logger.warning("transaction markers of %s not visible after %ss", pending, VISIBLE_TIMEOUT_S)
                for tp, offset in pending.items():  # do not make every later read wait again
                    if self._unseen.get(tp) == offset:
                        del self._unseen[tp]
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    async def _see_commit(self, group: str, topic: str, partition: int) -> None:
        """Wait until this log's last transactional commit of ``group``'s offset is fetchable."""
        key = (group, topic, partition)
        want = self._unseen_commits.get(key)
        if want is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + VISIBLE_TIMEOUT_S
        delay = 0.0005
        while await self._fetch_committed(group, topic, partition) != want:
            if self._unseen_commits.get(key) != want:  # committed again meanwhile: wait for that
                return await self._see_commit(group, topic, partition)
            if loop.time() > deadline:
                logger.warning("offset commit of %s %s[%d] not visible", group, topic, partition)
                if self._unseen_commits.get(key) == want:
                    del self._unseen_commits[key]
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)
        if self._unseen_commits.get(key) == want:
            del self._unseen_commits[key]

    # -- consumer-group offsets ----------------------------------------------------------------

    async def _coordinator_request(self, group: str, request: Any) -> Any:
        client = self._client
        if client is None:
            raise RuntimeError(f"KafkaLog({self.url!r}) is not started: await log.start() first")
        for attempt in range(20):
            node = self._coordinators.get(group)
            try:
                if node is None:
                    node = self._coordinators[group] = await client.coordinator_lookup(
                        CoordinationType.GROUP, group
                    )
                response = await client.send(node, request)
            except (kerr.CoordinatorNotAvailableError, kerr.NotCoordinatorError,
                    kerr.CoordinatorLoadInProgressError, kerr.NodeNotReadyError,
                    kerr.KafkaConnectionError) as exc:
                self._coordinators.pop(group, None)
                if attempt == 19:
                    raise LogError(f"no group coordinator for {group!r}: {exc!r}") from exc
                await asyncio.sleep(0.1)
                continue
            # Per partition the error code is the last field (OffsetCommit and OffsetFetch alike).
            codes = {entry[-1] for _, parts in response.topics for entry in parts}
            codes.add(getattr(response, "error_code", 0))
            if codes & _RETRY_COORDINATOR:
                self._coordinators.pop(group, None)
                await asyncio.sleep(0.05)
                continue
            bad = codes - {0}
            if bad:
                names = ", ".join(kerr.for_code(c).__name__ for c in sorted(bad))
                raise LogError(f"offset request for group {group!r} failed: {names}")
            return response
        raise LogError(f"no group coordinator for {group!r} after retries")

    async def commit(self, group: str, topic: str, partition: int, offset: int) -> None:
        """Store the next offset ``group`` will read (a simple-group commit: generation -1)."""
        self._started()
        await self._check_partition(topic, partition)
        # A transaction's offset lands when its marker does: it must not overwrite this one.
        await self._see_commit(group, topic, partition)
        request = OffsetCommitRequest(
            group, OffsetCommitRequest.DEFAULT_GENERATION_ID, "",
            OffsetCommitRequest.DEFAULT_RETENTION_TIME, [(topic, [(partition, offset, "")])],
        )
        await self._coordinator_request(group, request)

    async def committed(self, group: str, topic: str, partition: int) -> int:
        """The committed offset of ``group`` (0 when it never committed)."""
        self._started()
        await self._check_partition(topic, partition)
        await self._see_commit(group, topic, partition)
        return max(await self._fetch_committed(group, topic, partition), 0)

    async def _fetch_committed(self, group: str, topic: str, partition: int) -> int:
        response = await self._coordinator_request(group, OffsetFetchRequest(group, [(topic, [partition])]))
        for name, parts in response.topics:
            for p, offset, *_ in parts:
                if name == topic and p == partition:
                    return int(offset)
        return -1

    # -- reading -----------------------------------------------------------------------------

    async def _end_offsets(self, tps: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
        meta = self._started()
        got = await meta.end_offsets([TopicPartition(t, p) for t, p in tps])
        return {(tp.topic, tp.partition): int(off) for tp, off in got.items()}

    async def end_offset(self, topic: str, partition: int) -> int:
        """The read_committed end (last stable offset): where the next record goes."""
        await self._check_partition(topic, partition)
        try:
            await self._see(((topic, partition),))
            return (await self._end_offsets({(topic, partition)}))[(topic, partition)]
        except kerr.KafkaError as exc:
            raise LogError(f"cannot read the end of {topic}[{partition}]: {exc!r}") from exc

    async def _checkout(self, tp: TopicPartition, offset: int) -> AIOKafkaConsumer:
        """A read consumer assigned to ``tp`` at ``offset``: an idle one for ``tp`` if any."""
        found = next((k for k, (itp, _) in self._idle.items() if itp == tp), None)
        if found is not None:
            _, consumer = self._idle.pop(found)
            consumer.resume(tp)
            # Same position: keep what it prefetched (sequential reads ride on that).
            if await consumer.position(tp) != offset:
                consumer.seek(tp, offset)
        elif len(self._idle) >= MAX_IDLE_CONSUMERS:
            _, (_, consumer) = self._idle.popitem(last=False)
            consumer.assign([tp])
            consumer.seek(tp, offset)
        else:
            consumer = await self._start_consumer(READ_FETCH_WAIT_MS)
            consumer.assign([tp])
            consumer.seek(tp, offset)
        self._busy.add(consumer)
        return consumer

    async def _start_consumer(self, fetch_wait_ms: int) -> AIOKafkaConsumer:
        consumer = self._new_consumer(fetch_wait_ms)
        try:
            await consumer.start()
        except kerr.KafkaError as exc:
            with contextlib.suppress(Exception):
                await consumer.stop()
            raise LogError(f"cannot connect a consumer to {self.bootstrap}: {exc!r}") from exc
        return consumer

    async def _checkin(self, tp: TopicPartition, consumer: AIOKafkaConsumer, end: int) -> None:
        self._busy.discard(consumer)
        if self._meta is None or self._closing:
            with contextlib.suppress(Exception):
                await consumer.stop()
            return
        if await consumer.position(tp) >= end:
            # Nothing to prefetch: stop its fetch loop polling the broker while idle.
            consumer.pause(tp)
        self._idle[id(consumer)] = (tp, consumer)
        while len(self._idle) > MAX_IDLE_CONSUMERS:
            _, (_, old) = self._idle.popitem(last=False)
            with contextlib.suppress(Exception):
                await old.stop()

    async def read(
        self, topic: str, partition: int, offset: int, limit: int = 1000
    ) -> list[StoredRecord]:
        """Committed records at ``offset`` and after, at most ``limit``, in order."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        end = await self.end_offset(topic, partition)
        if offset >= end:
            return []
        tp = TopicPartition(topic, partition)
        consumer = await self._checkout(tp, max(offset, 0))
        ok = False
        try:
            out = await self._fetch_until(consumer, tp, end, limit)
            ok = True
            return out
        finally:
            if ok:
                await self._checkin(tp, consumer, end)
            else:  # a half-done fetch: do not hand its state to the next reader
                self._busy.discard(consumer)
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def _fetch_until(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, end: int, limit: int
    ) -> list[StoredRecord]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_TIMEOUT_S
        out: list[StoredRecord] = []
        while len(out) < limit:
            try:
                got = await consumer.getmany(tp, timeout_ms=100, max_records=limit - len(out))
            except kerr.KafkaError as exc:
                raise LogError(f"reading {tp.topic}[{tp.partition}] failed: {exc!r}") from exc
            records = got.get(tp)
            if records:
                out.extend(_to_stored(tp.topic, tp.partition, records))
                deadline = loop.time() + READ_TIMEOUT_S
                if out[-1].offset >= end - 1:
                    break
            if await consumer.position(tp) >= end:
                break
            if loop.time() > deadline:
                raise LogError(f"reading {tp.topic}[{tp.partition}] below its end {end} timed out")
        return out

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
            if self._meta is None:
                raise RuntimeError(f"KafkaLog({self.url!r}) was closed while waiting")

    async def subscribe(
        self, topic: str, partition: int, offset: int, *, limit: int = 1000
    ) -> AsyncIterator[list[StoredRecord]]:
        """Tail the partition from ``offset`` forever (a long-polling fetch), yielding batches."""
        await self._check_partition(topic, partition)
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        tp = TopicPartition(topic, partition)
        consumer = await self._start_consumer(SUBSCRIBE_FETCH_WAIT_MS)
        self._busy.add(consumer)
        consumer.assign([tp])
        consumer.seek(tp, max(offset, 0))
        try:
            while True:
                try:
                    got = await consumer.getmany(tp, timeout_ms=SUBSCRIBE_POLL_MS, max_records=limit)
                except kerr.ConsumerStoppedError as exc:
                    raise RuntimeError(f"KafkaLog({self.url!r}) was closed while subscribed") from exc
                except kerr.KafkaError as exc:
                    raise LogError(f"tailing {topic}[{partition}] failed: {exc!r}") from exc
                records = got.get(tp)
                if records:
                    yield _to_stored(topic, partition, records)
        finally:
            self._busy.discard(consumer)
            with contextlib.suppress(Exception):
                await consumer.stop()


class _Writer:
    """One transactional producer (one transactional.id) and the group-commit queue in front of it."""

    def __init__(self, log: KafkaLog, tid: str, timeout_ms: int) -> None:
        self.log, self.tid, self.timeout_ms = log, tid, timeout_ms
        self.producer: AIOKafkaProducer | None = None
        self.queue: deque[_Pending] = deque()
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
        """Write what is already queued, then stop the producer."""
        self.closing = True
        self.wake.set()
        task, self.task = self.task, None
        if task is not None and not task.done():
            await asyncio.shield(task)
        producer, self.producer = self.producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()

    async def enqueue(self, item: _Pending) -> list[Appended]:
        if self.closing:
            raise RuntimeError(f"KafkaLog({self.log.url!r}) is closing")
        if self.fatal is not None:
            if isinstance(self.fatal, kerr.ProducerFenced):
                raise Fenced(f"fenced: another writer uses transactional.id {self.tid!r}")
            raise LogError(f"the Kafka writer {self.tid!r} of {self.log.url!r} stopped: {self.fatal!r}")
        self.queue.append(item)
        self.wake.set()
        return await item.future

    def take_batch(self) -> list[_Pending]:
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
        batch: list[_Pending] = []
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

    async def write(self, batch: list[_Pending]) -> None:
        """Check expected offsets, write the rest in one transaction; settle every future."""
        if self.fatal is not None:
            error = LogError(f"the Kafka writer of {self.log.url!r} stopped: {self.fatal!r}")
            for item in batch:
                _fail(item, error)
            return
        try:
            accepted = await self.log._check_expected(batch)
        except Exception as exc:
            error = LogError(f"cannot read end offsets from {self.log.bootstrap}: {exc!r}")
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
        self.log._written(accepted)

    async def transaction(self, batch: list[_Pending]) -> list[list[Appended]]:
        """One transaction: send, add offsets, commit, then wait until it is visible.

        Records go into one record batch per partition (``create_batch``/``send_batch``): a record
        lands at its batch's base offset plus its index, and there is one future per batch, not
        per record.
        """
        producer = self.producer
        if producer is None:  # a failed restart: try again now
            producer = self.producer = await self.start_producer()
        await self.previous_complete()
        sent: list[asyncio.Future[Any] | None] = []
        # Per append, per record: (index into ``sent``, offset within that batch).
        places: list[list[tuple[int, int]]] = []
        commits: dict[str, dict[TopicPartition, OffsetAndMetadata]] = {}
        await producer.begin_transaction()
        try:
            open_: dict[tuple[str, int], tuple[Any, int]] = {}
            for item in batch:
                where: list[tuple[int, int]] = []
                for topic, p, key, value, headers in item.rows:
                    builder, slot = open_.get((topic, p), (None, -1))
                    meta = None if builder is None else builder.append(
                        timestamp=None, key=key, value=value, headers=headers)
                    if meta is None:
                        if builder is not None:  # full: send it, start the next
                            sent[slot] = await producer.send_batch(builder, topic, partition=p)
                        builder, slot = producer.create_batch(), len(sent)
                        sent.append(None)  # filled when sent
                        open_[(topic, p)] = (builder, slot)
                        meta = builder.append(timestamp=None, key=key, value=value, headers=headers)
                        if meta is None:
                            raise kerr.MessageSizeTooLargeError(f"a record of {len(value)} bytes")
                    where.append((slot, meta.offset))
                places.append(where)
                if item.commit is not None:
                    c = item.commit
                    commits.setdefault(c.group, {})[TopicPartition(c.topic, c.partition)] = (
                        OffsetAndMetadata(c.offset, "")
                    )
            for (topic, p), (builder, slot) in open_.items():
                sent[slot] = await producer.send_batch(builder, topic, partition=p)
            for group, offsets in commits.items():
                await producer.send_offsets_to_transaction(offsets, group)
            bases = await asyncio.gather(*[f for f in sent if f is not None])
            await producer.commit_transaction()
        except BaseException as exc:
            for f in sent:  # their errors are this one's consequences: retrieved, not logged
                if f is not None:
                    f.add_done_callback(_retrieve)
            await self.abort(exc)
            raise
        self.log.transactions += 1
        last: dict[tuple[str, int], int] = {}
        results: list[list[Appended]] = []
        for where in places:
            out = []
            for slot, rel in where:
                m = bases[slot]
                offset = m.offset + rel
                out.append(Appended(m.partition, offset))
                tp = (m.topic, m.partition)
                if offset > last.get(tp, -1):
                    last[tp] = offset
            results.append(out)
        self.log._wrote(last, commits)
        self.previous = (set(last), [(g, tp.topic, tp.partition) for g, o in commits.items() for tp in o])
        return results

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
            await self.log._see(tps)
        else:  # only an offset commit: its marker is on the offsets topic
            for group, topic, partition in commits:
                await self.log._see_commit(group, topic, partition)

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
            logger.warning("Kafka producer of %s failed to abort (%r); restarting it", self.log.url, exc)
        self.producer = None
        with contextlib.suppress(Exception):
            await producer.stop()
        try:
            self.producer = await self.start_producer()
        except Exception as exc:  # broker gone: the next append tries again
            logger.warning("Kafka producer of %s could not restart: %r", self.log.url, exc)

    async def start_producer(self) -> AIOKafkaProducer:
        """A started transactional producer whose id is registered (fencing any zombie now)."""
        try:
            producer = self.log._new_producer(self.tid, self.timeout_ms)
        except RuntimeError as exc:  # aiokafka's lz4 needs cramjam
            raise RuntimeError(f"{exc}: pip install 'aiokafka[lz4]'") from exc
        try:
            await producer.start()
            async with asyncio.timeout(60):
                await producer.begin_transaction()
                await producer.abort_transaction()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        return producer


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _fail(item: _Pending, error: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(error)
