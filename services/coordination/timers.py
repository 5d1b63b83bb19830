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
from dataclasses import dataclass, field

from contracts import Envelope, derived_id
from contracts import commands as c
from contracts import event_types as e

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
        return derived_id("timer", self.pool, self.timer_id, self.generation)

    def command(self) -> c.FireTimer:
        return c.FireTimer(timer_id=self.timer_id, generation=self.generation)


# The events a TimerBook observes (every other event leaves it as it is).
TIMER_EVENTS = frozenset(t.__name__ for t in (e.TimerScheduled, e.TimerCancelled, e.TimerFired))


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
