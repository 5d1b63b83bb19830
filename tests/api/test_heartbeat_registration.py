"""Liveness is watched from registration, over HTTP on every runtime: an agent that registers with a
short ``heartbeat_timeout_s`` and never heartbeats goes unhealthy and its task moves to another
agent, by the durable timer its registration armed."""

from __future__ import annotations

import httpx

from contracts.values import MAX_ID_LENGTH
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


async def test_the_longest_ids_arm_timers_that_fire(client: httpx.AsyncClient) -> None:
    # An agent id and a pool at the id limit: the heartbeat timer's id and its firing's command id
    # are longer than either, and the firing must still be a command the service can append.
    pool, agent = "p" * MAX_ID_LENGTH, "a" * MAX_ID_LENGTH
    reg = await client.post("/v1/agents", params={**WAIT, "pool": pool},
                            json={"agent_id": agent, "name": "long", "heartbeat_timeout_s": 1.0})
    assert reg.is_success, reg.text
    assert reg.json()["events"][1]["data"]["timer_id"] == f"heartbeat:{agent}"
    got = await poll(client, f"/v1/agents/{agent}", lambda j: not j["healthy"], timeout=10, pool=pool)
    assert got["unhealthy_reason"] == "no heartbeat for 1.0s"
    # The service is still up and deciding.
    again = await client.post("/v1/agents", params=WAIT, json={"agent_id": "after", "name": "after"})
    assert again.status_code == 201, again.text
