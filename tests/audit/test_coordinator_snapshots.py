"""Coordinator snapshots (``services.runtime.coordinator_snapshots``) on real SQLite files, made by
the real snapshot process: a snapshot and the events after it rebuild what the whole log does, a
snapshot that does not check out is passed over with the reason, and the service writes them as
it goes and starts from the newest.

Whatever a snapshot is, the views it gives must be what folding the log from offset 0 gives: the
tests compare the assignments both would issue next and every task's status and holder.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import lz4.frame
import pytest
import sqlalchemy as sa

from contracts import commands as c
from contracts import event_types as e
from events import EventLog, open_log
from events.chain import chain_at
from events.codec import from_record, record_type
from projections import ProjectionStore
from services.runtime import coordinator as coordinator_module
from services.runtime import coordinator_snapshots as snaps
from services.runtime.coordinator import _observe_history
from services.runtime.coordinator_snapshots import (
    CODE_MODULES,
    CoordinatorSnapshots,
    Made,
    Views,
    fresh_views,
    make,
    table,
)
from services.runtime.embedded import Runner
from services.runtime.settings import Settings
from services.runtime.snapshots import SnapshotStore
from tests.audit.test_snapshots_runtime import run_workload, settle, workload
from tests.unit.test_coordinator_history import _decided
from tests.waiting import eventually

EVENTS = "events"
ROOT = Path(__file__).resolve().parents[2]


def _picture(views: Views) -> tuple[Any, ...]:
    """What the views would do next and what they hold of every task and agent."""
    coordinator = views[0]
    tasks = {(pool, t.task_id): (t.status, t.agent_id, t.assigned, t.rejected)
             for pool, v in coordinator.views.items() for t in v.tasks.values()}
    agents = {(pool, a.agent_id): (a.load, a.capacity, a.active)
              for pool, v in coordinator.views.items() for a in v.agents.values()}
    return tasks, agents, _decided(coordinator.schedule())


async def _snapshot_process(settings: Settings, store: CoordinatorSnapshots, position: int) -> Made:
    """The real snapshot process, run and stored as the service does it."""
    return await make(store, (settings.broker, settings.database), EVENTS, 0, position)


async def _history(tmp_path: Path) -> Settings:
    """The workload of the decider snapshot tests, decided and coordinated by the service."""
    settings = Settings(data_dir=tmp_path, coordinator_snapshot_every=0)
    async with Runner(settings, projector=False) as runner:
        await runner.ready()
        await run_workload(runner, workload(12))
        await settle(runner)
    return settings


async def _from_zero(log: EventLog, end: int) -> Views:
    views = fresh_views()
    await _observe_history(log, views, EVENTS, 0, end)
    return views


async def _open(settings: Settings) -> tuple[EventLog, ProjectionStore, CoordinatorSnapshots]:
    log = open_log(settings.broker)
    await log.start()
    db = ProjectionStore(settings.database)
    await db.start()
    store = SnapshotStore(db)
    await store.start()
    return log, db, CoordinatorSnapshots(store)


async def _committed_without_snapshots(settings: Settings) -> int:
    """The coordinator's committed position on a log with no coordinator snapshot stored."""
    log, db, store = await _open(settings)
    try:
        end = await log.committed("coordinator", EVENTS, 0)
        assert end > 10 and await store.rows(EVENTS, 0) == []
        return end
    finally:
        await db.close()
        await log.close()


async def _only_snapshot_is_the_whole_log(settings: Settings, end: int) -> None:
    """One coordinator snapshot is stored, at ``end``, and it holds what folding the log from 0 gives."""
    log, db, store = await _open(settings)
    try:
        rows = await store.rows(EVENTS, 0)
        assert [r.position for r in rows] == [end]
        found = await store.newest(log, EVENTS, 0, end)
        assert found is not None and found[0] == end
        whole = _picture(await _from_zero(log, end))
        assert _picture(found[1]) == whole
        assert whole[0], "no task in the history: nothing was compared"
    finally:
        await db.close()
        await log.close()


