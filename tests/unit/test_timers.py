"""Durable timers: the pure TimerBook, and the TimerService against a real SQLite log with a fake
clock (firing, a crash and restart that fires again without a duplicate command, the decider's
answer closing the timer)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from contracts import Payload, derived_id
from contracts import commands as c
from contracts import event_types as e
from contracts.commands import MAX_TIMER_ID
from contracts.envelope import MAX_ENVELOPE_ID
from contracts.values import MAX_ID_LENGTH
from events import EventLog, StoredRecord, open_log
from events.cache import EnvelopeCache
from events.codec import decode, from_record, to_record
from services.coordination.timers import TimerBook
from services.domain.decider import decide, evolve
from services.domain.envelopes import event_envelopes
from services.domain.state import PoolState
from services.runtime.ingest import command_envelope
from services.runtime.timers import TimerService, fire_envelope
from services.runtime.topics import COMMANDS, EVENTS
from tests.unit.fleet import T0, stamp
from tests.waiting import eventually


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def scheduled(timer_id: str, delay: float, generation: int, kind: str = "retry") -> e.TimerScheduled:
    return e.TimerScheduled(timer_id=timer_id, kind=kind, delay_s=delay, generation=generation)


class Book:
    def __init__(self) -> None:
        self.book = TimerBook()
        self.seq = 0

    def __call__(self, t: float, *events: Payload, pool: str = "p") -> None:
        for env in stamp(events, pool=pool, start=self.seq, command_id=f"c{self.seq}", at=at(t)):
            self.seq += 1
            self.book.observe(env)


# -- TimerBook -------------------------------------------------------------------------------------


def test_timers_come_due_in_order_once_each() -> None:
    b = Book()
    b(0, scheduled("x", 10, 1), scheduled("y", 5, 2))
    b(2, scheduled("z", 5, 3))
    assert b.book.next_due() == at(5).timestamp()
    assert b.book.due(at(4.9).timestamp()) == []
    assert [t.timer_id for t in b.book.due(at(7).timestamp())] == ["y", "z"]
    assert b.book.due(at(7).timestamp()) == []  # handed out once
    assert len(b.book) == 3  # still pending until fired
    [x] = b.book.due(at(100).timestamp())
    assert (x.command_id, x.command()) == ("timer:p:x:1", c.FireTimer(timer_id="x", generation=1))


def test_cancelled_fired_and_re_armed_timers_do_not_come_due() -> None:
    b = Book()
    b(0, scheduled("a", 1, 1), scheduled("b", 1, 2), scheduled("c", 1, 3))
    b(
        0.5,
        e.TimerCancelled(timer_id="a", generation=1),
        e.TimerFired(timer_id="b", kind="retry", generation=2),
    )
    b(0.5, scheduled("c", 10, 4))  # re-armed: the first arming is void
    b(0.6, e.TimerCancelled(timer_id="c", generation=3))  # a stale cancel changes nothing
    assert b.book.due(at(5).timestamp()) == []
    assert [(t.timer_id, t.generation) for t in b.book.due(at(11).timestamp())] == [("c", 4)]
    assert len(b.book) == 1


def test_pools_keep_their_own_timers() -> None:
    b = Book()
    b(0, scheduled("t", 1, 1), pool="p1")
    b(0, scheduled("t", 2, 1), pool="p2")
    assert [t.command_id for t in b.book.due(at(3).timestamp())] == ["timer:p1:t:1", "timer:p2:t:1"]


# -- TimerService on SQLite ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def to(self, seconds: float) -> None:
        self.now = at(seconds)


class MiniDecider:
    """Decides the commands topic into the events topic (what the runner's decider does)."""

    def __init__(self, log: EventLog) -> None:
        self.log, self.state, self.offset = log, PoolState("default"), 0

    async def append(self, cmd: Payload, command_id: str, t: datetime) -> None:
        command = command_envelope(cmd, command_id=command_id, time=t)
        envs = event_envelopes(command, decide(self.state, cmd), self.state)
        for env in envs:
            evolve(self.state, env)
        if envs:
            await self.log.append(EVENTS, [to_record(x) for x in envs])

    async def drain(self) -> int:
        recs = await self.log.read(COMMANDS, 0, self.offset, 1000)
        for rec in recs:
            env = from_record(rec)
            if env.commandid not in self.state.seen:
                assert isinstance(env.data, Payload)
                await self.append(env.data, env.commandid or env.id, env.time)
        self.offset += len(recs)
        return len(recs)


async def _open(tmp_path: Path) -> EventLog:
    log = open_log(f"sqlite:///{tmp_path}/log.db")
    await log.start()
    await log.ensure_topic(COMMANDS, 1)
    await log.ensure_topic(EVENTS, 1, retention_ms=-1)
    return log


async def test_the_service_fires_due_timers_once_even_across_a_crash(tmp_path: Path) -> None:
    log = await _open(tmp_path)
    try:
        clock = Clock()
        decider = MiniDecider(log)
        await decider.append(c.RegisterAgent(agent_id="a", name="a", heartbeat_timeout_s=10), "r", at(0))
        # Registering arms heartbeat:a (generation 1); the heartbeat re-arms it: generation 2, due at 10.
        await decider.append(c.AgentHeartbeat(agent_id="a"), "hb", at(0))

        svc = TimerService(log, clock=clock)
        clock.to(9.9)
        assert await svc.step() == []
        assert 0 < svc.sleep_s() <= 0.1 + 1e-6
        clock.to(10)
        assert await svc.step() == ["timer:default:heartbeat:a:2"]
        assert await svc.step() == []  # handed out once per process

        # Crash before the decider answered: a new service rebuilds the book and fires again,
        # under the same id, so the log keeps one command.
        clock.to(11)
        again = TimerService(log, clock=clock)
        assert await again.step() == ["timer:default:heartbeat:a:2"]
        recs = await log.read(COMMANDS, 0, 0, 10)
        assert [r.id for r in recs] == ["timer:default:heartbeat:a:2"]
        [fire] = [from_record(r) for r in recs]
        assert (fire.type, fire.data, fire.time, fire.actor) == (
            "FireTimer",
            c.FireTimer(timer_id="heartbeat:a", generation=2),
            at(10),
            "timers",
        )

        assert await decider.drain() == 1
        assert not decider.state.agents["a"].healthy
        clock.to(12)
        assert await again.step() == []  # TimerFired closed it; the dead timer is due at 40
        assert again.book.next_due() == at(40).timestamp()
        clock.to(40)
        assert await again.step() == ["timer:default:dead:a:3"]
        await decider.drain()
        assert not decider.state.agents["a"].active
        assert await again.step() == [] and len(again.book) == 0
    finally:
        await log.close()


async def test_a_heartbeat_before_the_firing_makes_the_firing_a_no_op(tmp_path: Path) -> None:
    log = await _open(tmp_path)
    try:
        clock = Clock()
        decider = MiniDecider(log)
        await decider.append(c.RegisterAgent(agent_id="a", name="a", heartbeat_timeout_s=10), "r", at(0))
        await decider.append(c.AgentHeartbeat(agent_id="a"), "hb1", at(0))
        svc = TimerService(log, clock=clock)
        clock.to(10)
        assert await svc.step() == ["timer:default:heartbeat:a:2"]
        await decider.append(c.AgentHeartbeat(agent_id="a"), "hb2", at(10))  # decided before the firing
        n = len(await log.read(EVENTS, 0, 0, 100))
        await decider.drain()
        assert len(await log.read(EVENTS, 0, 0, 100)) == n  # stale generation: nothing happens
        assert decider.state.agents["a"].healthy
        clock.to(20)
        assert await svc.step() == ["timer:default:heartbeat:a:3"]
    finally:
        await log.close()


async def test_run_wakes_up_for_the_next_due_timer(tmp_path: Path) -> None:
    log = await _open(tmp_path)
    try:
        clock = Clock()
        decider = MiniDecider(log)
        await decider.append(c.RegisterAgent(agent_id="a", name="a", heartbeat_timeout_s=10), "r", at(0))
        await decider.append(c.AgentHeartbeat(agent_id="a"), "hb", at(0))
        clock.to(15)
        svc = TimerService(log, clock=clock, idle_s=0.05)
        task = asyncio.create_task(svc.run())
        for _ in range(100):
            await asyncio.sleep(0.01)
            if svc.fired:
                break
        task.cancel()
        assert svc.fired == 1
        assert [r.id for r in await log.read(COMMANDS, 0, 0, 10)] == ["timer:default:heartbeat:a:2"]
    finally:
        await log.close()


class CachingDecider(MiniDecider):
    """As the runner's decider: what it appends goes into the process's envelope cache too."""

    def __init__(self, log: EventLog, cache: EnvelopeCache) -> None:
        super().__init__(log)
        self.cache = cache

    async def append(self, cmd: Payload, command_id: str, t: datetime) -> None:
        command = command_envelope(cmd, command_id=command_id, time=t)
        envs = event_envelopes(command, decide(self.state, cmd), self.state)
        for env in envs:
            evolve(self.state, env)
        if envs:
            self.cache.put(EVENTS, await self.log.append(EVENTS, [to_record(x) for x in envs]), envs)


async def test_once_caught_up_the_service_takes_this_processs_events_from_the_cache(tmp_path: Path) -> None:
    log = await _open(tmp_path)
    try:
        cache = EnvelopeCache()
        clock = Clock()
        decider = CachingDecider(log, cache)
        await decider.append(c.RegisterAgent(agent_id="a", name="a", heartbeat_timeout_s=10), "r", at(0))
        reads: list[int] = []
        read = log.read

        async def counted(topic: str, partition: int, offset: int, limit: int = 1000) -> list[StoredRecord]:
            if topic == EVENTS:
                reads.append(offset)
            return await read(topic, partition, offset, limit)

        log.read = counted  # type: ignore[method-assign]
        read_matching = log.read_matching  # type: ignore[attr-defined]

        async def counted_matching(topic: str, partition: int, offset: int, end: int,
                                   **kwargs: object) -> list[StoredRecord]:
            if topic == EVENTS:
                reads.append(offset)
            return await read_matching(topic, partition, offset, end, **kwargs)  # type: ignore[no-any-return]

        log.read_matching = counted_matching  # type: ignore[attr-defined]
        svc = TimerService(log, clock=clock, idle_s=0.05, cache=cache)
        task = asyncio.create_task(svc.run())
        try:
            history = await log.end_offset(EVENTS, 0)
            await eventually(lambda: svc.offset == history and cache.followers(EVENTS, 0) == 1)
            assert reads  # the history came from the log
            reads.clear()
            # The heartbeat re-arms the timer (generation 2, due at 10): known from the cache alone.
            await decider.append(c.AgentHeartbeat(agent_id="a"), "hb", at(0))
            end = await log.end_offset(EVENTS, 0)
            await eventually(lambda: svc.offset == end)
            clock.to(10)
            await eventually(lambda: svc.fired == 1)
            # Nothing it took from the cache was read from the log (a wake to fire looks past the end).
            assert all(offset >= end for offset in reads), reads
            assert len(cache) == 0  # its only follower read them: let go
            assert [r.id for r in await read(COMMANDS, 0, 0, 10)] == ["timer:default:heartbeat:a:2"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert cache.followers(EVENTS, 0) == 0  # it stopped following when it stopped
    finally:
        await log.close()


async def test_an_event_the_cache_does_not_hold_is_read_from_the_log(tmp_path: Path) -> None:
    log = await _open(tmp_path)
    try:
        cache = EnvelopeCache()
        clock = Clock()
        svc = TimerService(log, clock=clock, idle_s=0.05, cache=cache)
        task = asyncio.create_task(svc.run())
        try:
            await eventually(lambda: cache.followers(EVENTS, 0) == 1)
            # Appended without the cache (as by another writer): the service still sees the timer.
            plain = MiniDecider(log)
            await plain.append(c.RegisterAgent(agent_id="a", name="a", heartbeat_timeout_s=10), "r", at(0))
            await plain.append(c.AgentHeartbeat(agent_id="a"), "hb", at(0))
            end = await log.end_offset(EVENTS, 0)
            await eventually(lambda: svc.offset == end)
            clock.to(10)
            await eventually(lambda: svc.fired == 1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await log.close()



async def test_the_history_is_read_for_its_timer_events_only(tmp_path: Path, monkeypatch: Any) -> None:
    """Start-up reads the whole partition: only its timer events are decoded, and the timers come
    due as they would from a full read."""
    import services.runtime.timers as timers

    log = await _open(tmp_path)
    try:
        clock = Clock()
        decider = MiniDecider(log)
        await decider.append(c.RegisterAgent(agent_id="a", name="a", heartbeat_timeout_s=10), "r", at(0))
        for i in range(100):  # other events of the partition, before and after the timer's
            await decider.append(c.SubmitTask(task_id=f"t{i}", type="x"), f"s{i}", at(0))
        await decider.append(c.AgentHeartbeat(agent_id="a"), "hb", at(0))
        history = await log.read(EVENTS, 0, 0, 10_000)
        kinds = ("TimerScheduled", "TimerCancelled")
        timer_offsets = [r.offset for r in history if from_record(r).type in kinds]
        assert timer_offsets and len(timer_offsets) < len(history) // 10

        decoded: list[int] = []
        real = timers.from_record  # type: ignore[attr-defined]

        def counting(rec: StoredRecord) -> Any:
            decoded.append(rec.offset)
            return real(rec)

        typed: list[int] = []
        real_type = timers.record_type  # type: ignore[attr-defined]

        def typing(rec: StoredRecord) -> str | None:
            typed.append(rec.offset)
            return real_type(rec)

        monkeypatch.setattr(timers, "from_record", counting)
        monkeypatch.setattr(timers, "record_type", typing)
        svc = TimerService(log, clock=clock)
        clock.to(10)
        assert await svc.step() == ["timer:default:heartbeat:a:2"]
        assert decoded == timer_offsets
        assert typed == timer_offsets, "records of other types were read into the service"
        assert svc.offset == len(history)
    finally:
        await log.close()


def test_the_longest_pools_and_ids_give_firings_the_log_accepts() -> None:
    # A pool and an agent id at the limit: joined, the firing's command id would be too long for an
    # envelope; it is a digest of the same parts instead, one per arming and still a valid command.
    pool, timer_id = "p" * MAX_ID_LENGTH, "heartbeat:" + "a" * MAX_ID_LENGTH
    b = Book()
    b(0, scheduled(timer_id, 1, 1), scheduled(timer_id, 1, 2), pool=pool)
    [timer] = b.book.due(at(2).timestamp())
    assert timer.command_id == derived_id("timer", pool, timer_id, 2)
    assert timer.command_id.startswith("timer~") and len(timer.command_id) <= MAX_ENVELOPE_ID
    assert timer.command_id != derived_id("timer", pool, timer_id, 1)
    env = fire_envelope(timer, at(2))
    assert decode(to_record(env).value) == env  # reads back: the decider takes it


def test_derived_ids_join_their_parts_while_they_fit() -> None:
    assert derived_id("assign", "p", "t1", 0, 1) == "assign:p:t1:0:1"
    assert len(derived_id("assign", "p" * 200, "t", 0, 1)) <= MAX_ENVELOPE_ID
    # The digest form never equals a joined id (those have ':' right after the kind).
    assert derived_id("webhook", "s" * 300, "x") != derived_id("webhook", "s" * 300, "y")


async def test_a_timer_that_cannot_be_fired_is_logged_and_the_others_fire(tmp_path: Path,
                                                                         caplog: Any) -> None:
    # A log written before timer ids were bounded: an arming whose id no FireTimer may carry.
    log = await _open(tmp_path)
    try:
        bad = "x" * (MAX_TIMER_ID + 1)
        events = [scheduled(bad, 1, 1), scheduled("retry:t", 1, 2)]
        await log.append(EVENTS, [to_record(x) for x in stamp(events, pool="default", start=0,
                                                               command_id="c0", at=at(0))])
        clock = Clock()
        svc = TimerService(log, clock=clock)
        clock.to(5)
        with caplog.at_level("ERROR", logger="agentbus.timers"):
            assert await svc.step() == ["timer:default:retry:t:2"]
        assert f"timer {bad!r} of pool 'default' cannot be fired" in caplog.text
        assert [r.id for r in await log.read(COMMANDS, 0, 0, 10)] == ["timer:default:retry:t:2"]
    finally:
        await log.close()
