"""Export/import of lz4-frame NDJSON files, over every log backend."""

from __future__ import annotations

from pathlib import Path

import lz4.frame  # type: ignore[import-untyped]
import orjson
import pytest

from contracts import Envelope, new_id, utcnow
from contracts.event_types import TaskSubmitted
from events import EventLog
from events.chain import parse_line, verify_export, verify_log
from events.codec import encode, to_record
from events.export import FORCED_IMPORT_TYPE, ImportFileError, ImportResult, export_log, import_log


def event(i: int, pool: str) -> Envelope:
    data = TaskSubmitted(task_id=f"task-{i}", type="build", priority=i % 3)
    return Envelope(id=new_id(), type="TaskSubmitted", time=utcnow(), pool=pool, data=data)


async def fill(log: EventLog, topic: str, n: int = 60) -> None:
    await log.ensure_topic(topic, 3)
    pools = ["default", "gpu", "cpu", "edge"]
    await log.append(topic, [to_record(event(i, pools[i % 4])) for i in range(n)])


async def values(log: EventLog, topic: str) -> list[list[bytes]]:
    return [
        [r.value for r in await log.read(topic, p, 0, limit=10_000)]
        for p in range(await log.partitions(topic))
    ]


async def test_export_then_import_reproduces_every_partition(
    log: EventLog, topic: str, tmp_path: Path
) -> None:
    await fill(log, topic)
    path = tmp_path / "events.ndjson.lz4"
    ticks: list[int] = []
    assert await export_log(log, topic, path, progress=ticks.append) == 60
    assert sum(ticks) == 60
    # Any tool can read it: lz4 frame around one CloudEvents JSON object per line.
    lines = lz4.frame.decompress(path.read_bytes()).splitlines()
    assert len(lines) == 60 and all(orjson.loads(line)["specversion"] == "1.0" for line in lines)
    # Each line is the stored value with its chain value in front; stripping it gives the bytes back.
    originals = [v for part in await values(log, topic) for v in part]
    assert [parse_line(line).value for line in lines] == originals
    stored = [r for p in range(3) for r in await log.read(topic, p, 0, limit=10_000)]
    if log.dedupes_ids:  # SQLite chains every append
        chains = [r.chain.hex() for r in stored if r.chain]
        assert [orjson.loads(line)["chainhash"] for line in lines] == chains
    else:  # Kafka's main writer does not (only partition writers do): the export recomputes it
        assert all(r.chain is None for r in stored) and (await verify_log(log, topic)).legacy == 60
    report = verify_export(path)
    assert report.ok and report.records == 60
    assert report.heads == (await verify_log(log, topic)).heads

    copy = f"{topic}-copy"
    await log.ensure_topic(copy, 3)
    assert await import_log(log, copy, path) == ImportResult(appended=60, duplicates=0)
    assert await values(log, copy) == await values(log, topic)
    # The imported records carry the same chain: same values in the same order per partition.
    assert (await verify_log(log, copy)).heads == (await verify_log(log, topic)).heads
    stored = (await log.read(copy, 0, 0))[0]
    env = orjson.loads(stored.value)
    assert stored.id == env["id"]
    assert dict(stored.headers) == {"ce_type": b"TaskSubmitted", "ce_id": env["id"].encode()}

    if log.dedupes_ids:
        assert await import_log(log, copy, path) == ImportResult(appended=0, duplicates=60)
        assert await values(log, copy) == await values(log, topic)
    else:  # Kafka cannot tell a record id was appended before: a second import would append again
        with pytest.raises(ImportFileError, match="cannot skip them"):
            await import_log(log, copy, path)


async def test_export_from_offset_skips_earlier_records(
    log: EventLog, topic: str, tmp_path: Path
) -> None:
    await fill(log, topic, 30)
    path = tmp_path / "tail.lz4"
    expected = sum(max(0, len(part) - 5) for part in await values(log, topic))
    assert await export_log(log, topic, path, from_offset=5) == expected
    assert len(lz4.frame.decompress(path.read_bytes()).splitlines()) == expected
    # The first line of each partition names the chain value before it, so the tail verifies alone.
    report = verify_export(path)
    assert report.ok and report.records == expected
    assert report.heads == (await verify_log(log, topic)).heads


