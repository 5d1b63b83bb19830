"""On the SQLite log the coordinator folds in the events its partition's decider appends inside the
transaction that appends them, and appends the assignments that follow in that transaction too,
where the decider decides them in turn: a task submitted while an agent is free is assigned by the
transaction that submits it (one fsync for submit -> assigned).

Real SQLite files throughout; the failed transaction is a real one (a trigger in the file refuses
the assignment's event), not a patched function.
"""

from __future__ import annotations

import asyncio
import pickle
import sqlite3
from pathlib import Path

from contracts import commands as c
from events.codec import to_record
from services.runtime.coordinator import _observe_history
from services.runtime.coordinator_snapshots import fresh_views
from services.runtime.embedded import Runner
from services.runtime.ingest import command_envelope
from services.runtime.settings import Settings
from services.runtime.topics import COORDINATOR_GROUP
from tests.audit.test_coordinator_snapshots import _picture
from tests.waiting import eventually


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, snapshot_every=0, coordinator_snapshot_every=0)


def _assigned(path: Path) -> dict[str, int]:
    """Per task id, how many TaskAssigned events the file holds (read by a connection of its own:
    only what is committed)."""
    with sqlite3.connect(path / "log.db") as conn:
        values = [bytes(v) for (v,) in conn.execute("SELECT value FROM records WHERE topic = 'events'")]
    out: dict[str, int] = {}
    for v in values:
        if b'"TaskAssigned"' in v:
            task = v.split(b'"task_id":"', 1)[1].split(b'"', 1)[0].decode()
            out[task] = out.get(task, 0) + 1
    return out


def _quiet(runner: Runner) -> bool:
    """Everything appended is decided and folded in by the coordinator, and nothing is under way."""
    driver = runner.coordinator
    assert driver is not None
    decider = runner.deciders[0]
    return (not decider._in_batch and not driver._busy
            and decider.decided == runner.log.committed_end("commands", 0)
            and driver._next[0] == runner.log.committed_end("events", 0))


async def _committed_to_the_end(runner: Runner) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while await runner.log.committed(COORDINATOR_GROUP, "events", 0) != runner.log.committed_end("events", 0):
        assert asyncio.get_running_loop().time() < deadline, "the coordinator's offset was never committed"
        await asyncio.sleep(0.01)


async def _rebuilt_picture(runner: Runner) -> object:
    views = fresh_views()
    await _observe_history(runner.log, views, "events", 0, runner.log.committed_end("events", 0))
    return _picture(views)


async def test_a_task_is_assigned_in_the_transaction_that_submits_it(tmp_path: Path) -> None:
    runner = Runner(_settings(tmp_path))
    await runner.start()
    try:
        await runner.ready()
        driver = runner.coordinator
        assert driver is not None
        agent = c.RegisterAgent(agent_id="a1", name="a1", capabilities=("x",), capacity=100)
        await runner.submit(command_envelope(agent))
        for i in range(20):
            await eventually(lambda: _quiet(runner))
            before = runner.log.transactions
            env = command_envelope(c.SubmitTask(task_id=f"t{i}", type="demo", required_capabilities=("x",)))
            await runner.submit(env)
            # No wait: the command, its decision, the assignment and its decision are committed.
            assert runner.log.transactions == before + 1
            assert _assigned(tmp_path).get(f"t{i}") == 1
            assert await runner.log.committed(COORDINATOR_GROUP, "events", 0) \
                == runner.log.committed_end("events", 0)

        # A command appended without its envelope is decided and coordinated the usual way, from
        # the log; the next one is coordinated in its transaction again.
        raw = command_envelope(c.SubmitTask(task_id="raw", type="demo", required_capabilities=("x",)))
        await runner.log.append("commands", [to_record(raw)])
        await eventually(lambda: _assigned(tmp_path).get("raw") == 1 and _quiet(runner))
        # The offset of the events it then read with nothing to append is committed all the same.
        await _committed_to_the_end(runner)
        before = runner.log.transactions
        await runner.submit(command_envelope(c.SubmitTask(task_id="next", type="demo",
                                                          required_capabilities=("x",))))
        assert runner.log.transactions == before + 1 and _assigned(tmp_path).get("next") == 1

        assert set(_assigned(tmp_path).values()) == {1}  # nothing assigned twice
        live = _picture(pickle.loads(pickle.dumps((driver.coordinators[0], driver.workflows[0],
                                                   driver.webhooks[0]))))
        assert await _rebuilt_picture(runner) == live  # the same views from the log
    finally:
        await runner.stop()


async def test_a_rolled_back_assignment_stops_the_service_and_a_restart_assigns_once(tmp_path: Path) -> None:
    """The file refuses the assignment's event: the transaction holding the command, its decision
    and the assignment rolls back, the command alone is then written (its caller is answered), and
    the service, whose views ran ahead of the log, stops rather than go on. A restart assigns the
    task once, from the log."""
    runner = Runner(_settings(tmp_path))
    await runner.start()
    env = command_envelope(c.SubmitTask(task_id="t-refused", type="demo", required_capabilities=("x",)))
    try:
        await runner.ready()
        agent = c.RegisterAgent(agent_id="a1", name="a1", capabilities=("x",), capacity=100)
        await runner.submit(command_envelope(agent))
        await eventually(lambda: _quiet(runner))
        other = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
        other.execute("CREATE TRIGGER refuse BEFORE INSERT ON records WHEN NEW.topic = 'events'"
                      " AND instr(CAST(NEW.value AS TEXT), '\"TaskAssigned\"') > 0"
                      " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
        _, offset, _ = await runner.submit(env)  # answered: the command is in the log
        await asyncio.wait_for(runner.failed.wait(), 10)
        assert "ahead of the log" in str(runner.failure)
        assert "t-refused" not in _assigned(tmp_path)
        other.execute("DROP TRIGGER refuse")
        other.close()
    finally:
        await runner.stop()

    again = Runner(_settings(tmp_path))
    await again.start()
    try:
        await again.ready()
        assert await again.wait_decided(0, offset, 10) is not None
        await eventually(lambda: _assigned(tmp_path).get("t-refused") == 1 and _quiet(again))
        assert set(_assigned(tmp_path).values()) == {1}
        driver = again.coordinator
        assert driver is not None
        live = _picture(pickle.loads(pickle.dumps((driver.coordinators[0], driver.workflows[0],
                                                   driver.webhooks[0]))))
        assert await _rebuilt_picture(again) == live
    finally:
        await again.stop()
