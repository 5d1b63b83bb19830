"""Given / when / then for the pool decider, and a tiny in-memory decider + coordinator loop.

``given(*events).when(command).then(*events)`` or ``.rejects(Reason.X)``: the state is built by
``evolve`` over envelopes wrapped by the runner's ``services.domain.envelopes.event_envelopes``
(sequence within the pool, command id), then ``decide`` runs once. Rejections are the runner's
``rejection`` too. Test-only: no I/O, no clock.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from contracts import Envelope, Payload, Reason
from contracts import commands as c
from contracts import event_types as e
from services.coordination.coordinator import Assignment, Coordinator
from services.domain.decider import DeciderConfig, Rejected, decide, evolve
from services.domain.envelopes import event_envelopes, rejection
from services.domain.state import PoolState
from services.workflows.reactor import WorkflowReactor

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def wrap(
    events: Iterable[Payload],
    *,
    pool: str,
    start: int,
    command_id: str,
    correlation_id: str | None = None,
    command_subject: str | None = None,
) -> list[Envelope]:
    """Envelopes for one decision's events, numbered from ``start + 1``, by the runner's own
    ``event_envelopes`` (a CommandRejected takes the subject of the command it rejects).

    The decision stands in for its command (time, pool, ids and subject are all an event takes
    from it). Event ids are ``<command id>#<sequence>`` instead of fresh UUIDs, so a recorded
    history is the same bytes every time.
    """
    decision = Envelope.trusted(
        id=command_id,
        type="decision",
        time=T0,
        subject=command_subject,
        pool=pool,
        commandid=command_id,
        correlationid=correlation_id or command_id,
        data={},
    )
    envs = event_envelopes(decision, list(events), PoolState(pool, sequence=start))
    return [env.model_copy(update={"id": f"{command_id}#{env.sequence}"}) for env in envs]


def build_state(events: Iterable[Payload], pool: str = "default") -> PoolState:
    """A fresh PoolState evolved over ``events`` (each as its own decision)."""
    state = PoolState(pool)
    for i, ev in enumerate(events):
        for env in wrap([ev], pool=pool, start=state.sequence, command_id=f"given-{i}"):
            evolve(state, env)
    return state


def _describe(events: Iterable[Payload]) -> str:
    return "\n".join(f"  {type(ev).__name__}({ev.model_dump()})" for ev in events) or "  (none)"


class When:
    """A command against a given history; ends in ``then``, ``rejects`` or ``then_state``."""

    def __init__(self, state: PoolState, cmd: Payload, config: DeciderConfig | None) -> None:
        self.state, self.cmd, self.config = state, cmd, config
        self.decided = False

    def _pure_decide(self) -> list[Payload]:
        """``decide``, checking it leaves the state as it found it (deciders are pure)."""
        before = copy.deepcopy(self.state)
        try:
            return decide(self.state, self.cmd, self.config)
        finally:
            assert self.state == before, f"decide({type(self.cmd).__name__}) changed the state"

    def _decide(self) -> list[Payload]:
        try:
            return self._pure_decide()
        except Rejected as exc:
            raise AssertionError(
                f"{type(self.cmd).__name__} was rejected with {exc.code}: {exc.message} {exc.details}"
            ) from exc

    def _apply(self, events: list[Payload]) -> PoolState:
        for env in wrap(events, pool=self.state.pool, start=self.state.sequence, command_id="when"):
            evolve(self.state, env)
        self.decided = True
        return self.state

    def then(self, *expected: Payload) -> When:
        """The command is accepted and yields exactly ``expected`` (in order, by value)."""
        actual = self._decide()
        assert list(actual) == list(expected), (
            f"{type(self.cmd).__name__} yielded\n{_describe(actual)}\nexpected\n{_describe(expected)}"
        )
        # Same types too: pydantic equality already requires it, this keeps the message clear.
        assert [type(x) for x in actual] == [type(x) for x in expected]
        self._apply(actual)
        return self

    def then_state(self, check: Callable[[PoolState], bool]) -> When:
        """``check`` holds for the state after the events (decides first if ``then`` did not)."""
        if not self.decided:
            self._apply(self._decide())
        assert check(self.state) is True, f"state check failed after {type(self.cmd).__name__}"
        return self

    def rejects(self, code: Reason, **details: Any) -> Rejected:
        """The command is rejected with ``code`` (and these detail values, when given)."""
        try:
            actual = self._pure_decide()
        except Rejected as exc:
            assert exc.code == code, f"rejected with {exc.code} ({exc.message}), expected {code}"
            for key, value in details.items():
                assert key in exc.details, f"rejection details {exc.details} lack {key!r}"
                assert exc.details[key] == value, (
                    f"details[{key!r}] = {exc.details[key]!r}, expected {value!r}"
                )
            return exc
        raise AssertionError(f"expected {code}, but {type(self.cmd).__name__} yielded\n{_describe(actual)}")


class Given:
    def __init__(self, events: tuple[Payload, ...], pool: str, config: DeciderConfig | None) -> None:
        self.events, self.pool, self.config = events, pool, config

    @property
    def state(self) -> PoolState:
        return build_state(self.events, self.pool)

    def when(self, cmd: Payload) -> When:
        return When(self.state, cmd, self.config)


def given(*events: Payload, pool: str = "default", config: DeciderConfig | None = None) -> Given:
    """A pool whose history is ``events``."""
    return Given(events, pool, config)


# -- an in-memory decider + coordinator loop ------------------------------------------------------


@dataclass
class Decision:
    """One decided command: who sent it, its id, the command, and the events it produced."""

    command_id: str
    command: Payload
    events: list[Envelope]
    by_coordinator: bool


@dataclass
class Loop:
    """Commands -> decide -> evolve -> reactors observe -> reactors schedule -> commands.

    The reactors are the coordinator and the workflow reactor, as in the runtime's driver.

    Commands are decided in FIFO order, like one partition of the commands topic; the
    coordinator's AssignTask commands join the back of the same queue. Repeated command ids are
    skipped and rejections become CommandRejected events exactly as ``PartitionDecider.decide_one``
    does it (``services.domain.envelopes.rejection``: the details gain the command's ``subject``).
    ``issued`` maps each coordinator command id to the index of the decision after which it was
    issued; ``on_schedule`` (if set) sees every non-empty batch of new assignments once queued.
    """

    pool: str = "default"
    config: DeciderConfig | None = None
    state: PoolState = field(init=False)
    coordinator: Coordinator = field(default_factory=Coordinator)
    workflows: WorkflowReactor = field(default_factory=WorkflowReactor)
    queue: deque[tuple[str, Payload, bool]] = field(default_factory=deque)
    log: list[Envelope] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    issued: dict[str, int] = field(default_factory=dict)
    on_schedule: Callable[[list[Assignment]], None] | None = None
    _n: int = 0

    def __post_init__(self) -> None:
        self.state = PoolState(self.pool)

    def send(self, cmd: Payload, command_id: str | None = None) -> str:
        """Queue a client command."""
        self._n += 1
        cid = command_id or f"client-{self._n}"
        self.queue.append((cid, cmd, False))
        return cid

    def step(self) -> Decision | None:
        """Decide the next queued command; the coordinator sees its events and may queue more."""
        if not self.queue:
            return None
        cid, cmd, by_coordinator = self.queue.popleft()
        if cid in self.state.seen:
            return Decision(cid, cmd, [], by_coordinator)
        try:
            events: list[Payload] = decide(self.state, cmd, self.config)
        except Rejected as exc:
            events = [rejection(type(cmd).__name__, exc, cmd.subject())]
        envs = wrap(
            events, pool=self.pool, start=self.state.sequence, command_id=cid, command_subject=cmd.subject()
        )
        for env in envs:
            evolve(self.state, env)
        self.log.extend(envs)
        for env in envs:
            self.coordinator.observe(env)
            self.workflows.observe(env)
        new = self.coordinator.schedule() + self.workflows.schedule()
        for a in new:
            self.queue.append((a.command_id, a.command, True))
            self.issued.setdefault(a.command_id, len(self.decisions))
        if new and self.on_schedule is not None:
            self.on_schedule(new)
        decision = Decision(cid, cmd, envs, by_coordinator)
        self.decisions.append(decision)
        return decision

    def run(self, limit: int = 10_000) -> list[Decision]:
        """Decide until the queue is empty; fails if it does not settle within ``limit`` steps."""
        out = []
        for _ in range(limit):
            d = self.step()
            if d is None:
                return out
            out.append(d)
        raise AssertionError(f"the loop did not settle in {limit} steps; last: {out[-3:]}")

    def do(self, cmd: Payload, command_id: str | None = None) -> list[Decision]:
        """Send ``cmd`` and run to quiescence."""
        self.send(cmd, command_id)
        return self.run()

    def assignments(self) -> list[c.AssignTask]:
        return [d.command for d in self.decisions if isinstance(d.command, c.AssignTask)]

    def rejections(self) -> list[e.CommandRejected]:
        return [env.data for env in self.log if isinstance(env.data, e.CommandRejected)]
