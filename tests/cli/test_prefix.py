"""The log commands act on the deployment their settings name: on Kafka, its prefixed topics.

A history written by a real runner is exported, imported into a Kafka deployment with a topic
prefix, and read back through that prefix by ``events tail``, ``replay`` and ``projections
rebuild``. Needs ``AGENTBUS_TEST_KAFKA`` (skips locally without it, fails in CI).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from projections import ProjectionStore, queries
from tests.cli.conftest import invoke
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
