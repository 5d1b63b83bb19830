"""Server-Sent Events at ``GET /v1/events/stream`` with httpx-sse against a real uvicorn: the same
channels as the WebSocket, ids that are positions, resume from ``Last-Event-ID``, keepalives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

from services.runtime.service import Service
from tests.streams.conftest import live, log_events, register, submit, task


async def _take(events: AsyncIterator[ServerSentEvent], count: int,
                timeout: float = 10.0) -> list[ServerSentEvent]:
    async with asyncio.timeout(timeout):
        return [await anext(events) for _ in range(count)]


async def test_sse_streams_the_channels_and_resumes_from_last_event_id(service: Service) -> None:
    await submit(service, register("a1"), task("t0"))
    async with live(service) as (base, _), httpx.AsyncClient(base_url=f"http://{base}", timeout=10) as client:
        params = {"channels": "tasks,agent:nobody"}
        async with aconnect_sse(client, "GET", "/v1/events/stream", params=params) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            events = source.aiter_sse()
            [hello] = await _take(events, 1)
            start = json.loads(hello.data)
            assert start["type"] == "subscribed" and start["channels"] == ["agent:nobody", "tasks"]
            assert hello.id == str(start["after"])
            await submit(service, task("t1"), task("t2"))
            await asyncio.sleep(0.2)
            tasks = [(o, ev) for _, o, ev in await log_events(service)
                     if o > start["after"] and ev["type"].startswith("Task")]
            got = await _take(events, len(tasks))
            messages = [json.loads(s.data) for s in got]
            assert [(m["position"], m["event"]) for m in messages] == tasks
            assert [s.id for s in got] == [str(m["position"]) for m in messages]
            last_id = got[1].id

        # A reconnecting EventSource sends the last id it saw: the stream goes on right after it.
        await submit(service, task("t3"))
        await asyncio.sleep(0.2)
        rest = [o for _, o, ev in await log_events(service)
                if o > int(last_id) and ev["type"].startswith("Task")]
        async with aconnect_sse(client, "GET", "/v1/events/stream", params={**params, "after": "0"},
                                headers={"Last-Event-ID": last_id}) as source:
            hello, *got = await _take(source.aiter_sse(), 1 + len(rest))
            assert json.loads(hello.data)["after"] == int(last_id) and hello.id == last_id
            assert [json.loads(s.data)["position"] for s in got] == rest


async def test_sse_refuses_bad_channels_and_positions(service: Service) -> None:
    async with live(service) as (base, _), httpx.AsyncClient(base_url=f"http://{base}", timeout=10) as client:
        bad = await client.get("/v1/events/stream", params={"channels": "tasks,nope"})
        assert bad.status_code == 422
        [err] = bad.json()["detail"]
        assert err["loc"] == ["query", "channels"] and "unknown channel 'nope'" in err["msg"]
        bad = await client.get("/v1/events/stream", params={"channels": "events", "after": "zz"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "after"]
        beyond = await client.get("/v1/events/stream", params={"channels": "events"},
                                  headers={"Last-Event-ID": "999999"})
        assert beyond.status_code == 409 and "beyond the end of the log" in beyond.json()["detail"]


async def test_an_idle_sse_stream_gets_keepalive_comments(service: Service) -> None:
    async with live(service, ping_interval=0.1) as (base, _), \
            httpx.AsyncClient(base_url=f"http://{base}", timeout=10) as client, \
            client.stream("GET", "/v1/events/stream", params={"channels": "events"}) as resp:
        lines = []
        async with asyncio.timeout(5):
            async for line in resp.aiter_lines():
                lines.append(line)
                if lines.count(": keepalive") >= 2:
                    break
        assert lines[0].startswith("id: ") and lines[1].startswith("data: ")
