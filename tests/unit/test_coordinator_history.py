"""The coordinator's rebuild from a real SQLite log: read in batches with the next one read ahead,
it folds in what one read would, and a corrupt record, even one read ahead, stops it naming its
position."""

from __future__ import annotations

from pathlib import Path

import pytest

import services.runtime.coordinator as driver
from contracts import Payload
from contracts import commands as c
from events import CorruptRecord, EventLog, Record, open_log
from events.codec import to_record
from services.coordination.coordinator import Assignment, Coordinator
from services.domain.decider import decide, evolve
from services.domain.envelopes import event_envelopes
from services.domain.state import PoolState
from services.runtime.ingest import command_envelope
from services.webhooks.reactor import WebhookReactor
from services.workflows.reactor import WorkflowReactor
from tests.unit.fleet import T0

EVENTS = "events"


async def _history(tmp_path: Path) -> EventLog:
    """Agents registered, tasks submitted, some assigned and completed: a pool with work queued."""
    log = open_log(f"sqlite:///{tmp_path}/log.db")
    await log.start()
    await log.ensure_topic(EVENTS, 1, retention_ms=-1)
    state = PoolState("default")
    commands: list[Payload] = [c.RegisterAgent(agent_id=f"a{i}", name="a", capabilities=("x",), capacity=2)
                               for i in range(3)]
    commands += [c.SubmitTask(task_id=f"t{i}", type="x", required_capabilities=("x",), priority=1 + i % 9)
                 for i in range(40)]
    commands += [c.AssignTask(task_id=f"t{i}", agent_id=f"a{i % 3}") for i in range(4)]
    commands += [c.CompleteTask(task_id=f"t{i}") for i in range(2)]
    for n, cmd in enumerate(commands):
        env = command_envelope(cmd, command_id=f"c{n}", time=T0)
        events = event_envelopes(env, decide(state, cmd), state)
        for ev in events:
            evolve(state, ev)
        await log.append(EVENTS, [to_record(x) for x in events])
    return log


def _decided(assignments: list[Assignment]) -> list[tuple[str, object]]:
    """Each assignment's id and command, the time its choice took (``decision_us``) left out."""
    out: list[tuple[str, object]] = []
    for a in assignments:
        audit = getattr(a.command, "audit", None)
        command = a.command if audit is None else a.command.model_copy(
            update={"audit": audit.model_copy(update={"decision_us": 0.0})})
        out.append((a.command_id, command))
    return out


def _views() -> tuple[Coordinator, WorkflowReactor, WebhookReactor]:
    return Coordinator(), WorkflowReactor(), WebhookReactor()


async def test_small_read_ahead_batches_rebuild_what_one_read_does(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    log = await _history(tmp_path)
    try:
        end = await log.end_offset(EVENTS, 0)
        for until in (end, end - 5, 17):
            whole = _views()
            await driver._observe_history(log, whole, EVENTS, 0, until)
            monkeypatch.setattr(driver, "HISTORY_BATCH", 3)
            batched = _views()
            await driver._observe_history(log, batched, EVENTS, 0, until)
            monkeypatch.undo()
            a, b = whole[0].schedule(), batched[0].schedule()
            assert a, "the history leaves work to assign"
            assert _decided(a) == _decided(b)
    finally:
        await log.close()


async def test_a_corrupt_record_read_ahead_names_its_position(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    log = await _history(tmp_path)
    try:
        [bad] = await log.append(EVENTS, [Record(key="default", value=b"{not json")])
        await log.append(EVENTS, [Record(key="default", value=b"{}")])
        monkeypatch.setattr(driver, "HISTORY_BATCH", 4)
        with pytest.raises(CorruptRecord) as caught:
            await driver._observe_history(log, _views(), EVENTS, 0, await log.end_offset(EVENTS, 0))
        assert (caught.value.topic, caught.value.partition, caught.value.offset) == (EVENTS, 0, bad.offset)
    finally:
        await log.close()
