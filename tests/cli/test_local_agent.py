"""The local agent works each run (task, attempt) once, however long the read model lists it."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from services.cli.local_agent import AgentConfig, LocalAgent


async def test_a_finished_run_still_listed_as_assigned_is_not_worked_again() -> None:
    calls: Counter[str] = Counter()
    looked_often = asyncio.Event()

    def server(request: httpx.Request) -> httpx.Response:
        calls[f"{request.method} {request.url.path}"] += 1
        if request.method == "GET":  # a read model that has not caught up with the completion yet
            if calls["GET /v1/tasks"] >= 5:
                looked_often.set()
            return httpx.Response(200, json={"items": [{"task_id": "t1", "attempts": 1}]})
        created = request.url.path in ("/v1/agents", "/v1/costs")
        return httpx.Response(201 if created else 200, json={"status": "applied"})

    config = AgentConfig(url="http://t", name="w", agent_id="w1", heartbeat_s=1.0, work_s=0.01, seed=1)
    async with httpx.AsyncClient(transport=httpx.MockTransport(server), base_url="http://t") as client:
        agent = LocalAgent(config, client)
        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        await asyncio.wait_for(looked_often.wait(), 10)
        stop.set()
        await run
    assert calls["POST /v1/tasks/t1/start"] == 1 and calls["POST /v1/tasks/t1/complete"] == 1
    assert agent.completed == 1


async def test_a_run_whose_completion_was_cut_off_is_finished_at_the_next_look() -> None:
    # The server died while the agent completed t1: the task stays "running" on this agent, so it is
    # listed as running (no longer as assigned), and the agent works the run again, same ids.
    calls: Counter[str] = Counter()
    finished = asyncio.Event()

    def server(request: httpx.Request) -> httpx.Response:
        key = f"{request.method} {request.url.path}"
        calls[key] += 1
        if request.method == "GET":
            status = request.url.params.get("status")
            started = calls["POST /v1/tasks/t1/start"] > 0
            listed = (status == "assigned" and not started) or (status == "running" and started
                                                                and not finished.is_set())
            return httpx.Response(200, json={"items": [{"task_id": "t1", "attempts": 1}] if listed else []})
        if key == "POST /v1/tasks/t1/complete":
            if calls[key] == 1:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            finished.set()
        created = request.url.path in ("/v1/agents", "/v1/costs")
        return httpx.Response(201 if created else 200, json={"status": "applied"})

    config = AgentConfig(url="http://t", name="w", agent_id="w1", heartbeat_s=1.0, work_s=0.01, seed=1)
    async with httpx.AsyncClient(transport=httpx.MockTransport(server), base_url="http://t") as client:
        agent = LocalAgent(config, client)
        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        await asyncio.wait_for(finished.wait(), 10)
        stop.set()
        await run
    assert calls["POST /v1/tasks/t1/complete"] == 2 and agent.completed == 1
