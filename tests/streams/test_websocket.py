"""The WebSocket ``/ws/v1/events`` with the ``websockets`` client against a real uvicorn: the message
protocol, channel filtering, replay then live with no gap and no duplicate, lagged slow consumers,
and ping/pong."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
from typing import Any

import lz4.frame
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from contracts import SYSTEM_POOL
from contracts import commands as c
from services.runtime.service import Service
from tests.streams.conftest import live, log_events, register, settled, submit, task
from tests.waiting import eventually


async def recv(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(message, dict)
    return message


async def events_until(ws: ClientConnection, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The next ``count`` event messages (other messages in between are skipped)."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while len(out) < count:
            m = await recv(ws, timeout)
            if m["type"] == "event":
                out.append(m)
    return out


async def quiet(ws: ClientConnection, seconds: float = 0.3) -> list[dict[str, Any]]:
    """Whatever arrives within ``seconds`` (to show that nothing more does)."""
    out = []
    with pytest.raises(TimeoutError):
        while True:
            out.append(await recv(ws, seconds))
    return out


async def slow_client(base: str) -> ClientConnection:
    """A client that reads only when told to, with a small receive buffer (no autotuning to
    megabytes): while it does not read, the server's sends to it back up."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)
    host, port = base.split(":")
    sock.connect((host, int(port)))
    return await websockets.connect(f"ws://{base}/ws/v1/events", sock=sock, max_queue=1, compression=None,
                                    max_size=None)


async def flood(service: Service) -> None:
    """About 12 MB of events: more than the socket buffers on both sides hold (the server's is 4 MB
    at most)."""
    payload = {"blob": secrets.token_hex(50_000)}
    for i in range(12):
        await submit(service, *[task(f"t{i}-{j}", data=payload) for j in range(10)])


async def test_subscribe_unsubscribe_and_every_mistake_is_answered(service: Service) -> None:
    async with live(service) as (base, _), websockets.connect(f"ws://{base}/ws/v1/events") as ws:
        await ws.send(json.dumps({"type": "subscribe", "channels": ["tasks", "agent:a1"]}))
        subscribed = await recv(ws)
        end = (await service.log.end_offset(service.topics.events, 0)) - 1
        assert subscribed == {"type": "subscribed", "channels": ["agent:a1", "tasks"], "after": end}

        await ws.send(json.dumps({"type": "hello"}))
        assert await recv(ws) == {"type": "error", "message": "Unknown message type: hello"}
        await ws.send("{not json")
        error = await recv(ws)
        assert error["type"] == "error" and error["message"].startswith("Invalid JSON: ")
        await ws.send("[1, 2]")
        assert "JSON object" in (await recv(ws))["message"]
        await ws.send(json.dumps({"type": "subscribe", "channels": ["nope"]}))
        assert (await recv(ws))["message"].startswith("channels: unknown channel 'nope'")
        await ws.send(json.dumps({"type": "subscribe", "channels": ["events"], "afer": 3}))
        expected = "subscribe: unknown field(s) afer; expected after, batch, channels, compression, type"
        assert (await recv(ws))["message"] == expected
        await ws.send(json.dumps({"type": "subscribe", "channels": ["events"], "after": 10**6}))
        assert "beyond the end of the log" in (await recv(ws))["message"]
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv(ws) == {"type": "pong"}

        # The connection survived every mistake: it still streams what it subscribed to (the
        # registration, and the heartbeat timer it schedules for the agent).
        await submit(service, register("a1"))
        on_log = [(o, e["type"]) for _, o, e in await log_events(service) if o > end]
        got = await events_until(ws, len(on_log))
        assert [(m["position"], m["event"]["type"]) for m in got] == on_log
        assert on_log[0] == (end + 1, "AgentRegistered") and {m["partition"] for m in got} == {0}

        await ws.send(json.dumps({"type": "unsubscribe", "channels": ["agent:a1"]}))
        assert await recv(ws) == {"type": "unsubscribed", "channels": ["tasks"]}
        await submit(service, c.AgentHeartbeat(agent_id="a1"))
        assert await quiet(ws) == []


