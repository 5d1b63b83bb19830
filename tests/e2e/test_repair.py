"""An operator's way out of a record the service cannot read: export, correct, import anew.

A record that does not decode (here a BudgetExceeded whose ``spent_usd`` is not a number, as an
overflowed float once wrote) stops replay, rebuild and start-up with an error that names the record
and the repair; ``events export`` still copies it as stored, and ``events import`` of the corrected
file into a new data directory gives a log that replays and serves.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import lz4.frame
import orjson

from events import Record, open_log
from tests.cli.conftest import invoke, produce


async def _append_raw(broker: str, value: bytes) -> int:
    log = open_log(broker)
    await log.start()
    try:
        [appended] = await log.append("events", [Record("default", value)], partition=0)
        return appended.offset
    finally:
        await log.close()


async def _last_event(broker: str) -> dict[str, object]:
    log = open_log(broker)
    await log.start()
    try:
        end = await log.end_offset("events", 0)
        [rec] = await log.read("events", 0, end - 1, 1)
        return dict(orjson.loads(rec.value))
    finally:
        await log.close()


def test_a_record_that_cannot_be_read_is_named_with_its_repair(tmp_path: Path) -> None:
    data = tmp_path / "broken"
    asyncio.run(produce(data))
    broker = f"sqlite:///{data}/log.db"
    last = asyncio.run(_last_event(broker))

    def event(seq: int, id_: str, type_: str, data: dict[str, object]) -> bytes:
        env = {**last, "id": id_, "type": type_, "subject": "default", "sequence": seq, "data": data}
        return orjson.dumps({k: v for k, v in env.items() if k not in ("dataschema", "schemaversion")})

    seq = int(str(last["sequence"]))
    asyncio.run(_append_raw(broker, event(seq + 1, "budget-1", "BudgetSet",
                                          {"scope": "pool", "scope_id": "default", "limit_usd": 10.0})))
    offset = asyncio.run(_append_raw(broker, event(seq + 2, "poison-1", "BudgetExceeded", {
        "scope": "pool", "scope_id": "default", "limit_usd": 10.0, "spent_usd": None})))

    for args in (("replay",), ("projections", "rebuild")):
        result = invoke(*args, "--data-dir", str(data))
        assert result.exit_code == 1, result.output
        assert f"events[0]@{offset}" in result.output, result.output
        assert "agentbus events export" in result.output and "events import" in result.output

    exported = tmp_path / "events.ndjson.lz4"
    result = invoke("events", "export", str(exported), "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    lines = lz4.frame.decompress(exported.read_bytes()).splitlines()
    assert json.loads(lines[-1])["id"] == "poison-1"  # copied as stored

    fixed = json.loads(lines[-1])
    fixed["data"]["spent_usd"] = 10.0
    lines[-1] = json.dumps(fixed).encode()
    repaired = tmp_path / "repaired.ndjson.lz4"
    repaired.write_bytes(lz4.frame.compress(b"\n".join(lines) + b"\n"))

    # The edit broke the file's hash chain: refused, naming the edited record, unless forced.
    result = invoke("events", "import", str(repaired), "--data-dir", str(tmp_path / "new"))
    assert result.exit_code == 1 and f"@{offset}" in result.output and "--force" in result.output
    result = invoke("events", "import", "--force", str(repaired), "--data-dir", str(tmp_path / "new"))
    assert result.exit_code == 0, result.output
    assert "forced" in result.output
    result = invoke("replay", "--data-dir", str(tmp_path / "new"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["events"] == len(lines) + 1  # and the record of the forced import
    assert report["pools"]["default"]["agents_active"] == 1
    result = invoke("projections", "rebuild", "--data-dir", str(tmp_path / "new"))
    assert result.exit_code == 0, result.output
