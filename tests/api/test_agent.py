"""The local agent (services.cli.local_agent) in-process against a real service over ASGI: it works its
tasks, records a cost per run, comes back after the server declared it gone, and leaves cleanly."""

from __future__ import annotations

import asyncio

import httpx

from services.cli.local_agent import AgentConfig, LocalAgent
from services.http.app import create_app
from services.runtime.service import Service
from tests.api.conftest import poll


def _agent(service: Service, **overrides: object) -> LocalAgent:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service=service)), base_url="http://t")
    config = AgentConfig(**{"url": "http://t", "name": "w", "capabilities": ("text",), "capacity": 2,
                            "kind": "llm", "heartbeat_s": 0.1, "work_s": 0.01, "seed": 7,
                            **overrides})  # type: ignore[arg-type]
    return LocalAgent(config, client)


async def test_the_agent_works_its_tasks_and_leaves(service: Service, client: httpx.AsyncClient) -> None:
    agent = _agent(service, agent_id="w1", fail_rate=0.3)
    stop = asyncio.Event()
    ids: list[str] = []
    run = asyncio.create_task(agent.run(stop, on_registered=ids.append))
    try:
        for i in range(10):
            resp = await client.post("/v1/tasks", json={
                "task_id": f"t{i}", "type": "x", "required_capabilities": ["text"],
                "retry": {"max_attempts": 20, "strategy": "immediate"}})
            assert resp.status_code == 202
        done = await poll(client, "/v1/tasks", lambda j: j["total"] == 10, status="completed", timeout=20)
        assert {t["agent_id"] for t in done["items"]} == {"w1"}
        assert ids == ["w1"]
        assert agent.completed == 10 and agent.failed > 0  # some runs failed and were retried
        costs = (await client.get("/v1/costs/summary")).json()
        assert set(costs["by_task"]) == {f"t{i}" for i in range(10)} and set(costs["by_agent"]) == {"w1"}
        me = await poll(client, "/v1/agents/w1", lambda j: j["last_heartbeat_at"] is not None)
        assert me["status"] == "active"
    finally:
        stop.set()
        await run
        await agent.client.aclose()
    gone = await poll(client, "/v1/agents/w1", lambda j: j["status"] == "deregistered")
    assert gone["agent_id"] == "w1"


async def test_the_agent_registers_again_when_the_server_removed_it(service: Service,
                                                                     client: httpx.AsyncClient) -> None:
    agent = _agent(service, agent_id="w2")
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    try:
        await poll(client, "/v1/agents/w2", lambda j: j["status"] == "active")
        removed = await client.delete("/v1/agents/w2", params={"wait": "true", "reason": "operator"})
        assert removed.status_code == 200
        # The next heartbeat is refused (AGENT_NOT_ACTIVE): the agent registers again.
        await poll(client, "/v1/events", lambda j: len(j["items"]) == 2, type="AgentRegistered", subject="w2")
        await poll(client, "/v1/agents/w2", lambda j: j["status"] == "active")
        await client.post("/v1/tasks", json={"task_id": "t1", "type": "x", "required_capabilities": ["text"]})
        await poll(client, "/v1/tasks/t1", lambda j: j["status"] == "completed", timeout=10)
    finally:
        stop.set()
        await run
        await agent.client.aclose()


class _SwallowingTransport(httpx.AsyncBaseTransport):
    """A server that answers everything and, in one heartbeat, swallows the cancellation that
    reaches it (as a request run in-process through an ASGI stack can)."""

    def __init__(self) -> None:
        self.swallowed = False
        self.holding = asyncio.Event()  # a heartbeat is in flight, waiting to swallow a cancel

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"items": []})
        if request.url.path.endswith("/heartbeat") and not self.swallowed:
            self.holding.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.swallowed = True
            return httpx.Response(200, json={})
        return httpx.Response(201 if request.method == "POST" else 200, json={})


async def test_the_agent_stops_even_when_a_request_swallowed_its_cancellation() -> None:
    transport = _SwallowingTransport()
    client = httpx.AsyncClient(transport=transport, base_url="http://t")
    config = AgentConfig(url="http://t", name="w", capabilities=("text",), heartbeat_s=0.05)
    agent = LocalAgent(config, client)
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(transport.holding.wait(), 5)
        stop.set()
        done, _ = await asyncio.wait({run}, timeout=5)  # (wait_for would cancel it again)
        assert run in done, "the agent's run did not end after stop"
        assert transport.swallowed, "the cancellation never reached the heartbeat"
    finally:
        run.cancel()
        await client.aclose()
