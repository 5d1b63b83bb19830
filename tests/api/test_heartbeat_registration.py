"""Liveness is watched from registration, over HTTP on every runtime: an agent that registers with a
short ``heartbeat_timeout_s`` and never heartbeats goes unhealthy and its task moves to another
agent, by the durable timer its registration armed."""

from __future__ import annotations

import httpx

from tests.api.conftest import poll

WAIT = {"wait": "true"}


async def test_an_agent_that_never_heartbeats_goes_unhealthy_and_its_task_moves(
    client: httpx.AsyncClient,
) -> None:
    reg = await client.post("/v1/agents", params=WAIT,
                            json={"agent_id": "quiet", "name": "quiet", "heartbeat_timeout_s": 3.0})
    assert reg.is_success, reg.text
    assert [x["type"] for x in reg.json()["events"]] == ["AgentRegistered", "TimerScheduled"]
    assert reg.json()["events"][1]["data"]["timer_id"] == "heartbeat:quiet"
    sub = await client.post("/v1/tasks", params=WAIT, json={"task_id": "t1", "type": "work"})
    assert sub.is_success, sub.text
    # Assigned before the timeout (3 s, so a busy machine's coordinator is not too slow for it).
    await poll(client, "/v1/tasks/t1", lambda j: j["agent_id"] == "quiet")
    # The other agent stays healthy for the whole test.
    other = await client.post("/v1/agents", params=WAIT,
                              json={"agent_id": "alive", "name": "alive", "heartbeat_timeout_s": 600})
    assert other.is_success, other.text

    quiet = await poll(client, "/v1/agents/quiet", lambda j: not j["healthy"], timeout=10)
    assert quiet["status"] == "unhealthy" and quiet["unhealthy_reason"] == "no heartbeat for 3.0s"
    assert quiet["last_heartbeat_at"] is None
    task = await poll(client, "/v1/tasks/t1", lambda j: j["agent_id"] == "alive", timeout=10)
    assert task["reassignments"] == 1 and task["attempts"] == 2
    assert task["requeue_reason"] == "agent unhealthy: no heartbeat for 3.0s"
    assert (await client.get("/v1/agents/alive")).json()["healthy"] is True
