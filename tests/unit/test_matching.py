"""``events.matching.read_matching`` on a real SQLite log: SQLite skips the unwanted records itself,
and what it returns is exactly what filtering every record in Python keeps (the path every other
log takes), for keys, event types, records without a type header, odd type names and windows."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import events.matching as matching
from contracts import SYSTEM_POOL
from events import FilteringLog, Record, StoredRecord
from events.matching import read_matching, wanted
from events.sqlite import SqliteLog

TOPIC = "events"
TYPES = ("TimerScheduled", "TimerFired", "TaskSubmitted", "Timer", 'Q"uote', "Ünïcode")


class _PlainLog:
    """A log without ``read_matching`` (the path Kafka takes): ``read`` and ``end_offset`` only."""

    def __init__(self, log: SqliteLog) -> None:
        self.log = log
        self.reads = 0

    async def read(self, topic: str, partition: int, offset: int, limit: int = 1000) -> list[StoredRecord]:
        self.reads += 1
        return await self.log.read(topic, partition, offset, limit)

    async def end_offset(self, topic: str, partition: int) -> int:
        return await self.log.end_offset(topic, partition)


def _record(rng: random.Random, i: int) -> Record:
    key = rng.choice(("system", "default", "p1", SYSTEM_POOL))
    shape = rng.random()
    if shape < 0.1:
        headers: tuple[tuple[str, bytes], ...] = ()  # no headers at all
    elif shape < 0.2:
        headers = (("ce_id", f"id{i}".encode()), ("ce_type", b"TimerFired"))  # type, but not first
    elif shape < 0.25:
        headers = (("ce_type", b"\xff\xfe"),)  # not UTF-8: stored base64, matches no name
    else:
        headers = (("ce_type", rng.choice(TYPES).encode()), ("ce_id", f"id{i}".encode()))
    return Record(key=key, value=f'{{"n":{i}}}'.encode(), id=f"r{i}", headers=headers)


async def _all(batches: AsyncIterator[list[StoredRecord]]) -> list[StoredRecord]:
    return [r async for b in batches for r in b]


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[SqliteLog]:
    log = SqliteLog(f"sqlite:///{tmp_path / 'log.db'}")
    await log.start()
    await log.ensure_topic(TOPIC, 1)
    rng = random.Random(7)
    for start in range(0, 3000, 500):
        await log.append(TOPIC, [_record(rng, i) for i in range(start, start + 500)], partition=0)
    try:
        yield log
    finally:
        await log.close()


CASES: list[dict[str, Any]] = [
    {},
    {"key": "system"},
    {"types": frozenset({"TimerScheduled", "TimerFired"})},
    {"types": frozenset({"Timer"})},  # a prefix of other names: matches exactly, not by prefix
    {"types": frozenset({'Q"uote', "Ünïcode"})},
    {"types": frozenset(), "key": "p1"},
    {"types": frozenset({"TaskSubmitted"}), "key": "default"},
    {"key": SYSTEM_POOL},  # through the partial index of the system pool's records
    {"types": frozenset({"TimerScheduled"}), "key": SYSTEM_POOL},
]


@pytest.mark.parametrize("case", CASES)
async def test_sqlite_keeps_what_filtering_every_record_keeps(log: SqliteLog, case: dict[str, Any],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(log, FilteringLog)
    monkeypatch.setattr(matching, "WINDOW", 700)  # several windows, none aligned with the appends
    monkeypatch.setattr(matching, "BATCH", 333)
    end = await log.end_offset(TOPIC, 0)
    every = await log.read(TOPIC, 0, 0, 10_000)
    plain = _PlainLog(log)
    assert not isinstance(plain, FilteringLog)
    for start, stop in ((0, end), (5, end - 3), (1234, 2500), (end, end)):
        expected = [r for r in every if start <= r.offset < stop and wanted(r, **case)]
        through_sqlite = await _all(read_matching(log, TOPIC, 0, start, stop, **case))
        through_reads = await _all(read_matching(plain, TOPIC, 0, start, stop, **case))  # type: ignore[arg-type]
        assert through_sqlite == expected
        assert through_reads == expected
    assert plain.reads > 0


async def test_sqlite_never_builds_the_records_it_skips(log: SqliteLog,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []
    to_stored = SqliteLog.read_matching.__globals__["_to_stored"]

    def counting(topic: str, partition: int, rows: Any) -> list[StoredRecord]:
        out: list[StoredRecord] = to_stored(topic, partition, rows)
        built.append(len(out))
        return out

    monkeypatch.setitem(SqliteLog.read_matching.__globals__, "_to_stored", counting)
    end = await log.end_offset(TOPIC, 0)
    got = await _all(read_matching(log, TOPIC, 0, 0, end, types=frozenset({"TimerScheduled"}), key="system"))
    assert got and all(r.key == "system" for r in got)
    # Only the kept records were built: the system pool's timers and its records without a type first.
    assert sum(built) == len(got) < end // 4


def _plan(path: Path, key: str) -> str:
    sql, args = SqliteLog.read_matching.__globals__["_matching_query"](TOPIC, 0, 0, 10**9, None, key)
    with sqlite3.connect(path) as conn:
        return " ".join(str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))


async def test_the_system_pools_records_are_read_from_their_index_which_an_older_log_gets(
        tmp_path: Path) -> None:
    """A start reads the system pool's records from the whole history (tokens, subscriptions):
    through the partial index of those records only, not a scan of the partition; a log made
    before the index existed gets it at its next start."""
    path = tmp_path / "log.db"
    log = SqliteLog(f"sqlite:///{path}")
    await log.start()
    await log.ensure_topic(TOPIC, 1)
    keys = ("default", SYSTEM_POOL, "default")
    await log.append(TOPIC, [Record(key=k, value=b"{}") for k in keys], partition=0)
    await log.close()
    assert "USING INDEX records_system" in _plan(path, SYSTEM_POOL)
    assert "records_system" not in _plan(path, "default")
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX records_system")  # as a log of an older version has it
    log = SqliteLog(f"sqlite:///{path}")
    await log.start()
    try:
        got = await _all(read_matching(log, TOPIC, 0, 0, 3, key=SYSTEM_POOL))
        assert [(r.offset, r.key) for r in got] == [(1, SYSTEM_POOL)]
    finally:
        await log.close()
    assert "USING INDEX records_system" in _plan(path, SYSTEM_POOL)


def test_the_rule_keeps_untyped_records_and_compares_the_first_type_header() -> None:
    rec = StoredRecord(TOPIC, 0, 0, "k", b"{}", None, (("ce_type", b"TimerFired"),), 0)
    assert wanted(rec, frozenset({"TimerFired"}), None)
    assert not wanted(rec, frozenset({"TimerScheduled"}), None)
    assert not wanted(rec, None, "other")
    assert wanted(StoredRecord(TOPIC, 0, 1, "k", b"{}", None, (), 0), frozenset(), None)
