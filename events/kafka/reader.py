"""The read side of the Kafka log: read_committed consumers without a group, and a pool of them.

A read fetches only below the end offset it is given, through a consumer assigned to that one
partition; idle consumers are kept, least recently used first, so sequential reads ride on what
they prefetched. A subscriber gets its own long-polling consumer. One metadata consumer answers
end offsets (read_committed: the last stable offset).

This module must never commit an offset or join a group: positions belong to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncGenerator

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka import __version__ as aiokafka_version
from aiokafka import errors as kerr
from aiokafka.structs import TopicPartition  # type: ignore[import-untyped]

from events.kafka.clients import start_or_close
from events.kafka.records import to_stored
from events.kafka.url import KafkaURL
from events.log import LogError, StoredRecord

# subscribe() long poll: how long one fetch waits on the broker for new records.
SUBSCRIBE_POLL_MS = 1_000
SUBSCRIBE_FETCH_WAIT_MS = 500
# read() consumers fetch only below a known end; a short broker wait keeps a seek from queueing
# behind a long poll at the end.
READ_FETCH_WAIT_MS = 10
# Idle assigned consumers kept for reads (one partition each, so sequential reads hit prefetch).
MAX_IDLE_CONSUMERS = 16
# A read that gets nothing below the end offset for this long fails rather than hangs.
READ_TIMEOUT_S = 30.0
CONSUMER_PARTITION_FETCH_BYTES = 4 << 20
# What a client that names no id shows the broker (aiokafka's own default).
DEFAULT_CLIENT_ID = f"aiokafka-{aiokafka_version}"


def read_committed_consumer(
    bootstrap: str, fetch_wait_ms: int, *, client_id: str = DEFAULT_CLIENT_ID
) -> AIOKafkaConsumer:
    """An unstarted consumer that sees committed records only, from the start, in no group."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        group_id=None,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=CONSUMER_PARTITION_FETCH_BYTES,
        fetch_max_wait_ms=fetch_wait_ms,
    )


class Reader:
    """The metadata consumer of one log and its pool of partition-assigned read consumers."""

    def __init__(self, settings: KafkaURL, url: str) -> None:
        self.settings, self.url = settings, url
        self.meta: AIOKafkaConsumer | None = None
        # Set while the log closes: a consumer handed back then is stopped, not kept.
        self.closing = False
        # Idle consumers by id, least recently used first; busy ones are tracked to close.
        self._idle: OrderedDict[int, tuple[TopicPartition, AIOKafkaConsumer]] = OrderedDict()
        self._busy: set[AIOKafkaConsumer] = set()

    def _consumer(self, fetch_wait_ms: int) -> AIOKafkaConsumer:
        settings = self.settings
        return read_committed_consumer(settings.servers, fetch_wait_ms, client_id=settings.client_id)

    async def start(self) -> None:
        """Start the metadata consumer."""
        meta = self._consumer(READ_FETCH_WAIT_MS)
        await start_or_close(meta.start(), meta.stop)
        self.meta = meta
        self.closing = False

    async def close(self) -> None:
        """Stop every consumer, idle, busy (a tail or a read in flight) and the metadata one."""
        self.closing = True
        meta, self.meta = self.meta, None
        consumers = [c for _, c in self._idle.values()] + list(self._busy)
        self._idle.clear()
        self._busy.clear()
        for consumer in [*consumers, meta]:
            if consumer is not None:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def end_offsets(self, tps: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The read_committed end (last stable offset) of each partition."""
        meta = self.meta
        if meta is None:
            raise RuntimeError(f"KafkaLog({self.url!r}) is not started: await log.start() first")
        got = await meta.end_offsets([TopicPartition(t, p) for t, p in tps])
        return {(tp.topic, tp.partition): int(off) for tp, off in got.items()}

    async def read(self, topic: str, partition: int, offset: int, end: int, limit: int) -> list[StoredRecord]:
        """Records from ``offset`` (< ``end``) up to ``end``, at most ``limit``, in order."""
        tp = TopicPartition(topic, partition)
        consumer = await self._checkout(tp, offset)
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

    async def tail(
        self, topic: str, partition: int, offset: int, limit: int
    ) -> AsyncGenerator[list[StoredRecord], None]:
        """Long-poll the partition from ``offset`` forever with a consumer of its own."""
        tp = TopicPartition(topic, partition)
        consumer = await self._start_consumer(SUBSCRIBE_FETCH_WAIT_MS)
        self._busy.add(consumer)
        consumer.assign([tp])
        consumer.seek(tp, offset)
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
                    yield to_stored(topic, partition, records)
        finally:
            self._busy.discard(consumer)
            with contextlib.suppress(Exception):
                await consumer.stop()

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
        consumer = self._consumer(fetch_wait_ms)
        try:
            await start_or_close(consumer.start(), consumer.stop)
        except kerr.KafkaError as exc:
            raise LogError(f"cannot connect a consumer to {self.settings.servers}: {exc!r}") from exc
        return consumer

    async def _checkin(self, tp: TopicPartition, consumer: AIOKafkaConsumer, end: int) -> None:
        self._busy.discard(consumer)
        if self.meta is None or self.closing:
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
                out.extend(to_stored(tp.topic, tp.partition, records))
                deadline = loop.time() + READ_TIMEOUT_S
                if out[-1].offset >= end - 1:
                    break
            if await consumer.position(tp) >= end:
                break
            if loop.time() > deadline:
                raise LogError(f"reading {tp.topic}[{tp.partition}] below its end {end} timed out")
        return out
