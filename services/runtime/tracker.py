"""The outcome tracker: follows the events topic on Kafka and indexes where each command's events are.

``agentbus serve`` on Kafka answers ``?wait=true`` and repeated command ids from here, whichever
worker decided the command. A decider appends one command's events in one transaction, so they
are contiguous in their partition and become visible together (read_committed): a run of records
with the same ``commandid`` is one outcome, complete when a record of another command follows
it or the consumer has reached the partition's last stable offset.

It must never write anything; it only reads committed events, with the log's own read_committed
consumer settings (``events.kafka.read_committed_consumer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.structs import TopicPartition  # type: ignore[import-untyped]

from events.kafka import read_committed_consumer
from services.runtime.outcomes import OutcomeRef, Outcomes
from services.runtime.service import ended

log = logging.getLogger("agentbus.tracker")

MAX_RECORDS = 5000
FETCH_WAIT_MS = 100


class OutcomeTracker:
    """Reads every partition of the events topic from the start and fills ``outcomes``."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, outcomes: Outcomes) -> None:
        self.bootstrap, self.topic, self.partitions, self.outcomes = bootstrap, topic, partitions, outcomes
        self.caught_up = asyncio.Event()
        self.failure: BaseException | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        # partition -> [command id, first offset, count, digest] of the run not yet known complete
        self._open: dict[int, list[Any]] = {}
        # partition -> offset of the last record read there; and an event set after every fetch
        self._last: dict[int, int] = {}
        self._moved = asyncio.Event()

    async def start(self) -> None:
        consumer = read_committed_consumer(self.bootstrap, FETCH_WAIT_MS)
        await consumer.start()
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        self._consumer = consumer
        self._targets = await consumer.end_offsets(tps)
        self._task = asyncio.create_task(self._run(), name="outcome-tracker")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await ended([task])
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            while True:
                got = await consumer.getmany(timeout_ms=20 if self._open else 200, max_records=MAX_RECORDS)
                for tp, records in got.items():
                    self._index(tp.partition, records)
                    if records:
                        self._last[tp.partition] = records[-1].offset
                await self._close_finished(consumer)
                moved, self._moved = self._moved, asyncio.Event()
                moved.set()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            log.error("the outcome tracker failed: %r", exc, exc_info=exc)
            self.failure = exc
            raise

    async def reached(self, partition: int, end: int, timeout: float) -> int | None:
        """Once this tracker has read ``partition`` up to ``end``: the offset of the last record
        read there (-1: none; at or past ``end`` when it read further), or None after ``timeout``.

        A read_committed position, so every committed record below ``end`` has been read.
        """
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("the outcome tracker is not started")
        tp = TopicPartition(self.topic, partition)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            moved = self._moved
            if await consumer.position(tp) >= end:
                return self._last.get(partition, -1)
            remaining = deadline - loop.time()
            if remaining <= 0 or self.failure is not None:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(moved.wait(), remaining)

    def _index(self, partition: int, records: list[Any]) -> None:
        run = self._open.get(partition)
        for r in records:
            try:
                obj = orjson.loads(r.value)
                cid, digest = obj.get("commandid"), obj.get("commanddigest")
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                cid = digest = None
            if run is not None and run[0] == cid and run[1] + run[2] == r.offset:
                run[2] += 1
                continue
            if run is not None and run[0] is not None:
                self.outcomes.record(run[0], OutcomeRef(partition, run[1], run[2], run[3]))
            run = [cid, r.offset, 1, digest]
        if run is not None:
            self._open[partition] = run

    async def _close_finished(self, consumer: AIOKafkaConsumer) -> None:
        for partition in list(self._open):
            tp = TopicPartition(self.topic, partition)
            lso = consumer.last_stable_offset(tp)
            if lso is not None and await consumer.position(tp) >= lso:
                cid, first, count, digest = self._open.pop(partition)
                if cid is not None:
                    self.outcomes.record(cid, OutcomeRef(partition, first, count, digest))
        if not self.caught_up.is_set():
            for tp, target in self._targets.items():
                if await consumer.position(tp) < target:
                    return
            self.caught_up.set()
