"""A queued task says why it waits: ``GET /v1/tasks/{id}`` answers one ``waiting_reason`` while the
task is queued or retrying (null once assigned), from the facts the coordinator used."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx

from services.http.read_schemas import Task
from tests.api.conftest import poll

WAIT = {"wait": "true"}


async def _ok(resp: httpx.Response) -> dict[str, Any]:
    assert resp.is_success, resp.text
    return dict(resp.json())


async def _agent(client: httpx.AsyncClient, agent_id: str, caps: list[str], capacity: int = 1) -> None:
    await _ok(await client.post("/v1/agents", params=WAIT, json={
        "agent_id": agent_id, "name": agent_id, "capabilities": caps, "capacity": capacity,
        "heartbeat_timeout_s": 600}))


async def _submit(client: httpx.AsyncClient, task_id: str, caps: list[str], **body: Any) -> None:
    await _ok(await client.post("/v1/tasks", params=WAIT, json={
        "task_id": task_id, "type": "work", "required_capabilities": caps, **body}))


async def _reason(client: httpx.AsyncClient, task_id: str, code: str | None) -> dict[str, Any]:
    """The task once its waiting_reason has ``code`` (None: no reason), checked against its schema."""
    task = await poll(client, f"/v1/tasks/{task_id}",
                      lambda j: (j["waiting_reason"] or {}).get("code") == code)
    Task.model_validate(task)
    return task


async def test_busy_no_capable_agent_and_assigned(client: httpx.AsyncClient) -> None:
    await _agent(client, "a", ["x"])
    for task_id, caps in (("t1", ["x"]), ("t2", ["x"]), ("t3", ["gpu"])):
        await _submit(client, task_id, caps)
    assigned = await _reason(client, "t1", None)
    assert (assigned["status"], assigned["agent_id"]) == ("assigned", "a")
    busy = await _reason(client, "t2", "all_capable_agents_busy")
    assert busy["status"] == "queued" and set(busy["waiting_reason"]) == {"code", "since"}
    nobody = await _reason(client, "t3", "no_capable_agent")
    assert nobody["waiting_reason"]["missing"] == ["gpu"]


async def test_the_only_capable_agent_spent_its_budget(client: httpx.AsyncClient) -> None:
    await _agent(client, "a", ["x"])
    await _agent(client, "other", ["y"])
    await _ok(await client.put("/v1/budgets", params=WAIT,
                               json={"scope": "agent", "scope_id": "a", "limit_usd": 1}))
    await _ok(await client.post("/v1/costs", params=WAIT,
                                json={"cost_id": "c1", "agent_id": "a", "model": "gpt-4", "cost_usd": 2}))
    await _submit(client, "t", ["x"])
    waiting = (await _reason(client, "t", "budget_exceeded"))["waiting_reason"]
    assert (waiting["scope"], waiting["scope_id"], waiting["agents"]) == ("agent", "a", ["a"])
    await _ok(await client.put("/v1/budgets", params=WAIT,
                               json={"scope": "agent", "scope_id": "a", "limit_usd": 100}))
    assert (await _reason(client, "t", None))["agent_id"] == "a"


async def test_rate_limited_until_a_token_is_back(client: httpx.AsyncClient) -> None:
    await _agent(client, "a", ["x"], capacity=5)
    await _ok(await client.put("/v1/rate-limits", params=WAIT,
                               json={"scope": "agent", "scope_id": "a", "requests_per_min": 1}))
    await _submit(client, "t1", ["x"])
    await _reason(client, "t1", None)
    await _submit(client, "t2", ["x"])
    waiting = (await _reason(client, "t2", "rate_limited"))["waiting_reason"]
    until, since = datetime.fromisoformat(waiting["until"]), datetime.fromisoformat(waiting["since"])
    assert timedelta(seconds=50) < until - since <= timedelta(seconds=60)


async def test_retry_backoff_until_the_next_run(client: httpx.AsyncClient) -> None:
    await _agent(client, "a", ["x"])
    await _submit(client, "t", ["x"], retry={"max_attempts": 2, "strategy": "constant", "base_delay_s": 60})
    await _reason(client, "t", None)
    await _ok(await client.post("/v1/tasks/t/fail", params=WAIT, json={"error": "boom"}))
    task = await _reason(client, "t", "retry_backoff")
    assert task["status"] == "retrying"
    until = datetime.fromisoformat(task["waiting_reason"]["until"])
    assert until == datetime.fromisoformat(task["next_attempt_at"])
    assert task["waiting_reason"]["attempt"] == 1
