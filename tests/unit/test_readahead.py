"""``events.readahead.read_values_ahead`` on a real SQLite log: the batches cover exactly the asked
range, the next one is under way while the caller holds one, and stopping early leaves no read
behind."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest

from events import Record
from events.readahead import read_values_ahead
from events.sqlite import SqliteLog

TOPIC = "events"


class _CountingLog:
    """The SQLite log, counting the reads asked for, begun and ended (what the helper asks of a log)."""

    def __init__(self, log: SqliteLog) -> None:
        self.log = log
        self.asked = 0
        self.ran = 0
        self.ended = 0

    def read_values(self, topic: str, partition: int, offset: int,
                    limit: int) -> Coroutine[Any, Any, list[tuple[int, bytes]]]:
        self.asked += 1
        return self._read(topic, partition, offset, limit)

    async def _read(self, topic: str, partition: int, offset: int, limit: int) -> list[tuple[int, bytes]]:
        self.ran += 1
        try:
            return await self.log.read_values(topic, partition, offset, limit)
        finally:
            self.ended += 1


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[SqliteLog]:
    log = SqliteLog(f"sqlite:///{tmp_path / 'log.db'}")
    await log.start()
    await log.ensure_topic(TOPIC, 1)
    await log.append(TOPIC, [Record(key="k", value=f'{{"n":{i}}}'.encode(), id=f"r{i}") for i in range(10)],
                     partition=0)
    try:
        yield log
    finally:
        await log.close()


@pytest.mark.parametrize(("start", "end", "sizes"), [
    (0, None, [3, 3, 3, 1]),  # to the log's end
    (0, 7, [3, 3, 1]),  # cut at end
    (4, 10, [3, 3]),
    (9, None, [1]),
    (10, None, []),
    (5, 5, []),
])
async def test_the_batches_cover_exactly_the_range(log: SqliteLog, start: int, end: int | None,
                                                   sizes: list[int]) -> None:
    got = [b async for b in read_values_ahead(log, TOPIC, 0, start, end, 3)]
    assert [len(b) for b in got] == sizes
    offsets = [at for b in got for at, _ in b]
    assert offsets == list(range(start, start + sum(sizes)))
    assert all(value == f'{{"n":{at}}}'.encode() for b in got for at, value in b)


async def test_the_next_batch_is_read_while_the_caller_holds_one(log: SqliteLog) -> None:
    counting = _CountingLog(log)
    batches = read_values_ahead(counting, TOPIC, 0, 0, None, 3)  # type: ignore[arg-type]
    async with contextlib.aclosing(batches):
        first = await anext(batches)
        assert [at for at, _ in first] == [0, 1, 2]
        assert counting.asked == 2  # the second read was asked for before the first was handed over
        await asyncio.sleep(0.05)
        assert counting.ended == 2  # and it went on while the caller held the first
        second = await anext(batches)
        assert [at for at, _ in second] == [3, 4, 5] and counting.asked == 3


async def test_stopping_early_cancels_the_read_ahead(log: SqliteLog) -> None:
    counting = _CountingLog(log)
    batches = read_values_ahead(counting, TOPIC, 0, 0, None, 3)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="caller failed"):
        async with contextlib.aclosing(batches):
            async for _ in batches:
                raise RuntimeError("caller failed")
    await asyncio.sleep(0.05)
    # The read asked for ahead was cancelled before it began: it did not outlive the stop.
    assert (counting.asked, counting.ran, counting.ended) == (2, 1, 1)


class _FailingLog(_CountingLog):
    """Fails every read after the first."""

    async def _read(self, topic: str, partition: int, offset: int, limit: int) -> list[tuple[int, bytes]]:
        self.ran += 1
        if self.ran > 1:
            raise RuntimeError("the disk is gone")
        return await self.log.read_values(topic, partition, offset, limit)


async def test_a_read_ahead_that_failed_before_the_stop_has_its_error_retrieved(log: SqliteLog) -> None:
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _, context: reported.append(context["message"]))
    try:
        failing = _FailingLog(log)
        batches = read_values_ahead(failing, TOPIC, 0, 0, None, 3)  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="caller failed"):
            async with contextlib.aclosing(batches):
                async for _ in batches:
                    await asyncio.sleep(0.05)  # the read ahead fails meanwhile
                    assert failing.ran == 2
                    raise RuntimeError("caller failed")
        del batches
        gc.collect()
        await asyncio.sleep(0)
        assert not [m for m in reported if "never retrieved" in m], reported
    finally:
        loop.set_exception_handler(None)
