"""Partition writers: the next owner of a partition fences the previous one (KafkaLog.claim).

The transactional.id is derived from (group, topic, partition), the same in every process, so
registering it makes the broker abort the old owner's open transaction at once (not after
transaction.timeout.ms) and fail its later appends with Fenced.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer

from events import Commit, Record, open_log
from events.kafka import Fenced, KafkaLog
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