async def test_an_import_must_continue_the_log(log: EventLog, topic: str, tmp_path: Path) -> None:
    await fill(log, topic, 30)
    full, part = tmp_path / "full.lz4", tmp_path / "part.lz4"
    await export_log(log, topic, full)
    await export_log(log, topic, part, from_offset=5)
    assert verify_export(part).ok  # a --from export verifies on its own
    copy = f"{topic}-copy"
    await log.ensure_topic(copy, 3)
    # Into an empty log, a partial export would be a history without its beginning.
    # (Kafka's offsets skip transaction markers: the first one exported may be past 5.)
    with pytest.raises(ImportFileError, match=r"is empty: the records before offset \d+ are not in the file"):
        await import_log(log, copy, part)
    assert await values(log, copy) == [[], [], []]
    assert (await import_log(log, copy, full)).appended == 30
    if log.dedupes_ids:  # the part is in the log already: nothing new, nothing out of order
        assert (await import_log(log, copy, part)).appended == 0
    else:
        with pytest.raises(ImportFileError, match="cannot skip them"):
            await import_log(log, copy, part)
    assert await values(log, copy) == await values(log, topic)
    # The log moves on; an older export of it holds nothing new.
    await log.append(copy, [to_record(event(100 + i, pool)) for i, pool in enumerate(["default", "gpu"])])
    if log.dedupes_ids:
        assert (await import_log(log, copy, full)).appended == 0
    else:
        with pytest.raises(ImportFileError):
            await import_log(log, copy, full)

    # Forced in first, the part leaves a log that the whole file does not continue.
    forced = f"{topic}-forced"
    await log.ensure_topic(forced, 3)
    result = await import_log(log, forced, part, force=True)
    assert result.forced is not None and "a partial export" in result.forced
    with pytest.raises(ImportFileError, match="do not continue the log"):
        await import_log(log, forced, full)

    # A log with another number of partitions would put the records elsewhere: refused too.
    exported = lz4.frame.decompress(full.read_bytes()).splitlines()
    assert {parse_line(line).partition for line in exported} != {0}
    one = f"{topic}-one"
    await log.ensure_topic(one, 1)
    with pytest.raises(ImportFileError, match="another number of partitions"):
        await import_log(log, one, full)
    assert await values(log, one) == [[]]


async def test_a_partition_without_its_first_lines_neither_verifies_nor_imports(
    log: EventLog, topic: str, tmp_path: Path
) -> None:
    await fill(log, topic, 30)
    path = tmp_path / "full.lz4"
    await export_log(log, topic, path)
    lines = lz4.frame.decompress(path.read_bytes()).splitlines()
    firsts = [i for i, line in enumerate(lines) if parse_line(line).partition == 1]
    assert len(firsts) > 2
    cut = tmp_path / "cut.lz4"
    cut.write_bytes(lz4.frame.compress(b"\n".join(lines[:firsts[0]] + lines[firsts[2]:]) + b"\n"))
    report = verify_export(cut)
    assert not report.ok and report.mismatch is not None
    first = parse_line(lines[firsts[2]]).offset
    assert (report.mismatch.partition, report.mismatch.offset) == (1, first)
    assert f"line {firsts[0] + 1}: partition 1 starts at offset {first}" in report.mismatch.reason
    assert "taken on trust" in report.mismatch.reason
    copy = f"{topic}-copy"
    await log.ensure_topic(copy, 3)
    with pytest.raises(ImportFileError, match="no chainprev"):
        await import_log(log, copy, cut)
    assert await values(log, copy) == [[], [], []]


def _tamper(path: Path, out: Path, edit: object) -> None:
    lines = lz4.frame.decompress(path.read_bytes()).splitlines()
    lines = edit(lines)  # type: ignore[operator]
    out.write_bytes(lz4.frame.compress(b"\n".join(lines) + b"\n"))


