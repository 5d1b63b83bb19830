"""`agentbus audit verify` and GET /v1/audit/verify find where a history was altered.

Every log here is written by the real service (a ``Runner``, or ``agentbus serve``'s app on a real
socket) to a real SQLite file, then altered the way someone with the file would: one byte of one
stored value (its crc32 recomputed, so only the chain can tell), a record deleted, two values
swapped, an export file edited. The verifier must name the partition and offset where it happened,
with the hash it expected and the one it found, computed here independently (hashlib).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import httpx
import lz4.frame
import orjson
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts import SYSTEM_POOL
from contracts import commands as c
from events import open_log, partition_for
from events.chain import GENESIS, verify_log
from events.codec import to_record
from services.audit.checkpoints import read_heads, sign
from services.audit.verify import verify_log_audit
from services.cli import main
from services.domain.decider import DeciderConfig
from services.executors.standins.serving import serving
from services.http.app import create_app
from services.runtime.decider import PartitionDecider
from services.runtime.embedded import Runner
from services.runtime.ingest import command_envelope
from services.runtime.outcomes import Outcomes
from services.runtime.settings import ENV_PREFIX, Settings
from services.runtime.topics import Topics


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings and the CLI read AGENTBUS_*; a developer's shell must not leak into the tests."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) and not name.startswith(f"{ENV_PREFIX}TEST_"):
            monkeypatch.delenv(name)


# -- a history, written by the service -------------------------------------------------------------


def pool_in(partition: int, partitions: int) -> str:
    """A pool name whose commands and events land in ``partition``."""
    return next(p for p in (f"pool-{i}" for i in range(1000)) if partition_for(p, partitions) == partition)


def commands(pool: str, n: int) -> list[Any]:
    """Agents, tasks (some assigned, one completed), a cost and a rejection, in ``pool``."""
    out: list[Any] = [c.RegisterAgent(agent_id=f"{pool}-a", name="a", capabilities=("text",), capacity=2)]
    out += [c.SubmitTask(task_id=f"{pool}-t{i}", type="x", required_capabilities=("text",), data={"i": i})
            for i in range(n)]
    out += [c.RecordCost(cost_id=f"{pool}-c", agent_id=f"{pool}-a", model="gpt-4o", input_tokens=10),
            c.CompleteTask(task_id=f"{pool}-nope")]  # rejected: no such task
    return out


async def write_history(data: Path, *, partitions: int = 1, per_pool: int = 6,
                        pools: tuple[str, ...] = ("default",)) -> None:
    """Run a real Runner over ``data`` until every command sent is decided, then stop it."""
    runner = Runner(Settings(data_dir=data, partitions=partitions))
    await runner.start()
    try:
        await runner.ready()
        for pool in pools:
            for cmd in commands(pool, per_pool):
                partition, position, _ = await runner.submit(command_envelope(cmd, pool=pool))
                assert await runner.wait_decided(partition, position, 10) is not None
        await asyncio.sleep(0.3)  # the coordinator's assignments, decided too
    finally:
        await runner.stop()


def history(tmp_path: Path, **kwargs: Any) -> Path:
    data = tmp_path / "data"
    asyncio.run(write_history(data, **kwargs))
    return data


def cli(*args: str) -> Result:
    """``agentbus <args>`` in this process; an exception (a traceback for the user) fails the test."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def verify_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = cli("audit", "verify", "--json", *args)
    return result.exit_code, orjson.loads(result.stdout)


# -- the SQLite file, as someone holding it would change it ----------------------------------------


def rows(db: Path, partition: int) -> list[tuple[int, bytes, int, int, bytes]]:
    """(offset, stored value, codec, crc, chain) of the events partition, in order."""
    with sqlite3.connect(db) as conn:
        return list(conn.execute('SELECT "offset", value, codec, crc, chain FROM records WHERE topic = '
                                 '\'events\' AND "partition" = ? ORDER BY "offset"', (partition,)))


def put(db: Path, partition: int, offset: int, value: bytes, chain: bytes | None = None) -> None:
    """Store ``value`` (uncompressed, its crc32 recomputed) at ``offset``; its chain too if given."""
    with sqlite3.connect(db) as conn:
        conn.execute('UPDATE records SET value = ?, codec = 0, crc = ? WHERE topic = \'events\' AND '
                     '"partition" = ? AND "offset" = ?', (value, zlib.crc32(value), partition, offset))
        if chain is not None:
            conn.execute('UPDATE records SET chain = ? WHERE topic = \'events\' AND "partition" = ? AND '
                         '"offset" = ?', (chain, partition, offset))


