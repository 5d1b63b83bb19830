"""``SubscriptionBook`` on a real SQLite log: it follows the subscriptions live through the envelope
cache (what this process appended is never read back from the file), and still sees what another
process appended."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from contracts import SYSTEM_POOL, Envelope
from contracts import commands as c
from contracts import event_types as e
from events.cache import EnvelopeCache
from events.codec import to_record
from events.sqlite import SqliteLog
from services.domain.envelopes import event_envelopes
from services.domain.state import PoolState
from services.runtime.ingest import command_envelope
from services.runtime.subscription_book import SubscriptionBook
from tests.waiting import eventually

EVENTS = "events"


def _set(name: str, incarnation: int) -> Envelope:
    cmd = command_envelope(c.RegisterAgent(agent_id="x", name="x", capabilities=("x",), capacity=1),
                           pool=SYSTEM_POOL)
    ev = e.SubscriptionSet(name=name, url="http://127.0.0.1:9/hooks", channels=("tasks",), secret="sealed",
                           max_attempts=3, incarnation=incarnation, created=True, secret_changed=True)
    [env] = event_envelopes(cmd, [ev], PoolState(SYSTEM_POOL, sequence=incarnation - 1))
    return env


def _other_pool(i: int) -> Envelope:
    return command_envelope(c.RegisterAgent(agent_id=f"a{i}", name="a", capabilities=("x",), capacity=1))


class _CountingLog(SqliteLog):
    reads = 0

    async def read(self, *args: Any, **kwargs: Any) -> Any:
        self.reads += 1
        return await super().read(*args, **kwargs)


async def _append(log: SqliteLog, cache: EnvelopeCache | None, envs: list[Envelope]) -> None:
    appended = await log.append(EVENTS, [to_record(x) for x in envs])
    if cache is not None:
        cache.put(EVENTS, appended, envs)


async def test_the_book_follows_this_processes_appends_without_reading_them_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    log, other = _CountingLog(url), SqliteLog(url)  # ``other``: another process's handle on the file
    await log.start()
    await other.start()
    await log.ensure_topic(EVENTS, 1)
    cache = EnvelopeCache()
    changes: list[set[str]] = []
    book = SubscriptionBook(log, cache, EVENTS, 1, lambda: changes.append(set(book.current)))
    await _append(log, cache, [_set("before", 1)])
    following = asyncio.create_task(book.run())
    try:
        await asyncio.wait_for(book.ready.wait(), 10)
        assert set(book.current) == {"before"}
        read_at_start = log.reads
        for i in range(50):
            await _append(log, cache, [_other_pool(i)])
        await _append(log, cache, [_set("live", 2)])
        await eventually(lambda: "live" in book.current)
        assert log.reads == read_at_start, "the book read back records the cache held"
        assert changes == [{"before"}, {"before", "live"}], "only the subscription's batch is a change"

        await _append(other, None, [_set("theirs", 3)])  # not in this process's cache
        log.nudge(EVENTS, 0)
        await eventually(lambda: "theirs" in book.current)
        assert log.reads > read_at_start
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        await other.close()
        await log.close()


async def test_the_catch_up_reads_the_system_pools_records_only(tmp_path: Path) -> None:
    """The book's start reads the whole partition (every pool's, embedded): only the system pool's
    records are read out of the file, and the book is what a full read makes it."""
    log = SqliteLog(f"sqlite:///{tmp_path / 'log.db'}")
    await log.start()
    await log.ensure_topic(EVENTS, 1)
    handed: list[str] = []

    class Book(SubscriptionBook):
        def _apply(self, recs: Any, current: Any) -> bool:
            handed.extend(r.key for r in recs)
            return super()._apply(recs, current)

    try:
        await _append(log, None, [_other_pool(i) for i in range(100)])
        await _append(log, None, [_set("first", 1)])
        await _append(log, None, [_other_pool(i) for i in range(100, 200)])
        await _append(log, None, [_set("second", 2)])
        book = Book(log, EnvelopeCache(), EVENTS, 1, lambda: None)
        following = asyncio.create_task(book.run())
        try:
            await asyncio.wait_for(book.ready.wait(), 10)
            assert set(book.current) == {"first", "second"}
            assert handed == [SYSTEM_POOL, SYSTEM_POOL], handed[:5]
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
    finally:
        await log.close()
