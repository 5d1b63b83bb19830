"""A pool in memory with a clock: decider + coordinator + timer book, for tests of timing rules.

Like ``tests.gwt.Loop``, commands are decided in FIFO order (one commands partition) and the
coordinator's commands join the back of the queue, but every command is stamped with the world's
clock (as ingest stamps commands), its events are wrapped as the runner wraps them, and due timers
are fired as ``FireTimer`` commands with the timer service's deterministic ids. Test-only; no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from contracts import Envelope, Payload
from services.coordination.coordinator import Coordinator, PoolView
from services.coordination.timers import TimerBook
from services.domain.decider import DeciderConfig, Rejected, decide, evolve
from services.domain.envelopes import event_envelopes, rejection
from services.domain.state import PoolState
from services.runtime.ingest import command_envelope

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def stamp(
    events: Iterable[Payload],
    *,
    pool: str,
    start: int,
    command_id: str,
    at: datetime,
    command_subject: str | None = None,
    correlation_id: str | None = None,
) -> list[Envelope]:
    """Envelopes for one decision's events at time ``at``, numbered from ``start + 1``.

    Wrapped by the runner's own ``event_envelopes``; the decision they belong to stands in for a
    command (time, pool, ids and, for a rejection, its subject are all an event takes from it).
    """
    decision = Envelope.trusted(
        id=command_id,
        type="decision",
        time=at,
        subject=command_subject,
        pool=pool,
        commandid=command_id,
        correlationid=correlation_id or command_id,
        data={},
    )
    return event_envelopes(decision, list(events), PoolState(pool, sequence=start))


class Feed:
    """Feeds events to a PoolView one decision at a time, at a time the test moves on."""

    def __init__(self, pool: str = "default") -> None:
        self.view = PoolView(pool)
        self.seq = 0
        self.n = 0
        self.now = T0

    def at(self, seconds: float) -> Feed:
        self.now = T0 + timedelta(seconds=seconds)
        return self

    def __call__(self, *events: Payload, command_id: str | None = None) -> None:
        self.n += 1
        envs = stamp(
            events, pool=self.view.pool, start=self.seq, command_id=command_id or f"cmd-{self.n}", at=self.now
        )
        self.seq += len(envs)
        for env in envs:
            self.view.observe(env)

    def schedule(self) -> list:  # type: ignore[type-arg]
        return self.view.schedule()


@dataclass
class World:
    """Commands -> decide -> evolve -> coordinator + timers -> commands, on a clock."""

    pool: str = "default"
    config: DeciderConfig | None = None
    now: datetime = T0
    state: PoolState = field(init=False)
    coordinator: Coordinator = field(default_factory=Coordinator)
    timers: TimerBook = field(default_factory=TimerBook)
    queue: deque[tuple[str, Payload, str]] = field(default_factory=deque)  # (id, command, sender)
    log: list[Envelope] = field(default_factory=list)
    keep_log: bool = True
    decided: int = 0
    _n: int = 0

    def __post_init__(self) -> None:
        self.state = PoolState(self.pool)

    @property
    def view(self) -> PoolView:
        return self.coordinator.view(self.pool)

    def send(self, cmd: Payload, command_id: str | None = None, sender: str = "client") -> str:
        self._n += 1
        cid = command_id or f"{sender}-{self._n}"
        self.queue.append((cid, cmd, sender))
        return cid

    def step(self) -> list[Envelope] | None:
        if not self.queue:
            return None
        cid, cmd, _ = self.queue.popleft()
        if cid in self.state.seen:
            return []
        command = command_envelope(cmd, pool=self.pool, command_id=cid, time=self.now)  # as ingest stamps it
        try:
            events: list[Payload] = decide(self.state, cmd, self.config)
        except Rejected as exc:
            events = [rejection(command.type, exc, command.subject)]
        envs = event_envelopes(command, events, self.state)
        self.decided += 1
        for env in envs:
            evolve(self.state, env)
            self.coordinator.observe(env)
            self.timers.observe(env)
            self.on_event(env)
        if self.keep_log:
            self.log.extend(envs)
        for a in self.coordinator.schedule():
            self.queue.append((a.command_id, a.command, "coordinator"))
        return envs

    def on_event(self, env: Envelope) -> None:
        """A hook for simulations (agents reacting to their assignments)."""

    def run(self, limit: int = 1_000_000) -> None:
        for _ in range(limit):
            if self.step() is None:
                return
        raise AssertionError(f"the world did not settle in {limit} steps")

    def do(self, *cmds: Payload) -> list[Envelope]:
        start = len(self.log)
        for cmd in cmds:
            self.send(cmd)
        self.run()
        return self.log[start:]

    def fire_due(self) -> int:
        due = self.timers.due(self.now.timestamp())
        for t in due:
            self.queue.append((t.command_id, t.command(), "timers"))
        return len(due)

    def advance(self, seconds: float) -> None:
        """Move the clock on, firing timers in due order (at their due time) as it goes."""
        end = self.now + timedelta(seconds=seconds)
        while True:
            nxt = self.timers.next_due()
            if nxt is None or nxt > end.timestamp():
                break
            self.now = max(self.now, datetime.fromtimestamp(nxt, UTC))
            self.fire_due()
            self.run()
        self.now = end
        self.run()

    def events(self, *types: type) -> list[Payload]:
        return [env.data for env in self.log if not types or isinstance(env.data, types)]
