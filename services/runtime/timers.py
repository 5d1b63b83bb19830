"""The timer service: fires the due timers of one events partition as ``FireTimer`` commands.

It reads the events partition into a ``TimerBook`` (``services.coordination.timers``), takes "now"
from an injected clock and appends to the commands topic; it never decides anything itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from contracts import Envelope, utcnow
from contracts.roundtrip import Unreadable
from events import EventLog
from events.cache import EnvelopeCache, Follower
from events.codec import from_record, record_type, to_record
from events.matching import read_matching
from services.coordination.timers import TIMER_EVENTS, Timer, TimerBook
from services.runtime.decider import PartitionDecider
from services.runtime.ingest import command_envelope
from services.runtime.topics import COMMANDS, EVENTS

_READ = 5000  # events read (or taken from the cache) at a time
log = logging.getLogger("agentbus.timers")


def fire_envelope(timer: Timer, now: datetime) -> Envelope:
    """The FireTimer command envelope for ``timer``, stamped ``now``, with its derived id."""
    return command_envelope(timer.command(), pool=timer.pool, command_id=timer.command_id,
                            source="urn:agentbus:timers", actor="timers", time=now)


@dataclass
class TimerService:
    """Fires the due timers of one events partition as commands (one service per partition).

    ``clock`` returns an aware datetime (the wall clock in production, a fake one in tests).
    The book is rebuilt from offset 0 on start; it holds only pending timers, so it stays small.
    """

    log: EventLog
    partition: int = 0
    clock: Callable[[], datetime] = utcnow
    idle_s: float = 1.0  # longest sleep when nothing is due sooner
    book: TimerBook = field(default_factory=TimerBook)
    offset: int = 0  # next events offset to read
    fired: int = 0
    commands: str = COMMANDS  # topic names (a deployment may prefix them)
    events: str = EVENTS
    # The envelopes this process appended: once the history is read, events written here are taken
    # from it instead of read back from the log (a query and a decode per wake).
    cache: EnvelopeCache | None = None
    _follower: Follower | None = field(default=None, init=False, repr=False)

    async def load(self) -> int:
        """Fold every event appended since the last call; returns how many were read."""
        n = 0
        while True:
            if self._follower is not None:
                assert self.cache is not None
                cached = self.cache.run(self.events, self.partition, self.offset, _READ)
                if cached:
                    for _, env in cached:
                        if type(env.data).__name__ in TIMER_EVENTS:
                            self.book.observe(env)
                    n += len(cached)
                    self.offset = cached[-1][0] + 1
                    self.cache.advance(self._follower, self.offset)
                    if len(cached) < _READ:
                        # The rest is likely not committed yet: ``run`` waits for it, and reads
                        # it from the log if it is there but not cached (the wait returns at once).
                        return n
                    continue
            # Start-up reads the whole history, and a follower the cache no longer holds reads
            # what it missed: only the timer events are read and decoded (a record without a type
            # header is decoded to find out what it is).
            end = await self.log.end_offset(self.events, self.partition)
            if end <= self.offset:
                return n
            batches = read_matching(self.log, self.events, self.partition, self.offset, end,
                                    types=TIMER_EVENTS)
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    for rec in batch:
                        kind = record_type(rec)
                        if kind is None or kind in TIMER_EVENTS:
                            self.book.observe(from_record(rec))
            n += end - self.offset
            self.offset = end
            if self._follower is not None:
                assert self.cache is not None
                self.cache.advance(self._follower, self.offset)

    async def fire_due(self) -> list[str]:
        """Append a FireTimer for every timer due now; returns their command ids."""
        now = self.clock()
        due = self.book.due(now.timestamp())
        if not due:
            return []
        envs = []
        for t in due:
            try:
                envs.append(fire_envelope(t, now))
            except (ValidationError, Unreadable) as exc:
                # A timer no FireTimer can name (a log written before ids were bounded as they are
                # now) is left pending, and said, rather than stopping every other timer.
                log.error("timer %r of pool %r cannot be fired and stays pending: %s",
                          t.timer_id, t.pool, exc)
        if not envs:
            return []
        await self.log.append(self.commands, [to_record(x) for x in envs])
        self.fired += len(envs)
        return [env.id for env in envs]

    async def step(self) -> list[str]:
        """Catch up with the events, then fire what is due."""
        await self.load()
        return await self.fire_due()

    def sleep_s(self) -> float:
        """How long to wait before the next step when no event arrives."""
        nxt = self.book.next_due()
        if nxt is None:
            return self.idle_s
        return max(0.0, min(self.idle_s, nxt - self.clock().timestamp()))

    async def run(self) -> None:
        """Fire timers for ever: wake on new events or when the next timer is due.

        Follows the cache only once the history is read: a follower far behind would keep the
        cache from taking new envelopes of the partition meanwhile (``EnvelopeCache``)."""
        try:
            while True:
                await self.step()
                if self._follower is None and self.cache is not None:
                    self._follower = self.cache.follow(self.events, self.partition, self.offset)
                await self.log.wait(self.events, self.partition, self.offset, timeout=self.sleep_s())
        finally:
            if self._follower is not None and self.cache is not None:
                self.cache.unfollow(self._follower)
                self._follower = None


async def run_timers(decider: PartitionDecider, timers: TimerService) -> None:
    """A partition's timer service, started once its decider has rebuilt its state: the book is
    rebuilt from the same events, and what fell due while the process was down fires at once."""
    await decider.ready.wait()
    await timers.run()
