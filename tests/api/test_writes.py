"""Writes through the HTTP API against a real service: outcomes, statuses, the coordinator, rules."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from services.runtime.embedded import Runner
from services.runtime.service import Service
from tests.api.conftest import end_offsets, event_count, last_position, poll, settle

AGENT = {
    "agent_id": "a1",
    "name": "worker one",
    "kind": "llm",
    "capabilities": ["text", "code"],
    "capacity": 1,
}


async def register(client: httpx.AsyncClient, **overrides: Any) -> httpx.Response:
    resp = await client.post("/v1/agents", params={"wait": "true"}, json={**AGENT, **overrides})
    assert resp.status_code == 201, resp.text
    return resp


async def submit(client: httpx.AsyncClient, task_id: str, **overrides: Any) -> httpx.Response:
    body = {
        "task_id": task_id,
        "type": "summarize",
        "priority": 5,
        "required_capabilities": ["text"],
        "data": {"doc": task_id},
        **overrides,
    }
    return await client.post("/v1/tasks", params={"wait": "true"}, json=body)


async def test_write_without_wait_is_accepted_with_its_log_position(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/agents", json=AGENT)
    assert resp.status_code == 202
    body = resp.json()
    assert body["status"] == "accepted" and body["duplicate"] is False
    assert body["partition"] == 0 and body["position"] == 0
    assert isinstance(body["command_id"], str) and body["command_id"]
    agent = await poll(client, "/v1/agents", lambda j: len(j["items"]) == 1)
    assert agent["items"][0]["agent_id"] == "a1"


async def test_register_agent_with_wait_returns_201_and_events(client: httpx.AsyncClient) -> None:
    resp = await register(client)
    body = resp.json()
    assert body["status"] == "applied"
    [event, timer] = body["events"]
    assert event["type"] == "AgentRegistered" and event["subject"] == "a1"
    # Liveness is watched from registration: the heartbeat timer is armed with it.
    assert timer["type"] == "TimerScheduled" and timer["data"]["timer_id"] == "heartbeat:a1"
    assert event["position"] == 0 and event["partition"] == 0
    assert event["commandid"] == body["command_id"] and event["pool"] == "default"
    assert event["data"]["capabilities"] == ["text", "code"]
    assert isinstance(event["time"], str) and event["time"].endswith("+00:00")
    got = await client.get("/v1/agents/a1", params={"min_position": body["position"]})
    assert got.status_code == 200
    assert got.json()["name"] == "worker one" and got.json()["status"] == "active"


async def test_agent_id_is_generated_when_absent(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/agents", params={"wait": "true"}, json={"name": "anon"})
    assert resp.status_code == 201
    agent_id = resp.json()["events"][0]["data"]["agent_id"]
    assert len(agent_id) == 36  # a UUIDv7
    got = await client.get(f"/v1/agents/{agent_id}", params={"min_position": await last_position(resp)})
    assert got.status_code == 200


async def test_registering_twice_is_409_agent_exists(client: httpx.AsyncClient) -> None:
    await register(client)
    resp = await client.post("/v1/agents", params={"wait": "true"}, json=AGENT)
    assert resp.status_code == 409
    body = resp.json()
    assert body["status"] == "rejected" and body["code"] == "AGENT_EXISTS"
    assert "a1" in body["message"] and body["details"]["agent_id"] == "a1"
    assert [e["type"] for e in body["events"]] == ["CommandRejected"]


async def test_heartbeat_and_deregister(client: httpx.AsyncClient) -> None:
    await register(client)
    resp = await client.post(
        "/v1/agents/a1/heartbeat", params={"wait": "true"}, json={"load": 0.5, "queue": 2}
    )
    assert resp.status_code == 200
    assert resp.json()["events"][0]["type"] == "AgentHeartbeatReceived"
    empty = await client.post("/v1/agents/a1/heartbeat", params={"wait": "true"})
    assert empty.status_code == 200  # every heartbeat field is optional, so is the body
    agent = (await client.get("/v1/agents/a1", params={"min_position": await last_position(resp)})).json()
    assert agent["last_heartbeat_at"] is not None
    gone = await client.delete("/v1/agents/a1", params={"wait": "true", "reason": "scaled down"})
    assert gone.status_code == 200
    assert gone.json()["events"][-1]["data"] == {"agent_id": "a1", "reason": "scaled down"}
    listed = await client.get(
        "/v1/agents", params={"status": "deregistered", "min_position": await last_position(gone)}
    )
    assert [a["agent_id"] for a in listed.json()["items"]] == ["a1"]
    assert (await client.get("/v1/agents", params={"status": "active"})).json()["items"] == []


async def test_submitted_task_is_assigned_by_the_coordinator(client: httpx.AsyncClient) -> None:
    await register(client)
    await register(client, agent_id="a2", capabilities=["image"])
    resp = await submit(client, "t1")
    assert resp.status_code == 201
    assert resp.json()["events"][0]["type"] == "TaskSubmitted"
    task = await poll(client, "/v1/tasks/t1", lambda t: t["status"] == "assigned")
    assert task["agent_id"] == "a1"  # the only agent with the "text" capability
    audit = (await client.get("/v1/audit/assignments", params={"task_id": "t1"})).json()["items"]
    assert len(audit) == 1 and audit[0]["agent_id"] == "a1"
    assert audit[0]["candidates"][0]["agent_id"] == "a1"


async def test_task_lifecycle_start_complete_fail_cancel(client: httpx.AsyncClient) -> None:
    await register(client)
    await submit(client, "t1")
    await poll(client, "/v1/tasks/t1", lambda t: t["status"] == "assigned")

    wrong = await client.post("/v1/tasks/t1/start", params={"wait": "true"}, json={"agent_id": "other"})
    assert wrong.status_code == 409 and wrong.json()["code"] == "WRONG_AGENT"
    started = await client.post("/v1/tasks/t1/start", params={"wait": "true"})  # no body at all
    assert started.status_code == 200 and started.json()["events"][0]["type"] == "TaskStarted"
    done = await client.post(
        "/v1/tasks/t1/complete", params={"wait": "true"}, json={"agent_id": "a1", "result": {"summary": "ok"}}
    )
    assert done.status_code == 200
    task = (await client.get("/v1/tasks/t1", params={"min_position": await last_position(done)})).json()
    assert task["status"] == "completed" and task["result"] == {"summary": "ok"}

    # The agent has capacity 1: completing t1 frees it for t2.
    await submit(client, "t2")
    await poll(client, "/v1/tasks/t2", lambda t: t["status"] == "assigned")
    failed = await client.post("/v1/tasks/t2/fail", params={"wait": "true"}, json={"error": "model timeout"})
    assert failed.status_code == 200
    task = (await client.get("/v1/tasks/t2", params={"min_position": await last_position(failed)})).json()
    assert task["status"] == "failed" and task["error"] == "model timeout"

    await submit(client, "t3", required_capabilities=["nobody-has-this"])
    cancelled = await client.post(
        "/v1/tasks/t3/cancel", params={"wait": "true"}, json={"reason": "not needed"}
    )
    assert cancelled.status_code == 200 and cancelled.json()["events"][0]["type"] == "TaskCancelled"
    again = await client.post("/v1/tasks/t3/cancel", params={"wait": "true"})
    assert again.status_code == 409 and again.json()["code"] == "INVALID_TASK_STATE"

    listed = (await client.get("/v1/tasks", params={"min_position": await last_position(cancelled)})).json()
    assert {t["task_id"]: t["status"] for t in listed["items"]} == {
        "t1": "completed",
        "t2": "failed",
        "t3": "cancelled",
    }
    assert listed["total"] == 3 and listed["page"] == 1 and listed["page_size"] == 50


async def test_deregistering_an_agent_requeues_its_task(client: httpx.AsyncClient) -> None:
    await register(client)
    await submit(client, "t1")
    await poll(client, "/v1/tasks/t1", lambda t: t["status"] == "assigned")
    gone = await client.delete("/v1/agents/a1", params={"wait": "true"})
    kinds = [e["type"] for e in gone.json()["events"]]
    assert kinds == ["TaskRequeued", "TimerCancelled", "AgentDeregistered"]
    task = (await client.get("/v1/tasks/t1", params={"min_position": await last_position(gone)})).json()
    assert task["status"] == "queued" and task["agent_id"] is None


async def test_unknown_ids_answer_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/agents/ghost")).status_code == 404
    assert (await client.get("/v1/tasks/ghost")).status_code == 404
    for method, path, body in (
        ("POST", "/v1/agents/ghost/heartbeat", None),
        ("DELETE", "/v1/agents/ghost", None),
        ("POST", "/v1/tasks/ghost/start", None),
        ("POST", "/v1/tasks/ghost/complete", {"result": {}}),
        ("POST", "/v1/tasks/ghost/fail", {"error": "x"}),
        ("POST", "/v1/tasks/ghost/cancel", None),
        ("DELETE", "/v1/resources/allocations/ghost", None),
        ("POST", "/v1/costs", {"agent_id": "ghost", "model": "gpt-4o", "input_tokens": 1}),
    ):
        resp = await client.request(method, path, params={"wait": "true"}, json=body)
        assert resp.status_code == 404, (path, resp.text)
        assert resp.json()["status"] == "rejected"
        assert resp.json()["code"] in ("UNKNOWN_AGENT", "UNKNOWN_TASK", "UNKNOWN_ALLOCATION")


async def test_allocations_within_and_over_limits(client: httpx.AsyncClient) -> None:
    await register(client)
    limits = {"max_cpu_cores": 4, "max_memory_mb": 8192, "max_disk_mb": 10_000, "max_network_mbps": 100}
    resp = await client.put("/v1/resources/limits", params={"wait": "true"}, json=limits)
    assert resp.status_code == 200 and resp.json()["events"][0]["type"] == "ResourceLimitsSet"

    first = await client.post(
        "/v1/resources/allocations",
        params={"wait": "true"},
        json={"allocation_id": "al1", "agent_id": "a1", "cpu_cores": 3, "memory_mb": 4096},
    )
    assert first.status_code == 201
    over = await client.post(
        "/v1/resources/allocations",
        params={"wait": "true"},
        json={"allocation_id": "al2", "agent_id": "a1", "cpu_cores": 2},
    )
    assert over.status_code == 409
    assert over.json()["code"] == "RESOURCE_LIMIT_EXCEEDED"
    assert over.json()["details"]["over"]["cpu_cores"]["free"] == 1

    view = (await client.get("/v1/resources", params={"min_position": await last_position(over)})).json()
    assert view["allocated"]["cpu_cores"] == 3 and view["free"]["cpu_cores"] == 1
    assert [a["allocation_id"] for a in view["allocations"]] == ["al1"]

    released = await client.delete("/v1/resources/allocations/al1", params={"wait": "true"})
    assert released.status_code == 200 and released.json()["events"][0]["type"] == "ResourcesReleased"
    retry = await client.post(
        "/v1/resources/allocations",
        params={"wait": "true"},
        json={"allocation_id": "al2", "agent_id": "a1", "cpu_cores": 2},
    )
    assert retry.status_code == 201
    view = (await client.get("/v1/resources", params={"min_position": await last_position(retry)})).json()
    assert view["allocated"]["cpu_cores"] == 2


async def test_costs_are_priced_from_the_table(client: httpx.AsyncClient) -> None:
    await register(client)
    resp = await client.post(
        "/v1/costs",
        params={"wait": "true"},
        json={
            "cost_id": "c1",
            "agent_id": "a1",
            "model": "gpt-4o",
            "input_tokens": 1000,
            "output_tokens": 1000,
        },
    )
    assert resp.status_code == 201
    data = resp.json()["events"][0]["data"]
    assert data["priced_from_table"] is True
    assert abs(data["cost_usd"] - (0.0025 + 0.01)) < 1e-12
    explicit = await client.post(
        "/v1/costs",
        params={"wait": "true"},
        json={"cost_id": "c2", "agent_id": "a1", "model": "custom", "cost_usd": 0.5},
    )
    assert explicit.status_code == 201 and explicit.json()["events"][0]["data"]["priced_from_table"] is False
    # A model in no table is priced at the default, unless the pool's prices are strict.
    strict = await client.put("/v1/prices", params={"wait": "true"}, json={"strict": True})
    assert strict.status_code == 200
    unpriced = await client.post(
        "/v1/costs",
        params={"wait": "true"},
        json={"cost_id": "c3", "agent_id": "a1", "model": "custom", "input_tokens": 5},
    )
    assert unpriced.status_code == 409 and unpriced.json()["code"] == "UNKNOWN_MODEL_PRICE"
    summary = (
        await client.get("/v1/costs/summary", params={"min_position": await last_position(unpriced)})
    ).json()
    assert abs(summary["total_usd"] - 0.5125) < 1e-9
    assert set(summary["by_model"]) == {"gpt-4o", "custom"}


async def test_spent_budget_rejects_new_tasks(client: httpx.AsyncClient) -> None:
    await register(client)
    budget = await client.put(
        "/v1/budgets", params={"wait": "true"}, json={"scope": "pool", "limit_usd": 0.01}
    )
    assert budget.status_code == 200 and budget.json()["events"][0]["type"] == "BudgetSet"
    assert (await submit(client, "before")).status_code == 201
    # The coordinator assigns it on its own time (on Kafka, in another stage): wait for it.
    await poll(client, "/v1/tasks/before", lambda j: j["status"] == "assigned")
    cost = await client.post(
        "/v1/costs",
        params={"wait": "true"},
        json={"agent_id": "a1", "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 1000},
    )
    assert cost.status_code == 201
    # The task "before" is running in the spent pool: it is flagged, not stopped.
    assert [e["type"] for e in cost.json()["events"]] == [
        "CostRecorded", "BudgetExceeded", "TaskBudgetFlagged"]
    resp = await submit(client, "after")
    assert resp.status_code == 409
    assert resp.json()["code"] == "BUDGET_EXCEEDED" and resp.json()["status"] == "rejected"
    summary = (
        await client.get("/v1/costs/summary", params={"min_position": await last_position(resp)})
    ).json()
    assert summary["budgets"][0]["exceeded"] is True
    rejected = (
        await client.get("/v1/audit/rejections", params={"command_id": resp.json()["command_id"]})
    ).json()
    assert [r["code"] for r in rejected["items"]] == ["BUDGET_EXCEEDED"]


# The same on Kafka, where a repeat of a decided command is not appended either:
# tests/api/test_idempotency.py runs on both runtimes.
@pytest.mark.embedded
async def test_idempotency_key_header_returns_the_first_outcome(
    client: httpx.AsyncClient, service: Service
) -> None:
    # Once settled (the coordinator marks the task unassignable: no agents), the log's ends move
    # only through these requests.
    headers = {"Idempotency-Key": "submit-t1-once"}
    first = await client.post(
        "/v1/tasks", params={"wait": "true"}, headers=headers, json={"task_id": "t1", "type": "x"}
    )
    assert first.status_code == 201 and first.json()["command_id"] == "submit-t1-once"
    assert first.json()["duplicate"] is False
    await settle(service)
    before_events = await event_count(client)
    before_offsets = await end_offsets(service)

    again = await client.post(
        "/v1/tasks", params={"wait": "true"}, headers=headers, json={"task_id": "t1", "type": "x"}
    )
    assert again.status_code == 201
    assert again.json()["duplicate"] is True
    assert again.json()["events"] == first.json()["events"]
    # A different body under the same key is refused (tests/api/test_idempotency.py).
    other = await client.post("/v1/tasks", headers=headers, json={"task_id": "t9", "type": "y"})
    assert other.status_code == 422 and other.json()["detail"][0]["type"] == "idempotency_key_reused"
    assert await end_offsets(service) == before_offsets
    assert await event_count(client) == before_events


# The embedded log refuses a repeated command id and answers the first command's position. Kafka
# cannot look a command up by id: a repeat answers a position decided after it (or, racing the
# first, is appended again and dropped by the decider).
@pytest.mark.embedded
async def test_repeated_command_id_is_a_duplicate_with_the_first_position(
    client: httpx.AsyncClient, runner: Runner
) -> None:
    body = {"command_id": "cmd-1", **AGENT}
    first = await client.post("/v1/agents", json=body)
    assert first.status_code == 202
    again = await client.post("/v1/agents", json=body)
    assert again.status_code == 202
    assert again.json() == {**first.json(), "duplicate": True}
    waited = await client.post("/v1/agents", params={"wait": "true"}, json=body)
    assert waited.status_code == 201  # the first outcome (registered), not AGENT_EXISTS
    assert waited.json()["duplicate"] is True
    assert [e["type"] for e in waited.json()["events"]] == ["AgentRegistered", "TimerScheduled"]
    assert await runner.log.end_offset("commands", 0) == 1
    assert await event_count(client) == 2  # the registration and its heartbeat timer, once


async def test_header_wins_over_body_command_id(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/v1/agents", headers={"Idempotency-Key": "from-header"}, json={"command_id": "from-body", **AGENT}
    )
    assert resp.json()["command_id"] == "from-header"


async def test_actor_and_correlation_headers_reach_the_events(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/v1/agents",
        params={"wait": "true"},
        json=AGENT,
        headers={"X-Agentbus-Actor": "alice", "X-Correlation-Id": "flow-7"},
    )
    event = resp.json()["events"][0]
    assert event["actor"] == "alice" and event["correlationid"] == "flow-7"


async def test_pool_in_the_body_is_the_envelope_pool(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/agents", params={"wait": "true"}, json={**AGENT, "pool": "gpu"})
    assert resp.status_code == 201
    assert resp.json()["events"][0]["pool"] == "gpu"
    assert "pool" not in resp.json()["events"][0]["data"]
    pos = await last_position(resp)
    assert (await client.get("/v1/agents/a1", params={"pool": "gpu", "min_position": pos})).status_code == 200
    assert (await client.get("/v1/agents/a1")).status_code == 404  # the default pool has no a1
    # The same agent id in another pool is another agent.
    assert (await client.post("/v1/agents", params={"wait": "true"}, json=AGENT)).status_code == 201
    # Writes without a body take the pool from the query.
    hb = await client.post("/v1/agents/a1/heartbeat", params={"wait": "true", "pool": "gpu"})
    assert hb.status_code == 200 and hb.json()["events"][0]["pool"] == "gpu"


# A repeat without wait answers the first command's position here; on Kafka a position decided
# after it.
@pytest.mark.embedded
async def test_commands_endpoint_by_type_name(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/v1/commands",
        params={"wait": "true"},
        json={
            "type": "RegisterAgent",
            "data": {"agent_id": "a1", "name": "n"},
            "pool": "p2",
            "command_id": "reg-a1",
        },
    )
    assert resp.status_code == 201
    body = resp.json()
    assert body["command_id"] == "reg-a1" and body["events"][0]["pool"] == "p2"
    hb = await client.post(
        "/v1/commands",
        params={"wait": "true"},
        json={"type": "AgentHeartbeat", "data": {"agent_id": "a1"}, "pool": "p2"},
    )
    assert hb.status_code == 200
    again = await client.post(
        "/v1/commands",
        json={
            "type": "RegisterAgent",
            "data": {"agent_id": "a1", "name": "n"},
            "pool": "p2",
            "command_id": "reg-a1",
        },
    )
    assert again.json()["duplicate"] is True and again.json()["position"] == 0  # the first command's offset


async def test_commands_endpoint_accepts_a_structured_cloudevent(client: httpx.AsyncClient) -> None:
    ce = {
        "specversion": "1.0",
        "id": "ce-task-1",
        "source": "urn:test:client",
        "type": "SubmitTask",
        "datacontenttype": "application/json",
        "pool": "p2",
        "data": {"task_id": "t1", "type": "x", "priority": 7},
    }
    resp = await client.post("/v1/commands", params={"wait": "true"}, json=ce)
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["command_id"] == "ce-task-1"
    [event] = body["events"]
    assert event["type"] == "TaskSubmitted" and event["pool"] == "p2"
    assert event["causationid"] == "ce-task-1" and event["data"]["priority"] == 7
    task = await client.get("/v1/tasks/t1", params={"pool": "p2", "min_position": body["position"]})
    assert task.status_code == 200
    again = await client.post("/v1/commands", params={"wait": "true"}, json=ce)
    assert again.json()["duplicate"] is True and again.json()["events"] == body["events"]


# The next three construct runners themselves: without deciders, restarted, with four partitions.
@pytest.mark.embedded
async def test_wait_times_out_as_pending(tmp_path: Any) -> None:
    from services.http.app import create_app
    from services.runtime.settings import Settings

    # No deciders: commands are appended but never decided.
    r = Runner(Settings(data_dir=tmp_path), deciders=False, coordinator=False)
    await r.start()
    try:
        transport = httpx.ASGITransport(app=create_app(service=r))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            resp = await c.post("/v1/agents", params={"wait": "true", "timeout": "0.2"}, json=AGENT)
            assert resp.status_code == 202
            assert resp.json()["status"] == "pending" and resp.json()["position"] == 0
            health = (await c.get("/v1/health")).json()
            assert health["status"] == "ok" and health["deciders_ready"] is False
    finally:
        await r.stop()


@pytest.mark.embedded
async def test_first_outcome_survives_a_restart(tmp_path: Any) -> None:
    from services.http.app import create_app
    from services.runtime.settings import Settings

    settings = Settings(data_dir=tmp_path)
    outcomes = []
    for _ in range(2):
        async with Runner(settings) as r:
            await r.ready()
            transport = httpx.ASGITransport(app=create_app(service=r))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                resp = await c.post(
                    "/v1/agents", params={"wait": "true"}, headers={"Idempotency-Key": "once"}, json=AGENT
                )
                outcomes.append(resp)
                assert await event_count(c) == 2  # the registration and its heartbeat timer, once
    first, second = outcomes
    assert first.status_code == second.status_code == 201
    assert second.json()["duplicate"] is True
    assert second.json()["events"] == first.json()["events"]


@pytest.mark.embedded
async def test_pools_on_several_partitions(tmp_path: Any) -> None:
    from services.http.app import create_app
    from services.runtime.settings import Settings

    async with Runner(Settings(data_dir=tmp_path, partitions=4)) as r:
        await r.ready()
        pools = ["default", "gpu", "cpu", "eu", "us"]
        assert len({r.partition_of(p) for p in pools}) > 1
        transport = httpx.ASGITransport(app=create_app(service=r))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for pool in pools:
                resp = await c.post(
                    "/v1/tasks",
                    params={"wait": "true"},
                    json={"task_id": "same-id", "type": pool, "pool": pool},
                )
                assert resp.status_code == 201
                event = resp.json()["events"][0]
                assert event["partition"] == r.partition_of(pool)
                task = await c.get(
                    "/v1/tasks/same-id", params={"pool": pool, "min_position": resp.json()["position"]}
                )
                assert task.status_code == 200 and task.json()["type"] == pool
            for pool in pools:
                params = {"pool": pool, "type": "TaskSubmitted"}
                items = (await c.get("/v1/events", params=params)).json()["items"]
                assert [(e["pool"], e["data"]["type"]) for e in items] == [(pool, pool)]
            assert (await c.get("/v1/health")).json()["partitions"] == 4


async def test_what_allocations_hold_is_summed_exactly(client: httpx.AsyncClient) -> None:
    # Ten tenths of a core fill a one-core pool: the read says 1 allocated, 0 free, as the decider
    # (which refuses an eleventh) sees it, not 0.9999999999999999 and 1.1e-16.
    await register(client)
    limits = {"max_cpu_cores": 1, "max_memory_mb": 1, "max_disk_mb": 1, "max_network_mbps": 1}
    assert (await client.put("/v1/resources/limits", params={"wait": "true"}, json=limits)).status_code == 200
    for n in range(10):
        resp = await client.post("/v1/resources/allocations", params={"wait": "true"},
                                 json={"allocation_id": f"al{n}", "agent_id": "a1", "cpu_cores": 0.1})
        assert resp.status_code == 201, resp.text
    over = await client.post("/v1/resources/allocations", params={"wait": "true"},
                             json={"allocation_id": "al10", "agent_id": "a1", "cpu_cores": 0.1})
    assert over.status_code == 409, over.text
    view = (await client.get("/v1/resources", params={"min_position": await last_position(over)})).json()
    assert view["allocated"]["cpu_cores"] == 1.0 and view["free"]["cpu_cores"] == 0.0
    capacity = (await client.get("/v1/capacity")).json()
    assert capacity["utilization"]["resources"]["cpu_cores"]["used"] == 1.0, capacity["utilization"]
