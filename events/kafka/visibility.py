"""Read your writes on Kafka: what this log committed but the broker may not show yet.

An append returns as soon as Kafka has acknowledged its transaction's commit (durable: the broker
completes a committed transaction even if this process dies). Kafka writes the transaction markers
just after that, and only then are the records below the partition's last stable offset (visible
to read_committed readers) and a transaction's offset commit returned by OffsetFetch. So the log
remembers what it wrote, and the calls that would show it (read, end_offset, wait, committed,
commit, an ``expected_offset`` check, close) first wait here until the broker shows it. Waiting in
every append instead cost two broker requests per poll and ~20% of a transaction's time, for
nothing in the common case: consumers tail (they get records once visible) and in-process readers
use the envelope cache. Another process may see an acknowledged append a few milliseconds late.

This module only waits and forgets; it must never write to the broker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from aiokafka.structs import OffsetAndMetadata, TopicPartition  # type: ignore[import-untyped]

logger = logging.getLogger(__name__)

# How long a read waits for the markers of this log's own transactions before giving up on them.
VISIBLE_TIMEOUT_S = 30.0

EndOffsets = Callable[[set[tuple[str, int]]], Awaitable[dict[tuple[str, int], int]]]
FetchCommitted = Callable[[str, str, int], Awaitable[int]]


class Visibility:
    """Per partition the last offset written, per group partition the offset committed, until seen."""

    def __init__(self, end_offsets: EndOffsets, fetch_committed: FetchCommitted) -> None:
        # The broker's read_committed end offsets and committed group offsets, as they are now.
        self.end_offsets = end_offsets
        self.fetch_committed = fetch_committed
        self.unseen: dict[tuple[str, int], int] = {}
        self.unseen_commits: dict[tuple[str, str, int], int] = {}

    def wrote(
        self, last: dict[tuple[str, int], int], commits: dict[str, dict[TopicPartition, OffsetAndMetadata]]
    ) -> None:
        """Remember a committed transaction until the broker shows it."""
        unseen = self.unseen
        for tp, offset in last.items():
            if offset > unseen.get(tp, -1):
                unseen[tp] = offset
        for group, offsets in commits.items():
            for tp, om in offsets.items():
                self.unseen_commits[(group, tp.topic, tp.partition)] = om.offset

    def forget_commit(self, group: str, topic: str, partition: int) -> None:
        """Another owner commits this group partition now: what we committed is not the offset."""
        self.unseen_commits.pop((group, topic, partition), None)

    async def settle(self) -> None:
        """Wait until everything this log committed is visible (before closing)."""
        await self.see(set(self.unseen))
        for group, topic, partition in list(self.unseen_commits):
            await self.see_commit(group, topic, partition)

    async def see(self, tps: Iterable[tuple[str, int]]) -> None:
        """Wait until the markers of this log's committed transactions on ``tps`` are written."""
        pending = {tp: self.unseen[tp] for tp in tps if tp in self.unseen}
        if not pending:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + VISIBLE_TIMEOUT_S
        delay = 0.0005
        while True:
            ends = await self.end_offsets(set(pending))
            for tp, end in ends.items():
                if end > pending[tp]:
                    if self.unseen.get(tp) == pending[tp]:  # nothing newer written meanwhile
                        del self.unseen[tp]
                    del pending[tp]
            if not pending:
                return
            if loop.time() > deadline:
                logger.warning("transaction markers of %s not visible after %ss", pending, VISIBLE_TIMEOUT_S)
                for tp, offset in pending.items():  # do not make every later read wait again
                    if self.unseen.get(tp) == offset:
                        del self.unseen[tp]
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    async def see_commit(self, group: str, topic: str, partition: int) -> None:
        """Wait until this log's last transactional commit of ``group``'s offset is fetchable."""
        key = (group, topic, partition)
        want = self.unseen_commits.get(key)
        if want is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + VISIBLE_TIMEOUT_S
        delay = 0.0005
        while await self.fetch_committed(group, topic, partition) != want:
            if self.unseen_commits.get(key) != want:  # committed again meanwhile: wait for that
                return await self.see_commit(group, topic, partition)
            if loop.time() > deadline:
                logger.warning("offset commit of %s %s[%d] not visible", group, topic, partition)
                if self.unseen_commits.get(key) == want:
                    del self.unseen_commits[key]
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)
        if self.unseen_commits.get(key) == want:
            del self.unseen_commits[key]
