"""Durable timers: a pure book of pending timers built from events, and the service that fires
them as ``FireTimer`` commands.

A timer is a ``TimerScheduled`` event, due at that event's time + ``delay_s``; it ends with a
``TimerCancelled`` or ``TimerFired`` of the same generation (scheduling the same id again replaces
it). Because timers live on the log, they survive a crash: a restarted service rebuilds the book
from the events partition and fires whatever is due.

Firing is idempotent end to end: the command id of a firing is derived from the pool, the timer
id and its generation (``timer:{pool}:{id}:{generation}``), so a timer fired again after a crash
is dropped by the log (same record id) or by the decider (command seen), and a firing that lost a
race with a cancellation or a re-arming changes nothing (the decider checks the generation).

``TimerBook`` never does I/O and never reads a clock ("now" is passed in). ``TimerService`` reads
the events partition, takes "now" from an injected clock and appends to the commands topic; it
never decides anything itself.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from contracts import Envelope, utcnow
from contracts import commands as c
from contracts import events as e
from events import EventLog
from events.codec import from_record, to_record
from services.ingest import command_envelope

COMMANDS = "commands"
EVENTS = "events"
# Envelope times have microsecond resolution: a timer due within it of "now" is due.
RESOLUTION_S = 1e-6


@dataclass(frozen=True, slots=True)
class Timer:
    """A pending timer."""

    pool: str
    timer_id: str
    generation: int
    kind: str
    due: float  # seconds since the epoch

    @property
    def command_id(self) -> str:
        return f"timer:{self.pool}:{self.timer_id}:{self.generation}"

    def command(self) -> c.FireTimer:
        return c.FireTimer(timer_id=self.timer_id, generation=self.generation)


@dataclass
class TimerBook:
    """Pending timers of every pool seen, by due time. Built only from events."""

    pending: dict[tuple[str, str], Timer] = field(default_factory=dict)
    _heap: list[tuple[float, str, str, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pending)

    def observe(self, env: Envelope) -> None:
        ev = env.data
        match ev:
            case e.TimerScheduled():
                due = env.time.timestamp() + ev.delay_s
                self.pending[(env.pool, ev.timer_id)] = Timer(
                    env.pool, ev.timer_id, ev.generation, ev.kind, due
                )
                heapq.heappush(self._heap, (due, env.pool, ev.timer_id, ev.generation))
            case e.TimerCancelled() | e.TimerFired():
                key = (env.pool, ev.timer_id)
                timer = self.pending.get(key)
                if timer is not None and timer.generation == ev.generation:
                    del self.pending[key]
            case _:
                pass

    def _top(self) -> Timer | None:
        while self._heap:
            _, pool, timer_id, generation = self._heap[0]
            timer = self.pending.get((pool, timer_id))
            if timer is not None and timer.generation == generation:
                return timer
            heapq.heappop(self._heap)  # cancelled, fired or re-armed
        return None

    def next_due(self) -> float | None:
        """When the earliest pending timer is due (None: nothing pending)."""
        timer = self._top()
        return None if timer is None else timer.due

    def due(self, now: float) -> list[Timer]:
        """Timers due at ``now``, earliest first; each is handed out once per book (it stays
        pending until its TimerFired is observed)."""
        out = []
        while (timer := self._top()) is not None and timer.due <= now + RESOLUTION_S:
            heapq.heappop(self._heap)
            out.append(timer)
        return out


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

    async def load(self) -> int:
        """Fold every event appended since the last call; returns how many were read."""
        n = 0
        while True:
            batch = await self.log.read(self.events, self.partition, self.offset, 5000)
            if not batch:
                return n
            for rec in batch:
                self.book.observe(from_record(rec))
            n += len(batch)
            self.offset = batch[-1].offset + 1

    async def fire_due(self) -> list[str]:
        """Append a FireTimer for every timer due now; returns their command ids."""
        now = self.clock()
        due = self.book.due(now.timestamp())
        if not due:
            return []
        envs = [fire_envelope(t, now) for t in due]
        await self.log.append(self.commands, [to_record(x) for x in envs])
        self.fired += len(envs)
        return [t.command_id for t in due]

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
        """Fire timers for ever: wake on new events or when the next timer is due."""
        while True:
            await self.step()
            await self.log.wait(self.events, self.partition, self.offset, timeout=self.sleep_s())
