"""Partition writers: the next owner of a partition fences the previous one (KafkaLog.claim).

The transactional.id is derived from (group, topic, partition), the same in every process, so
registering it makes the broker abort the old owner's open transaction at once (not after
transaction.timeout.ms) and fail its later appends with Fenced.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer

from events import Commit, EventLog, Record, StoredRecord, open_log
from events.kafka import Fenced, KafkaLog
from services.runtime import partition_role
from services.runtime.partition_role import PartitionRole
from tests.cluster.conftest import bootstrap_of, drop_topics, kafka_url

pytestmark = pytest.mark.kafka


@pytest.fixture
async def topic() -> AsyncIterator[str]:
    name = f"fence-{uuid.uuid4().hex[:10]}"
    yield name
    await drop_topics(bootstrap_of(kafka_url()), name)


async def _log() -> KafkaLog:
    log = open_log(f"{kafka_url()}?client_id=fence-{uuid.uuid4().hex[:8]}")
    assert isinstance(log, KafkaLog)
    await log.start()
    return log


async def copy(log: EventLog, recs: list[StoredRecord], topic: str) -> None:
    """A copying role's step: ``recs`` (of ``<topic>-in``[0]) to ``topic``[0], offset in the transaction."""
    await log.append(topic, [Record("k", r.value) for r in recs], partition=0,
                     commit=Commit("g", recs[0].topic, 0, recs[-1].offset + 1))


async def copied(log: EventLog, topic: str, n: int) -> list[bytes]:
    """What ``topic``[0] holds once it holds ``n`` records (or after 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        got = [r.value for r in await log.read(topic, 0, 0, 1000)]
        if len(got) >= n or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.1)


async def assert_copied_once(log: EventLog, topic: str, n: int) -> None:
    """``topic``[0] holds ``<topic>-in``[0]'s ``n`` records, each once, and the offset is past them."""
    await asyncio.sleep(0.5)  # nothing more arrives: no record is copied twice
    assert [r.value for r in await log.read(topic, 0, 0, 1000)] == [f"{i}".encode() for i in range(n)]
    source = f"{topic}-in"
    last = (await log.read(source, 0, 0, 1000))[-1].offset
    assert await log.committed("g", source, 0) == last + 1


async def test_a_new_owner_fences_the_old_one_and_aborts_its_open_transaction(topic: str) -> None:
    old, new = await _log(), await _log()
    source = f"{topic}-in"
    try:
        await old.ensure_topic(topic, 1)
        await old.ensure_topic(source, 1)
        await old.claim("g", source, 0)
        await old.append(topic, [Record("k", b"1")], partition=0, commit=Commit("g", source, 0, 1))
        # A dead owner's transaction, left open: records sent, never committed or aborted.
        dead = AIOKafkaProducer(bootstrap_servers=old.bootstrap, enable_idempotence=True,
                                transactional_id=old.partition_transactional_id("g", source, 0))
        await dead.start()
        await dead.begin_transaction()
        await dead.send_and_wait(topic, b"zombie", key=b"k", partition=0)
        started = time.monotonic()
        await new.claim("g", source, 0)  # aborts it now, far sooner than its transaction timeout
        await new.append(topic, [Record("k", b"2")], partition=0, commit=Commit("g", source, 0, 2))
        assert time.monotonic() - started < 10
        assert [r.value for r in await new.read(topic, 0, 0)] == [b"1", b"2"]
        assert await new.committed("g", source, 0) == 2
        with pytest.raises(Fenced):
            await old.append(topic, [Record("k", b"late")], partition=0, commit=Commit("g", source, 0, 9))
        assert await new.committed("g", source, 0) == 2
        await dead.stop()
    finally:
        await old.close()
        await new.close()
        await drop_topics(new.bootstrap, source)


async def test_a_fenced_partition_loop_still_assigned_claims_again_and_applies_each_record_once(
    topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker restart can outlast a transaction's timeout: the broker then aborts it and bumps the
    epoch, so the owner's next append fails with Fenced although no other worker took the
    partition. The loop must claim it again (not stop for good), and apply each record once."""
    monkeypatch.setattr(partition_role, "FENCED_RETRY_S", 0.2)
    log, other = await _log(), await _log()
    source = f"{topic}-in"
    part: PartitionRole | None = None
    try:
        await log.ensure_topic(topic, 1)
        await log.ensure_topic(source, 1)
        await log.claim("g", source, 0)

        async def build() -> int:
            return await log.committed("g", source, 0)

        async def step(recs: list[StoredRecord]) -> None:
            await copy(log, recs, topic)

        part = PartitionRole(role="copy", topic=source, partition=0, build=build, step=step, log=log)
        part.task = asyncio.create_task(part.run())
        await log.append(source, [Record("k", f"{i}".encode()) for i in range(3)])
        assert await copied(log, topic, 3) == [b"0", b"1", b"2"]
        # What the broker does to a timed-out transaction: a newer epoch of the same id.
        await other.claim("g", source, 0)
        await log.append(source, [Record("k", f"{i}".encode()) for i in range(3, 6)])
        assert await copied(log, topic, 6) == [f"{i}".encode() for i in range(6)]
        await assert_copied_once(log, topic, 6)
        assert not part.closed
    finally:
        if part is not None:
            await part.stop()
        await log.close()
        await other.close()
        await drop_topics(log.bootstrap, source)