def one_byte_changed(value: bytes) -> bytes:
    """``value`` with one digit of its time changed: still a valid event, now a different one."""
    i = value.index(b'"time":"') + len(b'"time":"') + 3  # the year's last digit
    return value[:i] + (b"7" if value[i:i + 1] != b"7" else b"8") + value[i + 1:]


def link(prev: bytes, value: bytes) -> bytes:
    return hashlib.sha256(prev + value).digest()


def rewrite(db: Path, partition: int, offset: int, value: bytes) -> None:
    """Replace the value at ``offset`` and recompute the chain of it and of every later record, as
    someone covering their tracks would."""
    records = rows(db, partition)
    prev = GENESIS if offset == 0 else records[offset - 1][4]
    for at, stored, codec, _, _ in records[offset:]:
        assert codec == 0  # the history's values are all below the compression threshold
        new = value if at == offset else stored
        prev = link(prev, new)
        put(db, partition, at, new, prev)


# -- the tests -------------------------------------------------------------------------------------


def test_the_services_log_verifies_and_says_how_fast(tmp_path: Path) -> None:
    data = history(tmp_path, partitions=2, pools=("default", pool_in(0, 2), pool_in(1, 2)))
    counts = {p: len(rows(data / "log.db", p)) for p in (0, 1)}
    assert all(counts.values())
    result = cli("audit", "verify", "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    assert f"checked {sum(counts.values())} records of events" in result.output
    assert "events/s" in result.output and "ok: the chain verifies" in result.output
    code, report = verify_json("--data-dir", str(data))
    assert code == 0 and report["ok"] is True and report["failure"] is None
    assert report["records"] == sum(counts.values())
    assert report["ends"] == {str(p): n for p, n in counts.items()}
    # The heads are the chain recomputed here from the stored values.
    for p in (0, 1):
        prev = GENESIS
        for _, value, _, _, _ in rows(data / "log.db", p):
            prev = link(prev, value)
        assert report["heads"][str(p)] == prev.hex()


def test_one_byte_of_one_value_is_found_at_its_offset(tmp_path: Path) -> None:
    data = history(tmp_path)
    db = data / "log.db"
    records = rows(db, 0)
    at = len(records) // 2
    _, value, codec, _, stored_chain = records[at]
    assert codec == 0 and len(value) < 2048
    edited = one_byte_changed(value)
    assert sum(a != b for a, b in zip(value, edited, strict=True)) == 1
    put(db, 0, at, edited)
    # The record's own checksum holds: reading it raises nothing, only the chain can tell.
    assert cli("events", "tail", "--data-dir", str(data)).exit_code == 0
    result = cli("audit", "verify", "--data-dir", str(data))
    assert result.exit_code == 1
    assert f"FAILED at events[0]@{at}: the value does not match its chain" in result.output
    expected = link(records[at - 1][4], edited).hex()
    assert f"expected: {expected}" in result.output and f"found:    {stored_chain.hex()}" in result.output
    code, report = verify_json("--data-dir", str(data))
    assert code == 1 and report["ok"] is False
    assert report["mismatch"] == report["failure"]
    assert {k: report["failure"][k] for k in ("topic", "partition", "offset", "expected", "found")} == {
        "topic": "events", "partition": 0, "offset": at, "expected": expected, "found": stored_chain.hex()}


def test_a_deleted_record_is_found_where_it_was(tmp_path: Path) -> None:
    data = history(tmp_path)
    db = data / "log.db"
    at = len(rows(db, 0)) // 3
    with sqlite3.connect(db) as conn:
        conn.execute('DELETE FROM records WHERE topic = \'events\' AND "partition" = 0 AND "offset" = ?',
                     (at,))
    code, report = verify_json("--data-dir", str(data))
    assert code == 1
    failure = report["failure"]
    # Named where the record is missing, not at the one after it.
    assert (failure["partition"], failure["offset"]) == (0, at)
    assert f"offset {at} is missing" in failure["reason"]
    assert f"the next record stored is at offset {at + 1}" in failure["reason"]


def test_two_swapped_values_are_found_at_the_first(tmp_path: Path) -> None:
    data = history(tmp_path)
    db = data / "log.db"
    records = rows(db, 0)
    at = len(records) // 2
    first, second = records[at][1], records[at + 1][1]
    assert first != second
    put(db, 0, at, second)
    put(db, 0, at + 1, first)
    code, report = verify_json("--data-dir", str(data))
    assert code == 1
    failure = report["failure"]
    assert (failure["partition"], failure["offset"]) == (0, at)
    assert failure["expected"] == link(records[at - 1][4], second).hex()
    assert failure["found"] == records[at][4].hex()


def test_from_checks_only_the_records_after_it(tmp_path: Path) -> None:
    data = history(tmp_path)
    db = data / "log.db"
    total = len(rows(db, 0))
    start = total // 2
    code, report = verify_json("--data-dir", str(data), "--from", str(start))
    assert code == 0 and report["records"] == total - start
    # At the end: nothing new to check. Past it: a mistyped offset, said at once (not a walk back
    # from there, nor an "ok" for 0 records).
    code, report = verify_json("--data-dir", str(data), "--from", str(total))
    assert code == 0 and report["records"] == 0
    began = time.monotonic()
    result = cli("audit", "verify", "--data-dir", str(data), "--from", str(10**12))
    assert result.exit_code == 1 and "is past the end of the log" in result.output
    assert time.monotonic() - began < 10
    # Below --from the stored chain is taken as it is; from there on an edit is found.
    put(db, 0, start - 1, one_byte_changed(rows(db, 0)[start - 1][1]))
    assert verify_json("--data-dir", str(data), "--from", str(start))[0] == 0
    code, report = verify_json("--data-dir", str(data), "--from", str(start - 1))
    assert code == 1 and report["failure"]["offset"] == start - 1


def test_an_export_verifies_and_an_edited_line_is_found(tmp_path: Path) -> None:
    data = history(tmp_path, partitions=2, pools=(pool_in(0, 2), pool_in(1, 2)))
    export = tmp_path / "events.ndjson.lz4"
    assert cli("events", "export", str(export), "--data-dir", str(data)).exit_code == 0
    result = cli("audit", "verify", "--file", str(export))
    assert result.exit_code == 0, result.output
    total = sum(len(rows(data / "log.db", p)) for p in (0, 1))
    assert f"checked {total} records" in result.output and "ok: the chain verifies" in result.output

    lines = lz4.frame.decompress(export.read_bytes()).split(b"\n")
    n1 = len(rows(data / "log.db", 0))  # partition 0's lines come first
    at = len(rows(data / "log.db", 1)) // 2
    number = n1 + at  # 0-based index of partition 1's line for offset ``at``
    assert f'"chainpartition":1,"chainoffset":{at}'.encode() in lines[number]
    lines[number] = one_byte_changed(lines[number])
    tampered = tmp_path / "tampered.ndjson.lz4"
    tampered.write_bytes(lz4.frame.compress(b"\n".join(lines)))
    code, report = verify_json("--file", str(tampered))
    assert code == 1
    failure = report["failure"]
    assert (failure["partition"], failure["offset"]) == (1, at)
    assert f"line {number + 1}:" in failure["reason"]

    # A file cut short is refused with what is wrong, not a traceback.
    cut = tmp_path / "cut.ndjson.lz4"
    cut.write_bytes(export.read_bytes()[: len(export.read_bytes()) // 2])
    code, report = verify_json("--file", str(cut))
    assert code == 1 and "not a complete lz4 frame file" in report["failure"]["reason"]
    missing = cli("audit", "verify", "--file", str(tmp_path / "nothing.lz4"))
    assert missing.exit_code == 1 and "no such file" in missing.output
    assert cli("audit", "verify", "--file", str(export), "--from", "3").exit_code == 2


def test_http_verify_answers_ok_then_names_the_edited_record(tmp_path: Path) -> None:
    data = tmp_path / "data"
    app = create_app(settings=Settings(data_dir=data))
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        for i in range(8):
            resp = client.post("/v1/tasks", params={"wait": "true"}, json={"task_id": f"t{i}", "type": "x"})
            assert resp.status_code == 201, resp.text
        body = client.get("/v1/audit/verify").json()
        assert body["ok"] is True and body["records"] >= 8 and body["checkpoints"] is None
        assert body["events_per_s"] is None or body["events_per_s"] > 0
        db = data / "log.db"
        records = rows(db, 0)
        at = 3
        edited = one_byte_changed(records[at][1])
        put(db, 0, at, edited)
        body = client.get("/v1/audit/verify").json()
        assert body["ok"] is False
        assert {k: body["mismatch"][k] for k in ("partition", "offset", "expected", "found")} == {
            "partition": 0, "offset": at, "expected": link(records[at - 1][4], edited).hex(),
            "found": records[at][4].hex()}
        # From past the edit, the rest still verifies.
        after = client.get("/v1/audit/verify", params={"from": at + 1}).json()
        assert after["ok"] is True and after["records"] == after["ends"]["0"] - at - 1 > 0
        bad = client.get("/v1/audit/verify", params={"from": -1})
        assert bad.status_code == 422
        no_key = client.get("/v1/audit/verify", params={"key_id": "ab" * 16})
        assert no_key.status_code == 422 and "no audit public key" in no_key.text


# -- Kafka: the partition writers chain what the decider appends -----------------------------------


@pytest.mark.kafka
async def test_on_kafka_decided_events_chain_across_a_fenced_owner() -> None:
    from events.kafka import Fenced, KafkaLog
    from tests.cluster.conftest import bootstrap_of, drop_topics
    from tests.contract.conftest import kafka_url, start_log

    url = kafka_url()  # skips locally without a broker, fails in CI
    prefix = f"audit-{uuid.uuid4().hex[:10]}-"
    topics = Topics.prefixed(prefix)
    group = f"{prefix}decider"
    first = open_log(f"{url}?client_id={prefix}one")
    second = open_log(f"{url}?client_id={prefix}two")
    assert isinstance(first, KafkaLog) and isinstance(second, KafkaLog)
    await start_log(first)
    await start_log(second)
    try:
        await first.ensure_topic(topics.commands, 1)
        await first.ensure_topic(topics.events, 1, retention_ms=-1)

        async def decide(decider: PartitionDecider, cmds: list[Any], pool: str = "default") -> None:
            log = decider.log
            start = await log.end_offset(topics.commands, 0)
            await log.append(topics.commands, [to_record(command_envelope(x, pool=pool)) for x in cmds])
            recs = [r for r in await log.read(topics.commands, 0, start, 1000)]
            await decider.process([(r.offset, r) for r in recs])

        # The first owner decides, through its fenced partition writer.
        first.chain(topics.events)  # as the cluster's decider does: it is the events' only writer
        await first.claim(group, topics.commands, 0)
        one = PartitionDecider(first, 0, Outcomes(), DeciderConfig(), topics=topics, group=group)
        await one.rebuild()
        await decide(one, commands("default", 4))
        # A second process takes the partition over: the first is fenced, the second goes on
        # chaining from the head the first left.
        second.chain(topics.events)
        await second.claim(group, topics.commands, 0)
        two = PartitionDecider(second, 0, Outcomes(), DeciderConfig(), topics=topics, group=group)
        await two.rebuild()
        with pytest.raises(Fenced):
            await decide(one, [c.SubmitTask(task_id="late", type="x")])
        await decide(two, [c.SubmitTask(task_id=f"t2-{i}", type="x") for i in range(3)])

        records = await second.read(topics.events, 0, 0, 1000)
        assert len(records) >= 10 and all(r.chain is not None for r in records)
        prev = GENESIS
        for r in records:
            prev = link(prev, r.value)
            assert r.chain == prev, r.offset
        report = await verify_log(second, topics.events)
        assert report.ok and report.records == len(records) and report.legacy == 0

        # A checkpoint signed from the heads, decided by the new owner, verifies with its key.
        key = Ed25519PrivateKey.generate()
        heads = await read_heads(second, topics.events)
        assert heads["0"].chain == prev.hex() and heads["0"].position == records[-1].offset + 1
        await decide(two, [sign(key, topics.events, heads)], pool=SYSTEM_POOL)
        audit = await verify_log_audit(second, topics.events, key=key.public_key())
        assert audit.ok and audit.verified == 1, audit.to_json()
        # One signing other heads than the log's is named, at the position it signed.
        forged = {"0": heads["0"].model_copy(update={"chain": link(prev, b"x").hex()})}
        await decide(two, [sign(key, topics.events, forged)], pool=SYSTEM_POOL)
        audit = await verify_log_audit(second, topics.events, key=key.public_key())
        assert not audit.ok and audit.failure is not None
        assert (audit.failure.partition, audit.failure.offset) == (0, heads["0"].position - 1)
        assert audit.failure.found == prev.hex() and "was rewritten" in audit.failure.reason
    finally:
        await first.close()
        await second.close()
        await drop_topics(bootstrap_of(url), prefix)
