"""Decider snapshots at work: the store, the choice of a valid snapshot, and restarts that replay
only the tail (``services.runtime.snapshots``, ``PartitionDecider``), on real SQLite files (and the
store on PostgreSQL too, like the read models, when AGENTBUS_TEST_DATABASE is set).

Whatever a snapshot is, the rebuilt state must be what a replay from offset 0 builds: every test
compares the pools' states and the outcome index with such a replay of the same log.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from contracts import commands as c
from contracts.base import Command
from contracts.commands import ModelPrice, RetryPolicy
from events import CorruptRecord, EventLog, Record, open_log
from events.chain import chain_at
from projections import ProjectionStore
from services.cli import main
from services.domain.snapshot import FORMAT, decode, encode
from services.runtime import decider as decider_module
from services.runtime.decider import PartitionDecider
from services.runtime.embedded import Runner
from services.runtime.ingest import command_envelope
from services.runtime.outcomes import OutcomeRef, Outcomes
from services.runtime.settings import Settings
from services.runtime.snapshot_copy import CAN_FORK
from services.runtime.snapshots import KEEP, SnapshotStore, snapshots
from tests.projections.conftest import _drop_schema, _schema_engine_url
from tests.unit.test_histories import lines_of

REPO = Path(__file__).resolve().parents[2]
EVENTS = "events"
DECIDER = Settings().decider


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ProjectionStore]:
    """A started read-model database on each backend (PostgreSQL: a schema of its own)."""
    if request.param == "sqlite":
        store = ProjectionStore(f"sqlite+aiosqlite:///{tmp_path / 'read.db'}")
        await store.start()
        try:
            yield store
        finally:
            await store.close()
        return
    url = await _schema_engine_url()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    store = ProjectionStore(url, schema=schema)
    try:
        await store.start()
        yield store
    finally:
        await store.close()
        await _drop_schema(url, schema)


async def history_log(path: Path, name: str) -> EventLog:
    """A SQLite log whose events partition holds the recorded history ``name``, as stored."""
    log = open_log(f"sqlite:///{path}")
    await log.start()
    await log.ensure_topic(EVENTS, 1, retention_ms=-1)
    records = []
    for line in lines_of(name):
        obj = orjson.loads(line)
        records.append(Record(key=obj["pool"], value=line, id=obj["id"]))
    await log.append(EVENTS, records, partition=0)
    return log


def index(outcomes: Outcomes, partition: int = 0) -> dict[str, OutcomeRef]:
    return dict(outcomes.of_partition(partition))


async def from_zero(log: EventLog, partition: int = 0) -> PartitionDecider:
    d = PartitionDecider(log, partition, Outcomes(), DECIDER)
    await d.rebuild()
    assert d.replay.snapshot is None and d.replay.start == 0
    return d


def assert_same(rebuilt: PartitionDecider, zero: PartitionDecider) -> None:
    assert rebuilt.states == zero.states
    assert index(rebuilt.outcomes, rebuilt.partition) == index(zero.outcomes, zero.partition)
    assert rebuilt.position == zero.position


async def save_at(store: SnapshotStore, log: EventLog, position: int) -> int:
    """Snapshot the state after the events below ``position`` (as the decider would) and store it."""
    d = PartitionDecider(log, 0, Outcomes(), DECIDER)
    await d.rebuild(until=position)
    assert d.position == position
    chain = await chain_at(log, EVENTS, 0, position)
    info = await store.save(EVENTS, 0, position, chain, encode(d.snapshot()))
    return info.id


async def from_store(log: EventLog, store: SnapshotStore) -> PartitionDecider:
    d = PartitionDecider(log, 0, Outcomes(), DECIDER, snapshots=store)
    await d.rebuild()
    return d


async def update(db: ProjectionStore, snapshot_id: int, **values: Any) -> None:
    async with db.begin_write() as conn:
        await conn.execute(snapshots.update().where(snapshots.c.id == snapshot_id).values(**values))


# -- the store ------------------------------------------------------------------------------------


async def test_the_store_keeps_the_newest_snapshots_of_each_partition(db: ProjectionStore) -> None:
    store = SnapshotStore(db)
    await store.start()
    await store.start()  # idempotent
    for position in (10, 50, 20, 40, 30):
        await store.save(EVENTS, 0, position, bytes([position]) * 32, f"body {position}".encode())
    await store.save(EVENTS, 1, 7, None, b"other partition")
    await store.save("prefix.events", 0, 99, None, b"other topic")
    kept = await store.list(EVENTS, 0)
    assert [s.position for s in kept] == [50, 40, 30] and len(kept) == KEEP
    newest = kept[0]
    assert newest.chain == bytes([50]) * 32 and newest.version == FORMAT and newest.size == len(b"body 50")
    assert newest.sha256 == hashlib.sha256(b"body 50").hexdigest()
    assert newest.created.tzinfo is not None and abs(time.time() - newest.created.timestamp()) < 60
    assert await store.body(newest.id) == b"body 50"
    assert [(s.position, s.chain) for s in await store.list(EVENTS, 1)] == [(7, None)]
    assert [s.position for s in await store.list("prefix.events", 0)] == [99]
    # Its table is not a read model: a read-model reset leaves it alone.
    await db.reset()
    assert [s.position for s in await store.list(EVENTS, 0)] == [50, 40, 30]


async def test_a_read_only_store_reads_and_never_creates(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'read.db'}"
    absent = SnapshotStore(url, readonly=True)
    await absent.start()
    assert await absent.list(EVENTS, 0) == [] and not (tmp_path / "read.db").exists()
    writer = SnapshotStore(url)
    await writer.start()
    await writer.save(EVENTS, 0, 3, None, b"x")
    await writer.close()
    reader = SnapshotStore(url, readonly=True)
    await reader.start()
    try:
        assert [s.position for s in await reader.list(EVENTS, 0)] == [3]
        with pytest.raises(RuntimeError, match="read-only"):
            await reader.save(EVENTS, 0, 4, None, b"y")
    finally:
        await reader.close()


# -- snapshot + tail == replay from zero -----------------------------------------------------------


@pytest.mark.parametrize("name", ["lifecycle", "budgets", "churn"])
async def test_a_snapshot_and_its_tail_rebuild_what_replay_from_zero_does(
        db: ProjectionStore, tmp_path: Path, name: str) -> None:
    log = await history_log(tmp_path / "log.db", name)
    store = SnapshotStore(db)
    await store.start()
    try:
        zero = await from_zero(log)
        end = zero.position
        assert end == len(lines_of(name))
        # Every position: mid-command ones carry the open command's outcome bookkeeping.
        for position in range(end + 1):
            saved = await save_at(store, log, position)
            d = await from_store(log, store)
            assert d.replay.snapshot is not None and d.replay.snapshot.id == saved
            assert (d.replay.start, d.replay.events) == (position, end - position)
            assert_same(d, zero)
    finally:
        await log.close()


@pytest.mark.parametrize("name", ["lifecycle", "churn"])
async def test_a_replay_read_ahead_in_small_batches_rebuilds_what_one_batch_does(
        tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    log = await history_log(tmp_path / "log.db", name)
    try:
        whole = await from_zero(log)
        end = whole.position
        monkeypatch.setattr(decider_module, "REPLAY_BATCH", 3)  # every batch read while one is applied
        assert_same(await from_zero(log), whole)
        for until in (0, 1, 2, 3, 4, end // 2, end - 1, end):
            small = PartitionDecider(log, 0, Outcomes(), DECIDER)
            await small.rebuild(until=until)
            monkeypatch.setattr(decider_module, "REPLAY_BATCH", 5000)
            one = PartitionDecider(log, 0, Outcomes(), DECIDER)
            await one.rebuild(until=until)
            monkeypatch.setattr(decider_module, "REPLAY_BATCH", 3)
            assert small.position == one.position == until
            assert_same(small, one)
            assert small._open == one._open
    finally:
        await log.close()


async def test_a_corrupt_event_stops_a_replay_read_ahead_naming_its_position(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log.db"
    log = await history_log(path, "lifecycle")
    await log.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE records SET value = ? WHERE \"offset\" = 7", (b"\xff not json",))
    log = open_log(f"sqlite:///{path}")
    await log.start()
    monkeypatch.setattr(decider_module, "REPLAY_BATCH", 3)
    try:
        with pytest.raises(CorruptRecord) as caught:  # raised by a read made ahead, while 3-5 applied
            await PartitionDecider(log, 0, Outcomes(), DECIDER).rebuild()
        assert (caught.value.topic, caught.value.offset) == (EVENTS, 7)
        await asyncio.sleep(0.05)  # the batch read ahead ends; its outcome is retrieved, not logged lost
    finally:
        await log.close()


# -- snapshots that must not be used ----------------------------------------------------------------


def _flip(body: bytes) -> bytes:
    i = len(body) // 2
    return body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1:]


CORRUPTIONS: dict[str, tuple[Callable[[Any, bytes], dict[str, Any]], str]] = {
    "a flipped byte": (lambda info, body: {"body": _flip(body)}, "SHA-256"),
    "another version": (lambda info, body: {"version": FORMAT + 1}, f"format version {FORMAT + 1}"),
    "beyond the end": (lambda info, body: {"position": 10_000}, "the log ends at"),
    "another chain": (lambda info, body: {"chain": hashlib.sha256(b"another log").digest()},
                      "differs from the log's"),
    "an undecodable body": (lambda info, body: {"body": b"garbage",
                                                "sha256": hashlib.sha256(b"garbage").hexdigest()}, "not lz4"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
async def test_a_snapshot_that_does_not_check_out_is_ignored_with_a_warning(
        db: ProjectionStore, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    log = await history_log(tmp_path / "log.db", "lifecycle")
    store = SnapshotStore(db)
    await store.start()
    try:
        zero = await from_zero(log)
        saved = await save_at(store, log, 20)
        [info] = await store.list(EVENTS, 0)
        body = await store.body(saved)
        assert body is not None
        change, why = CORRUPTIONS[kind]
        await update(db, saved, **change(info, body))
        with caplog.at_level(logging.WARNING, logger="agentbus.snapshots"):
            d = await from_store(log, store)
        warnings = [r.getMessage() for r in caplog.records if r.name == "agentbus.snapshots"]
        assert len(warnings) == 1 and f"snapshot {saved} " in warnings[0] and why in warnings[0], warnings
        assert d.replay.snapshot is None and (d.replay.start, d.replay.events) == (0, zero.position)
        assert_same(d, zero)
    finally:
        await log.close()


async def test_a_refused_snapshot_falls_back_to_the_next_older_one(
        db: ProjectionStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = await history_log(tmp_path / "log.db", "budgets")
    store = SnapshotStore(db)
    await store.start()
    try:
        zero = await from_zero(log)
        older = await save_at(store, log, 12)
        newer = await save_at(store, log, 30)
        body = await store.body(newer)
        assert body is not None
        await update(db, newer, body=_flip(body))
        with caplog.at_level(logging.WARNING, logger="agentbus.snapshots"):
            d = await from_store(log, store)
        assert any(f"snapshot {newer} " in r.getMessage() for r in caplog.records)
        assert d.replay.snapshot is not None and d.replay.snapshot.id == older
        assert (d.replay.start, d.replay.events) == (12, zero.position - 12)
        assert_same(d, zero)
    finally:
        await log.close()


async def test_a_snapshot_of_another_log_is_not_used(
        db: ProjectionStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Same store, same topic and partition, a position within both logs: the chain tells them apart."""
    churn = await history_log(tmp_path / "churn.db", "churn")
    lifecycle = await history_log(tmp_path / "lifecycle.db", "lifecycle")
    store = SnapshotStore(db)
    await store.start()
    try:
        saved = await save_at(store, churn, 15)
        with caplog.at_level(logging.WARNING, logger="agentbus.snapshots"):
            d = await from_store(lifecycle, store)
        assert any(f"snapshot {saved} " in r.getMessage() and "another or a rewritten log" in r.getMessage()
                   for r in caplog.records)
        assert d.replay.snapshot is None
        assert_same(d, await from_zero(lifecycle))
    finally:
        await churn.close()
        await lifecycle.close()


