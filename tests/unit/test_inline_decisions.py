"""On the SQLite log the decider of a partition decides a command this process appends inside the
transaction that appends it: the command, its events and the decider's offset commit together.

Real SQLite files throughout; the failed transaction is a real one (a trigger in the file refuses
the events' rows), not a patched function.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import services.runtime.decider as decider_module
from contracts import commands as c
from events.codec import to_record
from events.log import Appended
from events.sqlite_writer import Pending
from services.domain.snapshot import DeciderSnapshot, dump
from services.runtime.decider import PartitionDecider
from services.runtime.embedded import Runner
from services.runtime.ingest import command_envelope
from services.runtime.outcomes import Outcomes
from services.runtime.settings import Settings
from services.runtime.topics import DECIDER_GROUP
from tests.waiting import eventually


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, snapshot_every=0, coordinator_snapshot_every=0)


@contextlib.asynccontextmanager
async def _running(tmp_path: Path, capacity: int) -> AsyncIterator[Runner]:
    """A runner, ready, with agent a1 (capability x) registered."""
    runner = Runner(_settings(tmp_path))
    await runner.start()
    try:
        await runner.ready()
        await runner.submit(command_envelope(c.RegisterAgent(agent_id="a1", name="a1", capabilities=("x",),
                                                             capacity=capacity)))
        yield runner
    finally:
        await runner.stop()


async def _rebuilt(runner: Runner) -> bytes:
    """The state of partition 0 rebuilt from the log by a decider of its own."""
    d = PartitionDecider(runner.log, 0, Outcomes(), runner.settings.decider, topics=runner.topics)
    await d.rebuild()
    return dump(DeciderSnapshot(0, d.position, d.states))


async def test_a_command_is_decided_in_the_transaction_that_appends_it(tmp_path: Path) -> None:
    runner = Runner(_settings(tmp_path))
    await runner.start()
    try:
        await runner.ready()
        decider = runner.deciders[0]
        agent = c.RegisterAgent(agent_id="a1", name="a1", capabilities=("x",), capacity=4)
        await runner.submit(command_envelope(agent))
        for i in range(30):
            env = command_envelope(c.SubmitTask(task_id=f"t{i}", type="demo", required_capabilities=("x",)))
            await eventually(lambda: not decider._in_batch)  # the decider idle: nothing queued ahead
            partition, offset, duplicate = await runner.submit(env)
            assert not duplicate
            # No wait: when the append returns, its decision is durable and indexed already (read
            # from the cache before anything else ran: the coordinator may decide more meanwhile).
            assert decider.decided >= offset + 1
            assert runner.outcomes.get(env.id) is not None
            assert await runner.log.committed(DECIDER_GROUP, "commands", partition) >= offset + 1
        # A repeat of a command is a duplicate in the log and decided nowhere again.
        before = decider.position
        _, _, duplicate = await runner.submit(env)
        assert duplicate and decider.position == before
        await eventually(lambda: not decider._in_batch
                         and runner.log.committed_end("commands", 0) == decider.decided)
        live = dump(DeciderSnapshot(0, decider.position, decider.states))
        assert await _rebuilt(runner) == live  # the same decisions on replay
    finally:
        await runner.stop()


async def test_commands_of_several_callers_in_one_transaction_are_decided_together(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Appends to one partition that share a transaction reach the decider in one call, its events
    reach the coordinator in one call, and every caller's command is decided when its append
    returns; the log replays to the same state."""
    async with _running(tmp_path, capacity=50) as runner:
        decider = runner.deciders[0]
        await eventually(lambda: not decider._in_batch)
        reactions = runner.log._reactions
        seen: list[tuple[str, int]] = []
        follow = reactions.follow

        def spy(topic: str, out: list[Appended], envelopes: Sequence[Any]) -> Pending | None:
            seen.append((topic, len(out)))
            return follow(topic, out, envelopes)

        monkeypatch.setattr(reactions, "follow", spy)
        envs = [command_envelope(c.SubmitTask(task_id=f"t{i}", type="demo", required_capabilities=("x",)))
                for i in range(12)]
        before = runner.log.transactions
        results = await asyncio.gather(*(runner.submit(env) for env in envs))
        assert runner.log.transactions == before + 1  # one transaction for the twelve callers
        assert all(decider.decided >= offset + 1 for _, offset, _ in results)
        assert all(runner.outcomes.get(env.id) is not None for env in envs)
        # The twelve commands in one call, their twelve events in one, the twelve assignments the
        # coordinator made in one, their events in one.
        assert seen[:4] == [("commands", 12), ("events", 12), ("commands", 12), ("events", 12)], seen
        await eventually(lambda: all(runner.deciders[0].states["default"].tasks[f"t{i}"].agent_id == "a1"
                                     for i in range(12)))
        await eventually(lambda: not decider._in_batch
                         and runner.log.committed_end("commands", 0) == decider.decided)
        live = dump(DeciderSnapshot(0, decider.position, decider.states))
        assert await _rebuilt(runner) == live  # the same decisions on replay


