"""Closing the read models releases SQLite's write lock, even while a task is still inside a write.

A runtime that stops and a second one that starts on the same file (a restart in the same process, or
the next process) must not wait behind a write transaction the first left open.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa

from projections import ProjectionStore
from projections import store as store_module
from projections.tables import positions


async def _stuck_writer(store: ProjectionStore, entered: asyncio.Event, release: asyncio.Event) -> None:
    """Write a row, then stay inside the transaction until ``release``, ignoring cancellation."""
    async with store.begin_write() as conn:
        await conn.execute(positions.insert().values(projector="p", topic="t", partition=0, next_offset=1))
        entered.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue


async def _a_second_store_writes_at_once(url: str) -> list[str]:
    """Write with a new store on ``url`` within 5 s, then read back the projectors of every position.

    Without the first store's clean-up the write waits out SQLite's 30 s busy timeout instead."""
    second = ProjectionStore(url)
    await second.start()
    try:
        async with asyncio.timeout(5):
            async with second.begin_write() as conn:
                await conn.execute(positions.insert().values(projector="q", topic="t", partition=0,
                                                             next_offset=2))
        async with second.engine.connect() as conn:
            return list((await conn.execute(sa.select(positions.c.projector))).scalars().all())
    finally:
        await second.close()


async def test_close_rolls_back_a_write_left_open_and_frees_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(store_module, "CLOSE_GRACE_S", 0.2)
    url = f"sqlite+aiosqlite:///{tmp_path / 'read.db'}"
    first = ProjectionStore(url)
    await first.start()
    entered, release = asyncio.Event(), asyncio.Event()
    stuck = asyncio.create_task(_stuck_writer(first, entered, release), name="stuck writer")
    await entered.wait()
    stuck.cancel()  # swallowed: the task stays inside its transaction

    with caplog.at_level(logging.WARNING, logger=store_module.__name__):
        await asyncio.wait_for(first.close(), 5)
    assert "task 'stuck writer' was inside a write transaction" in caplog.text

    try:
        # The stuck writer's row was rolled back, never committed.
        assert await _a_second_store_writes_at_once(url) == ["q"]
    finally:
        release.set()
        await asyncio.gather(stuck, return_exceptions=True)


async def test_close_closes_any_connection_still_checked_out_even_one_that_wrote_outside_a_write(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'read.db'}"
    first = ProjectionStore(url)
    await first.start()
    held = await first.engine.connect()  # never returned: a holder that was never stopped
    await held.execute(positions.insert().values(projector="p", topic="t", partition=0, next_offset=1))
    reader = await first.engine.connect()
    await reader.execute(sa.select(positions.c.projector))
    with caplog.at_level(logging.WARNING, logger=store_module.__name__):
        await asyncio.wait_for(first.close(), 5)
    assert caplog.text.count("held a connection: it is closed") == 2

    assert await _a_second_store_writes_at_once(url) == ["q"]


async def test_close_waits_for_a_write_that_ends_in_time(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'read.db'}"
    first = ProjectionStore(url)
    await first.start()
    entered, release = asyncio.Event(), asyncio.Event()
    writer = asyncio.create_task(_stuck_writer(first, entered, release))
    await entered.wait()
    closing = asyncio.create_task(first.close())
    await asyncio.sleep(0.1)
    assert not closing.done()  # waiting for the open transaction
    release.set()
    await asyncio.wait_for(asyncio.gather(writer, closing), 5)

    second = ProjectionStore(url)
    await second.start()
    try:
        async with second.engine.connect() as conn:
            rows = (await conn.execute(sa.select(positions.c.projector))).scalars().all()
        assert rows == ["p"]  # it committed before the close went on
        with pytest.raises(RuntimeError, match="not started"):
            async with first.begin_write():
                pass
    finally:
        await second.close()


async def test_a_cancelled_run_write_ends_its_transaction_before_it_stops_and_close_frees_the_file(
        tmp_path: Path) -> None:
    """``run_write`` on a SQLite file runs in the store's writer thread: a cancel cannot cut the
    transaction short, so the caller stops only once it has ended (here committed), and a close
    right after leaves the file free for the next store."""
    import threading

    url = f"sqlite+aiosqlite:///{tmp_path / 'read.db'}"
    first = ProjectionStore(url)
    await first.start()
    entered, release = threading.Event(), threading.Event()

    def write(conn: sa.Connection, projector: str) -> str:
        conn.execute(positions.insert().values(projector=projector, topic="t", partition=0, next_offset=1))
        entered.set()
        release.wait(10)
        return threading.current_thread().name

    assert (await first.run_write(write, "warm-up")).startswith("read-models-writer")  # not the loop's
    entered.clear()
    caller = asyncio.create_task(first.run_write(write, "p"))
    assert await asyncio.to_thread(entered.wait, 10)
    caller.cancel()
    await asyncio.sleep(0.05)
    assert not caller.done(), "the caller stopped while its transaction was still open"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await first.close()
    assert sorted(await _a_second_store_writes_at_once(url)) == ["p", "q", "warm-up"]


async def test_a_runtime_on_sqlite_writes_its_read_models_only_on_the_writer_thread(tmp_path: Path) -> None:
    """The projector, the snapshots and a reset all write through ``run_write``: on a SQLite file no
    async connection ever opens a write transaction, so none can be left holding the write lock
    (closed mid-statement, SQLite keeps such a connection and its lock until its cursor is
    garbage collected)."""
    from sqlalchemy import event

    from contracts import commands as c
    from services.runtime.embedded import Runner
    from services.runtime.ingest import command_envelope
    from services.runtime.settings import Settings

    runner = Runner(Settings(data_dir=tmp_path))
    async_writes: list[str] = []
    threaded_writes: list[str] = []

    writes = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "BEGIN IMMEDIATE")

    def _statement(conn: sa.Connection, _cursor: object, statement: str, *_: object) -> None:
        text = statement.lstrip()
        if text.upper().startswith(writes):  # every engine's, the start's included
            (async_writes if conn.dialect.driver == "aiosqlite" else threaded_writes).append(text)

    event.listen(sa.Engine, "before_cursor_execute", _statement)
    try:
        await runner.start()
        try:
            await runner.ready()
            for i in range(20):
                await runner.submit(command_envelope(c.RegisterAgent(agent_id=f"a{i}", name=f"a{i}",
                                                                     capabilities=("x",), capacity=1)))
            end = await runner.log.end_offset("events", 0)
            assert await runner.store.wait_for_position("events", 0, end - 1, timeout=10)
            assert runner.snapshots is not None
            await runner.snapshots.save("events", 0, end, None, b"{}")
            await runner.store.reset()
        finally:
            await runner.stop()
    finally:
        event.remove(sa.Engine, "before_cursor_execute", _statement)
    assert async_writes == []
    # The schema, the snapshots' table, the projector's applies, a snapshot, the reset.
    assert any(w.startswith("CREATE TABLE") for w in threaded_writes), threaded_writes
    assert any("decider_snapshots" in w and w.startswith("INSERT") for w in threaded_writes)
    assert any(w.startswith("DROP TABLE") for w in threaded_writes)
