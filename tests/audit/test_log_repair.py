"""A log with a bad record is repaired as the README says, and looking at a log never changes it.

Every log here is written by the real service (a ``Runner``) to a real SQLite file, then damaged or
altered the way someone holding the file would: a byte of a value changed without its crc32 (a
record that cannot be read back), a value edited with its crc32 fixed and the file marked as never
chained (so that the one-time chain migration would cover the edit). The commands run are the
real ``agentbus`` commands a user types.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import zlib
from pathlib import Path

import lz4.frame
import orjson
import pytest

from contracts import Envelope, new_id, utcnow
from contracts import commands as c
from contracts.event_types import TaskSubmitted
from events import LogError, Record, open_log
from events.chain import verify_log
from events.codec import to_record
from events.export import FORCED_IMPORT_TYPE, ImportFileError, export_log, import_log
from events.sqlite_chain import ChainConflict
from services.runtime.embedded import Runner
from services.runtime.ingest import command_envelope
from services.runtime.settings import ENV_PREFIX, Settings
from tests.audit.test_chain_verify import cli, history, one_byte_changed, put, rows


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings and the CLI read AGENTBUS_*; a developer's shell must not leak into the tests."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) and not name.startswith(f"{ENV_PREFIX}TEST_"):
            monkeypatch.delenv(name)


def offset_of(db: Path, type_: str) -> int:
    """The offset of the first event of ``type_`` in partition 0."""
    return next(at for at, value, *_ in rows(db, 0) if orjson.loads(value)["type"] == type_)


def damage(db: Path, offset: int) -> bytes:
    """Change one byte of the value at ``offset``, its crc32 left as it was: a record that cannot be
    read back. Returns the original value."""
    original = rows(db, 0)[offset][1]
    with sqlite3.connect(db) as conn:
        conn.execute('UPDATE records SET value = ? WHERE topic = \'events\' AND "partition" = 0'
                     ' AND "offset" = ?', (one_byte_changed(original), offset))
    return original


def lines_of(path: Path) -> list[bytes]:
    return lz4.frame.decompress(path.read_bytes()).splitlines()


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(lz4.frame.compress(b"\n".join(lines) + b"\n"))


def fingerprint(db: Path) -> tuple[int, str]:
    """The file's user_version and a digest of every stored row, read without writing."""
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        stored = conn.execute('SELECT * FROM records ORDER BY topic, "partition", "offset"').fetchall()
    return version, hashlib.sha256(repr(stored).encode()).hexdigest()


async def start_and_use(data: Path) -> None:
    """Start the service on ``data``, have it decide one more command, stop it."""
    runner = Runner(Settings(data_dir=data))
    await runner.start()
    try:
        await runner.ready()
        cmd = c.SubmitTask(task_id="after-repair", type="x", required_capabilities=("text",))
        partition, position, _ = await runner.submit(command_envelope(cmd))
        assert await runner.wait_decided(partition, position, 10) is not None
    finally:
        await runner.stop()