async def test_a_replay_rebuilds_the_outcome_index_deciding_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deciding records each command's outcome as it goes; a replay records them by column, a
    batch at a time. Both give the same index: every command's first event, its number of events
    and its digest (commands with and without one, accepted and rejected, one in a batch of several)."""
    async with _running(tmp_path, capacity=2) as runner:
        decider = runner.deciders[0]
        for i in range(25):
            task = c.SubmitTask(task_id=f"t{i % 20}", type="demo", required_capabilities=("x",))  # 5 rejected
            await runner.submit(command_envelope(task, digest=f"digest-{i}" if i % 3 else None))
        await runner.submit_many([command_envelope(c.CancelTask(task_id=f"t{i}")) for i in range(15, 20)])
        await eventually(lambda: not decider._in_batch
                         and runner.log.committed_end("commands", 0) == decider.decided)
        live = dict(runner.outcomes.of_partition(0))
        assert len(live) >= 31 and any(ref.digest for ref in live.values())
        for batch in (3, 5000):  # commands whose events span two batches, and one batch
            monkeypatch.setattr(decider_module, "REPLAY_BATCH", batch)
            d = PartitionDecider(runner.log, 0, Outcomes(), runner.settings.decider, topics=runner.topics)
            await d.rebuild()
            assert dict(d.outcomes.of_partition(0)) == live


async def test_a_record_without_its_envelope_is_decided_by_the_tail_in_log_order(tmp_path: Path) -> None:
    """A record another writer appended (no envelope to decide from) is read and decided as usual,
    and the commands after it wait for it: decisions stay in log order."""
    runner = Runner(_settings(tmp_path))
    await runner.start()
    try:
        await runner.ready()
        first = command_envelope(c.SubmitTask(task_id="raw", type="demo"))
        second = command_envelope(c.SubmitTask(task_id="after", type="demo"))
        # Both in one transaction: the first arrives without its envelope, so the second cannot be
        # decided before it.
        raw = asyncio.ensure_future(runner.log.append("commands", [to_record(first)]))
        await asyncio.sleep(0)  # queued first
        _, offset, _ = await runner.submit(second)
        [at] = await raw
        assert at.offset == offset - 1
        assert runner.outcomes.get(second.id) is None  # not decided before the command ahead of it
        assert await runner.wait_decided(0, offset, 10) is not None
        assert list(runner.deciders[0].state("default").tasks) == ["raw", "after"]
        raw_ref, second_ref = runner.outcomes.get(first.id), runner.outcomes.get(second.id)
        assert raw_ref is not None and second_ref is not None and raw_ref.offset < second_ref.offset
    finally:
        await runner.stop()


async def test_a_rolled_back_transaction_stops_the_decider_and_a_restart_decides_from_the_log(
        tmp_path: Path) -> None:
    """The file refuses the events' rows (a trigger): the transaction that held the command and its
    decision rolls back, the command alone is then written (its caller is answered), and the
    decider, whose state ran ahead of the log, stops the service rather than decide on. A restart
    decides the command once, from the log."""
    runner = Runner(_settings(tmp_path))
    await runner.start()
    env = command_envelope(c.SubmitTask(task_id="t-refused", type="demo"))
    try:
        await runner.ready()
        await runner.submit(command_envelope(c.SubmitTask(task_id="t-ok", type="demo")))
        other = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
        other.execute("CREATE TRIGGER refuse BEFORE INSERT ON records WHEN NEW.topic = 'events'"
                      " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
        await eventually(lambda: not runner.deciders[0]._in_batch)
        _, offset, _ = await runner.submit(env)  # answered: the command is in the log
        await asyncio.wait_for(runner.failed.wait(), 10)
        assert "ahead of the log" in str(runner.failure)
        assert runner.outcomes.get(env.id) is None
        other.execute("DROP TRIGGER refuse")
        other.close()
    finally:
        await runner.stop()

    again = Runner(_settings(tmp_path))
    await again.start()
    try:
        await again.ready()
        assert await again.wait_decided(0, offset, 10) is not None
        assert again.outcomes.get(env.id) is not None
        assert list(again.deciders[0].state("default").tasks) == ["t-ok", "t-refused"]
        with sqlite3.connect(tmp_path / "log.db") as conn:
            values = [bytes(v) for (v,) in conn.execute("SELECT value FROM records WHERE topic = 'events'")]
        submitted = [v for v in values if b'"TaskSubmitted"' in v and b'"t-refused"' in v]
        assert len(submitted) == 1  # nothing decided twice
        live = dump(DeciderSnapshot(0, again.deciders[0].position, again.deciders[0].states))
        assert await _rebuilt(again) == live
    finally:
        await again.stop()


async def test_what_a_batch_woke_runs_before_the_next_batch_is_decided(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands too many for one transaction to decide inline are decided in batches; once a
    batch's events are durable, what that woke (the live streams' hub, the coordinator) gets the
    loop before the decider takes on the next batch, which is already waiting in the cache."""
    monkeypatch.setattr(decider_module, "BATCH", 40)
    order: list[tuple[str, int]] = []
    process = PartitionDecider.process

    async def recorded(self: PartitionDecider, batch: list[Any]) -> None:
        order.append(("decide", batch[0][0]))
        await process(self, batch)
        # As the log's commit wakes a follower: a callback on the loop's next pass.
        asyncio.get_running_loop().call_soon(order.append, ("woken", batch[0][0]))

    monkeypatch.setattr(PartitionDecider, "process", recorded)
    async with _running(tmp_path, capacity=1) as runner:
        assert await runner.wait_decided(0, 0, 10.0) is not None  # the agent's registration
        await asyncio.sleep(0.1)
        order.clear()
        envs = [command_envelope(c.SubmitTask(task_id=f"t{i}", type="demo")) for i in range(120)]
        appended = await runner.submit_many(envs)
        assert await runner.wait_decided(0, appended[-1][1], 10.0) is not None
        await eventually(lambda: len(order) >= 6)
        first = appended[0][1]
        assert order[:6] == [("decide", first), ("woken", first), ("decide", first + 40),
                             ("woken", first + 40), ("decide", first + 80), ("woken", first + 80)]
