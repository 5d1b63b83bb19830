"""SQLite-specific behaviour of the log: group commit, lz4 storage, corruption, durability, crash."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from events import CorruptRecord, EventLog, LogError, Record, TransactionalLog, open_log
from events.sqlite import CODEC_LZ4, CODEC_RAW, COMMIT_ON_LOOP_MS, INLINE_ROWS, SqliteLog
from events.sqlite_writer import CommitPace, Pending, existing_ids_sql

ROOT = Path(__file__).resolve().parents[2]


# Every way a transaction is written: on the event loop, COMMIT included (small ones, the default,
# while COMMITs are quick); on the loop with its COMMIT on the writer's thread (always, with
# ``commit_on_loop_ms=0``); and wholly on the writer's thread (every one, with ``inline_rows=0``).
WRITER_OPTIONS = ["", "?commit_on_loop_ms=0", "?inline_rows=0"]
WRITER_IDS = ["inline", "commit-on-thread", "thread"]
WRITERS = pytest.mark.parametrize("option", WRITER_OPTIONS, ids=WRITER_IDS)


@pytest.fixture(params=WRITER_OPTIONS, ids=WRITER_IDS)
async def log(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[SqliteLog]:
    instance = SqliteLog(f"sqlite:///{tmp_path / 'log.db'}{request.param}")
    await instance.start()
    await instance.ensure_topic("t", 2)
    try:
        yield instance
    finally:
        await instance.close()


def stored(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def test_sqlite_is_an_event_log_that_dedupes_ids_but_not_a_transactional_log(tmp_path: Path) -> None:
    log = open_log(f"sqlite:///{tmp_path / 'log.db'}")
    assert isinstance(log, SqliteLog) and isinstance(log, EventLog)
    # One topic per append and no partition writers: no extra=, claim() or release().
    assert not isinstance(log, TransactionalLog)
    assert log.dedupes_ids is True


def test_urls_map_to_paths_and_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert SqliteLog("sqlite:///data/x.db").path == Path("data/x.db")
    assert SqliteLog("sqlite:////abs/x.db").path == Path("/abs/x.db")
    assert SqliteLog("sqlite:///x.db").synchronous == "FULL"
    assert SqliteLog("sqlite:///x.db?synchronous=normal").synchronous == "NORMAL"
    assert SqliteLog("sqlite:///x.db").inline_rows == INLINE_ROWS
    assert SqliteLog("sqlite:///x.db?synchronous=normal&inline_rows=0").inline_rows == 0
    assert SqliteLog("sqlite:///x.db")._pace.limit_s == COMMIT_ON_LOOP_MS / 1000
    assert SqliteLog("sqlite:///x.db?commit_on_loop_ms=0")._pace.limit_s == 0
    assert SqliteLog("sqlite:///x.db?commit_on_loop_ms=2.5")._pace.limit_s == 0.0025
    assert isinstance(open_log("sqlite:///x.db"), SqliteLog)
    for bad in ("sqlite://x.db", "sqlite:///:memory:", "sqlite:///x.db?cache=1", "sqlite:///",
                "sqlite:///x.db?inline_rows=-1", "sqlite:///x.db?inline_rows=lots", "sqlite:///x.db?inline_rows=",
                "sqlite:///x.db?commit_on_loop_ms=-1", "sqlite:///x.db?commit_on_loop_ms=1001",
                "sqlite:///x.db?commit_on_loop_ms=nan", "sqlite:///x.db?commit_on_loop_ms=soon",
                "sqlite:///x.db?commit_on_loop_ms="):
        with pytest.raises(ValueError):
            SqliteLog(bad)


async def test_relative_url_creates_parent_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    log = SqliteLog("sqlite:///nested/dir/log.db?synchronous=normal")
    await log.start()
    await log.start()  # idempotent
    try:
        await log.ensure_topic("t", 1)
        await log.append("t", [Record("k", b"v")])
    finally:
        await log.close()
    assert (tmp_path / "nested/dir/log.db").exists()
    assert stored(tmp_path / "nested/dir/log.db", "PRAGMA journal_mode") == [("wal",)]


async def test_using_the_log_before_start_is_a_clear_error(tmp_path: Path) -> None:
    log = SqliteLog(f"sqlite:///{tmp_path / 'log.db'}")
    with pytest.raises(RuntimeError, match="not started"):
        await log.append("t", [Record("k", b"v")])
    with pytest.raises(RuntimeError, match="not started"):
        await log.read("t", 0, 0)


async def test_group_commit_batches_concurrent_single_appends(log: SqliteLog) -> None:
    before = log.transactions
    results = await asyncio.gather(
        *(log.append("t", [Record("k", b"%d" % i)], partition=0) for i in range(200))
    )
    assert sorted(r[0].offset for r in results) == list(range(200))
    assert log.transactions - before <= 20, log.transactions - before


async def test_an_append_made_while_the_writer_wakes_joins_its_transaction(log: SqliteLog) -> None:
    before = log.transactions
    first = asyncio.ensure_future(log.append("t", [Record("k", b"a")], partition=0))
    await asyncio.sleep(0)  # the first append is queued and the writer woken
    second = asyncio.ensure_future(log.append("t", [Record("k", b"b")], partition=0))
    [[a], [b]] = await asyncio.gather(first, second)
    assert (a.offset, b.offset) == (0, 1)
    assert log.transactions - before == 1  # one commit (one fsync) for both


async def test_a_full_batch_is_written_without_waiting_a_turn_of_the_loop(log: SqliteLog) -> None:
    # More than INLINE_ROWS records waiting: the writer begins at once; an append made meanwhile
    # goes into the next transaction instead of holding this one back a whole turn of the loop.
    before = log.transactions
    first = asyncio.ensure_future(
        log.append("t", [Record("k", b"%d" % i) for i in range(INLINE_ROWS + 1)], partition=0))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(log.append("t", [Record("k", b"b")], partition=0))
    first_result, [b] = await asyncio.gather(first, second)
    assert [a.offset for a in first_result] == list(range(INLINE_ROWS + 1))
    assert b.offset == INLINE_ROWS + 1
    assert log.transactions - before == 2


async def test_one_failing_append_does_not_fail_the_others_in_its_batch(
    log: SqliteLog, tmp_path: Path
) -> None:
    with sqlite3.connect(tmp_path / "log.db") as conn:
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON records WHEN NEW.key = 'boom'"
            " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    keys = ["a", "b", "boom", "c", "d"]
    results = await asyncio.gather(
        *(log.append("t", [Record(k, k.encode())], partition=0) for k in keys),
        return_exceptions=True,
    )
    failed = results[2]
    assert isinstance(failed, LogError) and "disk on fire" in str(failed)
    ok = [r for i, r in enumerate(results) if i != 2]
    assert not any(isinstance(r, BaseException) for r in ok)
    assert [r.key for r in await log.read("t", 0, 0)] == ["a", "b", "c", "d"]
    # The writer survives and keeps numbering contiguously.
    assert (await log.append("t", [Record("e", b"e")], partition=0))[0].offset == 4


async def test_small_transactions_are_written_on_the_loop_and_large_ones_on_the_writers_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import events.sqlite_writer as sqlite_writer

    real = sqlite_writer.write_batch
    seen: list[tuple[int, bool]] = []

    def spy(conn: sqlite3.Connection, batch: list[Pending], *args: Any, **kwargs: Any) -> Any:
        seen.append((sum(item.size for item in batch), threading.current_thread() is threading.main_thread()))
        return real(conn, batch, *args, **kwargs)

    monkeypatch.setattr(sqlite_writer, "write_batch", spy)
    sizes = (1, INLINE_ROWS, INLINE_ROWS + 1)
    for option, expected in (("", [(1, True), (INLINE_ROWS, True), (INLINE_ROWS + 1, False)]),
                             ("?inline_rows=0", [(n, False) for n in sizes])):
        log = SqliteLog(f"sqlite:///{tmp_path / 'log.db'}{option}")
        await log.start()
        try:
            await log.ensure_topic("t", 1)
            seen.clear()
            for n in sizes:
                await log.append("t", [Record("k", b"%d" % i) for i in range(n)])
            assert seen == expected, option
        finally:
            await log.close()
    again = SqliteLog(f"sqlite:///{tmp_path / 'log.db'}")
    await again.start()
    try:  # both wrote one numbering, read back whole
        values = [r.value for r in await again.read("t", 0, 0, limit=1000)]
        assert values == [b"%d" % i for n in sizes for i in range(n)] * 2
    finally:
        await again.close()


async def test_a_small_transactions_commit_runs_on_the_loop_while_commits_are_quick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where each small transaction's COMMIT ran: on the loop by default; on the writer's thread with
    ``commit_on_loop_ms=0``; on the thread after COMMITs got slow (a disk whose fsync takes
    milliseconds, made here by a COMMIT that sleeps), and back on the loop once they are quick."""
    import threading

    import events.sqlite_writer as sqlite_writer

    real = sqlite_writer.commit
    places: list[bool] = []  # on the loop's thread
    slow = [0.0]

    def spy(conn: sqlite3.Connection) -> None:
        places.append(threading.current_thread() is threading.main_thread())
        time.sleep(slow[0])
        real(conn)

    monkeypatch.setattr(sqlite_writer, "commit", spy)

    async def commits(log: SqliteLog, n: int) -> list[bool]:
        places.clear()
        for i in range(n):
            await log.append("t", [Record("k", b"%d" % i)])
        return list(places)

    for option, on_loop in (("", True), ("?commit_on_loop_ms=0", False)):
        log = SqliteLog(f"sqlite:///{tmp_path / 'log.db'}{option}")
        await log.start()
        try:
            await log.ensure_topic("t", 1)
            assert await commits(log, 5) == [on_loop] * 5, option
        finally:
            await log.close()
    log = SqliteLog(f"sqlite:///{tmp_path / 'log.db'}")
    await log.start()
    try:
        assert await commits(log, 3) == [True] * 3
        slow[0] = 0.02  # 20 ms COMMITs: the first on the loop, and the mean is past 1 ms
        slowly = await commits(log, 6)
        assert slowly[0] is True and slowly[-1] is False, slowly
        slow[0] = 0.0
        quickly = await commits(log, 80)  # measured on the thread, the mean comes down
        assert quickly[0] is False and quickly[-1] is True, quickly
        assert log._pace.mean_s < COMMIT_ON_LOOP_MS / 1000
        assert [r.value for r in await log.read("t", 0, 0, limit=1000)][-89:] == [
            b"%d" % i for n in (3, 6, 80) for i in range(n)]
    finally:
        await log.close()