# -- repairing a log, end to end -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["correct", "remove"])
def test_a_record_that_cannot_be_read_is_repaired_as_the_readme_says(tmp_path: Path, how: str) -> None:
    data = history(tmp_path)
    db = data / "log.db"
    original = {at: value for at, value, *_ in rows(db, 0)}
    at = offset_of(db, "CostRecorded")  # removing it leaves a history the service can start from
    assert 0 < at < len(original) - 1
    damage(db, at)
    tail = cli("events", "tail", "--data-dir", str(data))
    assert tail.exit_code == 1 and f"corrupt record at events[0]@{at}" in tail.output

    # 1. The export copies every record as stored, the bad one included and marked.
    file = tmp_path / "events.lz4"
    exported = cli("events", "export", str(file), "--data-dir", str(data))
    assert exported.exit_code == 0, exported.output
    assert f"exported {len(original)} events" in exported.output
    lines = lines_of(file)
    assert len(lines) == len(original)
    marked = [i for i, line in enumerate(lines) if b'"chaincorrupt"' in line]
    assert marked == [at]
    assert b'"chaincorrupt":"ValueError: checksum mismatch"' in lines[at]
    assert one_byte_changed(original[at])[1:] in lines[at]  # the value as stored
    verified = cli("audit", "verify", "--file", str(file))
    assert verified.exit_code == 1
    assert f"FAILED at events[0]@{at}: line {at + 1}: the record could not be read" in verified.output
    # As exported, the bad record is refused, forced or not: the operator is to deal with it first.
    for force in ((), ("--force",)):
        refused = cli("events", "import", *force, str(file), "--data-dir", str(tmp_path / "refused"))
        assert refused.exit_code == 1 and f"line {at + 1}" in refused.output
        assert "still as exported" in refused.output

    # 2. Correct the line (dropping its mark) or remove it.
    if how == "correct":
        prefix = lines[at][:lines[at].index(b',"chaincorrupt"')]
        lines[at] = prefix + b"," + original[at][1:]
    else:
        del lines[at]
    write_lines(file, lines)

    # 3. Import into a new data directory; the removed line breaks the chain: --force, recorded.
    new = tmp_path / "new"
    if how == "remove":
        plain = cli("events", "import", str(file), "--data-dir", str(new))
        assert plain.exit_code == 1 and "the hash chain does not verify" in plain.output
    imported = cli("events", "import", *(("--force",) if how == "remove" else ()), str(file),
                   "--data-dir", str(new))
    assert imported.exit_code == 0, imported.output
    stored = [value for _, value, *_ in rows(new / "log.db", 0)]
    if how == "correct":
        assert stored == list(original.values())  # byte for byte: the log as it was
    else:
        assert stored[:-1] == [v for o, v in original.items() if o != at]
        note = orjson.loads(stored[-1])
        assert note["type"] == FORCED_IMPORT_TYPE and note["data"]["forced"] is True

    # 4. The new log verifies, replays and the service starts on it.
    verify = cli("audit", "verify", "--data-dir", str(new))
    assert verify.exit_code == 0 and "ok: the chain verifies" in verify.output, verify.output
    replay = cli("replay", "--data-dir", str(new))
    assert replay.exit_code == 0, replay.output
    asyncio.run(start_and_use(new))
    assert cli("audit", "verify", "--data-dir", str(new)).exit_code == 0


async def test_a_record_whose_value_cannot_be_rebuilt_is_exported_as_stored(tmp_path: Path) -> None:
    """A compressed value whose bytes are damaged cannot even be decompressed: its line holds the
    stored bytes (base64), and import refuses it until the line is removed."""
    def event(task_id: str, **data: str) -> Record:
        body = TaskSubmitted(task_id=task_id, type="x", priority=1, data=data)
        return to_record(Envelope(id=new_id(), type="TaskSubmitted", time=utcnow(), pool="default",
                                  data=body))

    log = open_log(f"sqlite:///{tmp_path / 'log.db'}")
    await log.start()
    try:
        await log.ensure_topic("events", 1)
        await log.append("events", [event("t0"), event("big", note="a" * 5000), event("t1"), event("t2")])
    finally:
        await log.close()
    with sqlite3.connect(tmp_path / "log.db") as conn:
        stored, codec = conn.execute('SELECT value, codec FROM records WHERE "offset" = 1').fetchone()
        assert codec == 1  # compressed
        conn.execute('UPDATE records SET value = ? WHERE "offset" = 1', (b"\xff" * len(stored),))
    log = open_log(f"sqlite:///{tmp_path / 'log.db'}", readonly=True)
    await log.start()
    try:
        file = tmp_path / "x.lz4"
        assert await export_log(log, "events", file) == 4
    finally:
        await log.close()
    lines = lines_of(file)
    assert b'"chainstored":"' in lines[1] and b'"chaincodec":1}' in lines[1]
    fresh = open_log(f"sqlite:///{tmp_path / 'new.db'}")
    await fresh.start()
    try:
        await fresh.ensure_topic("events", 1)
        with pytest.raises(ImportFileError, match="line 2: the record at partition 0, offset 1, could not"):
            await import_log(fresh, "events", file, force=True)
        del lines[1]
        write_lines(file, lines)
        result = await import_log(fresh, "events", file, force=True)
        assert result.appended == 3 and result.forced is not None
    finally:
        await fresh.close()


