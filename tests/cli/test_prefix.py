"""The log commands act on the deployment their settings name: on Kafka, its prefixed topics.

A history written by a real runner is exported, imported into a Kafka deployment with a topic
prefix, and read back through that prefix by ``events tail``, ``replay`` and ``projections
rebuild``. Then two deployments share the broker, and every log command and the bench, run on
one, neither reads nor writes the other's topics or consumer groups. Needs ``AGENTBUS_TEST_KAFKA``
(skips locally without it, fails in CI).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from contracts import commands as c
from events import open_log
from projections import ProjectionStore, queries
from services.runtime.embedded import Runner
from services.runtime.ingest import command_envelope
from services.runtime.settings import Settings
from tests.cli.conftest import invoke, settle
from tests.cluster.conftest import bootstrap_of, drop_topics, kafka_url

pytestmark = pytest.mark.kafka


def _events(output: str) -> list[tuple[str, str]]:
    return [(e["id"], e["type"]) for e in map(json.loads, output.splitlines())]


def _replayed(output: str) -> dict[str, Any]:
    return json.loads(output)["pools"]


def test_log_commands_read_the_prefixed_topics_on_kafka(history: tuple[Path, Any], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = kafka_url()
    data, live = history
    prefix = f"cli-{uuid.uuid4().hex[:10]}."
    file = tmp_path / "events.ndjson.lz4"
    assert invoke("events", "export", str(file), "--data-dir", str(data)).exit_code == 0
    here = ("--broker", kafka, "--topic-prefix", prefix)
    try:
        imported = invoke("events", "import", str(file), *here)
        assert imported.exit_code == 0, imported.output

        expected = _events(invoke("events", "tail", "--data-dir", str(data)).output)
        tail = invoke("events", "tail", *here)
        assert tail.exit_code == 0, tail.output
        assert _events(tail.output) == expected

        replay = invoke("replay", "--json", *here)
        assert replay.exit_code == 0, replay.output
        embedded = invoke("replay", "--json", "--data-dir", str(data))
        assert _replayed(replay.output) == _replayed(embedded.output)

        # The prefix may come from the environment too, like every setting.
        monkeypatch.setenv("AGENTBUS_TOPIC_PREFIX", prefix)
        read = f"sqlite+aiosqlite:///{tmp_path}/read.db"
        rebuilt = invoke("projections", "rebuild", "--broker", kafka, "--database", read)
        assert rebuilt.exit_code == 0, rebuilt.output

        async def dump() -> dict[str, list[dict[str, Any]]]:
            store = ProjectionStore(read)
            await store.start()
            try:
                return await queries.dump_tables(store)
            finally:
                await store.close()

        assert asyncio.run(dump()) == live

        other = invoke("events", "tail", "--broker", kafka, "--topic-prefix", f"{prefix}other.")
        assert other.exit_code == 1 and f"no topic {prefix}other.events" in other.output
    finally:
        asyncio.run(drop_topics(bootstrap_of(kafka), prefix))


# --- two deployments on one broker ---------------------------------------------------------------


async def _marker_history(data: Path, pool: str) -> None:
    """One agent registered in ``pool`` at the end of the log in ``data``: a mark of its deployment."""
    runner = Runner(Settings(data_dir=data))
    await runner.start()
    try:
        await runner.ready()
        mark = c.RegisterAgent(agent_id=f"{pool}-agent", name="mark")
        await runner.submit(command_envelope(mark, pool=pool))
        await settle(runner)
    finally:
        await runner.stop()


def _marker_file(tmp_path: Path, history: Path, pool: str) -> Path:
    """An export of ``history`` with a mark at its end (an import must continue the log it goes
    into, so each deployment gets one whole log, its mark included)."""
    data = tmp_path / pool
    shutil.copytree(history, data)
    asyncio.run(_marker_history(data, pool))
    file = tmp_path / f"{pool}.ndjson.lz4"
    assert invoke("events", "export", str(file), "--data-dir", str(data)).exit_code == 0
    return file


async def _footprint(kafka: str, prefix: str, app_id: str) -> dict[str, Any]:
    """Every topic under ``prefix`` or named after ``app_id`` (Faust's own) with its end offsets, and
    every consumer group named after ``app_id``."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_of(kafka))
    await admin.start()
    try:
        topics = sorted(t for t in await admin.list_topics() if t.startswith((prefix, app_id)))
        groups = sorted(g[0] for g in await admin.list_consumer_groups() if g[0].startswith(app_id))
    finally:
        await admin.close()
    log = open_log(kafka)
    await log.start()
    try:
        ends = {t: [await log.end_offset(t, p) for p in range(await log.partitions(t))] for t in topics}
    finally:
        await log.close()
    return {"topics": ends, "groups": groups}


def test_every_log_command_and_the_bench_stay_inside_their_deployment(
        history: tuple[Path, Any], tmp_path: Path) -> None:
    """Deployments A and B share a broker; each command run on one never reads or writes the other's
    topics or groups. Each log holds a mark only its own commands may show (pool only-a / only-b)."""
    kafka = kafka_url()
    data, live = history
    tag = uuid.uuid4().hex[:8]
    a_prefix, b_prefix = f"dep-a-{tag}.", f"dep-b-{tag}."
    a = ("--broker", kafka, "--topic-prefix", a_prefix, "--app-id", f"dep-a-{tag}")
    b = ("--broker", kafka, "--topic-prefix", b_prefix, "--app-id", f"dep-b-{tag}")
    marks = {"a": _marker_file(tmp_path, data, "only-a"), "b": _marker_file(tmp_path, data, "only-b")}

    def run(*args: str) -> str:
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
        return str(result.output)

    def footprint(prefix: str, app_id: str) -> dict[str, Any]:
        return asyncio.run(_footprint(kafka, prefix, app_id))

    try:
        run("events", "import", str(marks["b"]), *b)
        b_before = footprint(b_prefix, f"dep-b-{tag}")
        assert set(b_before["topics"]) == {f"{b_prefix}commands", f"{b_prefix}events"}

        run("events", "import", str(marks["a"]), *a)
        a_before = footprint(a_prefix, f"dep-a-{tag}")
        assert set(a_before["topics"]) == {f"{a_prefix}commands", f"{a_prefix}events"}

        tail = run("events", "tail", *a)
        assert "only-a" in tail and "only-b" not in tail
        # the marker agent's registration and its heartbeat timer
        assert [e["pool"] for e in map(json.loads, tail.splitlines())].count("only-a") == 2
        exported = tmp_path / "a.ndjson.lz4"
        run("events", "export", str(exported), *a)
        run("events", "import", str(exported), "--data-dir", str(tmp_path / "copy"))
        assert _events(run("events", "tail", "--data-dir", str(tmp_path / "copy"))) == _events(tail)

        replayed = _replayed(run("replay", "--json", *a))
        assert "only-a" in replayed and "only-b" not in replayed
        read = f"sqlite+aiosqlite:///{tmp_path}/a-read.db"
        run("projections", "rebuild", *a, "--database", read)

        async def agents() -> set[str]:
            store = ProjectionStore(read)
            await store.start()
            try:
                return {row["agent_id"] for row in (await queries.dump_tables(store))["agents"]}
            finally:
                await store.close()

        assert asyncio.run(agents()) == {row["agent_id"] for row in live["agents"]} | {"only-a-agent"}

        bench = json.loads(run("bench", *a, "--agents", "4", "--tasks", "8", "--rate", "40",
                               "--paced-seconds", "0.5", "--no-http", "--raw-records", "50", "--json"))
        assert bench["topic_prefix"].startswith(f"{a_prefix}bench-")
        assert bench["app_id"].startswith(f"dep-a-{tag}-bench-")
        after = footprint(a_prefix, f"dep-a-{tag}")
        runs = {t: ends for t, ends in after["topics"].items()
                if t.startswith((bench["topic_prefix"], bench["app_id"]))}
        names = ("commands", "events", "commands.dlq")
        assert {f"{bench['topic_prefix']}{name}" for name in names} <= set(runs)
        assert {t: e for t, e in after["topics"].items() if t not in runs} == a_before["topics"]
        assert all(g.startswith(bench["app_id"]) for g in after["groups"]) and after["groups"]

        # B's commands read B alone, and nothing run on A changed B.
        tail_b = run("events", "tail", *b)
        assert "only-b" in tail_b and "only-a" not in tail_b
        replayed_b = _replayed(run("replay", "--json", *b))
        assert "only-b" in replayed_b and "only-a" not in replayed_b
        assert footprint(b_prefix, f"dep-b-{tag}") == b_before
    finally:
        # The prefixes, and the topics Faust names after the app ids (the bench run's included).
        asyncio.run(drop_topics(bootstrap_of(kafka), f"dep-a-{tag}", f"dep-b-{tag}"))
