"""One role (decider, coordinator or projector) on one partition, while a Faust worker owns it.

The role tails its partition itself from its own committed position through the log's
long-polling read_committed consumer, and applies each batch with ``step``. Any failure rebuilds
the state from the log (``build``) and goes on from the committed position again, so nothing is
skipped and nothing applied twice.

A role must also never stop moving while its partition has records for it: after a broker
restart a Kafka client can wait on something that will not come (a transaction's end, a fetch),
without an error. So a step that runs longer than ``STEP_TIMEOUT_S`` is abandoned, and a tail
that has delivered nothing for ``STALL_S`` while the partition's end is past the role's position
is dropped; either way the role is rebuilt like after any failure. The rebuild claims the
partition's transactional writer again first, which aborts a transaction left open (or waits
for one that is ending, ``events.kafka.writer.CLOSE_TIMEOUT_S``), so an abandoned step is
applied once or not at all, never twice.

This module must never decide, react or project itself: it only feeds records to those steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from events import EventLog, LogError, StoredRecord
from events.kafka import Fenced
from services.runtime.service import ended
from services.runtime.topics import BATCH

log = logging.getLogger("agentbus.faust")

RETRY_MAX_S = 5.0
# After a fence, how long a role waits for a rebalance to revoke it before claiming the
# partition again (longer than a rebalance takes with group.initial.rebalance.delay.ms=0).
FENCED_RETRY_S = 5.0
# The longest one batch may take (a decider's transaction, a projector's database write) before
# the role gives up on it and rebuilds: far above any batch's time, even during a broker restart
# that the client rides out.
STEP_TIMEOUT_S = 60.0
# How long a tail may deliver nothing while its partition holds records past the role's position
# (seen so at two checks this far apart at least).
STALL_S = 30.0
# How often an idle tail compares the partition's end with the role's position.
STALL_CHECK_S = 5.0


class Stalled(LogError):
    """A role's tail or step stopped moving while its partition had records for it."""


@dataclass
class PartitionRole:
    """One role on one partition: build the state, then apply the partition's records in order."""

    role: str
    topic: str
    partition: int
    build: Callable[[], Awaitable[int]]
    step: Callable[[list[StoredRecord]], Awaitable[None]]
    log: EventLog
    limit: int = BATCH
    next: int = 0
    dirty: bool = True
    closed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    # Times the role gave up on a stalled tail or step (for tests and the logs).
    stalls: int = 0

    async def run(self) -> None:
        """Build the state, then apply the partition's records in order until closed."""
        delay = 0.2
        while not self.closed:
            try:
                async with self.lock:
                    if self.closed:
                        return
                    if self.dirty:
                        self.next = await self.build()
                        self.dirty = False
                stream = cast(AsyncGenerator[list[StoredRecord], None],
                              self.log.subscribe(self.topic, self.partition, self.next, limit=self.limit))
                async with contextlib.aclosing(stream):
                    async for recs in self._watched(stream):
                        async with self.lock:
                            if self.closed:
                                return
                            await self._apply(recs)
                        delay = 0.2
            except asyncio.CancelledError:
                raise
            except Fenced as exc:
                # Either another worker owns this partition now (Faust revokes it from us within a
                # rebalance), or the broker aborted a transaction of ours that outlived its timeout
                # (a broker restart): then nobody else will take the partition and closing would
                # leave its pools undecided for good. So wait past a rebalance and, if still ours,
                # claim it again: registering the transactional.id fences any other holder and
                # aborts its open transaction, and the rebuild reads only committed records, so
                # nothing is applied twice either way.
                log.warning("%s[%d] fenced (%s); claiming it again in %.0f s unless revoked",
                            self.role, self.partition, exc, FENCED_RETRY_S)
                self.dirty = True
                await asyncio.sleep(FENCED_RETRY_S)
            except Exception as exc:  # broker away, a timeout, a stall: rebuild from the log and retry
                log.warning("%s[%d] failed (%r); rebuilding and retrying in %.1f s",
                            self.role, self.partition, exc, delay)
                self.dirty = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def stop(self) -> None:
        """Stop after the batch being applied (never in the middle of one)."""
        self.closed = True
        task, self.task = self.task, None
        if task is None:
            return
        async with self.lock:
            task.cancel()
        await ended([task])

    async def _watched(self, stream: AsyncIterator[list[StoredRecord]]) -> AsyncIterator[list[StoredRecord]]:
        """``stream``'s batches; raises ``Stalled`` when it delivers nothing while the partition's
        end stays past ``next`` for ``STALL_S`` (checked every ``STALL_CHECK_S`` it is idle)."""
        nxt: asyncio.Future[list[StoredRecord]] | None = None
        behind_since: float | None = None  # when the end was first seen past ``next``
        try:
            while True:
                if nxt is None:
                    nxt = asyncio.ensure_future(anext(stream))
                done, _ = await asyncio.wait([nxt], timeout=STALL_CHECK_S)
                if not done:
                    try:
                        end = await self.log.end_offset(self.topic, self.partition)
                    except LogError:  # the broker is away: the tail will say so, or recover
                        continue
                    now = time.monotonic()
                    if end <= self.next:
                        behind_since = None
                    elif behind_since is None:
                        behind_since = now
                    elif now - behind_since > STALL_S:
                        self.stalls += 1
                        raise Stalled(f"{self.role}[{self.partition}]: no record past {self.next} arrived "
                                      f"in {now - behind_since:.0f} s although the partition ends at {end}")
                    continue
                try:
                    recs = nxt.result()
                except StopAsyncIteration:
                    return
                nxt = None
                behind_since = None
                yield recs
        finally:
            if nxt is not None and not nxt.done():
                nxt.cancel()
                await asyncio.wait([nxt])

    async def _apply(self, recs: list[StoredRecord]) -> None:
        if recs[0].offset < self.next:  # never apply below our own committed position
            recs = [r for r in recs if r.offset >= self.next]
            if not recs:
                return
        bound = asyncio.timeout(STEP_TIMEOUT_S)
        try:
            async with bound:
                await self.step(recs)
        except BaseException as exc:
            self.dirty = True  # the state may hold half of this batch: rebuild before going on
            if isinstance(exc, TimeoutError) and bound.expired():
                self.stalls += 1
                raise Stalled(f"{self.role}[{self.partition}]: a batch of {len(recs)} records from offset "
                              f"{recs[0].offset} did not finish in {STEP_TIMEOUT_S:.0f} s") from exc
            raise
        self.next = recs[-1].offset + 1