def test_the_commit_pace_is_a_running_mean_against_its_limit() -> None:
    pace = CommitPace(0.001, weight=0.5)
    assert pace.on_loop  # nothing measured yet
    pace.note(0.004)
    assert pace.mean_s == 0.002 and not pace.on_loop
    pace.note(0.0)
    assert pace.mean_s == 0.001 and not pace.on_loop  # at the limit: the thread
    pace.note(0.0)
    assert pace.on_loop
    assert not CommitPace(0.0).on_loop  # a limit of 0: never on the loop


async def test_an_append_waits_for_another_processs_write_lock_without_holding_up_the_loop(
    log: SqliteLog, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # as another process appending would
        append = asyncio.create_task(log.append("t", [Record("k", b"v")], partition=0))
        began = time.monotonic()
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert time.monotonic() - began < 2.0, "the loop waited in SQLite's busy handler"
        assert not append.done()
        other.execute("ROLLBACK")
    finally:
        other.close()
    [appended] = await asyncio.wait_for(append, 10)
    assert (appended.offset, [r.value for r in await log.read("t", 0, 0)]) == (0, [b"v"])


async def test_large_values_are_stored_lz4_compressed_and_read_back(
    log: SqliteLog, tmp_path: Path
) -> None:
    big = b'{"data":{"text":"' + b"agent output line; " * 500 + b'"}}'
    noise = os.urandom(4000)
    small = b'{"n":1}'
    await log.append("t", [Record("k", v) for v in (big, noise, small)], partition=0)
    assert [r.value for r in await log.read("t", 0, 0)] == [big, noise, small]
    rows = stored(
        tmp_path / "log.db", 'SELECT codec, length(value) FROM records ORDER BY "offset"'
    )
    assert rows[0][0] == CODEC_LZ4 and rows[0][1] < len(big) // 5  # type: ignore[operator]
    assert rows[1] == (CODEC_RAW, len(noise))  # incompressible: kept raw
    assert rows[2] == (CODEC_RAW, len(small))  # too small to bother


async def test_binary_header_values_round_trip(log: SqliteLog) -> None:
    headers = (("text", "é".encode()), ("bin", b"\xff\x00\xfe"), ("empty", b""))
    await log.append("t", [Record("k", b"v", headers=headers)], partition=1)
    assert (await log.read("t", 1, 0))[0].headers == headers


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


@pytest.mark.parametrize(
    ("value", "tamper", "reason"),
    [
        (b"x" * 100, lambda v, c: (flip(v, 50), c), "checksum"),
        (b"abc" * 1000, lambda v, c: (flip(v, len(v) // 2), c), ""),
        (b"abc" * 1000, lambda v, c: (v[:20], c), ""),
        (b"abc" * 1000, lambda v, c: (v + b"\0\0", c), ""),
        (b"x" * 100, lambda v, c: (v, 7), "unknown codec 7"),
        (b"x" * 100, lambda v, c: (v.decode(), c), ""),  # stored as TEXT by some other tool
    ],
    ids=["raw-flip", "lz4-flip", "lz4-truncated", "lz4-trailing", "codec", "text"],
)
async def test_a_damaged_stored_value_raises_corrupt_record_naming_its_position(
    tmp_path: Path, value: bytes, tamper: Callable[[bytes, int], tuple[object, int]], reason: str
) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    log = SqliteLog(url)
    await log.start()
    await log.ensure_topic("t", 2)
    await log.append("t", [Record("k", b"ok"), Record("k", value)], partition=1)
    await log.close()
    with sqlite3.connect(tmp_path / "log.db") as conn:
        where = 'WHERE "partition" = 1 AND "offset" = 1'
        [(raw, codec)] = conn.execute(f"SELECT value, codec FROM records {where}").fetchall()
        conn.execute(f"UPDATE records SET value = ?, codec = ? {where}", tamper(raw, codec))
    log = SqliteLog(url)
    await log.start()
    try:
        assert (await log.read("t", 1, 0, limit=1))[0].value == b"ok"
        with pytest.raises(CorruptRecord) as caught:
            await log.read("t", 1, 0)
        assert (caught.value.topic, caught.value.partition, caught.value.offset) == ("t", 1, 1)
        assert reason in caught.value.reason
        assert "t[1]@1" in str(caught.value)
        # Replay's narrower read checks the same way.
        assert await log.read_values("t", 1, 0, limit=1) == [(0, b"ok")]
        with pytest.raises(CorruptRecord) as caught:
            await log.read_values("t", 1, 0)
        assert (caught.value.topic, caught.value.partition, caught.value.offset) == ("t", 1, 1)
        assert reason in caught.value.reason
    finally:
        await log.close()


async def test_records_ids_and_offsets_survive_close_and_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    log = SqliteLog(url)
    await log.start()
    await log.ensure_topic("t", 2)
    await log.append("t", [Record("k", b"%d" % i, id=f"id-{i}") for i in range(10)], partition=0)
    await log.commit("g", "t", 0, 4)
    await log.close()

    log = SqliteLog(url)
    await log.start()
    try:
        assert await log.partitions("t") == 2
        assert [r.value for r in await log.read("t", 0, 0)] == [b"%d" % i for i in range(10)]
        assert await log.committed("g", "t", 0) == 4
        again = await log.append("t", [Record("k", b"x", id="id-3"), Record("k", b"y", id="new")],
                                 partition=0)
        assert [(a.offset, a.duplicate) for a in again] == [(3, True), (10, False)]
    finally:
        await log.close()


async def test_the_duplicate_check_looks_each_id_up_instead_of_walking_the_topic(log: SqliteLog,
                                                                                  tmp_path: Path) -> None:
    await log.append("t", [Record("k", b"v", id=f"id-{i}") for i in range(50)], partition=0)
    ids = ["id-7", "id-42", "absent"]
    plan = stored(tmp_path / "log.db", "EXPLAIN QUERY PLAN " + existing_ids_sql(len(ids)), "t", *ids)
    [(*_, detail)] = plan
    assert "records_topic_id (topic=? AND id=?)" in detail  # not "id>?": a walk of every id
    found = stored(tmp_path / "log.db", existing_ids_sql(len(ids)), "t", *ids)
    assert sorted(found) == [("id-42", 0, 42), ("id-7", 0, 7)]


async def test_close_flushes_queued_appends(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    log = SqliteLog(url)
    await log.start()
    await log.ensure_topic("t", 1)
    pending = [asyncio.create_task(log.append("t", [Record("k", b"%d" % i)])) for i in range(50)]
    await asyncio.sleep(0)  # all queued, none written yet
    await log.close()
    assert sorted(p.result()[0].offset for p in pending) == list(range(50))
    assert stored(tmp_path / "log.db", "SELECT COUNT(*) FROM records") == [(50,)]


async def test_two_logs_on_one_file_stay_contiguous_and_see_each_other(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    a, b = SqliteLog(url), SqliteLog(url)
    await a.start()
    await a.ensure_topic("t", 1)
    await b.start()
    try:
        # b only learns of a's commit by its low-frequency re-check of the file.
        waiter = asyncio.create_task(b.wait("t", 0, 0, timeout=5))
        subscription = b.subscribe("t", 0, 0)
        first = asyncio.create_task(anext(subscription))
        await asyncio.sleep(0.05)
        await a.append("t", [Record("k", b"0", id="0")])
        assert await asyncio.wait_for(waiter, 3) is True
        assert [r.value for r in await asyncio.wait_for(first, 3)] == [b"0"]
        await subscription.aclose()
        for i in range(1, 6):
            await (a if i % 2 == 0 else b).append("t", [Record("k", b"%d" % i, id=f"{i}")])
        assert [r.value for r in await a.read("t", 0, 0)] == [b"%d" % i for i in range(6)]
        dup = await a.append("t", [Record("k", b"again", id="5")])
        assert (dup[0].offset, dup[0].duplicate) == (5, True)
    finally:
        await a.close()
        await b.close()


CRASH_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from events.log import Record
    from events.sqlite import SqliteLog

    async def main() -> None:
        log = SqliteLog(sys.argv[1])
        await log.start()
        await log.ensure_topic("t", 2)

        async def writer(w: int) -> None:
            for i in range(1_000_000):
                rid = f"{w}-{i}"
                [pos] = await log.append("t", [Record(f"pool-{w}", rid.encode() * 40, id=rid)])
                print(rid, pos.partition, pos.offset, flush=True)

        await asyncio.gather(*(writer(w) for w in range(8)))

    asyncio.run(main())
    """
)


def complete_lines(output: bytes) -> list[bytes]:
    """The newline-terminated lines of ``output``; an unterminated last line is dropped."""
    return output.split(b"\n")[:-1]


def test_a_line_cut_by_the_kill_is_not_an_acknowledgement() -> None:
    assert complete_lines(b"0-249 0 249\n0-250") == [b"0-249 0 249"]
    assert complete_lines(b"0-249 0 249\n") == [b"0-249 0 249"]
    assert complete_lines(b"") == []


@pytest.mark.slow
@WRITERS
async def test_every_acknowledged_append_survives_kill_9(tmp_path: Path, option: str) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}{option}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # subprocess.Popen, not asyncio's: asyncio's child watcher loses the exit status when
    # anything else in the test process reaps children ("Unknown child process pid").
    proc = subprocess.Popen([sys.executable, "-c", CRASH_WRITER, url], stdout=subprocess.PIPE, env=env)  # noqa: ASYNC220
    assert proc.stdout is not None
    stdout = proc.stdout
    acked: dict[str, tuple[int, int]] = {}

    def ack(line: bytes) -> None:
        # A line is an acknowledgement only with its newline: the writer may be killed in the
        # middle of printing one, and "0-250" without the rest was never acknowledged.
        rid, partition, offset = line.decode().split()
        acked[rid] = (int(partition), int(offset))

    try:
        while len(acked) < 2000:
            line = await asyncio.wait_for(asyncio.to_thread(stdout.readline), 30)
            assert line.endswith(b"\n"), f"writer exited early with {proc.wait()}"
            ack(line)
        proc.send_signal(signal.SIGKILL)  # mid-way: 8 writers are appending right now
        rest = await asyncio.wait_for(asyncio.to_thread(stdout.read), 30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        stdout.close()
    assert proc.returncode == -signal.SIGKILL
    for line in complete_lines(rest):  # acknowledged before the kill landed
        ack(line)

    log = SqliteLog(url)
    await log.start()
    try:
        found: dict[str, tuple[int, int]] = {}
        for partition in range(2):
            records = await log.read("t", partition, 0, limit=1_000_000)
            assert [r.offset for r in records] == list(range(len(records)))
            for r in records:
                assert r.id is not None and r.id not in found
                assert r.value == r.id.encode() * 40
                found[r.id] = (partition, r.offset)
        for rid, position in acked.items():
            assert found.get(rid) == position, rid
    finally:
        await log.close()


async def test_a_cancelled_writer_fails_callers_instead_of_hanging(log: SqliteLog) -> None:
    await log.append("t", [Record("k", b"before")], partition=0)
    queued = [asyncio.create_task(log.append("t", [Record("k", b"q")])) for _ in range(3)]
    await asyncio.sleep(0)
    task = log._writer_task
    assert task is not None
    task.cancel()  # e.g. the loop shutting down without close()
    for pending in queued:
        with pytest.raises(LogError):
            await asyncio.wait_for(pending, 5)
    with pytest.raises(LogError, match="writer stopped"):
        await log.append("t", [Record("k", b"after")])
    assert [r.value for r in await log.read("t", 0, 0)] == [b"before"]


async def test_a_writer_cancelled_mid_transaction_settles_it_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction runs on in the writer's thread after a cancel: its callers get its outcome,
    and the offsets the log keeps agree with the file (the next start finds the same ends)."""
    import threading

    import events.sqlite_writer as sqlite_log

    entered, release = threading.Event(), threading.Event()
    real = sqlite_log.write_batch

    def held(*args: object, **kwargs: object) -> object:
        entered.set()
        release.wait(10)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    url = f"sqlite:///{tmp_path / 'log.db'}?inline_rows=0"  # the thread: a loop is not cancelled mid-call
    log = SqliteLog(url)
    await log.start()
    await log.ensure_topic("t", 1)
    monkeypatch.setattr(sqlite_log, "write_batch", held)
    in_flight = asyncio.create_task(log.append("t", [Record("k", b"in flight", id="a")]))
    assert await asyncio.to_thread(entered.wait, 10)
    writer = log._writer_task
    assert writer is not None
    writer.cancel()
    await asyncio.sleep(0.05)
    assert not writer.done(), "the writer stopped before its transaction ended"
    release.set()
    [appended] = await asyncio.wait_for(in_flight, 10)
    assert (appended.partition, appended.offset, appended.duplicate) == (0, 0, False)
    with pytest.raises(asyncio.CancelledError):
        await writer
    assert log._ends[("t", 0)] == 1
    monkeypatch.setattr(sqlite_log, "write_batch", real)
    await log.close()
    again = SqliteLog(url)
    await again.start()
    try:
        assert [r.value for r in await again.read("t", 0, 0)] == [b"in flight"]
        assert (await again.append("t", [Record("k", b"next")]))[0].offset == 1
    finally:
        await again.close()


# -- the hash chain --------------------------------------------------------------------------


def _expected_chain(values: list[bytes]) -> list[bytes]:
    from events.chain import GENESIS, link

    out, prev = [], GENESIS
    for v in values:
        prev = link(prev, v)
        out.append(prev)
    return out


async def test_every_record_carries_its_partitions_chain_across_restarts_and_processes(
    tmp_path: Path,
) -> None:
    from events.chain import verify_log

    db = tmp_path / "log.db"
    url = f"sqlite:///{db}"
    first = SqliteLog(url)
    await first.start()
    await first.ensure_topic("t", 2)
    big = b'{"v": "' + b"y" * 5000 + b'"}'  # stored lz4-compressed: the chain covers the original
    await first.append("t", [Record("a", b'{"n": 1}'), Record("a", big)], partition=0)
    await first.append("t", [Record("b", b'{"n": 2}')], partition=1)
    # A second process on the same file appends between two appends of the first.
    second = SqliteLog(url)
    await second.start()
    await second.append("t", [Record("a", b'{"n": 3}')], partition=0)
    await second.close()
    await first.append("t", [Record("a", b'{"n": 4}')], partition=0)
    await first.close()
    await first.start()  # restarted: the head is read back from the file
    await first.append("t", [Record("a", b'{"n": 5}')], partition=0)
    try:
        p0 = await first.read("t", 0, 0)
        codec = 'SELECT codec FROM records WHERE "offset" = 1 AND "partition" = 0'
        assert stored(db, codec) == [(CODEC_LZ4,)]
        assert [r.chain for r in p0] == _expected_chain([r.value for r in p0])
        assert [r.value for r in p0][1] == big
        p1 = await first.read("t", 1, 0)
        assert [r.chain for r in p1] == _expected_chain([b'{"n": 2}'])
        report = await verify_log(first, "t")
        head = p0[-1].chain
        assert report.ok and report.records == 6 and head is not None and report.heads[0] == head.hex()
    finally:
        await first.close()


async def test_a_log_written_before_chains_is_chained_in_place_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from events.chain import verify_log

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # the schema as it was before the chain column
        conn.executescript("""
            CREATE TABLE topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL, retention_ms INTEGER);
            CREATE TABLE records (topic TEXT NOT NULL, "partition" INTEGER NOT NULL,
                "offset" INTEGER NOT NULL, id TEXT, key TEXT NOT NULL, value BLOB NOT NULL,
                codec INTEGER NOT NULL, headers BLOB, crc INTEGER NOT NULL, ts INTEGER NOT NULL,
                PRIMARY KEY (topic, "partition", "offset")) WITHOUT ROWID;
            INSERT INTO topics VALUES ('t', 1, NULL);
        """)
        from zlib import crc32

        values = [b'{"n": %d}' % i for i in range(5)]
        conn.executemany(
            'INSERT INTO records (topic, "partition", "offset", id, key, value, codec, headers, crc, ts)'
            " VALUES ('t', 0, ?, NULL, 'k', ?, 0, NULL, ?, 0)",
            [(i, v, crc32(v)) for i, v in enumerate(values)])
    log = SqliteLog(f"sqlite:///{db}")
    with caplog.at_level("WARNING"):
        await log.start()
    try:
        assert "chained 5 records" in caplog.text
        assert [r.chain for r in await log.read("t", 0, 0)] == _expected_chain(values)
        await log.append("t", [Record("k", b'{"n": 5}')])
        assert (await verify_log(log, "t")).ok
    finally:
        await log.close()
    assert stored(db, "PRAGMA user_version") == [(1,)]
    caplog.clear()
    again = SqliteLog(f"sqlite:///{db}")
    with caplog.at_level("WARNING"):
        await again.start()  # already chained: nothing to do
    await again.close()
    assert "chained" not in caplog.text


# Another process asks for SQLite's "DMS" lock on the -shm file (byte 128: UNIX_SHM_DMS in SQLite's
# os_unix.c) in write mode. Every process with the database open holds it in read mode.
_TAKE_SHM = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)
except OSError:
    sys.exit(1)
sys.exit(0)
"""


def _take_shm(shm: Path) -> int:
    """1 when another process cannot take the -shm's DMS lock (someone holds the file), 0 when it can."""
    return subprocess.run([sys.executable, "-c", _TAKE_SHM, str(shm)], timeout=30).returncode


async def test_the_log_keeps_sqlites_locks_on_the_wal_index(tmp_path: Path) -> None:
    """SQLite's locks on the -shm file are POSIX locks, which a process loses, all of them, when it
    closes any descriptor it holds on that file. Another process then finds the file unused and
    resets it under this one's mapping (a SIGBUS at the next COMMIT), and readers' snapshots are no
    longer protected from checkpoints. So nothing here may open and close the -shm: after appends
    (and reads), another process still cannot take the lock every user of the file holds."""
    path = tmp_path / "log.db"
    log = SqliteLog(f"sqlite:///{path}")
    await log.start()
    try:
        await log.ensure_topic("t", 1)
        for i in range(50):
            await log.append("t", [Record("k", b"%d" % i)])
        assert len(await log.read("t", 0, 0, limit=100)) == 50
        took = await asyncio.to_thread(_take_shm, Path(f"{path}-shm"))
        assert took == 1, "another process took the -shm: this one's locks on it were dropped"
    finally:
        await log.close()
    # The check can succeed: with the file open by nobody, the other process takes the lock.
    shm = tmp_path / "log.db-shm"
    shm.touch()
    assert await asyncio.to_thread(_take_shm, shm) == 0
