"""Coordination read models over HTTP: performance profiles, scaling, load balancing, capacity,
timers. The shapes are the projections' (projections.queries); these tests pin the HTTP side:
routes, filters, paging, 404s and read-your-writes."""

from __future__ import annotations

import httpx
import pytest

import services.http.deps
from tests.api.conftest import last_position, poll

WAIT = {"wait": "true"}


async def _agent(client: httpx.AsyncClient, agent_id: str = "a1", **extra: object) -> int:
    resp = await client.post("/v1/agents", params=WAIT, json={
        "agent_id": agent_id, "name": agent_id, "kind": "llm", "capabilities": ["text"], "capacity": 2,
        **extra})
    assert resp.status_code == 201, resp.text
    return await last_position(resp)


async def test_performance_of_an_unknown_agent_is_404(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/agents/nobody/performance")
    assert resp.status_code == 404 and "nobody" in resp.json()["detail"]


async def test_performance_moves_with_outcomes(client: httpx.AsyncClient) -> None:
    position = await _agent(client)
    fresh = await client.get("/v1/agents/a1/performance", params={"min_position": position})
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["agent_id"] == "a1"
    await client.post("/v1/tasks", params=WAIT, json={"task_id": "t1", "type": "x",
                                                      "required_capabilities": ["text"]})
    await poll(client, "/v1/tasks/t1", lambda j: j["status"] == "assigned")
    done = await client.post("/v1/tasks/t1/complete", params=WAIT)
    assert done.status_code == 200
    after = await client.get("/v1/agents/a1/performance", params={"min_position": await last_position(done)})
    assert after.status_code == 200 and after.json() != fresh.json()


async def test_scaling_policies_and_decisions(client: httpx.AsyncClient) -> None:
    for kind, low in (("llm", 2), ("tool", 1)):
        resp = await client.put("/v1/scaling/policies", params=WAIT, json={
            "agent_kind": kind, "min_agents": low, "max_agents": 5, "cooldown_s": 0})
        assert resp.status_code == 200
    policies = (await client.get("/v1/scaling/policies", params={"min_position": await last_position(resp)}))
    assert policies.status_code == 200
    assert sorted(p["agent_kind"] for p in policies.json()["items"]) == ["llm", "tool"]
    decisions = await poll(client, "/v1/scaling/decisions", lambda j: len(j["items"]) == 2)
    assert {(d["agent_kind"], d["to_agents"]) for d in decisions["items"]} == {("llm", 2), ("tool", 1)}
    llm = (await client.get("/v1/scaling/decisions", params={"agent_kind": "llm"})).json()["items"]
    assert [(d["agent_kind"], d["from_agents"], d["to_agents"]) for d in llm] == [("llm", 0, 2)]
    first = (await client.get("/v1/scaling/decisions", params={"limit": 1})).json()["items"]
    assert len(first) == 1
    rest = (await client.get("/v1/scaling/decisions", params={"after": first[0]["position"]})).json()["items"]
    assert len(rest) == 1 and rest[0] != first[0]


async def test_load_balancing_and_capacity(client: httpx.AsyncClient) -> None:
    await _agent(client, "a1")
    position = await _agent(client, "a2")
    for path in ("/v1/metrics/load-balancing", "/v1/capacity"):
        resp = await client.get(path, params={"min_position": position})
        assert resp.status_code == 200, (path, resp.text)
        assert isinstance(resp.json(), dict) and resp.json()
    assert (await client.get("/v1/metrics/load-balancing", params={"pool": "empty"})).status_code == 200
    assert (await client.get("/v1/capacity", params={"pool": "empty"})).status_code == 200


async def test_timers_lists_pending_timers(client: httpx.AsyncClient) -> None:
    await _agent(client, "a1", heartbeat_timeout_s=300)
    beat = await client.post("/v1/agents/a1/heartbeat", params=WAIT, json={"load": 0.1})
    assert beat.status_code == 200
    resp = await client.get("/v1/timers", params={"min_position": await last_position(beat)})
    assert resp.status_code == 200, resp.text
    assert [t["timer_id"] for t in resp.json()["items"]] == ["heartbeat:a1"]
    assert (await client.get("/v1/timers", params={"status": "fired"})).json()["items"] == []
    everything = (await client.get("/v1/timers", params={"status": "all"})).json()["items"]
    assert [t["timer_id"] for t in everything] == ["heartbeat:a1"]
    assert (await client.get("/v1/timers", params={"pool": "empty"})).json()["items"] == []


@pytest.mark.parametrize("path", [
    "/v1/scaling/policies", "/v1/scaling/decisions", "/v1/metrics/load-balancing", "/v1/capacity",
    "/v1/timers", "/v1/agents/a1/performance"])
async def test_reads_wait_for_min_position(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch,
                                           path: str) -> None:
    monkeypatch.setattr(services.http.deps, "READ_WAIT_S", 0.2)
    resp = await client.get(path, params={"min_position": 1000})
    assert resp.status_code == 409 and resp.json()["end"] < 1000, resp.text