async def test_a_snapshot_and_the_events_after_it_rebuild_what_the_whole_log_does(tmp_path: Path) -> None:
    settings = await _history(tmp_path)
    log, db, store = await _open(settings)
    try:
        end = await log.end_offset(EVENTS, 0)
        first = await _snapshot_process(settings, store, end // 3)
        assert first.start == 0
        second = await _snapshot_process(settings, store, 2 * end // 3)
        assert second.start == end // 3, "the second one went on from the first"
        # Right after a submission (before its assignment) the views have work to assign.
        history = await log.read(EVENTS, 0, 0, end)
        submitted = [r.offset + 1 for r in history if record_type(r) == "TaskSubmitted"]
        points = [end // 3, next(o for o in submitted if o > end // 3),
                  next(o for o in submitted if o > 2 * end // 3), end]
        work = []
        for until in points:
            found = await store.newest(log, EVENTS, 0, until)
            assert found is not None
            position, views = found
            assert position == (end // 3 if until < 2 * end // 3 else 2 * end // 3)
            await _observe_history(log, views, EVENTS, 0, until, start=position)
            whole = _picture(await _from_zero(log, until))
            work.append(len(whole[2]))
            assert _picture(views) == whole
        assert any(work), "no point of the history left work to assign: nothing was compared"
    finally:
        await db.close()
        await log.close()


async def test_a_snapshot_that_does_not_check_out_is_passed_over_with_the_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = await _history(tmp_path)
    log, db, store = await _open(settings)
    try:
        end = await log.end_offset(EVENTS, 0)
        older = await _snapshot_process(settings, store, end // 2)
        newer = await _snapshot_process(settings, store, end)
        t = table.c
        spoilt: dict[str, dict[str, Any]] = {
            "written by other code": {"code": "0" * 64},
            "a corrupt body": {"sha256": "0" * 64},
            "but the log ends at": {"position": end + 1},
            "its chain value differs": {"chain": b"\x00" * 32},
        }
        for reason, change in spoilt.items():
            async with db.begin_write() as conn:
                original = (await conn.execute(sa.select(t.code, t.sha256, t.position, t.chain)
                                               .where(t.id == newer.id))).one()
                await conn.execute(table.update().where(t.id == newer.id).values(**change))
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="agentbus.coordinator_snapshots"):
                found = await store.newest(log, EVENTS, 0, end + 1)
            assert found is not None and found[0] == end // 2, reason  # the older one instead
            assert any(reason in r.getMessage() and f"snapshot {newer.id}" in r.getMessage()
                       for r in caplog.records), (reason, caplog.text)
            async with db.begin_write() as conn:
                await conn.execute(table.update().where(t.id == newer.id).values(
                    code=original[0], sha256=original[1], position=original[2], chain=original[3]))
        found = await store.newest(log, EVENTS, 0, end)
        assert found is not None and found[0] == end
        # Both refused: a rebuild from offset 0.
        async with db.begin_write() as conn:
            await conn.execute(table.update().values(code="0" * 64))
        assert await store.newest(log, EVENTS, 0, end) is None
        assert older.id != newer.id
    finally:
        await db.close()
        await log.close()


async def test_the_service_snapshots_its_coordinator_and_a_restart_folds_in_only_the_tail(
        tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, coordinator_snapshot_every=40)
    async with Runner(settings) as runner:
        await runner.ready()
        await run_workload(runner, workload(12))
        await settle(runner)
        assert runner.coordinator is not None
        driver = runner.coordinator
        await eventually(lambda: driver.snapshots_written >= 1 and not driver._snapshotting, timeout=60)
    log, db, store = await _open(settings)
    try:
        rows = await store.rows(EVENTS, 0)
        assert rows and rows[0].position >= 40
        committed = await log.committed("coordinator", EVENTS, 0)
        async with Runner(settings, projector=False) as again:
            await again.ready()
            assert again.coordinator is not None
            assert again.coordinator.rebuilt_from == {0: rows[0].position}
            # ... and it goes on assigning from there: a new agent takes a new task.
            await run_workload(again, [
                c.RegisterAgent(agent_id="late", name="late", capabilities=("late",)),
                c.SubmitTask(task_id="late-task", type="w", required_capabilities=("late",))])
            await settle(again)
            events = [from_record(r) for r in await again.log.read(EVENTS, 0, committed, 100_000)]
            assert [(x.data.task_id, x.data.agent_id) for x in events if isinstance(x.data, e.TaskAssigned)
                    and x.data.task_id == "late-task"] == [("late-task", "late")]
        assert committed > 0
    finally:
        await db.close()
        await log.close()


async def test_a_start_that_folded_in_many_events_stores_them_and_the_next_start_folds_in_none(
        tmp_path: Path) -> None:
    """A start folds in every event after the newest snapshot; when that was ``every`` events or
    more, it stores the views it made (copied in a forked child) at the position it reached. Those
    views rebuild what the whole log does, and the next start begins there."""
    settings = await _history(tmp_path)  # written with coordinator snapshots off: none stored
    end = await _committed_without_snapshots(settings)
    # Fewer events than ``every`` to fold in: nothing stored.
    few = settings.model_copy(update={"coordinator_snapshot_every": end + 1})
    async with Runner(few, projector=False) as runner:
        await runner.ready()
        assert runner.coordinator is not None and runner.coordinator.rebuilt_from == {0: 0}
        assert not runner.coordinator._snapshotting and runner.coordinator.snapshots_written == 0
    many = settings.model_copy(update={"coordinator_snapshot_every": end})
    async with Runner(many, projector=False) as runner:
        await runner.ready()
        driver = runner.coordinator
        assert driver is not None and driver.rebuilt_from == {0: 0}
        await eventually(lambda: driver.snapshots_written == 1 and not driver._snapshotting, timeout=60)
    await _only_snapshot_is_the_whole_log(settings, end)
    async with Runner(many, projector=False) as again:
        await again.ready()
        assert again.coordinator is not None and again.coordinator.rebuilt_from == {0: end}
        assert not again.coordinator._snapshotting  # nothing to fold in: nothing stored


async def test_a_start_with_many_events_to_fold_in_has_the_snapshot_process_fold_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``FOLD_ELSEWHERE_FROM`` events or more after the newest snapshot: the start has the snapshot
    process fold them in (on the other CPU, while its loop rebuilds the deciders), stores what it
    hands back at the committed position and starts there. Those views are what the whole log
    rebuilds; fewer events are folded in by the start itself, as before."""
    settings = await _history(tmp_path)  # written with coordinator snapshots off: none stored
    end = await _committed_without_snapshots(settings)
    # ``every`` above the history: a start that folded the events in itself would store nothing.
    every = settings.model_copy(update={"coordinator_snapshot_every": end + 1})
    monkeypatch.setattr(coordinator_module, "FOLD_ELSEWHERE_FROM", end + 1)
    async with Runner(every, projector=False) as runner:
        await runner.ready()
        assert runner.coordinator is not None and runner.coordinator.rebuilt_from == {0: 0}
        assert runner.coordinator.snapshots_written == 0
    monkeypatch.setattr(coordinator_module, "FOLD_ELSEWHERE_FROM", end)
    async with Runner(every, projector=False) as runner:
        await runner.ready()
        driver = runner.coordinator
        assert driver is not None and driver.rebuilt_from == {0: end} and driver.snapshots_written == 1
        assert not driver._snapshotting
    await _only_snapshot_is_the_whole_log(settings, end)


async def test_a_start_whose_snapshot_process_fails_folds_the_events_in_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    settings = await _history(tmp_path)
    every = settings.model_copy(update={"coordinator_snapshot_every": 1_000_000})
    monkeypatch.setattr(coordinator_module, "FOLD_ELSEWHERE_FROM", 1)

    async def failing(*args: Any, **kwargs: Any) -> Made:
        return await make(*args[:1], ("nothing://here", settings.database), *args[2:], **kwargs)

    monkeypatch.setattr(coordinator_module, "make", failing)
    with caplog.at_level(logging.WARNING, logger="agentbus.coordinator"):
        async with Runner(every, projector=False) as runner:
            await runner.ready()
            driver = runner.coordinator
            assert driver is not None and driver.rebuilt_from == {0: 0} and driver.snapshots_written == 0
            # ... and it goes on assigning: a new agent takes a new task.
            await run_workload(runner, [
                c.RegisterAgent(agent_id="late", name="late", capabilities=("late",)),
                c.SubmitTask(task_id="late-task", type="w", required_capabilities=("late",))])
            await settle(runner)
            events = [from_record(r) for r in await runner.log.read(EVENTS, 0, 0, 100_000)]
            assert [x.data.agent_id for x in events if isinstance(x.data, e.TaskAssigned)
                    and x.data.task_id == "late-task"] == ["late"]
    assert "did not fold in partition 0" in caplog.text and "exited with code 1" in caplog.text


def test_every_class_a_snapshot_holds_is_in_the_code_it_is_checked_against(tmp_path: Path) -> None:
    """``CODE`` digests ``CODE_MODULES``: a snapshot holding an object of a class defined elsewhere
    could be loaded by code where that class changed. Every object of real views is looked at."""

    async def views() -> Views:
        settings = await _history(tmp_path)
        log = open_log(settings.broker)
        await log.start()
        try:
            return await _from_zero(log, await log.end_offset(EVENTS, 0))
        finally:
            await log.close()

    modules: set[str] = set()

    class Looking(pickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            modules.add(type(obj).__module__)
            return NotImplemented

    Looking(io.BytesIO(), protocol=5).dump(asyncio.run(views()))
    covered = tuple(m.replace("/", ".").removesuffix(".py") for m in CODE_MODULES)
    ours = {m for m in modules if m.split(".")[0] in ("contracts", "services", "projections", "events")}
    assert ours, modules
    outside = [m for m in ours if not any(m == p or m.startswith(p + ".") for p in covered)]
    assert not outside, f"classes of these modules are in a snapshot but not in CODE: {outside}"
    assert snaps.CODE == snaps._code()


class _Runs:
    """An object whose unpickling would call a function: ``os.system`` on a command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> Any:
        return os.system, (self.command,)


async def test_a_body_naming_anything_but_the_views_classes_is_refused_before_it_runs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = await _history(tmp_path)
    log, db, store = await _open(settings)
    try:
        end = await log.end_offset(EVENTS, 0)
        proof = tmp_path / "ran"
        chain = await chain_at(log, EVENTS, 0, end)
        bodies = {
            "posix.system": (fresh_views()[0], _Runs(f"touch {proof}"), fresh_views()[2]),
            "subprocess.Popen": (fresh_views()[0], subprocess.Popen, fresh_views()[2]),
        }
        for named, views in bodies.items():
            body = lz4.frame.compress(pickle.dumps(views, protocol=5))
            row = await store.save(EVENTS, 0, end, chain, body)  # the right code, checksum and chain
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="agentbus.coordinator_snapshots"):
                assert await store.newest(log, EVENTS, 0, end) is None
            assert f"snapshot {row}" in caplog.text and f"it names {named}" in caplog.text, caplog.text
            assert not proof.exists(), "the snapshot ran a command"
        # The same views with nothing foreign in them load.
        await store.save(EVENTS, 0, end, chain, snaps.encode(await _from_zero(log, end)))
        found = await store.newest(log, EVENTS, 0, end)
        assert found is not None and found[0] == end
    finally:
        await db.close()
        await log.close()


def test_the_snapshot_process_runs_at_the_lowest_cpu_priority() -> None:
    code = ("import os; from services.runtime.coordinator_snapshotter import lowest_priority; "
            "print(lowest_priority(), os.sched_getscheduler(0) == os.SCHED_IDLE)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stdout.split() == ["SCHED_IDLE", "True"]


async def test_a_snapshot_process_that_fails_is_an_error_naming_its_exit_code(tmp_path: Path) -> None:
    settings = await _history(tmp_path)
    log, db, store = await _open(settings)
    try:
        with pytest.raises(RuntimeError, match="exited with code 1"):
            await make(store, ("nothing://here", settings.database), EVENTS, 0, 10)
        assert await store.rows(EVENTS, 0) == []
    finally:
        await db.close()
        await log.close()
