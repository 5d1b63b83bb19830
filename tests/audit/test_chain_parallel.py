"""Checking a chain on several cores gives the one-pass answer, and finds what it finds.

The logs are written by the real service to a real SQLite file (``write_history`` of the verify
tests) and altered as someone holding the file would. The ranges are made tiny (the thresholds
are lowered) so that a short history is split across real worker processes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import lz4.frame
import pytest

from events import chain_parallel, open_log
from events.chain import ChainReport, verify_export, verify_log
from events.chain_parallel import check_export, check_sqlite
from events.export import export_log
from tests.audit.test_chain_verify import cli, history, one_byte_changed, pool_in, put, rows, verify_json

PROCESSES = 3


@pytest.fixture(autouse=True)
def _small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chain_parallel, "MIN_PARALLEL", 1)
    monkeypatch.setattr(chain_parallel, "MIN_PARALLEL_EXPORT_BYTES", 1)
    # An export is read in pieces this small: many chunks, taken in turn by the workers.
    monkeypatch.setattr(chain_parallel, "READ_BYTES", 700)


def one_pass(check: Callable[[], ChainReport]) -> ChainReport:
    """``check()`` with the range check switched off: the one-pass check's report."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(chain_parallel, "MIN_PARALLEL", 10**12)
        m.setattr(chain_parallel, "MIN_PARALLEL_EXPORT_BYTES", 10**15)
        return check()


def verify(data: Path, processes: int, want: frozenset[tuple[int, int]] = frozenset()) -> ChainReport:
    async def run() -> ChainReport:
        log = open_log(f"sqlite:///{data / 'log.db'}")
        await log.start()
        try:
            return await verify_log(log, "events", processes=processes, want=want)
        finally:
            await log.close()
    return asyncio.run(run())


def export_to(data: Path, export: Path) -> None:
    """``agentbus events export`` of the history's events topic to ``export``."""
    async def write() -> None:
        log = open_log(f"sqlite:///{data / 'log.db'}")
        await log.start()
        try:
            await export_log(log, "events", export)
        finally:
            await log.close()
    asyncio.run(write())


def same(a: ChainReport, b: ChainReport) -> None:
    fields = ("ok", "records", "heads", "ends", "mismatch", "at")
    assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]


