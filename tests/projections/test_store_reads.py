"""``ProjectionStore.run_read``: a query's statements in one read transaction, on a SQLite file in
one hand-off to a reader thread (never through the async driver), and a read in flight is waited
for, by its cancelled caller and by ``close``.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from projections import ProjectionStore, queries
from projections.tables import positions


def _add(conn: sa.Connection, projector: str) -> None:
    conn.execute(positions.insert().values(projector=projector, topic="t", partition=0, next_offset=1))


def _count(conn: sa.Connection) -> int:
    return int(conn.scalar(sa.select(sa.func.count()).select_from(positions)) or 0)


async def test_a_read_on_sqlite_is_one_transaction_a_write_committed_meanwhile_does_not_show_in_it(
        tmp_path: Path) -> None:
    """On SQLite (WAL) a read transaction keeps the snapshot of its first statement, so the total and
    the page of ``list_tasks`` agree. (PostgreSQL's reads run under READ COMMITTED, as before.)"""
    store = ProjectionStore(f"sqlite+aiosqlite:///{tmp_path / 'read.db'}")
    await store.start()
    try:
        await store.run_write(_add, "before")
        first_done, written = threading.Event(), threading.Event()

        def read(conn: sa.Connection) -> tuple[int, int]:
            first = _count(conn)
            first_done.set()
            assert written.wait(10)
            return first, _count(conn)

        reading = asyncio.create_task(store.run_read(read))
        assert await asyncio.to_thread(first_done.wait, 10)
        await store.run_write(_add, "meanwhile")  # commits while the read is between its statements
        written.set()
        assert await reading == (1, 1)
        assert await store.run_read(_count) == 2
    finally:
        await store.close()


async def test_reads_on_a_sqlite_file_run_on_a_reader_thread_and_never_through_the_async_driver(
        tmp_path: Path) -> None:
    store = ProjectionStore(f"sqlite+aiosqlite:///{tmp_path / 'read.db'}")
    await store.start()
    drivers: list[str] = []

    def _statement(conn: sa.Connection, *_: object) -> None:
        drivers.append(conn.dialect.driver)

    event.listen(sa.Engine, "before_cursor_execute", _statement)
    try:
        assert (await store.run_read(lambda conn: threading.current_thread().name)).startswith(
            "read-models-reader")
        assert await queries.get_task(store, "default", "t-1") is None
        assert await queries.list_tasks(store, "default") == {"items": [], "page": 1, "page_size": 50,
                                                              "total": 0}
        assert (await queries.capacity(store, "default"))["agents"]["total"] == 0
    finally:
        event.remove(sa.Engine, "before_cursor_execute", _statement)
        await store.close()
    assert drivers and set(drivers) == {"pysqlite"}, drivers


async def test_a_point_read_on_sqlite_is_its_select_alone_and_a_read_keeps_its_transaction(
        tmp_path: Path) -> None:
    """``run_statement`` (every one-statement query: a task by id, a page) sends the SELECT alone,
    no BEGIN and no ROLLBACK around it; ``run_read`` (several statements) still begins one
    transaction, and a point read made meanwhile neither waits for it nor changes it."""
    store = ProjectionStore(f"sqlite+aiosqlite:///{tmp_path / 'read.db'}")
    await store.start()
    sent: list[str] = []

    def _statement(conn: sa.Connection, cursor: object, statement: str, *_: object) -> None:
        if threading.current_thread().name.startswith("read-models-reader"):  # not the writes
            sent.append(statement.split()[0].upper())

    try:
        await store.run_write(_add, "before")
        event.listen(sa.Engine, "before_cursor_execute", _statement)
        assert await queries.get_task(store, "default", "t-1") is None
        assert sent == ["SELECT"]
        sent.clear()
        first_done, read_meanwhile = threading.Event(), threading.Event()

        def read(conn: sa.Connection) -> tuple[int, int]:
            first = _count(conn)
            first_done.set()
            assert read_meanwhile.wait(10)
            return first, _count(conn)

        reading = asyncio.create_task(store.run_read(read))
        assert await asyncio.to_thread(first_done.wait, 10)
        await store.run_write(_add, "meanwhile")
        assert await store.run_statement(_count) == 2  # the point read sees the commit at once
        read_meanwhile.set()
        assert await reading == (1, 1)  # the transaction keeps its snapshot
        assert sent == ["BEGIN", "SELECT", "SELECT", "SELECT"]  # the read's, the point read's, the read's
    finally:
        event.remove(sa.Engine, "before_cursor_execute", _statement)
        await store.close()


async def test_a_failing_read_raises_and_gives_its_connection_back(store: ProjectionStore) -> None:
    def broken(conn: sa.Connection) -> None:
        conn.execute(sa.text("SELECT * FROM no_such_table"))

    for _ in range(30):  # more than the pool holds: a connection kept by a failure would run out
        with pytest.raises(sa.exc.DBAPIError):
            await asyncio.wait_for(store.run_read(broken), 10)
    assert await asyncio.wait_for(store.run_read(_count), 10) == 0


async def test_a_cancelled_read_ends_before_its_caller_stops_and_close_waits(tmp_path: Path) -> None:
    store = ProjectionStore(f"sqlite+aiosqlite:///{tmp_path / 'read.db'}")
    await store.start()
    entered, release = threading.Event(), threading.Event()

    def slow(conn: sa.Connection) -> int:
        count = _count(conn)
        entered.set()
        release.wait(10)
        return count

    caller = asyncio.create_task(store.run_read(slow))
    assert await asyncio.to_thread(entered.wait, 10)
    caller.cancel()
    await asyncio.sleep(0.05)
    assert not caller.done(), "the caller stopped while its read still ran on the thread"
    entered.clear()
    second = asyncio.create_task(store.run_read(slow))
    assert await asyncio.to_thread(entered.wait, 10)  # the other reader thread
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0.1)
    assert not closing.done(), "close went on while reads were running"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert await second == 0
    await asyncio.wait_for(closing, 5)
    with pytest.raises(RuntimeError, match="not started"):
        await store.run_read(_count)