async def test_channels_pick_their_events_in_every_pool_or_in_one(service: Service) -> None:
    channels = {
        "events": None, "tasks": None, "agents": None, "type:TaskAssigned": None, "task:t1": None,
        "agent:a2": None, "pool/blue/events": None, "pool/blue/task:t1": None,
    }
    async with live(service) as (base, _):
        sockets = {}
        for name in channels:
            ws = await websockets.connect(f"ws://{base}/ws/v1/events")
            await ws.send(json.dumps({"type": "subscribe", "channels": [name]}))
            assert (await recv(ws))["type"] == "subscribed"
            sockets[name] = ws
        await submit(service, register("a1"), task("t1"), task("t2"))
        await submit(service, register("a2"), task("t1"), pool="blue")
        await asyncio.sleep(0.3)  # the coordinator assigns
        everything = [(p, o, e) for p, o, e in await log_events(service) if e["type"] != "CommandRejected"]

        def expected(pick: Any) -> list[str]:
            return [e["id"] for _, _, e in everything if pick(e)]

        rules = {
            "events": lambda e: True,
            "tasks": lambda e: e["type"].startswith("Task"),
            "agents": lambda e: e["type"].startswith("Agent"),
            "type:TaskAssigned": lambda e: e["type"] == "TaskAssigned",
            "task:t1": lambda e: e["data"].get("task_id") == "t1",
            "agent:a2": lambda e: e["data"].get("agent_id") == "a2",
            "pool/blue/events": lambda e: e["pool"] == "blue",
            "pool/blue/task:t1": lambda e: e["pool"] == "blue" and e["data"].get("task_id") == "t1",
        }
        for name, ws in sockets.items():
            want = expected(rules[name])
            assert want, name
            got = await events_until(ws, len(want))
            assert [m["event"]["id"] for m in got] == want, name
            assert await quiet(ws, 0.1) == [], name
            await ws.close()


async def test_the_system_pools_events_reach_only_channels_that_name_it(service: Service) -> None:
    """Its events carry token hashes and sealed secrets: not on "events" or "type:...", live or
    replayed, unless the channel names the pool."""
    names = ["events", "type:ApiTokenIssued", "pool/_system/type:ApiTokenIssued"]
    async with live(service) as (base, _):
        sockets = {}
        for name in names:
            ws = await websockets.connect(f"ws://{base}/ws/v1/events")
            await ws.send(json.dumps({"type": "subscribe", "channels": [name]}))
            assert (await recv(ws))["type"] == "subscribed"
            sockets[name] = ws
        await submit(service, c.IssueApiToken(token_id="t1", role="reader", secret_hash="0" * 64),
                     pool=SYSTEM_POOL)
        await submit(service, register("a1"))
        [issued] = [e for _, _, e in await log_events(service) if e["type"] == "ApiTokenIssued"]
        named = await events_until(sockets[names[2]], 1)
        assert [m["event"]["id"] for m in named] == [issued["id"]]
        [registered] = await events_until(sockets["events"], 1)
        assert registered["event"]["type"] == "AgentRegistered"
        assert await quiet(sockets["type:ApiTokenIssued"], 0.2) == []
        # Replayed from the start: the same.
        for name, ws in sockets.items():
            await quiet(ws, 0.2)  # what is still on its way live
            await ws.send(json.dumps({"type": "subscribe", "channels": [name], "after": -1}))
            while (await recv(ws))["type"] != "subscribed":
                pass
            replayed = [m["event"]["type"] for m in await quiet(ws, 0.5) if m["type"] == "event"]
            assert ("ApiTokenIssued" in replayed) == (name == names[2]), (name, replayed)
            await ws.close()


async def _write_steadily(service: Service, rounds: int) -> None:
    for i in range(rounds):
        await submit(service, *[task(f"late-{i}-{j}") for j in range(5)])
        await asyncio.sleep(0.005)


async def test_replay_then_live_has_no_gap_and_no_duplicate(service: Service) -> None:
    await submit(service, register("a1", capacity=10), *[task(f"early-{i}") for i in range(2000)])
    async with live(service) as (base, _), contextlib.AsyncExitStack() as stack:
        # Clients subscribe with after=5 one after another while tasks are being written, so that
        # events are appended while each one's replay is read, and each seam falls elsewhere.
        writing = asyncio.create_task(_write_steadily(service, 50))
        clients = []
        for _ in range(3):
            await asyncio.sleep(0.1)
            ws = await stack.enter_async_context(websockets.connect(f"ws://{base}/ws/v1/events"))
            await ws.send(json.dumps({"type": "subscribe", "channels": ["events"], "after": 5}))
            assert (await recv(ws))["after"] == 5
            clients.append((ws, writing.done()))
        assert not clients[-1][1], "the writes ended before the last subscribe: no seam under load"
        await writing
        await asyncio.sleep(0.3)  # the coordinator's assignments
        on_log = [(p, o) for p, o, _ in await log_events(service) if o > 5]
        for ws, _ in clients:
            got = await events_until(ws, len(on_log))
            assert [(m["partition"], m["position"]) for m in got] == on_log
            assert await quiet(ws, 0.1) == []

        # A second subscribe with after restarts the stream there, for every channel.
        ws = clients[0][0]
        await ws.send(json.dumps({"type": "subscribe", "channels": ["tasks"], "after": on_log[-3][1]}))
        assert (await recv(ws))["channels"] == ["events", "tasks"]
        assert [m["position"] for m in await events_until(ws, 2)] == [o for _, o in on_log[-2:]]