# -- the embedded service -------------------------------------------------------------------------


def workload(rounds: int, start: int = 0) -> list[Command]:
    """Commands touching most of a pool's state: limits, policy, prices, budgets, scaling, agents
    with retry policies, tasks with JSON data, starts, completions, failures, costs, allocations."""
    cmds: list[Command] = []
    if start == 0:
        cmds += [
            c.SetResourceLimits(max_cpu_cores=1000, max_memory_mb=1_000_000, max_disk_mb=1_000_000,
                                max_network_mbps=10_000),
            c.SetPoolPolicy(default_strategy="round_robin"),
            c.SetPrices(models={"house-model": ModelPrice(input_per_1k=0.001, output_per_1k=0.002)}),
            c.SetBudget(scope="pool", limit_usd=1000.0),
            c.SetScalingPolicy(agent_kind="llm", max_agents=50),
        ]
    for i in range(start, start + rounds):
        cmds += [
            c.RegisterAgent(agent_id=f"a{i}", name=f"agent {i}", kind="llm", capabilities=("code",),
                            capacity=2, retry=RetryPolicy(max_attempts=3)),
            c.SubmitTask(task_id=f"t{i}", type="work", required_capabilities=("code",),
                         data={"i": i, "nested": [1, {"x": None, "y": 1.5}]}),
            c.AllocateResources(allocation_id=f"r{i}", agent_id=f"a{i}", cpu_cores=0.5, memory_mb=64),
            c.RecordCost(cost_id=f"k{i}", agent_id=f"a{i}", model="house-model", input_tokens=100,
                         output_tokens=10),
        ]
        if i >= 1:
            cmds.append(c.CompleteTask(task_id=f"t{i - 1}"))
        if i % 4 == 3:
            cmds.append(c.FailTask(task_id=f"t{i}", error="boom"))
    return cmds


