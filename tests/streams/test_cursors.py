"""Channel names, the channels an event is on, and cursors; and a stream over two partitions, whose
positions are per partition and whose resume point names each."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import lz4.frame
import pytest
import websockets

from contracts import SYSTEM_POOL, Envelope, utcnow
from contracts import event_types as e
from events import partition_for
from services.runtime.channels import (
    ChannelError,
    cursor_json,
    cursor_text,
    event_keys,
    parse_channel,
    parse_cursor,
    progress_keys,
    workflow_of_task,
)
from services.runtime.service import Service, open_service
from services.runtime.settings import Settings
from tests.streams.conftest import live, log_events, register, submit, task
from tests.streams.test_websocket import events_until, recv


def test_channel_names() -> None:
    assert parse_channel("events") == (None, "events")
    assert parse_channel("task:a:b") == (None, "task:a:b")
    assert parse_channel("pool/blue/tasks") == ("blue", "tasks")
    assert parse_channel("pool/a/b/workflow:w1") == ("a/b", "workflow:w1")  # an older log's pool
    for bad in ("", "task", "task:", "nope", "pool//tasks", "pool/blue/", "type: x", 3, None, "x" * 1001):
        with pytest.raises(ChannelError):
            parse_channel(bad)


def test_step_tasks_belong_to_their_run() -> None:
    assert workflow_of_task("run-1.fetch") == "run-1"
    assert workflow_of_task("a.b.step_2") == "a.b"
    assert workflow_of_task("plain") is None
    assert workflow_of_task("v1.2") is None  # "2" is no step name
    keys = progress_keys(None, "run-1.fetch", None)
    assert keys == {(p, n) for p in (None, "default") for n in ("task:run-1.fetch", "workflow:run-1")}


def test_an_event_is_on_the_channels_of_what_it_names() -> None:
    assigned = Envelope(id="1", type="TaskAssigned", time=utcnow(), pool="blue",
                        data=e.TaskAssigned(task_id="r.step", agent_id="a1", attempt=1))
    names = {"events", "type:TaskAssigned", "tasks", "task:r.step", "agent:a1", "workflow:r"}
    assert event_keys(assigned) == {(p, n) for p in (None, "blue") for n in names}
    foreign = Envelope(id="2", type="com.example.Thing", time=utcnow(), data={"agent_id": "a9"})
    assert (None, "agent:a9") in event_keys(foreign) and (None, "agents") not in event_keys(foreign)
    # The system pool's events (token hashes among them) only on channels that name that pool.
    issued = Envelope(id="3", type="ApiTokenIssued", time=utcnow(), pool=SYSTEM_POOL,
                      data=e.ApiTokenIssued(token_id="t1", role="reader", secret_hash="0" * 64))
    assert event_keys(issued) == {(SYSTEM_POOL, n) for n in ("events", "type:ApiTokenIssued")}


def test_cursors() -> None:
    assert parse_cursor(7, 1) == {0: 7}
    assert parse_cursor("7", 2) == {0: 7, 1: 7}
    assert parse_cursor("1:4", 2) == {0: -1, 1: 4}
    assert parse_cursor({"0": 3, "1": "9"}, 2) == {0: 3, 1: 9}
    for bad in ("x", "2:1", "0:x", True, -2, [1], {"a": 1}):
        with pytest.raises(ChannelError):
            parse_cursor(bad, 2)
    assert cursor_json({0: 5}) == 5 and cursor_json({0: 5, 1: -1}) == {"0": 5, "1": -1}
    assert cursor_text({0: 5}) == "5" and cursor_text({1: 2, 0: 5}) == "0:5,1:2"


@pytest.fixture
async def two_partitions(tmp_path: Path) -> AsyncIterator[Service]:
    service = open_service(Settings(data_dir=tmp_path, partitions=2))
    await service.start()
    try:
        await service.ready()
        yield service
    finally:
        await service.stop()


async def test_two_partitions_resume_from_a_position_per_partition(two_partitions: Service) -> None:
    service = two_partitions
    pools = ("default", "blue")
    assert {partition_for(p, 2) for p in pools} == {0, 1}
    async with live(service) as (base, _):
        async with websockets.connect(f"ws://{base}/ws/v1/events") as ws:
            await ws.send(json.dumps({"type": "subscribe", "channels": ["events"]}))
            start = (await recv(ws))["after"]
            assert start == {"0": -1, "1": -1}
            for pool in pools:
                await submit(service, register(f"{pool}-a"), task(f"{pool}-t1"), pool=pool)
            await asyncio.sleep(0.2)
            first = await events_until(ws, len(await log_events(service)))
        cursor = dict(start)
        for m in first[:5]:
            cursor[str(m["partition"])] = m["position"]
        # Both partitions move on while the client is away; it comes back with its cursor.
        for pool in pools:
            await submit(service, task(f"{pool}-t2"), pool=pool)
        await asyncio.sleep(0.2)
        async with websockets.connect(f"ws://{base}/ws/v1/events") as ws:
            await ws.send(json.dumps({"type": "subscribe", "channels": ["events"], "after": cursor}))
            assert (await recv(ws))["after"] == cursor
            on_log = [(p, o) for p, o, _ in await log_events(service) if o > cursor[str(p)]]
            got = await events_until(ws, len(on_log))
            assert sorted((m["partition"], m["position"]) for m in got) == on_log
            for p in (0, 1):  # each partition in its order
                mine = [m["position"] for m in got if m["partition"] == p]
                assert mine == sorted(mine)
            # The text form works as well: an SSE id, or a query parameter.
            await ws.send(json.dumps({"type": "subscribe", "channels": ["events"], "after": "0:-1,1:0"}))
            assert (await recv(ws))["after"] == {"0": -1, "1": 0}


async def test_an_export_until_some_partitions_goes_to_the_end_of_the_others(two_partitions: Service) -> None:
    service = two_partitions
    for pool in ("default", "blue"):  # one in each partition
        await submit(service, register(f"{pool}-a"), task(f"{pool}-t1"), task(f"{pool}-t2"), pool=pool)
    on_log = [(p, o) for p, o, _ in await log_events(service)]
    p_blue = partition_for("blue", 2)
    async with live(service) as (base, _), httpx.AsyncClient(base_url=f"http://{base}", timeout=30) as client:
        resp = await client.get("/v1/events/export", params={"until": f"{p_blue}:1"})
        assert resp.status_code == 200, resp.text
        got = [json.loads(line) for line in lz4.frame.decompress(resp.content).splitlines()]
    # The named partition up to position 1; the other, left out, whole (not none of it).
    want = [(p, o) for p, o in on_log if p != p_blue or o <= 1]
    assert len(got) == len(want) and any(p != p_blue for p, _ in want)
    assert [ev["id"] for ev in got] == [ev["id"] for p, o, ev in await log_events(service) if (p, o) in want]