async def test_a_slow_consumer_is_told_where_to_resume_and_closed(service: Service) -> None:
    await submit(service, register("a1"))
    async with live(service, bound=40) as (base, hub):
        fast = await websockets.connect(f"ws://{base}/ws/v1/events")
        slow = await slow_client(base)
        for ws in (fast, slow):
            await ws.send(json.dumps({"type": "subscribe", "channels": ["events"]}))
            assert (await recv(ws))["type"] == "subscribed"
        reading = asyncio.create_task(events_until(fast, 10**9, timeout=60))
        await flood(service)
        # The slow one reads now: what was sent, then lagged with its last position, then closed.
        positions = []
        while True:
            m = await recv(slow)
            if m["type"] != "event":
                break
            positions.append(m["position"])
        assert m["type"] == "lagged" and m["bound"] == 40
        assert m["resume_after"] == positions[-1]
        assert positions == list(range(positions[0], positions[-1] + 1))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await slow.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        # The one that keeps up is not lagged.
        assert not reading.done()
        reading.cancel()
        assert hub.subscribers == 1
        # Resuming from resume_after gets the rest from the log, every event once.
        async with websockets.connect(f"ws://{base}/ws/v1/events") as again:
            await again.send(json.dumps({"type": "subscribe", "channels": ["events"],
                                         "after": m["resume_after"]}))
            rest = [(p, o) for p, o, _ in await log_events(service) if o > m["resume_after"]]
            got = await events_until(again, len(rest))
            assert [(x["partition"], x["position"]) for x in got] == rest
        await fast.close()


async def test_idle_connections_are_pinged_and_client_pings_answered(service: Service) -> None:
    async with live(service, ping_interval=0.2) as (base, _), \
            websockets.connect(f"ws://{base}/ws/v1/events", ping_interval=None) as ws:
        assert await recv(ws, 2) == {"type": "ping"}
        await ws.send(json.dumps({"type": "pong"}))
        assert await recv(ws, 2) == {"type": "ping"}
        # A protocol-level ping (RFC 6455) is answered with a pong frame too.
        pong = await ws.ping()
        await asyncio.wait_for(pong, 2)


async def test_batched_frames_carry_the_same_messages(service: Service) -> None:
    await submit(service, register("a1"), *[task(f"t{i}") for i in range(20)])
    await settled(service)
    async with live(service) as (base, _), websockets.connect(f"ws://{base}/ws/v1/events") as ws:
        await ws.send(json.dumps({"type": "subscribe", "channels": ["events"], "batch": "yes"}))
        assert (await recv(ws))["message"] == "batch: true (several messages per frame) or false"
        await ws.send(json.dumps({"type": "subscribe", "channels": ["events"], "after": -1, "batch": True}))
        frames = []
        on_log = [(p, o) for p, o, _ in await log_events(service)]
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(5):
            while len([m for m in got if m["type"] == "event"]) < len(on_log):
                frame = await recv(ws)
                frames.append(frame)
                got += frame["messages"] if frame["type"] == "batch" else [frame]
        assert got[0]["type"] == "subscribed"
        assert [(m["partition"], m["position"]) for m in got[1:]] == on_log
        assert any(f["type"] == "batch" for f in frames)  # the replay came in one frame or few


async def _frames_until(ws: ClientConnection, count: int) -> list[str | bytes]:
    """Raw frames until ``count`` events came (an lz4 frame is read to count its events)."""
    frames: list[str | bytes] = []
    seen = 0
    async with asyncio.timeout(10):
        while seen < count:
            frame = await ws.recv()
            frames.append(frame)
            body = json.loads(lz4.frame.decompress(frame) if isinstance(frame, bytes) else frame)
            messages = body["messages"] if body["type"] == "batch" else [body]
            seen += sum(1 for m in messages if m["type"] == "event")
    return frames


