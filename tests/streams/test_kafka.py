"""The live streams on the Kafka cluster service: the hub follows the events topic with the log's
long-polling subscription, positions are Kafka offsets (with gaps where transaction markers sit),
and a replay from a cursor followed by live events still gives each event once, in order."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import websockets

from events import partition_for
from tests.cluster.conftest import private_namespace, running_service
from tests.streams.conftest import live, log_events, register, settled, submit, task
from tests.streams.test_websocket import events_until, quiet, recv

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


async def test_replay_then_live_on_kafka(tmp_path: Path) -> None:
    async with private_namespace(partitions=2) as cluster, running_service(cluster, tmp_path) as service:
        pools = ("default", "blue")
        assert {partition_for(p, 2) for p in pools} == {0, 1}
        for pool in pools:
            await submit(service, register(f"{pool}-a"), *[task(f"{pool}-{i}") for i in range(5)], pool=pool)
        await settled(service)
        async with live(service) as (base, hub), websockets.connect(f"ws://{base}/ws/v1/events") as ws:
            assert hub.long_poll
            early = await log_events(service)
            cursor = {"0": -1, "1": -1}
            for p, o, _ in early[:3] + [x for x in early if x[0] == 1][:2]:
                cursor[str(p)] = max(cursor[str(p)], o)
            writing = asyncio.create_task(submit(service, *[task(f"late-{i}") for i in range(20)]))
            await ws.send(json.dumps({"type": "subscribe", "channels": ["events"], "after": cursor}))
            assert (await recv(ws))["after"] == cursor
            await writing
            await settled(service)
            on_log = [(p, o) for p, o, _ in await log_events(service) if o > cursor[str(p)]]
            got = await events_until(ws, len(on_log), timeout=30)
            assert sorted((m["partition"], m["position"]) for m in got) == on_log
            for p in (0, 1):
                mine = [m["position"] for m in got if m["partition"] == p]
                assert mine == sorted(mine)
            assert await quiet(ws) == []