async def run_workload(runner: Runner, cmds: list[Command]) -> None:
    for cmd in cmds:
        partition, offset, _ = await runner.submit(command_envelope(cmd, pool="default", source="urn:test"))
        assert await runner.wait_decided(partition, offset, 30) is not None


async def settle(runner: Runner) -> None:
    """Until the decider has decided every command (the coordinator's too) for a while."""
    quiet = 0
    deadline = time.monotonic() + 30
    while quiet < 3:
        assert time.monotonic() < deadline, "the service did not go quiet"
        await asyncio.sleep(0.1)
        end = await runner.log.end_offset("commands", 0)
        quiet = quiet + 1 if runner.deciders[0].decided == end else 0


@pytest.mark.parametrize("fork", [True, False], ids=["copied-in-a-child", "copied-on-the-loop"])
async def test_the_service_snapshots_as_it_goes_and_a_restart_replays_only_the_tail(
    tmp_path: Path, fork: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every 40 events, whatever the copy took: pacing (a copy at most 2% of the time) would space a
    # child's copies, fork and compression included, further apart than this short workload.
    monkeypatch.setattr("services.runtime.decider.SNAPSHOT_SHARE", 1e9)
    settings = Settings(data_dir=tmp_path, snapshot_every=40)
    async with Runner(settings) as runner:
        await runner.ready()
        for decider in runner.deciders:
            decider.fork_snapshots = fork and CAN_FORK
        await run_workload(runner, workload(12))
        await settle(runner)
    log = open_log(settings.broker)
    await log.start()
    db = ProjectionStore(settings.database)
    await db.start()
    store = SnapshotStore(db)
    try:
        zero = await from_zero(log)
        end = zero.position
        kept = await store.list(EVENTS, 0)
        # Written every 40 events as it went (none at the stop: the tail is under 40 events).
        assert 2 <= len(kept) <= KEEP and end - 40 < kept[0].position <= end
        assert kept[0].position >= kept[1].position + 40 >= 80

        # Restarts without the coordinator: nothing may change the state before it is compared. Nor
        # the projector: its process takes about a second to be ready, long enough for the
        # workload's retry timers (due 1 s after each failure) to fire.
        async with Runner(settings, coordinator=False, projector=False) as again:
            await again.ready()
            replay = again.deciders[0].replay
            assert replay.snapshot is not None and replay.snapshot.id == kept[0].id
            assert (replay.start, replay.events) == (kept[0].position, end - kept[0].position)
            assert_same(again.deciders[0], zero)

        # The newest lost: the next one and the events after it.
        async with db.begin_write() as conn:
            await conn.execute(snapshots.delete().where(snapshots.c.id == kept[0].id))
        async with Runner(settings, coordinator=False, projector=False) as third:
            await third.ready()
            replay = third.deciders[0].replay
            assert replay.snapshot is not None and replay.snapshot.id == kept[1].id
            assert (replay.start, replay.events) == (kept[1].position, end - kept[1].position)
            assert replay.events > 0
            assert_same(third.deciders[0], zero)
            # ... and it goes on deciding from there.
            await run_workload(third, workload(2, start=100))
        after = await from_zero(log)
        assert after.position > end
    finally:
        await db.close()
        await log.close()


def hold_snapshot_writes(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Decider snapshots every ``snapshot_every`` events whatever a copy took, each write held
    (before it reads the chain value) until the returned event is set."""
    monkeypatch.setattr("services.runtime.decider.SNAPSHOT_SHARE", 1e9)
    gate = asyncio.Event()
    real_chain_at = decider_module.chain_at

    async def held(*args: Any) -> bytes | None:
        await gate.wait()
        return await real_chain_at(*args)

    monkeypatch.setattr(decider_module, "chain_at", held)
    return gate


async def test_a_snapshot_due_while_one_is_written_is_taken_when_it_ends_on_an_idle_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first write is held until the workload is over and the service idle: the snapshot that came
    # due meanwhile must follow it at once, not wait for a batch that may never come.
    gate = hold_snapshot_writes(monkeypatch)
    settings = Settings(data_dir=tmp_path, snapshot_every=40)
    # Without the coordinator and the projector nothing appends once the workload is decided.
    async with Runner(settings, coordinator=False, projector=False) as runner:
        await runner.ready()
        decider = runner.deciders[0]
        await run_workload(runner, workload(24))  # about 160 events: the first write is due at 40
        await settle(runner)
        first = decider._writing
        assert first is not None and not first.done()  # held at the gate
        end = decider.position
        gate.set()
        await asyncio.wait_for(decider._written(), 30)
        assert decider._writing is not first  # a second one followed with no batch in between
        assert decider.position == end
    db = ProjectionStore(settings.database)
    await db.start()
    try:
        kept = await SnapshotStore(db).list(EVENTS, 0)
    finally:
        await db.close()
    assert [s.position for s in kept][:1] == [end]
    assert len(kept) == 2 and end - kept[1].position >= 40


async def test_a_snapshot_due_when_a_write_ends_waits_for_decisions_not_yet_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command decided inside its appender's transaction changes the state at once, and the position
    once that transaction commits: a snapshot taken in between would label decisions with a position
    below their events, and a restart from it would apply them twice. The window is widened here: the
    first snapshot's write is held, and so is the report of one such commit, while the write ends."""
    gate = hold_snapshot_writes(monkeypatch)
    settings = Settings(data_dir=tmp_path, snapshot_every=40)
    async with Runner(settings, coordinator=False, projector=False) as runner:
        await runner.ready()
        decider = runner.deciders[0]
        await run_workload(runner, workload(24))
        await settle(runner)
        first = decider._writing
        assert first is not None and not first.done()  # held at the gate
        end = decider.position
        reports: list[Callable[[], None]] = []
        real_reacted = decider._reacted

        def late(*args: Any) -> None:
            reports.append(lambda: real_reacted(*args))

        monkeypatch.setattr(decider, "_reacted", late)
        late_agent = c.RegisterAgent(agent_id="late", name="late", kind="llm")
        await runner.submit(command_envelope(late_agent, pool="default", source="urn:test"))
        assert len(reports) == 1  # decided in the transaction, its commit not reported yet
        assert "late" in decider.states["default"].agents and decider.position == end
        gate.set()
        await asyncio.wait_for(first, 30)
        await asyncio.sleep(0.1)  # a snapshot the write's end started has been forked by now
        monkeypatch.setattr(decider, "_reacted", real_reacted)
        reports.pop()()
        assert decider.position > end
        await asyncio.wait_for(decider._written(), 30)
    log = open_log(settings.broker)
    await log.start()
    store = SnapshotStore(f"sqlite+aiosqlite:///{tmp_path / 'read.db'}")
    await store.start()
    try:
        kept = await store.list(EVENTS, 0)
        assert kept
        for info in kept:
            body = await store.body(info.id)
            assert body is not None
            as_of = PartitionDecider(log, 0, Outcomes(), DECIDER)
            await as_of.rebuild(until=info.position)
            assert decode(body).states == as_of.states, f"the snapshot at {info.position}"
    finally:
        await store.close()
        await log.close()


async def test_snapshot_every_zero_neither_writes_nor_reads_snapshots(tmp_path: Path) -> None:
    async with Runner(Settings(data_dir=tmp_path, snapshot_every=3)) as runner:
        await runner.ready()
        await run_workload(runner, workload(2))
        await settle(runner)

    def snapshots_written() -> list[tuple[int, int]]:
        with sqlite3.connect(tmp_path / "read.db") as conn:
            return conn.execute("SELECT id, position FROM decider_snapshots ORDER BY id").fetchall()

    before = snapshots_written()
    assert before  # written while on
    async with Runner(Settings(data_dir=tmp_path, snapshot_every=0), coordinator=False) as off:
        await off.ready()
        replay = off.deciders[0].replay
        assert replay.snapshot is None and replay.events == off.deciders[0].position > 0
        await run_workload(off, workload(1, start=50))
    assert snapshots_written() == before  # nothing written while off


def test_replay_uses_a_snapshot_only_when_asked(tmp_path: Path) -> None:
    async def make() -> int:
        async with Runner(Settings(data_dir=tmp_path)) as runner:
            await runner.ready()
            await run_workload(runner, workload(3))
            await settle(runner)
        log = open_log(f"sqlite:///{tmp_path / 'log.db'}")
        await log.start()
        store = SnapshotStore(f"sqlite+aiosqlite:///{tmp_path / 'read.db'}")
        await store.start()
        try:
            async with store.engine.begin() as conn:  # only an older snapshot: a real tail
                await conn.execute(snapshots.delete())
            await save_at(store, log, 7)
            return await log.end_offset(EVENTS, 0)
        finally:
            await store.close()
            await log.close()

    end = asyncio.run(make())
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    plain = CliRunner().invoke(main, ["replay", "--data-dir", str(tmp_path), "--json"], env=env)
    assert plain.exit_code == 0, plain.output
    assert orjson.loads(plain.output)["events"] == end
    assert "snapshot_positions" not in orjson.loads(plain.output)
    used = CliRunner().invoke(main, ["replay", "--data-dir", str(tmp_path), "--json", "--from-snapshot"],
                              env=env)
    assert used.exit_code == 0, used.output
    result = orjson.loads(used.output)
    assert result["events"] == end - 7 and result["snapshot_positions"] == {"0": 7}
    assert 0 < result["snapshot_seconds"] < result["seconds"]
    assert result["pools"] == orjson.loads(plain.output)["pools"]
    text = CliRunner().invoke(main, ["replay", "--data-dir", str(tmp_path), "--from-snapshot"], env=env)
    assert f"replayed {end - 7} events" in text.output and "from the snapshot at position 7" in text.output
    assert "loading the snapshots took" in text.output


# -- a crash: the service killed, no last snapshot ----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _newest(read_db: Path) -> tuple[int, int] | None:
    """(id, position) of the newest snapshot in the read-model file, or None."""
    if not read_db.exists():
        return None
    with sqlite3.connect(read_db, timeout=30) as conn:
        try:
            row = conn.execute("SELECT id, position FROM decider_snapshots ORDER BY position DESC, id DESC "
                               "LIMIT 1").fetchone()
        except sqlite3.OperationalError:
            return None
    return None if row is None else (int(row[0]), int(row[1]))


@pytest.mark.slow
async def test_after_a_kill_a_restart_replays_only_the_events_after_the_last_snapshot(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    env["AGENTBUS_SNAPSHOT_EVERY"] = "25"
    out = (tmp_path / "serve.out").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--data-dir", str(data),  # noqa: ASYNC220
                             "--port", str(port), "--auth", "off"], cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, (tmp_path / "serve.out").read_text()
                try:
                    if (await client.get("/v1/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "agentbus serve did not start"
                await asyncio.sleep(0.1)
            for i in range(15):
                agent = {"agent_id": f"a{i}", "name": f"agent {i}", "capabilities": ["code"]}
                resp = await client.post("/v1/agents", params={"wait": "true"}, json=agent)
                assert resp.status_code == 201, resp.text
                task = {"task_id": f"t{i}", "type": "work", "required_capabilities": ["code"]}
                resp = await client.post("/v1/tasks", params={"wait": "true"}, json=task)
                assert resp.status_code == 201, resp.text
            # Wait for a periodic snapshot, then add a few events after it (fewer than 25: no new one).
            deadline = time.monotonic() + 30
            while _newest(data / "read.db") is None:
                assert time.monotonic() < deadline, "no snapshot was written"
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # the coordinator's assignments decided, a snapshot write finished
            resp = await client.put("/v1/budgets", params={"wait": "true"},
                                    json={"scope": "pool", "limit_usd": 5.0})
            assert resp.status_code == 200, resp.text
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        out.close()
    newest = _newest(data / "read.db")
    assert newest is not None
    settings = Settings(data_dir=data)
    log = open_log(settings.broker)
    await log.start()
    try:
        zero = await from_zero(log)
        async with Runner(settings, coordinator=False, projector=False) as again:
            await again.ready()
            replay = again.deciders[0].replay
            assert replay.snapshot is not None and (replay.snapshot.id, replay.start) == newest
            assert replay.events == zero.position - newest[1] >= 1
            assert again.deciders[0].states == zero.states
            assert index(again.outcomes) == index(zero.outcomes)
    finally:
        await log.close()


def test_the_snapshot_table_has_its_own_metadata() -> None:
    from projections import tables

    assert snapshots.name not in tables.metadata.tables
    assert snapshots.name not in {t.name for t in tables.READ_MODELS}
    assert isinstance(snapshots.c.body.type, sa.LargeBinary)


# -- the Faust worker on Kafka --------------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.postgres
async def test_a_cluster_worker_rebuilds_from_the_snapshot_its_predecessor_wrote(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from services.runtime.service import open_service
    from tests.cluster.conftest import owns_every_partition, private_namespace, service_settings

    async with private_namespace(partitions=1) as cluster:
        settings = service_settings(cluster, tmp_path).model_copy(update={"snapshot_every": 10})
        topic = f"{cluster.prefix}events"
        store = SnapshotStore(settings.database, readonly=True)
        first = open_service(settings)
        await first.start()
        try:
            await first.ready()
            await owns_every_partition(first)
            for cmd in workload(4):
                env = command_envelope(cmd, pool="default", source="urn:test")
                partition, offset, _ = await first.submit(env)
                assert await first.wait_decided(partition, offset, 30) is not None
            deadline = time.monotonic() + 30
            while True:  # written in the background after its batch
                await store.start()
                kept = await store.list(topic, 0)
                await store.close()
                if kept:
                    break
                assert time.monotonic() < deadline, "the worker wrote no snapshot"
                await asyncio.sleep(0.2)
        finally:
            await first.stop()
        await store.start()
        try:
            newest = (await store.list(topic, 0))[0]
        finally:
            await store.close()
        assert newest.chain is not None  # the Kafka partition writer chains the events topic
        second = open_service(settings)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="agentbus.decider"):
            await second.start()
            try:
                await second.ready()
                await owns_every_partition(second)
            finally:
                await second.stop()
        rebuilt = [r.getMessage() for r in caplog.records if "state rebuilt" in r.getMessage()]
        used = f"snapshot {newest.id} of {topic}[0] at position {newest.position}"
        assert len(rebuilt) == 1 and used in rebuilt[0], rebuilt
