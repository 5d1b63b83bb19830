"""Ephemeral progress: ``POST /v1/tasks/{id}/progress`` (and the hub's ``publish_progress``) reaches
the ``task:`` and ``workflow:`` subscribers live and is never written to the log; and a workflow
run's own events reach ``workflow:<id>``, its steps' task events included."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from services.runtime.hub import publish_progress
from services.runtime.service import Service
from tests.streams.conftest import live, log_events, register, submit
from tests.streams.test_websocket import events_until, quiet, recv

# A run of two steps: the first needs an agent with "text", the second waits on it.
FLOW = {
    "name": "flow", "version": "1.0.0",
    "tasks": [{"name": "draft", "required_capabilities": ["text"]},
              {"name": "review", "required_capabilities": ["text"], "depends_on": ["draft"]}],
}


async def _subscribed(stack: contextlib.AsyncExitStack, base: str, channel: str) -> ClientConnection:
    ws = await stack.enter_async_context(websockets.connect(f"ws://{base}/ws/v1/events"))
    await ws.send(json.dumps({"type": "subscribe", "channels": [channel]}))
    assert (await recv(ws))["type"] == "subscribed"
    return ws


async def test_progress_reaches_task_and_workflow_subscribers_and_never_the_log(service: Service) -> None:
    async with live(service) as (base, _), contextlib.AsyncExitStack() as stack, \
            httpx.AsyncClient(base_url=f"http://{base}", timeout=10) as client:
        names = ("task:r1.draft", "workflow:r1", "pool/blue/task:r1.draft", "events", "task:other")
        sockets = {name: await _subscribed(stack, base, name) for name in names}
        end = await service.log.end_offset(service.topics.events, 0)

        for piece in ("Hel", "lo"):
            resp = await client.post("/v1/tasks/r1.draft/progress", json={"delta": piece})
            assert resp.status_code == 202 and resp.json() == {"delivered": 2}
        resp = await client.post("/v1/tasks/r1.draft/progress", params={"pool": "blue"},
                                 json={"message": "half way", "data": {"done": 0.5}})
        assert resp.json() == {"delivered": 3}  # pool/blue/task:r1.draft too
        # A task that is no step names its run itself.
        resp = await client.post("/v1/tasks/plain/progress", json={"workflow_id": "r1", "delta": "!"})
        assert resp.json() == {"delivered": 1}
        # Code beside the service in this process (hosted executors) publishes without HTTP.
        assert publish_progress(service, "r1.draft", delta="?") == 2

        got = [await recv(sockets["task:r1.draft"]) for _ in range(4)]
        assert [m.get("delta") or m.get("message") for m in got] == ["Hel", "lo", "half way", "?"]
        first = got[0]
        assert first["type"] == "progress" and first["task_id"] == "r1.draft"
        assert first["workflow_id"] == "r1" and first["pool"] == "default" and "time" in first
        assert got[2]["pool"] == "blue" and got[2]["data"] == {"done": 0.5}
        run = [await recv(sockets["workflow:r1"]) for _ in range(5)]
        assert [m["task_id"] for m in run] == ["r1.draft", "r1.draft", "r1.draft", "plain", "r1.draft"]
        [blue] = [await recv(sockets["pool/blue/task:r1.draft"])]
        assert blue["message"] == "half way"
        for name in ("events", "task:other"):
            assert await quiet(sockets[name], 0.2) == []
        # Nothing of it is on the log.
        assert await service.log.end_offset(service.topics.events, 0) == end


async def test_progress_is_bounded_and_validated(service: Service) -> None:
    async with live(service) as (base, _), httpx.AsyncClient(base_url=f"http://{base}", timeout=10) as client:
        for body in ({"delta": "x" * 16_001}, {"message": "x" * 4001}, {"data": {"x": "y" * 17_000}},
                     {"token": "x"}, {"workflow_id": "a/b"}):
            resp = await client.post("/v1/tasks/t1/progress", json=body)
            assert resp.status_code == 422, body
        assert (await client.post("/v1/tasks/t1/progress", json={})).json() == {"delivered": 0}


async def test_a_workflow_channel_carries_the_run_and_its_steps(service: Service) -> None:
    async with live(service) as (base, _), contextlib.AsyncExitStack() as stack, \
            httpx.AsyncClient(base_url=f"http://{base}", timeout=10) as client:
        ws = await _subscribed(stack, base, "workflow:run-7")
        other = await _subscribed(stack, base, "workflow:run-8")
        await submit(service, register("writer"))
        resp = await client.post("/v1/workflows", params={"wait": "true"},
                                 json={"definition": FLOW, "execution_id": "run-7"})
        assert resp.status_code == 201, resp.text
        for step in ("draft", "review"):
            await _complete_when_assigned(client, f"run-7.{step}")
        await asyncio.sleep(0.3)
        mine = [ev for _, _, ev in await log_events(service) if ev["data"].get("workflow_id") == "run-7"
                or (ev["data"].get("task_id") or "").startswith("run-7.")]
        assert {ev["type"] for ev in mine} >= {"WorkflowStarted", "TaskSubmitted", "TaskAssigned",
                                               "TaskCompleted", "WorkflowEnded"}
        got = await events_until(ws, len(mine))
        assert [m["event"]["id"] for m in got] == [ev["id"] for ev in mine]
        assert await quiet(other, 0.1) == []


async def _complete_when_assigned(client: httpx.AsyncClient, task_id: str) -> None:
    async with asyncio.timeout(10):
        while (await client.get(f"/v1/tasks/{task_id}")).json().get("status") != "assigned":  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    resp = await client.post(f"/v1/tasks/{task_id}/complete", params={"wait": "true"},
                             json={"agent_id": "writer", "result": {"ok": True}})
    assert resp.status_code == 200, resp.text