# -- looking at a log never changes it -------------------------------------------------------------


def tamper(db: Path, offset: int) -> None:
    """Edit the value at ``offset`` with its crc32 fixed, and mark the file as never chained."""
    put(db, 0, offset, one_byte_changed(rows(db, 0)[offset][1]))
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 0")


def test_reading_commands_never_chain_over_an_edit(tmp_path: Path) -> None:
    data = history(tmp_path)
    db = data / "log.db"
    at = len(rows(db, 0)) // 2
    tamper(db, at)
    before = fingerprint(db)
    assert before[0] == 0
    for args in (("replay",), ("events", "tail"), ("events", "export", str(tmp_path / "x.lz4")),
                 ("projections", "rebuild")):
        result = cli(*args, "--data-dir", str(data))
        assert result.exit_code == 0, (args, result.output)
        assert fingerprint(db) == before, f"`agentbus {' '.join(args)}` wrote to the log"
    verified = cli("audit", "verify", "--data-dir", str(data))
    assert verified.exit_code == 1 and f"events[0]@{at}" in verified.output
    assert fingerprint(db) == before
    # The evidence is still there: the stored chain value no longer matches the edited record.
    assert cli("audit", "verify", "--data-dir", str(data)).exit_code == 1


def test_audit_verify_only_reads_the_log(tmp_path: Path) -> None:
    # A file marked as never chained whose chain is intact: verify reports it as it is and leaves
    # the mark alone (opening for writing would set it); edited, verify names the record.
    data = history(tmp_path)
    db = data / "log.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 0")
    before = fingerprint(db)
    verified = cli("audit", "verify", "--data-dir", str(data))
    assert verified.exit_code == 0, verified.output
    assert fingerprint(db) == before
    at = len(rows(db, 0)) // 2
    tamper(db, at)
    before = fingerprint(db)
    failed = cli("audit", "verify", "--data-dir", str(data))
    assert failed.exit_code == 1 and f"events[0]@{at}" in failed.output and "FAILED" in failed.output, (
        failed.output)
    assert fingerprint(db) == before


def test_a_readonly_open_finds_the_edit_and_writes_nothing(tmp_path: Path) -> None:
    data = history(tmp_path)
    db = data / "log.db"
    at = len(rows(db, 0)) // 2
    tamper(db, at)
    before = fingerprint(db)

    async def look() -> None:
        log = open_log(f"sqlite:///{db}", readonly=True)
        await log.start()
        try:
            report = await verify_log(log, "events")
            assert report.mismatch is not None and report.mismatch.offset == at
            assert "does not match its chain" in report.mismatch.reason
            with pytest.raises(LogError, match="read-only"):
                await log.append("events", [Record("default", b'{"x": 1}')])
        finally:
            await log.close()
        with pytest.raises(LogError, match="no log in sqlite:///"):
            await open_log(f"sqlite:///{tmp_path / 'none.db'}", readonly=True).start()

    asyncio.run(look())
    assert fingerprint(db) == before
    assert not (tmp_path / "none.db").exists()


def test_opening_for_writing_refuses_to_chain_over_chain_values_that_differ(tmp_path: Path) -> None:
    data = history(tmp_path)
    db = data / "log.db"
    at = len(rows(db, 0)) // 2
    tamper(db, at)
    before = fingerprint(db)

    async def open_for_writing(path: Path) -> None:
        log = open_log(f"sqlite:///{path}")
        await log.start()
        await log.close()

    with pytest.raises(ChainConflict, match=rf"events\[0\]@{at} stores a chain value that differs"):
        asyncio.run(open_for_writing(db))
    assert fingerprint(db) == before
    # The service refuses to start on it, leaving it as it was.
    with pytest.raises(LogError, match="differs from the one its records give"):
        asyncio.run(start_and_use(data))
    assert fingerprint(db) == before

    # Marked as never chained but not edited: its chain values are kept, and the mark set again.
    clean = history(tmp_path / "clean")
    chains = [row[4] for row in rows(clean / "log.db", 0)]
    with sqlite3.connect(clean / "log.db") as conn:
        conn.execute("PRAGMA user_version = 0")
    asyncio.run(open_for_writing(clean / "log.db"))
    assert [row[4] for row in rows(clean / "log.db", 0)] == chains
    assert fingerprint(clean / "log.db")[0] == 1