@pytest.mark.parametrize("how", ["byte", "delete", "swap"])
async def test_an_altered_export_is_located_and_refused_unless_forced(
    log: EventLog, topic: str, tmp_path: Path, how: str
) -> None:
    await log.ensure_topic(topic, 1)
    await log.append(topic, [to_record(event(i, "default")) for i in range(10)])
    path = tmp_path / "good.lz4"
    await export_log(log, topic, path)

    def alter(lines: list[bytes]) -> list[bytes]:
        if how == "byte":  # the task's priority, inside the value the chain covers
            lines[4] = lines[4].replace(b'"priority":1', b'"priority":2')
        elif how == "delete":
            del lines[4]
        else:
            lines[4], lines[5] = lines[5], lines[4]
        return lines

    bad = tmp_path / "bad.lz4"
    _tamper(path, bad, alter)
    report = verify_export(bad)
    assert not report.ok and report.mismatch is not None
    assert report.mismatch.partition == 0
    # A changed byte breaks its own record; a deleted or moved one breaks the record after it.
    assert report.mismatch.offset == (4 if how == "byte" else 5)
    assert "line 5" in report.mismatch.reason
    copy = f"{topic}-copy"
    await log.ensure_topic(copy, 1)
    with pytest.raises(ImportFileError, match="does not verify"):
        await import_log(log, copy, bad)
    assert await log.end_offset(copy, 0) == 0

    result = await import_log(log, copy, bad, force=True)
    assert result.forced is not None and result.appended == (9 if how == "delete" else 10)
    last = (await log.read(copy, 0, 0, limit=100))[-1]
    note = orjson.loads(last.value)
    assert note["type"] == FORCED_IMPORT_TYPE and note["data"]["forced"] is True
    assert "does not match" in note["data"]["chain_error"]
    # What was imported is chained in the copy: its own history verifies from there on.
    assert (await verify_log(log, copy)).ok


async def test_a_file_without_a_chain_is_refused_unless_forced(
    log: EventLog, topic: str, tmp_path: Path
) -> None:
    await log.ensure_topic(topic, 1)
    path = tmp_path / "old.lz4"
    path.write_bytes(lz4.frame.compress(b"\n".join(encode(event(i, "default")) for i in range(3)) + b"\n"))
    with pytest.raises(ImportFileError, match="carries no chain"):
        await import_log(log, topic, path)
    assert await log.end_offset(topic, 0) == 0
    result = await import_log(log, topic, path, force=True)
    assert result.appended == 3 and result.forced is not None
    assert await log.end_offset(topic, 0) >= 4


async def test_a_malformed_line_fails_naming_it_and_appends_nothing(
    log: EventLog, topic: str, tmp_path: Path
) -> None:
    await log.ensure_topic(topic, 1)
    good = [encode(event(i, "default")) for i in range(5)]
    path = tmp_path / "bad.lz4"
    path.write_bytes(lz4.frame.compress(b"\n".join([*good[:3], b'{"id": "x", ', *good[3:]])))
    with pytest.raises(ImportFileError, match="line 4"):
        await import_log(log, topic, path)
    assert await log.end_offset(topic, 0) == 0


async def test_a_line_that_is_json_but_not_an_event_is_rejected(
    log: EventLog, topic: str, tmp_path: Path
) -> None:
    await log.ensure_topic(topic, 1)
    path = tmp_path / "notevent.lz4"
    path.write_bytes(lz4.frame.compress(encode(event(0, "default")) + b'\n{"hello": 1}\n'))
    with pytest.raises(ImportFileError, match="line 2"):
        await import_log(log, topic, path)
    assert await log.end_offset(topic, 0) == 0


async def test_a_truncated_file_fails_clearly_and_appends_nothing(
    log: EventLog, topic: str, tmp_path: Path
) -> None:
    await fill(log, topic)
    path = tmp_path / "full.lz4"
    await export_log(log, topic, path)
    cut = tmp_path / "cut.lz4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    copy = f"{topic}-copy"
    await log.ensure_topic(copy, 3)
    with pytest.raises(ImportFileError, match="lz4"):
        await import_log(log, copy, cut)
    assert await values(log, copy) == [[], [], []]