def _messages(frames: list[str | bytes]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for frame in frames:
        body = json.loads(lz4.frame.decompress(frame) if isinstance(frame, bytes) else frame)
        out += body["messages"] if body["type"] == "batch" else [body]
    return out


async def test_lz4_frames_carry_the_same_messages_as_text_frames(service: Service) -> None:
    await submit(service, register("a1"), *[task(f"t{i}") for i in range(20)])
    await settled(service)
    async with live(service) as (base, _), contextlib.AsyncExitStack() as stack:
        url = f"ws://{base}/ws/v1/events"
        text, packed, single = [await stack.enter_async_context(websockets.connect(url)) for _ in range(3)]
        await packed.send(json.dumps({"type": "subscribe", "channels": ["events"], "compression": "zstd"}))
        assert await recv(packed) == {"type": "error", "message": 'compression: "lz4" (events in binary '
                                                                  'frames, lz4-compressed) or "none"'}
        subscribe = {"type": "subscribe", "channels": ["events"], "after": -1}
        await text.send(json.dumps({**subscribe, "batch": True}))
        await packed.send(json.dumps({**subscribe, "batch": True, "compression": "lz4"}))
        await single.send(json.dumps({**subscribe, "compression": "lz4"}))
        for ws in (text, packed, single):
            assert (await recv(ws))["type"] == "subscribed"  # a reply stays a text frame
        replayed = len(await log_events(service))
        await submit(service, *[task(f"u{i}") for i in range(10)])  # and live ones after the replay
        await settled(service)
        on_log = [(p, o) for p, o, _ in await log_events(service)]
        assert len(on_log) > replayed
        got = {name: await _frames_until(ws, len(on_log))
               for name, ws in (("text", text), ("packed", packed), ("single", single))}
        assert all(isinstance(f, str) for f in got["text"])
        assert all(isinstance(f, bytes) for f in got["packed"] + got["single"])
        assert any(json.loads(lz4.frame.decompress(f))["type"] == "batch" for f in got["packed"])
        assert all(json.loads(lz4.frame.decompress(f))["type"] == "event" for f in got["single"])
        messages = {name: _messages(frames) for name, frames in got.items()}
        assert [(m["partition"], m["position"]) for m in messages["text"]] == on_log
        assert messages["packed"] == messages["text"] == messages["single"]
        # Back to text frames for this connection's next events.
        await packed.send(json.dumps({"type": "subscribe", "channels": ["events"], "compression": "none"}))
        assert (await recv(packed))["type"] == "subscribed"
        await submit(service, task("v1"))
        frame = await asyncio.wait_for(packed.recv(), 5)
        assert isinstance(frame, str)
        assert _messages([frame])[0]["event"]["subject"] == "v1"


async def test_live_events_go_out_as_the_log_stores_them_without_encoding_them_again(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event appended in this process reaches a subscriber as its record's very bytes, which the
    cache kept beside its envelope: the hub does not encode the envelope again."""
    import services.runtime.hub as hub_module

    encoded: list[object] = []
    real_encode = hub_module.encode
    monkeypatch.setattr(hub_module, "encode", lambda env: encoded.append(env) or real_encode(env))
    async with live(service) as (base, _), websockets.connect(f"ws://{base}/ws/v1/events") as ws:
        await ws.send(json.dumps({"type": "subscribe", "channels": ["events"]}))
        assert (await recv(ws))["type"] == "subscribed"
        await submit(service, register("a1"), *[task(f"t{i}") for i in range(10)])
        texts: list[str] = []
        async with asyncio.timeout(10):
            while len(texts) < 21:  # registered, 10 submitted, 10 assigned
                text = await ws.recv()
                assert isinstance(text, str)
                if json.loads(text)["type"] == "event":
                    texts.append(text)
    topic = service.topics.events
    stored = {(r.partition, r.offset): r.value
              for p in range(await service.log.partitions(topic))
              for r in await service.log.read(topic, p, 0, 1000)}
    for text in texts:
        m = json.loads(text)
        p, o = m["partition"], m["position"]
        assert text == f'{{"type":"event","partition":{p},"position":{o},"event":{stored[(p, o)].decode()}}}'
    assert encoded == []


async def test_the_bytes_kept_for_the_hub_leave_once_it_read_them_even_with_nobody_to_send_to(
        service: Service) -> None:
    """The hub takes the bytes the cache kept for it as it reads, subscribers or not: they do not
    wait for every follower of the partition (here one that never reads, pinning the envelopes)."""
    topic = service.topics.events
    cache = service.cache  # type: ignore[attr-defined]
    async with live(service) as (_, hub):
        start = await service.log.end_offset(topic, 0)
        pinned = cache.follow(topic, 0, start)
        try:
            await submit(service, register("a1"), *[task(f"t{i}") for i in range(10)])
            await settled(service)
            end = await service.log.end_offset(topic, 0)
            await eventually(lambda: hub.last[0] >= end - 1)
            assert [o for o, _ in cache.run(topic, 0, start, 1000)] == list(range(start, end))  # still cached
            assert cache.take_values(topic, 0, list(range(start, end))) == [None] * (end - start)
        finally:
            cache.unfollow(pinned)
