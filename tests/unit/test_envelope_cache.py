"""The envelope cache lets go of what every follower in the process has read, and stays bounded.

The ``tail`` tests follow a real SQLite log, written the way the runtime writes it (append, then
``put`` the envelopes just encoded).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from contracts import Envelope
from contracts import commands as c
from events import open_log
from events.cache import EnvelopeCache, tail, tail_raw
from events.codec import to_record
from events.log import Appended, EventLog, Record, StoredRecord
from projections import ProjectionStore, Projector
from services.runtime.ingest import command_envelope
from services.runtime.projector import ProjectorLoop
from services.runtime.topics import EVENTS
from tests.projections.history import Story
from tests.waiting import eventually

TOPIC = "commands"


def envs(n: int, start: int = 0) -> list[Envelope]:
    return [command_envelope(c.SubmitTask(task_id=f"t{i}", type="demo")) for i in range(start, start + n)]


def at(*offsets: int) -> list[Appended]:
    return [Appended(0, o) for o in offsets]


def test_an_entry_leaves_once_every_follower_has_read_it() -> None:
    cache = EnvelopeCache()
    ahead, behind = cache.follow(TOPIC, 0, 0), cache.follow(TOPIC, 0, 0)
    cache.put(TOPIC, at(0, 1, 2, 3), envs(4))
    cache.advance(ahead, 4)
    assert len(cache) == 4  # ``behind`` has read nothing yet
    cache.advance(behind, 2)
    assert len(cache) == 2
    assert [o for o, _ in cache.run(TOPIC, 0, 2, 10)] == [2, 3]
    assert cache.run(TOPIC, 0, 0, 10) == []
    # Another partition and another topic are not touched by these followers.
    cache.put(TOPIC, [Appended(1, 0)], envs(1))
    cache.put("events", at(0), envs(1))
    cache.advance(behind, 4)
    assert len(cache) == 2


def test_a_position_every_follower_read_past_is_not_cached_again() -> None:
    cache = EnvelopeCache()
    follower = cache.follow(TOPIC, 0, 0)
    cache.advance(follower, 5)  # it read 0..4 from the log before the writer put them
    cache.put(TOPIC, at(3, 4, 5), envs(3))
    assert [o for o, _ in cache.run(TOPIC, 0, 5, 10)] == [5]
    assert len(cache) == 1


def test_without_followers_the_capacity_bounds_it_oldest_first() -> None:
    cache = EnvelopeCache(capacity=100)
    for start in range(0, 300, 10):
        cache.put(TOPIC, at(*range(start, start + 10)), envs(10, start))
    assert len(cache) <= 100
    kept = [o for o, _ in cache.run(TOPIC, 0, 300 - len(cache), 1000)]
    assert kept == list(range(300 - len(cache), 300))  # the newest, none missing
    # The last follower gone, only the capacity bounds the partition again.
    follower = cache.follow(TOPIC, 0, 300)
    cache.advance(follower, 300)
    assert len(cache) == 0
    cache.unfollow(follower)
    cache.put(TOPIC, at(10), envs(1))
    assert len(cache) == 1


def test_full_with_followers_far_behind_it_keeps_the_oldest_and_leaves_out_the_newest() -> None:
    cache = EnvelopeCache(capacity=10)
    follower = cache.follow(TOPIC, 0, 0)
    cache.put(TOPIC, at(*range(15)), envs(15))
    assert [o for o, _ in cache.run(TOPIC, 0, 0, 100)] == list(range(10))  # what it reads next
    cache.advance(follower, 5)
    cache.put(TOPIC, at(*range(15, 20)), envs(5, 15))
    # 10..14 were never cached (read from the log in their turn); room came back for 15..19.
    assert [o for o, _ in cache.run(TOPIC, 0, 5, 100)] == list(range(5, 10))
    assert [o for o, _ in cache.run(TOPIC, 0, 15, 100)] == list(range(15, 20))
    assert len(cache) == 10


def test_duplicates_and_a_zero_capacity_are_never_cached() -> None:
    cache = EnvelopeCache()
    cache.put(TOPIC, [Appended(0, 0, duplicate=True)], envs(1))
    assert len(cache) == 0
    none = EnvelopeCache(capacity=0)
    none.put(TOPIC, at(0), envs(1))
    assert len(none) == 0


def test_a_topic_that_keeps_values_has_its_records_bytes_until_taken_or_their_entry_leaves() -> None:
    cache = EnvelopeCache(capacity=10)
    cache.keep_values(EVENTS)
    follower = cache.follow(EVENTS, 0, 0)
    written = envs(4)
    records = [to_record(e) for e in written]
    values = [r.value for r in records]
    cache.put(EVENTS, at(0, 1, 2, 3), written, records)
    cache.put(TOPIC, at(0, 1), envs(2), [Record("k", b"x"), Record("k", b"y")])  # a topic not keeping them
    assert cache.take_values(TOPIC, 0, [0, 1]) == [None, None]
    cache.put(EVENTS, [Appended(1, 0)], envs(1), [Record("k", b"p1")])  # another partition: its own
    assert cache.take_values(EVENTS, 1, [0]) == [b"p1"]
    assert cache.take_values(EVENTS, 1, [0]) == [None]  # taken: let go
    assert cache.take_values(EVENTS, 0, [0]) == [values[0]]
    assert [o for o, _ in cache.run(EVENTS, 0, 0, 10)] == [0, 1, 2, 3]  # the envelopes stay
    cache.advance(follower, 2)  # 1 read by every follower: its bytes leave with its envelope
    assert cache.take_values(EVENTS, 0, [1, 2, 3]) == [None, values[2], values[3]]
    cache.put(EVENTS, at(1), envs(1), [Record("k", b"late")])  # below what every follower read: not kept
    assert cache.take_values(EVENTS, 0, [1]) == [None]
    cache.unfollow(follower)
    more = envs(20, 4)
    cache.put(EVENTS, at(*range(4, 24)), more, [to_record(e) for e in more])
    # Evicted with their envelopes: bytes are kept for the entries left only, each at its offset.
    cached = {o for o in range(4, 24) if cache.run(EVENTS, 0, o, 1)}
    assert cached and len(cache) <= 10
    got = cache.take_values(EVENTS, 0, list(range(4, 24)))
    assert {o for o, v in zip(range(4, 24), got, strict=True) if v is not None} == cached
    assert all(v == to_record(more[o - 4]).value for o, v in zip(range(4, 24), got, strict=True) if v)


async def _write(log: EventLog, cache: EnvelopeCache, batch: list[Envelope]) -> None:
    appended = await log.append(TOPIC, [to_record(e) for e in batch])
    cache.put(TOPIC, appended, batch)


async def test_tails_on_a_real_log_hold_only_what_one_of_them_has_not_read(tmp_path: Path) -> None:
    log = open_log(f"sqlite:///{tmp_path / 'log.db'}")
    await log.start()
    await log.ensure_topic(TOPIC, 1)
    cache = EnvelopeCache()
    written = envs(50)
    await _write(log, cache, written)
    fast = tail(log, cache, TOPIC, 0, 0, limit=10)
    slow = tail(log, cache, TOPIC, 0, 0, limit=10)
    try:
        batch = await anext(slow)  # the slow one has handled nothing yet
        assert [o for o, _ in batch] == list(range(10))
        assert batch[0][1] is written[0]  # from the cache, not decoded again
        for _ in range(5):
            await anext(fast)  # asking for a batch says the one before is handled: 0..39 here
        assert len(cache) == 50
        await anext(slow)  # the slow one handled 0..9
        assert len(cache) == 40
        assert cache.run(TOPIC, 0, 0, 10) == []
        # A late reader still gets every envelope, decoded from the log where it is gone.
        recs = await log.read(TOPIC, 0, 0, 50)
        assert [cache.decode(r).id for r in recs] == [e.id for e in written]
    finally:
        await fast.aclose()
        await slow.aclose()
        await log.close()
    assert cache.followers(TOPIC, 0) == 0  # both tails let go when closed


async def test_a_cancelled_tail_stops_pinning_the_cache(tmp_path: Path) -> None:
    log = open_log(f"sqlite:///{tmp_path / 'log.db'}")
    await log.start()
    await log.ensure_topic(TOPIC, 1)
    cache = EnvelopeCache()

    async def follow() -> None:  # as the runtime's followers do
        async with contextlib.aclosing(tail(log, cache, TOPIC, 0, 0)) as batches:
            async for _ in batches:
                await asyncio.sleep(3600)  # stuck on its first batch

    stuck = asyncio.create_task(follow())
    try:
        await _write(log, cache, envs(20))
        await asyncio.sleep(0.05)
        assert cache.followers(TOPIC, 0) == 1
        stuck.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stuck
        assert cache.followers(TOPIC, 0) == 0
    finally:
        await log.close()


async def test_a_tail_out_of_cached_records_waits_instead_of_querying_the_log(tmp_path: Path) -> None:
    log = open_log(f"sqlite:///{tmp_path / 'log.db'}")
    await log.start()
    await log.ensure_topic(TOPIC, 1)
    cache = EnvelopeCache()
    reads: list[int] = []
    read = log.read

    async def counted(topic: str, partition: int, offset: int, limit: int = 1000) -> list[StoredRecord]:
        reads.append(offset)
        return await read(topic, partition, offset, limit)

    log.read = counted  # type: ignore[method-assign]
    got: list[Envelope | StoredRecord] = []

    async def follow() -> None:
        async with contextlib.aclosing(tail_raw(log, cache, TOPIC, 0, 0, limit=10)) as batches:
            async for batch in batches:
                got.extend(x for _, x in batch)

    follower = asyncio.create_task(follow())
    try:
        await eventually(lambda: reads == [0])  # nothing there yet: one look, then it waits
        written = envs(3)
        await _write(log, cache, written)
        await eventually(lambda: len(got) == 3)
        await _write(log, cache, envs(2, start=3))
        await eventually(lambda: len(got) == 5)
        assert got[:3] == written  # the very envelopes: from the cache
        assert reads == [0]  # and the log was not asked for what the cache held, nor for more
        # A record the cache does not hold (another writer's) still comes, read from the log.
        foreign = envs(1, start=5)
        await log.append(TOPIC, [to_record(e) for e in foreign])
        await eventually(lambda: len(got) == 6)
        assert isinstance(got[5], StoredRecord) and got[5].offset == 5 and 5 in reads
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await log.close()



async def test_a_woken_tail_takes_what_the_appender_cached_in_the_same_pass(tmp_path: Path) -> None:
    """The appender resumes ahead of the tail its commit woke, and caches the envelopes: the tail
    yields them in that pass of the loop, not one pass later (a whole turn of a busy loop).
    Measured by a callback the appender schedules once it has cached them: it runs in the next
    pass, so the tail must have its batch before it."""
    log = open_log(f"sqlite:///{tmp_path / 'log.db'}")
    await log.start()
    await log.ensure_topic(TOPIC, 1)
    cache = EnvelopeCache()
    order: list[str] = []
    waits: list[int] = []
    wait = log.wait

    async def entered(topic: str, partition: int, offset: int, timeout: float) -> bool:
        waits.append(offset)  # from here to its wait for a commit, the log's wait does not yield
        return await wait(topic, partition, offset, timeout)

    log.wait = entered  # type: ignore[method-assign]

    async def follow() -> None:
        async with contextlib.aclosing(tail_raw(log, cache, TOPIC, 0, 0, limit=10)) as batches:
            async for batch in batches:
                order.append(f"tail got {len(batch)}")

    follower = asyncio.create_task(follow())
    try:
        await eventually(lambda: waits == [0])  # the tail looked at the log and waits for a commit
        await _write(log, cache, envs(3))
        asyncio.get_running_loop().call_soon(order.append, "next pass")
        await eventually(lambda: "next pass" in order and "tail got 3" in order)
        assert order == ["tail got 3", "next pass"]
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await log.close()


def _held_below(offset: int) -> list[str]:
    """The locals, in the frames awaiting this read (the tail's and its reader's), holding a batch
    of (offset, record or envelope) or of records from below ``offset``: a batch already handled."""
    held = []
    frame = sys._getframe(2)
    while frame is not None:
        for name, value in frame.f_locals.items():
            if not isinstance(value, list) or not value:
                continue
            first = value[0]
            if isinstance(first, StoredRecord):
                below = first.offset < offset
            else:
                below = (isinstance(first, tuple) and len(first) == 2 and isinstance(first[0], int)
                         and first[0] < offset)
            if below:
                held.append(f"{frame.f_code.co_name}: {name}")
        frame = frame.f_back
    return held


async def _reading_past_handled_batches(tmp_path: Path,
                                        follow: Callable[[EventLog], Awaitable[None]]) -> list[list[str]]:
    """A real log followed by ``follow``: at each read of it, what the frames awaiting the read
    still held of the batches before."""
    log = open_log(f"sqlite:///{tmp_path / 'log.db'}")
    await log.start()
    held: list[list[str]] = []
    read = log.read

    async def watched(topic: str, partition: int, offset: int, limit: int = 1000) -> list[StoredRecord]:
        held.append(_held_below(offset))
        return await read(topic, partition, offset, limit)

    log.read = watched  # type: ignore[method-assign]
    try:
        await follow(log)
    finally:
        await log.close()
    return held


async def test_a_tail_keeps_nothing_of_a_handled_batch_while_it_reads_the_next(tmp_path: Path) -> None:
    # A reader applying batches of thousands (the projector) held two at its peak when the tail
    # kept the last one, as records, while it read and decoded the next.
    async def follow(log: EventLog) -> None:
        await log.ensure_topic(TOPIC, 1)
        await log.append(TOPIC, [to_record(e) for e in envs(30)])  # in no cache: read and decoded
        seen = 0
        async with contextlib.aclosing(tail(log, EnvelopeCache(), TOPIC, 0, 0, limit=10)) as batches:
            async for batch in batches:
                seen += len(batch)
                del batch
                if seen == 30:
                    return

    held = await _reading_past_handled_batches(tmp_path, follow)
    assert held == [[], [], []]  # reads at 0, 10 and 20, and nothing below each held


async def test_the_projector_keeps_nothing_of_an_applied_batch_while_reading_the_next(tmp_path: Path) -> None:
    async def follow(log: EventLog) -> None:
        store = ProjectionStore(f"sqlite+aiosqlite:///{tmp_path / 'read.db'}")
        await store.start()
        try:
            await log.ensure_topic(EVENTS, 1)
            story = Story()
            for i in range(30):
                story.register(f"a{i}")
            await log.append(EVENTS, [to_record(e) for e in story.envelopes], partition=0)
            loop = asyncio.create_task(ProjectorLoop(log, Projector(store), 1, limit=10).run())
            try:
                assert await store.wait_for_position(EVENTS, 0, 29, timeout=10)
            finally:
                loop.cancel()
                await asyncio.gather(loop, return_exceptions=True)
        finally:
            await store.close()

    held = await _reading_past_handled_batches(tmp_path, follow)
    assert len(held) >= 3 and all(h == [] for h in held), held  # reads at 0, 10, 20 (and 30)
