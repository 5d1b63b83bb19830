"""The EventLog contract, run against every backend in ``conftest.BACKENDS``.

Backend-neutral on purpose: only the port's behaviour is asserted, never how it is stored.
Offsets are strictly increasing per partition but not necessarily contiguous (Kafka's
transaction markers take offsets); contiguity is SQLite's own promise, tested in
``tests/unit/test_sqlite_log.py``. Deduplication by record id is optional (``dedupes_ids``).
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from events import (
    Commit,
    ConcurrencyError,
    EventLog,
    Record,
    UnknownTopic,
    partition_for,
)

NO_DEDUPE = "Kafka cannot dedupe by record id; the decider dedupes by command id"


def rec(i: int, key: str = "default", *, rid: str | None = None) -> Record:
    return Record(key=key, value=b'{"n":%d}' % i, id=rid, headers=(("h", b"v%d" % i),))


def dedupes(log: EventLog) -> bool:
    return log.dedupes_ids


def increasing(offsets: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(offsets))


async def test_the_log_is_an_event_log_declaring_whether_it_dedupes_ids(log: EventLog) -> None:
    assert isinstance(log, EventLog)
    assert isinstance(log.dedupes_ids, bool)


async def test_append_then_read_in_order_with_offsets(log: EventLog, topic: str) -> None:
    await log.ensure_topic(topic, 1)
    before = time.time() * 1000
    first = await log.append(topic, [rec(0), rec(1), rec(2)])
    second = await log.append(topic, [rec(3, rid="id-3")])
    offsets = [a.offset for a in first + second]
    assert [(a.partition, a.duplicate) for a in first + second] == [(0, False)] * 4
    assert offsets[0] >= 0 and increasing(offsets)
    # One append lands contiguously (the decider relies on it to find a command's events).
    assert offsets[:3] == list(range(offsets[0], offsets[0] + 3))
    got = await log.read(topic, 0, 0)
    assert [r.offset for r in got] == offsets
    assert [r.value for r in got] == [b'{"n":0}', b'{"n":1}', b'{"n":2}', b'{"n":3}']
    assert got[3].id == "id-3" and got[0].id is None
    assert got[2].headers == (("h", b"v2"),)
    assert all(r.topic == topic and r.partition == 0 and r.key == "default" for r in got)
    assert all(before - 1000 <= r.timestamp_ms <= time.time() * 1000 + 1000 for r in got)
    assert [r.offset for r in await log.read(topic, 0, offsets[1], limit=2)] == offsets[1:3]
    assert [r.offset for r in await log.read(topic, 0, offsets[2] + 1)] == offsets[3:]
    assert await log.read(topic, 0, offsets[3] + 1) == []
    assert await log.end_offset(topic, 0) > offsets[3]


async def test_records_route_by_partition_for_their_key(log: EventLog, topic: str) -> None:
    await log.ensure_topic(topic, 4)
    keys = [f"pool-{i}" for i in range(20)]
    positions = await log.append(topic, [rec(i, k) for i, k in enumerate(keys)])
    assert [p.partition for p in positions] == [partition_for(k, 4) for k in keys]
    for partition in range(4):
        stored = await log.read(topic, partition, 0)
        expected = [k for k in keys if partition_for(k, 4) == partition]
        assert [r.key for r in stored] == expected
        assert [r.offset for r in stored] == [p.offset for p in positions if p.partition == partition]


async def test_explicit_partition_overrides_the_key(log: EventLog, topic: str) -> None:
    await log.ensure_topic(topic, 3)
    positions = await log.append(topic, [rec(0, "a"), rec(1, "b")], partition=2)
    assert [p.partition for p in positions] == [2, 2]
    assert positions[1].offset == positions[0].offset + 1
    stored = await log.read(topic, 2, 0)
    assert [(r.key, r.offset) for r in stored] == [("a", positions[0].offset), ("b", positions[1].offset)]


async def test_expected_offset_accepts_the_end_and_rejects_anything_else(
    log: EventLog, topic: str
) -> None:
    await log.ensure_topic(topic, 2)
    [a] = await log.append(topic, [rec(0)], partition=1, expected_offset=0)
    assert a.offset == 0
    end = await log.end_offset(topic, 1)
    assert end > a.offset
    b = await log.append(topic, [rec(1), rec(2)], partition=1, expected_offset=end)
    assert [x.offset for x in b] == [end, end + 1]  # the end is where the next record goes
    new_end = await log.end_offset(topic, 1)
    assert new_end > b[-1].offset
    with pytest.raises(ConcurrencyError) as caught:
        await log.append(topic, [rec(3)], partition=1, expected_offset=end)
    assert (caught.value.expected, caught.value.actual, caught.value.partition) == (end, new_end, 1)
    with pytest.raises(ConcurrencyError):
        await log.append(topic, [rec(3)], partition=1, expected_offset=new_end + 1)
    assert await log.end_offset(topic, 1) == new_end
    assert [r.value for r in await log.read(topic, 1, 0)] == [
        b'{"n":0}',
        b'{"n":1}',
        b'{"n":2}',
    ]


async def test_expected_offset_needs_a_partition(log: EventLog, topic: str) -> None:
    await log.ensure_topic(topic, 1)
    with pytest.raises(ValueError):
        await log.append(topic, [rec(0)], expected_offset=0)
    assert await log.end_offset(topic, 0) == 0


async def test_racing_writers_with_expected_offset_exactly_one_wins(
    log: EventLog, topic: str
) -> None:
    await log.ensure_topic(topic, 1)
    results = await asyncio.gather(
        *(log.append(topic, [rec(i)], partition=0, expected_offset=0) for i in range(10)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert len(losers) == 9 and all(isinstance(e, ConcurrencyError) for e in losers)
    [[won]] = winners
    stored = await log.read(topic, 0, 0)
    assert [r.offset for r in stored] == [won.offset]
    end = await log.end_offset(topic, 0)
    assert end > won.offset
    assert all(isinstance(e, ConcurrencyError) and (e.expected, e.actual) == (0, end) for e in losers)


async def test_duplicate_ids_are_not_appended_again(log: EventLog, topic: str) -> None:
    await log.ensure_topic(topic, 2)
    first = await log.append(topic, [rec(0, "k", rid="a"), rec(1, "k", rid="b")])
    again = await log.append(
        topic, [rec(9, "k", rid="b"), rec(2, "k", rid="c"), rec(8, "k", rid="c")]
    )
    p = partition_for("k", 2)
    if not dedupes(log):
        # Honest about it: every record is stored and none is reported as a duplicate.
        assert not any(a.duplicate for a in first + again)
        stored = await log.read(topic, p, 0)
        assert [r.id for r in stored] == ["a", "b", "b", "c", "c"]
        return  # NO_DEDUPE: the decider dedupes by command id instead
    assert [(a.partition, a.offset, a.duplicate) for a in first] == [(p, 0, False), (p, 1, False)]
    assert [(a.partition, a.offset, a.duplicate) for a in again] == [
        (p, 1, True),
        (p, 2, False),
        (p, 2, True),
    ]
    stored = await log.read(topic, p, 0)
    assert [(r.id, r.value) for r in stored] == [
        ("a", b'{"n":0}'),
        ("b", b'{"n":1}'),
        ("c", b'{"n":2}'),
    ]


async def test_duplicate_ids_from_concurrent_appends_land_once(log: EventLog, topic: str) -> None:
    await log.ensure_topic(topic, 1)
    results = await asyncio.gather(*(log.append(topic, [rec(i, rid="same")]) for i in range(20)))
    if not dedupes(log):  # NO_DEDUPE: all 20 are stored, none claimed a duplicate
        assert not any(r[0].duplicate for r in results)
        assert len(await log.read(topic, 0, 0)) == 20
        return
    assert sorted(r[0].duplicate for r in results) == [False] + [True] * 19
    assert {(r[0].partition, r[0].offset) for r in results} == {(0, 0)}
    assert len(await log.read(topic, 0, 0)) == 1


async def test_commit_and_committed(log: EventLog, topic: str) -> None:
    await log.ensure_topic(topic, 2)
    assert await log.committed("g", topic, 0) == 0
    await log.commit("g", topic, 1, 5)
    await log.commit("g", topic, 1, 7)
    await log.commit("other", topic, 1, 2)
    assert await log.committed("g", topic, 1) == 7
    assert await log.committed("other", topic, 1) == 2
    assert await log.committed("g", topic, 0) == 0


async def test_commit_is_stored_with_the_append_and_not_without_it(
    log: EventLog, topic: str
) -> None:
    source = f"{topic}-in"
    await log.ensure_topic(topic, 1)
    await log.ensure_topic(source, 1)
    await log.append(
        topic, [rec(0)], partition=0, expected_offset=0, commit=Commit("proc", source, 0, 11)
    )
    assert await log.committed("proc", source, 0) == 11
    end = await log.end_offset(topic, 0)
    # A failed append must not move the consumer: both happen or neither.
    with pytest.raises(ConcurrencyError):
        await log.append(
            topic, [rec(1)], partition=0, expected_offset=0, commit=Commit("proc", source, 0, 12)
        )
    assert await log.committed("proc", source, 0) == 11
    assert await log.end_offset(topic, 0) == end
    assert len(await log.read(topic, 0, 0)) == 1
    # A commit alone (no records) is applied too, and so is one beside records of another group.
    await log.append(topic, [], commit=Commit("proc", source, 0, 13))
    assert await log.committed("proc", source, 0) == 13


async def test_end_offset_follows_appends_per_partition(log: EventLog, topic: str) -> None:
    await log.ensure_topic(topic, 2)
    assert (await log.end_offset(topic, 0), await log.end_offset(topic, 1)) == (0, 0)
    positions = await log.append(topic, [rec(0), rec(1)], partition=1)
    assert await log.end_offset(topic, 0) == 0
    assert await log.end_offset(topic, 1) > positions[-1].offset


async def test_wait_is_woken_by_an_append(log: EventLog, topic: str) -> None:
    await log.ensure_topic(topic, 1)
    waiter = asyncio.create_task(log.wait(topic, 0, 0, timeout=10))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    started = time.monotonic()
    await log.append(topic, [rec(0)])
    assert await asyncio.wait_for(waiter, 5) is True
    assert time.monotonic() - started < 2
    assert await log.wait(topic, 0, 0, timeout=0) is True  # already there


async def test_wait_times_out_without_an_append(log: EventLog, topic: str) -> None:
    await log.ensure_topic(topic, 1)
    await log.append(topic, [rec(0)])
    end = await log.end_offset(topic, 0)
    started = time.monotonic()
    assert await log.wait(topic, 0, end, timeout=0.3) is False
    assert 0.25 <= time.monotonic() - started < 3


async def test_subscribe_receives_appends_made_after_subscribing(
    log: EventLog, topic: str
) -> None:
    await log.ensure_topic(topic, 1)
    appended = [a.offset for a in await log.append(topic, [rec(0)])]
    received: list[int] = []

    async def consume() -> None:
        async for batch in log.subscribe(topic, 0, 0, limit=2):
            assert batch
            received.extend(r.offset for r in batch)
            if len(received) >= 5:
                return

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    for i in range(1, 5):
        appended.extend(a.offset for a in await log.append(topic, [rec(i)]))
        await asyncio.sleep(0.01)
    await asyncio.wait_for(consumer, 5)
    assert received == appended and increasing(received)


async def test_unknown_topic_is_an_error(log: EventLog, topic: str) -> None:
    with pytest.raises(UnknownTopic):
        await log.append(topic, [rec(0)])
    with pytest.raises(UnknownTopic):
        await log.read(topic, 0, 0)
    with pytest.raises(UnknownTopic):
        await log.partitions(topic)


async def test_ensure_topic_is_idempotent_and_keeps_partitions(log: EventLog, topic: str) -> None:
    await log.ensure_topic(topic, 3)
    [a] = await log.append(topic, [rec(0, "a")])
    await log.ensure_topic(topic, 5)
    assert await log.partitions(topic) == 3
    assert a.partition == partition_for("a", 3)
    assert await log.end_offset(topic, a.partition) > a.offset
    assert [r.offset for r in await log.read(topic, a.partition, 0)] == [a.offset]


async def test_concurrent_appends_land_exactly_once_in_order(
    log: EventLog, topic: str
) -> None:
    await log.ensure_topic(topic, 2)
    writers, per_writer = 50, 8

    async def writer(w: int) -> list[tuple[int, int]]:
        out = []
        for i in range(per_writer):
            batch = [rec(w * 100 + i, f"pool-{w % 5}", rid=f"{w}-{i}")]
            out.extend((a.partition, a.offset) for a in await log.append(topic, batch))
        return out

    results = await asyncio.gather(*(writer(w) for w in range(writers)))
    positions = [p for ps in results for p in ps]
    assert len(positions) == len(set(positions)) == writers * per_writer
    # Each writer's own appends keep their order.
    assert all(increasing([o for p, o in ps if p == part]) for ps in results for part in range(2))
    ids = []
    for partition in range(2):
        stored = await log.read(topic, partition, 0, limit=10_000)
        offsets = [r.offset for r in stored]
        assert increasing(offsets)
        assert offsets == sorted(o for p, o in positions if p == partition)
        assert await log.end_offset(topic, partition) > offsets[-1]
        ids.extend(r.id for r in stored)
    assert sorted(ids) == sorted(f"{w}-{i}" for w in range(writers) for i in range(per_writer))