def test_a_log_checked_in_ranges_gives_the_one_pass_report(tmp_path: Path) -> None:
    data = history(tmp_path, per_pool=30)
    db = data / "log.db"
    total = len(rows(db, 0))
    head = rows(db, 0)[-1][4]
    # The ranges really run in workers, and together reach the end.
    assert asyncio.run(check_sqlite(str(db), "events", 0, 0, total, bytes(32), PROCESSES)) == (total, head)
    for processes in (PROCESSES, 1):
        many = verify(data, processes)
        assert many.ok and many.records == total and many.heads[0] == head.hex()
        same(many, one_pass(lambda: verify(data, 1)))


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_an_edit_in_any_range_is_found_at_its_offset(tmp_path: Path, where: float) -> None:
    data = history(tmp_path, per_pool=30)
    db = data / "log.db"
    records = rows(db, 0)
    total, at = len(records), int(len(records) * where)
    put(db, 0, at, one_byte_changed(records[at][1]))
    bounds = [total * k // PROCESSES for k in range(PROCESSES + 1)]
    range_start = max(b for b in bounds if b <= at)
    # The workers stop at the range that holds the edit; the one-pass check names the record.
    checked_to, head = asyncio.run(check_sqlite(str(db), "events", 0, 0, total, bytes(32), PROCESSES))
    assert checked_to == range_start
    assert head == (bytes(32) if range_start == 0 else records[range_start - 1][4])
    for processes in (PROCESSES, 1):
        many = verify(data, processes)
        assert many.mismatch is not None and many.mismatch.offset == at
        same(many, one_pass(lambda: verify(data, 1)))


def test_a_deleted_record_is_named_at_its_own_offset(tmp_path: Path) -> None:
    data = history(tmp_path, per_pool=30)
    db = data / "log.db"
    total = len(rows(db, 0))
    with sqlite3.connect(db) as conn:
        conn.execute('DELETE FROM records WHERE topic = \'events\' AND "partition" = 0 AND "offset" = ?',
                     (total // 2,))
    many = verify(data, PROCESSES)
    assert many.mismatch is not None and many.mismatch.offset == total // 2
    same(many, one_pass(lambda: verify(data, 1)))


def test_a_range_short_of_its_last_record_does_not_pass(tmp_path: Path) -> None:
    # Every record left in the first range matches its chain: only its count gives it away.
    data = history(tmp_path, per_pool=30)
    db = data / "log.db"
    total = len(rows(db, 0))
    first_end = total // PROCESSES
    with sqlite3.connect(db) as conn:
        conn.execute('DELETE FROM records WHERE topic = \'events\' AND "partition" = 0 AND "offset" = ?',
                     (first_end - 1,))
    assert asyncio.run(check_sqlite(str(db), "events", 0, 0, total, bytes(32), PROCESSES))[0] == 0
    many = verify(data, PROCESSES)
    assert many.mismatch is not None and many.mismatch.offset == first_end - 1
    same(many, one_pass(lambda: verify(data, 1)))


def test_an_export_checked_in_ranges_gives_the_one_pass_report(tmp_path: Path) -> None:
    data = history(tmp_path, partitions=2, per_pool=20, pools=(pool_in(0, 2), pool_in(1, 2)))
    export = tmp_path / "events.ndjson.lz4"
    export_to(data, export)
    # Many chunks, so that every worker takes several, each starting from another's last line.
    assert len(list(chain_parallel._chunks(str(export), chain_parallel.READ_BYTES))) > 3 * PROCESSES
    for processes in (PROCESSES, 1):
        checked = check_export(export, processes)
        assert checked is not None
        segments = checked[0]
        assert [s.partition for s in segments] == [0, 1]
        assert [s.records for s in segments] == [len(rows(data / "log.db", p)) for p in (0, 1)]
        many = verify_export(export, processes=processes)
        assert many.ok
        same(many, one_pass(lambda: verify_export(export, processes=1)))

    # One edited line, in each third of the file: no verdict from the workers, the one-pass check
    # names the line.
    lines = lz4.frame.decompress(export.read_bytes()).split(b"\n")
    for number in (1, len(lines) // 2, len(lines) - 2):
        edited = list(lines)
        edited[number] = one_byte_changed(edited[number])
        tampered = tmp_path / f"tampered-{number}.ndjson.lz4"
        tampered.write_bytes(lz4.frame.compress(b"\n".join(edited)))
        assert check_export(tampered, PROCESSES) is None and check_export(tampered, 1) is None
        many = verify_export(tampered, processes=PROCESSES)
        assert many.mismatch is not None and f"line {number + 1}:" in many.mismatch.reason
        same(many, one_pass(lambda t=tampered: verify_export(t, processes=1)))  # type: ignore[misc]


def test_an_export_in_several_frames_verifies_and_one_cut_short_gets_no_verdict(tmp_path: Path) -> None:
    data = history(tmp_path, per_pool=20)
    export = tmp_path / "events.ndjson.lz4"
    export_to(data, export)
    text = lz4.frame.decompress(export.read_bytes())
    half = text.index(b"\n", len(text) // 2) + 1
    framed = tmp_path / "frames.ndjson.lz4"  # two frames, one after the other, as `cat a b` makes
    framed.write_bytes(lz4.frame.compress(text[:half]) + lz4.frame.compress(text[half:]))
    for processes in (PROCESSES, 1):
        assert check_export(framed, processes) is not None
        same(verify_export(framed, processes=processes), one_pass(lambda: verify_export(export, processes=1)))

    cut = tmp_path / "cut.ndjson.lz4"
    cut.write_bytes(export.read_bytes()[: len(export.read_bytes()) * 2 // 3])
    for processes in (PROCESSES, 1):
        assert check_export(cut, processes) is None
        report = verify_export(cut, processes=processes)
        assert report.mismatch is not None and "not a complete lz4 frame file" in report.mismatch.reason


def test_wanted_chain_values_are_the_one_pass_ones(tmp_path: Path) -> None:
    """Checkpoint checks ask for the chain value at given records: the ranges answer them too."""
    data = history(tmp_path, partitions=2, per_pool=20, pools=(pool_in(0, 2), pool_in(1, 2)))
    records = {p: rows(data / "log.db", p) for p in (0, 1)}
    want = frozenset({(0, 0), (0, len(records[0]) // 2), (1, len(records[1]) - 1), (1, 10**6)})
    for processes in (PROCESSES, 1):
        report = verify(data, processes, want)
        assert report.at == {(p, o): records[p][o][4].hex() for p, o in want if o < len(records[p])}
        same(report, one_pass(lambda: verify(data, 1, want)))
    export = tmp_path / "events.ndjson.lz4"
    export_to(data, export)
    for processes in (PROCESSES, 1):
        checked = check_export(export, processes, want)
        assert checked is not None and len(checked[1]) == 3
        same(verify_export(export, want=want, processes=processes),
             one_pass(lambda: verify_export(export, want=want, processes=1)))


def test_checks_at_the_same_time_share_the_cores_and_agree(tmp_path: Path) -> None:
    """One check at a time spreads over worker processes; one that comes meanwhile (another HTTP
    request) checks in its own process instead of starting more: the answers are the same."""
    data = history(tmp_path, per_pool=30)

    async def both() -> list[ChainReport]:
        log = open_log(f"sqlite:///{data / 'log.db'}")
        await log.start()
        try:
            checks = (verify_log(log, "events", processes=PROCESSES) for _ in range(3))
            return list(await asyncio.gather(*checks))
        finally:
            await log.close()
    reports = asyncio.run(both())
    reference = one_pass(lambda: verify(data, 1))
    for report in reports:
        same(report, reference)


def test_the_cli_takes_how_many_processes_to_check_with(tmp_path: Path) -> None:
    data = history(tmp_path, per_pool=30)
    total = len(rows(data / "log.db", 0))
    for processes in ("1", str(PROCESSES)):
        code, report = verify_json("--data-dir", str(data), "--processes", processes)
        assert code == 0 and report["ok"] is True and report["records"] == total
    put(data / "log.db", 0, total // 2, one_byte_changed(rows(data / "log.db", 0)[total // 2][1]))
    code, report = verify_json("--data-dir", str(data), "--processes", str(PROCESSES))
    assert code == 1 and report["failure"]["offset"] == total // 2
    refused = cli("audit", "verify", "--data-dir", str(data), "--processes", "0")
    assert refused.exit_code == 2 and "--processes" in refused.output
