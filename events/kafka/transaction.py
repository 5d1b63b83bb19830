"""One Kafka transaction on one transactional producer: records, offset commits, positions.

Records go into one record batch per partition (``create_batch``/``send_batch``): a record lands
at its batch's base offset plus its index, and there is one future per batch, not per record.
Offsets to commit go in with ``send_offsets_to_transaction``; the broker applies records and
offsets together or not at all.

This module never retries and never aborts: on any failure it raises, and the writer that owns
the producer aborts and replaces it (``events.kafka.writer``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka import errors as kerr
from aiokafka.structs import OffsetAndMetadata, TopicPartition  # type: ignore[import-untyped]

from events.kafka.clients import start_or_close
from events.kafka.records import Row
from events.kafka.url import KafkaURL
from events.log import Appended, Commit

# One producer batch per partition per request: large, so a 1,000-record append is one request.
PRODUCER_BATCH_BYTES = 1 << 20
# How long registering a transactional.id (and so fencing its previous holder) may take.
REGISTER_TIMEOUT_S = 60
# How long the producer waits before sending again what the broker answered with a retriable error.
# Back-to-back transactions (a role's batches) meet one often: a broker that verifies each produce's
# transaction (KIP-890, on by default since Kafka 3.6) answers NOT_ENOUGH_REPLICAS while the previous
# transaction's end is still being written (CONCURRENT_TRANSACTIONS underneath), about once a second
# in `agentbus bench --broker kafka://...`. aiokafka's default (100 ms) stalled the partition's role
# that long each time; 20 ms is what Kafka's own producer waits between transactions (KAFKA-5477).
# Three pairs: submit -> assigned p99 at 1,000 commands/s 263-406 -> 190-204 ms.
RETRY_BACKOFF_MS = 20

Offsets = dict[str, dict[TopicPartition, OffsetAndMetadata]]


@dataclass(frozen=True, slots=True)
class Committed:
    """What a committed transaction wrote."""

    positions: list[list[Appended]]  # per append, per record
    last: dict[tuple[str, int], int]  # per partition, the highest offset written
    offsets: Offsets  # per group, the offsets committed


def new_producer(settings: KafkaURL, transactional_id: str, timeout_ms: int) -> AIOKafkaProducer:
    """An unstarted idempotent, transactional, ``acks=all``, lz4 producer."""
    return AIOKafkaProducer(
        **settings.client_options(),
        acks="all",
        enable_idempotence=True,
        compression_type="lz4",
        transactional_id=transactional_id,
        transaction_timeout_ms=timeout_ms,
        max_batch_size=min(PRODUCER_BATCH_BYTES, settings.max_request_size),
        max_request_size=settings.max_request_size,
        linger_ms=0,
        retry_backoff_ms=RETRY_BACKOFF_MS,
    )


async def start_producer(settings: KafkaURL, transactional_id: str, timeout_ms: int) -> AIOKafkaProducer:
    """A started transactional producer whose id is registered (fencing any zombie now)."""
    try:
        producer = new_producer(settings, transactional_id, timeout_ms)
    except RuntimeError as exc:  # aiokafka's lz4 needs cramjam
        raise RuntimeError(f"{exc}: pip install 'aiokafka[lz4]'") from exc
    async def register() -> None:
        await producer.start()
        async with asyncio.timeout(REGISTER_TIMEOUT_S):
            await producer.begin_transaction()
            await producer.abort_transaction()

    await start_or_close(register(), producer.stop)
    return producer


async def send_and_commit(
    producer: AIOKafkaProducer, appends: Sequence[tuple[list[Row], Commit | None]]
) -> Committed:
    """Send every append's rows and commit offsets in the open transaction, then commit it."""
    sent: list[asyncio.Future[Any] | None] = []
    # Per append, per record: (index into ``sent``, offset within that batch).
    places: list[list[tuple[int, int]]] = []
    offsets: Offsets = {}
    try:
        open_: dict[tuple[str, int], tuple[Any, int]] = {}
        for rows, commit in appends:
            where: list[tuple[int, int]] = []
            for topic, p, key, value, headers in rows:
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
            if commit is not None:
                offsets.setdefault(commit.group, {})[TopicPartition(commit.topic, commit.partition)] = (
                    OffsetAndMetadata(commit.offset, "")
                )
        for (topic, p), (builder, slot) in open_.items():
            sent[slot] = await producer.send_batch(builder, topic, partition=p)
        for group, group_offsets in offsets.items():
            await producer.send_offsets_to_transaction(group_offsets, group)
        bases = await asyncio.gather(*[f for f in sent if f is not None])
        await producer.commit_transaction()
    except BaseException:
        for f in sent:  # their errors are this one's consequences: retrieved, not logged
            if f is not None:
                f.add_done_callback(_retrieve)
        raise
    last: dict[tuple[str, int], int] = {}
    positions: list[list[Appended]] = []
    for where in places:
        out = []
        for slot, rel in where:
            m = bases[slot]
            offset = m.offset + rel
            out.append(Appended(m.partition, offset))
            tp = (m.topic, m.partition)
            if offset > last.get(tp, -1):
                last[tp] = offset
        positions.append(out)
    return Committed(positions, last, offsets)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