async def test_a_log_not_yet_chained_is_reported_as_such_without_chaining_it(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # the schema as it was before the chain column
        conn.executescript("""
            CREATE TABLE topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL, retention_ms INTEGER);
            CREATE TABLE records (topic TEXT NOT NULL, "partition" INTEGER NOT NULL,
                "offset" INTEGER NOT NULL, id TEXT, key TEXT NOT NULL, value BLOB NOT NULL,
                codec INTEGER NOT NULL, headers BLOB, crc INTEGER NOT NULL, ts INTEGER NOT NULL,
                PRIMARY KEY (topic, "partition", "offset")) WITHOUT ROWID;
            CREATE TABLE consumer_offsets (grp TEXT NOT NULL, topic TEXT NOT NULL,
                "partition" INTEGER NOT NULL, "offset" INTEGER NOT NULL,
                PRIMARY KEY (grp, topic, "partition")) WITHOUT ROWID;
            INSERT INTO topics VALUES ('events', 1, NULL);
        """)
        values = [b'{"n": %d}' % i for i in range(3)]
        conn.executemany(
            'INSERT INTO records (topic, "partition", "offset", id, key, value, codec, headers, crc, ts)'
            " VALUES ('events', 0, ?, NULL, 'k', ?, 0, NULL, ?, 0)",
            [(i, v, zlib.crc32(v)) for i, v in enumerate(values)])
    before = fingerprint(db)
    log = open_log(f"sqlite:///{db}", readonly=True)
    await log.start()
    try:
        assert [r.value for r in await log.read("events", 0, 0)] == values
        report = await verify_log(log, "events")
        assert report.mismatch is not None and report.mismatch.offset == 0
        assert "carries no chain value" in report.mismatch.reason
        assert "has not been chained since" in report.mismatch.reason
    finally:
        await log.close()
    assert fingerprint(db) == before
    with sqlite3.connect(db) as conn:
        assert "chain" not in {row[1] for row in conn.execute("PRAGMA table_info(records)")}


# -- partial exports and imports out of order ------------------------------------------------------


def test_an_export_without_its_first_lines_neither_verifies_nor_imports(tmp_path: Path) -> None:
    data = history(tmp_path)
    file = tmp_path / "events.lz4"
    assert cli("events", "export", str(file), "--data-dir", str(data)).exit_code == 0
    cut = tmp_path / "cut.lz4"
    write_lines(cut, lines_of(file)[3:])
    verified = cli("audit", "verify", "--file", str(cut))
    assert verified.exit_code == 1 and "ok" not in verified.output.splitlines()[-1]
    assert "FAILED at events[0]@3: line 1: partition 0 starts at offset 3" in verified.output
    assert "offsets 0-2 are missing" in verified.output and "taken on trust" in verified.output
    new = tmp_path / "new"
    refused = cli("events", "import", str(cut), "--data-dir", str(new))
    assert refused.exit_code == 1 and "nothing imported" in refused.output
    assert rows(new / "log.db", 0) == []


def test_a_partial_export_does_not_import_into_an_empty_log_nor_out_of_order(tmp_path: Path) -> None:
    data = history(tmp_path)
    total = len(rows(data / "log.db", 0))
    full, part = tmp_path / "full.lz4", tmp_path / "part.lz4"
    assert cli("events", "export", str(full), "--data-dir", str(data)).exit_code == 0
    assert cli("events", "export", str(part), "--from", "5", "--data-dir", str(data)).exit_code == 0
    assert cli("audit", "verify", "--file", str(part)).exit_code == 0  # a --from export verifies alone

    new = tmp_path / "new"
    refused = cli("events", "import", str(part), "--data-dir", str(new))
    assert refused.exit_code == 1
    assert ("partition 0: the file starts at offset 5 (line 1) and the log's partition 0 is empty"
            in refused.output)
    assert rows(new / "log.db", 0) == []
    # In order, it is fine: the whole export, then the part it already holds.
    assert cli("events", "import", str(full), "--data-dir", str(new)).exit_code == 0
    again = cli("events", "import", str(part), "--data-dir", str(new))
    assert again.exit_code == 0 and f"({total - 5} already present)" in again.output
    assert cli("replay", "--data-dir", str(new)).exit_code == 0

    # Forced in first, the part leaves a log the whole export does not continue: refused.
    forced = tmp_path / "forced"
    assert cli("events", "import", "--force", str(part), "--data-dir", str(forced)).exit_code == 0
    after = cli("events", "import", str(full), "--data-dir", str(forced))
    assert after.exit_code == 1 and "do not continue the log" in after.output
    assert len(rows(forced / "log.db", 0)) == total - 5 + 1  # the part and the forced import's note


# -- exports that fail, and the nitpicks -----------------------------------------------------------


def test_an_export_that_cannot_be_written_fails_clearly_and_leaves_no_file(tmp_path: Path) -> None:
    data = history(tmp_path)
    nowhere = tmp_path / "no" / "such" / "x.lz4"
    result = cli("events", "export", str(nowhere), "--data-dir", str(data))
    assert result.exit_code == 1 and f"cannot write {nowhere}" in result.output
    assert not nowhere.parent.exists()
    end = len(rows(data / "log.db", 0))
    beyond = tmp_path / "beyond.lz4"
    result = cli("events", "export", str(beyond), "--from", "99999999", "--data-dir", str(data))
    assert result.exit_code == 1 and f"past the end of the log (partition 0 at offset {end})" in result.output
    assert not beyond.exists()
    at_end = cli("events", "export", str(beyond), "--from", str(end), "--data-dir", str(data))
    assert at_end.exit_code == 0 and "exported 0 events" in at_end.output  # up to date: nothing new
    empty = cli("events", "export", str(tmp_path / "e.lz4"), "--data-dir", str(tmp_path / "empty"))
    assert empty.exit_code == 1 and f"no log in sqlite:///{tmp_path / 'empty'}/log.db" in empty.output
    assert not (tmp_path / "e.lz4").exists() and not (tmp_path / "empty").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


async def test_a_failed_export_leaves_an_existing_file_as_it_was(tmp_path: Path) -> None:
    log = open_log(f"sqlite:///{tmp_path / 'log.db'}")
    await log.start()
    try:
        target = tmp_path / "x.lz4"
        target.write_bytes(b"a good export")
        with pytest.raises(LogError):
            await export_log(log, "no-such-topic", target)
        assert target.read_bytes() == b"a good export"
        with pytest.raises(LogError):
            await export_log(log, "no-such-topic", tmp_path / "new.lz4")
    finally:
        await log.close()
    assert sorted(name for name in os.listdir(tmp_path) if "lz4" in name) == ["x.lz4"]


def test_a_line_that_is_not_a_record_is_named_by_its_line(tmp_path: Path) -> None:
    data = history(tmp_path)
    file = tmp_path / "events.lz4"
    assert cli("events", "export", str(file), "--data-dir", str(data)).exit_code == 0
    lines = lines_of(file)
    write_lines(file, [*lines[:4], b"garbage", *lines[4:]])
    result = cli("audit", "verify", "--file", str(file))
    assert result.exit_code == 1
    assert "FAILED: line 5 (after events[0]@3) is not a record: not JSON" in result.output
    assert "@-1" not in result.output


def test_verify_from_past_the_end_of_the_log_says_where_it_ends(tmp_path: Path) -> None:
    data = history(tmp_path)
    end = len(rows(data / "log.db", 0))
    result = cli("audit", "verify", "--from", str(end + 1000), "--data-dir", str(data))
    assert result.exit_code == 1 and f"--from {end + 1000} is past the end of the log" in result.output, (
        result.output)
    assert f"0:{end}" in result.output
    for ok in (end - 1, end):  # the last record; the end itself (nothing new since a check there)
        assert cli("audit", "verify", "--from", str(ok), "--data-dir", str(data)).exit_code == 0
