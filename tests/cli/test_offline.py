"""CLI commands that work without a server: contracts, events tail/export/import, rebuild, replay."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from contracts import REGISTRY
from events import open_log
from projections import ProjectionStore, queries
from services.cli import main
from tests.cli.conftest import invoke


async def _values(broker: str) -> list[bytes]:
    log = open_log(broker)
    await log.start()
    try:
        out: list[bytes] = []
        for p in range(await log.partitions("events")):
            out += [r.value for r in await log.read("events", p, 0, 100_000)]
        return out
    finally:
        await log.close()


def test_help_lists_the_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for name in (
        "serve",
        "agent",
        "task",
        "cost",
        "send",
        "events",
        "projections",
        "replay",
        "contracts",
        "bench",
    ):
        assert f"  {name} " in result.output, name
    for group, subs in (
        ("events", ("tail", "export", "import")),
        ("agent", ("register", "list", "heartbeat", "remove")),
        ("task", ("submit", "list", "show", "start", "complete", "fail", "cancel")),
    ):
        out = invoke(group, "--help").output
        assert all(f"  {s} " in out for s in subs), (group, out)
    assert "AGENTBUS_BROKER" in invoke("serve", "--help").output


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref" and isinstance(v, str)] + [
            r for v in node.values() for r in _refs(v)
        ]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_contracts_export_writes_one_schema_per_type(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    result = invoke("contracts", "export", str(out))
    assert result.exit_code == 0, result.output
    index = json.loads((out / "index.json").read_text())["types"]
    assert {t["type"] for t in index} == set(REGISTRY.json_schemas())
    assert {t["kind"] for t in index} == {"command", "event"}
    assert next(t for t in index if t["type"] == "CostRecorded")["version"] == 2
    for entry in index:
        schema = json.loads((out / entry["file"]).read_text())
        assert schema == REGISTRY.json_schemas()[entry["type"]]
        assert schema["type"] == "object" and schema["$id"] == entry["dataschema"]
        assert schema["x-agentbus-kind"] == entry["kind"]
        for ref in _refs(schema):  # every $ref resolves inside the file
            assert ref.startswith("#/$defs/") and ref.split("/")[-1] in schema["$defs"]
    # A schema describes what the model accepts: required fields are the model's required fields.
    register = json.loads((out / "RegisterAgent.json").read_text())
    assert set(register["required"]) == {"agent_id", "name"}
    # The workflow definition users write, on its own: the file validates against it.
    definitions = json.loads((out / "index.json").read_text())["definitions"]
    assert definitions == [{"name": "WorkflowDefinition", "file": "workflow-definition.json"},
                           {"name": "ExecutorsFile", "file": "executors.json"}]
    wf = json.loads((out / "workflow-definition.json").read_text())
    assert set(wf["required"]) == {"name", "tasks"}
    assert set(wf["properties"]["failure_strategy"]["enum"]) == {
        "stop_on_first_failure", "continue_on_failure", "partial_completion_allowed"}


def test_events_export_import_round_trip(history: tuple[Path, Any], tmp_path: Path) -> None:
    data, _ = history
    file = tmp_path / "events.ndjson.lz4"
    exported = invoke("events", "export", str(file), "--data-dir", str(data))
    assert exported.exit_code == 0, exported.output
    original = asyncio.run(_values(f"sqlite:///{data}/log.db"))
    assert f"exported {len(original)} events" in exported.output

    fresh = tmp_path / "fresh"
    imported = invoke("events", "import", str(file), "--broker", f"sqlite:///{fresh}/log.db")
    assert imported.exit_code == 0, imported.output
    assert f"imported {len(original)} events" in imported.output and "(0 already present)" in imported.output
    assert asyncio.run(_values(f"sqlite:///{fresh}/log.db")) == original  # byte for byte

    again = invoke("events", "import", str(file), "--broker", f"sqlite:///{fresh}/log.db")
    assert f"imported 0 events from {file} ({len(original)} already present)" in again.output
    assert asyncio.run(_values(f"sqlite:///{fresh}/log.db")) == original

    tail = invoke("events", "export", str(tmp_path / "tail.lz4"), "--from", "5", "--data-dir", str(data))
    assert f"exported {len(original) - 5} events" in tail.output


def test_events_import_of_a_bad_file_fails_and_appends_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.lz4"
    bad.write_bytes(b"not an lz4 frame")
    result = invoke("events", "import", str(bad), "--data-dir", str(tmp_path / "d"))
    assert result.exit_code == 1 and "lz4" in result.output


def test_events_tail_prints_json_lines_with_positions(history: tuple[Path, Any]) -> None:
    data, _ = history
    result = invoke("events", "tail", "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [e["position"] for e in lines] == list(range(len(lines)))
    assert lines[0]["type"] == "AgentRegistered" and lines[0]["partition"] == 0
    gpu = [
        json.loads(x)
        for x in invoke("events", "tail", "--pool", "gpu", "--data-dir", str(data)).output.split()
    ]
    # registered (with its heartbeat timer), submitted, assigned
    assert {e["pool"] for e in gpu} == {"gpu"} and len(gpu) == 4
    rejected = invoke("events", "tail", "--type", "CommandRejected", "--from", "3", "--data-dir", str(data))
    [line] = rejected.output.splitlines()
    assert json.loads(line)["data"]["code"] == "RESOURCE_LIMIT_EXCEEDED"


def test_projections_rebuild_equals_the_live_tables(history: tuple[Path, Any]) -> None:
    data, live = history
    assert live["tasks"] and live["agents"] and live["assignments"]
    result = invoke("projections", "rebuild", "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    assert "events applied" in result.output

    async def dump() -> dict[str, list[dict[str, Any]]]:
        store = ProjectionStore(f"sqlite+aiosqlite:///{data}/read.db")
        await store.start()
        try:
            return await queries.dump_tables(store)
        finally:
            await store.close()

    assert asyncio.run(dump()) == live


def test_replay_reports_speed_and_state(history: tuple[Path, Any]) -> None:
    data, _ = history
    result = invoke("replay", "--data-dir", str(data), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["events"] == len(asyncio.run(_values(f"sqlite:///{data}/log.db")))
    assert report["seconds"] > 0 and report["events_per_s"] > 0
    default = report["pools"]["default"]
    assert default["agents_active"] == 1
    assert default["tasks"] == {"assigned": 2, "completed": 1, "queued": 1}
    assert report["pools"]["gpu"]["tasks"] == {"assigned": 1}
    text = invoke("replay", "--data-dir", str(data), "--pool", "gpu")
    assert "events/s" in text.output and "pool gpu: 1 agents active" in text.output
    assert "pool default" not in text.output
    nope = invoke("replay", "--data-dir", str(data), "--pool", "nope")
    assert nope.exit_code == 1 and "pool 'nope' has no events in this log" in nope.output, nope.output


def test_replay_tunes_the_collector_as_serve_does(history: tuple[Path, Any],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The rebuilt state is long-lived: with the default thresholds collections walk it again and
    again (``agentbus replay`` of 207,000 events: 58,000-66,000 events/s with them, 72,000-83,000
    without)."""
    import gc

    from services.runtime import embedded

    data, _ = history
    thresholds = gc.get_threshold()
    monkeypatch.setattr(embedded, "_FREEZE_AFTER_READY", embedded._FREEZE_AFTER_READY)
    try:
        gc.set_threshold(700, 10, 10)
        result = invoke("replay", "--data-dir", str(data), "--json")
        assert result.exit_code == 0, result.output
        assert gc.get_threshold()[0] > 700, "replay ran with the default collector thresholds"
    finally:
        gc.set_threshold(*thresholds)


def test_log_commands_name_a_corrupt_record(history: tuple[Path, Any]) -> None:
    import sqlite3

    data, _ = history
    with sqlite3.connect(data / "log.db") as db:
        db.execute("""UPDATE records SET crc = crc + 1 WHERE topic = 'events' AND "offset" = 2""")
    result = invoke("events", "tail", "--data-dir", str(data))
    assert result.exit_code == 1 and "corrupt record at events[0]@2" in result.output
    result = invoke("replay", "--data-dir", str(data))
    assert result.exit_code == 1 and "events[0]@2" in result.output


def test_serve_refuses_a_webhook_that_is_not_http(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--data-dir", str(tmp_path), "--scaling-webhook", "ftp://x/y"])
    assert result.exit_code == 1 and "must be an http:// or https:// URL" in result.output


def test_agent_run_says_when_the_server_is_unreachable() -> None:
    result = CliRunner().invoke(main, ["agent", "run", "--name", "w", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and "cannot reach agentbus at http://127.0.0.1:9" in result.output
