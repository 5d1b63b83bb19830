"""What an agent says about a task it ran, read back over the API: a failure's code and whether it
could be retried, a deferral by the agent holding the task (with its reason and delay), a task's
action and parameters, and a task pinned to an agent by name."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from services.http.read_schemas import Task
from tests.api.conftest import end_offsets, poll, settle

WAIT = {"wait": "true"}


async def _ok(resp: httpx.Response) -> dict[str, Any]:
    assert resp.is_success, resp.text
    return dict(resp.json())


async def _agent(client: httpx.AsyncClient, agent_id: str, name: str | None = None, **body: Any) -> None:
    await _ok(await client.post("/v1/agents", params=WAIT, json={
        "agent_id": agent_id, "name": name or agent_id, "capacity": 1, "heartbeat_timeout_s": 600, **body}))


async def _submit(client: httpx.AsyncClient, task_id: str, **body: Any) -> httpx.Response:
    return await client.post("/v1/tasks", params=WAIT, json={"task_id": task_id, "type": "work", **body})


async def _task(client: httpx.AsyncClient, task_id: str, until: Any) -> dict[str, Any]:
    """The task once ``until(task)`` holds, checked against its documented schema."""
    task = await poll(client, f"/v1/tasks/{task_id}", until)
    Task.model_validate(task)
    return task


async def _assigned(client: httpx.AsyncClient, task_id: str, attempts: int = 1) -> dict[str, Any]:
    return await _task(client, task_id, lambda t: t["status"] == "assigned" and t["attempts"] == attempts)


async def _events(client: httpx.AsyncClient, task_id: str, type_name: str) -> list[dict[str, Any]]:
    resp = await client.get("/v1/events", params={"subject": task_id, "type": type_name})
    return [item["data"] for item in (await _ok(resp))["items"]]


def _retry(attempts: int, delay_s: float) -> dict[str, Any]:
    return {"max_attempts": attempts, "strategy": "constant", "base_delay_s": delay_s}


async def _fail(client: httpx.AsyncClient, task_id: str, **body: Any) -> dict[str, Any]:
    return await _ok(await client.post(f"/v1/tasks/{task_id}/fail", params=WAIT, json=body))


async def test_a_non_retryable_failure_fails_the_task_at_once_with_its_code(
    client: httpx.AsyncClient,
) -> None:
    await _ok(await client.put("/v1/pools/policy", params=WAIT, json={"breaker_threshold": 1}))
    await _agent(client, "a")
    await _ok(await _submit(client, "t", retry=_retry(5, 1)))
    await _assigned(client, "t")
    outcome = await _fail(client, "t", error="GET /users/7: 404 Not Found", retryable=False,
                          error_code="http_status:404")
    assert [ev["type"] for ev in outcome["events"]] == ["TaskFailed"]  # no retry, no open breaker
    task = await _task(client, "t", lambda t: t["status"] == "failed")
    assert (task["error"], task["error_code"], task["retryable"]) == (
        "GET /users/7: 404 Not Found", "http_status:404", False)
    assert task["failures"] == 1 and task["next_attempt_at"] is None
    agent = await _ok(await client.get("/v1/agents/a"))
    assert (agent["circuit"], agent["consecutive_failures"], agent["tasks_failed"]) == ("closed", 0, 1)
    # The audit trail says the same.
    [failed] = await _events(client, "t", "TaskFailed")
    assert (failed["error_code"], failed["retryable"]) == ("http_status:404", False)


async def test_a_retryable_failure_waits_for_its_retry_with_its_code(client: httpx.AsyncClient) -> None:
    await _agent(client, "a")
    await _ok(await _submit(client, "t", retry=_retry(2, 600)))
    await _assigned(client, "t")
    await _fail(client, "t", error="timed out", error_code="timeout")
    task = await _task(client, "t", lambda t: t["status"] == "retrying")
    assert (task["error_code"], task["retryable"]) == ("timeout", True)
    assert task["waiting_reason"]["code"] == "retry_backoff"
    [retry] = await _events(client, "t", "TaskRetryScheduled")
    assert retry["error_code"] == "timeout"


@pytest.mark.http_layer
async def test_a_bad_error_code_is_refused_before_anything_is_appended(client: httpx.AsyncClient) -> None:
    before = await end_offsets(client.service)  # type: ignore[attr-defined]
    resp = await client.post("/v1/tasks/t/fail", json={"error_code": "bad\ncode"})
    assert resp.status_code == 422
    assert any(err["loc"][-1] == "error_code" for err in resp.json()["detail"])
    assert await end_offsets(client.service) == before  # type: ignore[attr-defined]


async def test_an_agents_own_retry_policy_retries_a_task_without_one(client: httpx.AsyncClient) -> None:
    await _agent(client, "a", retry=_retry(3, 600))
    await _ok(await _submit(client, "t"))
    await _assigned(client, "t")
    await _fail(client, "t", error="502", error_code="http_status:502")
    task = await _task(client, "t", lambda t: t["status"] == "retrying")
    assert task["retry"] is None and task["waiting_reason"]["attempt"] == 1


async def test_a_deferral_by_the_holder_shows_its_reason_and_keeps_the_task_from_other_agents(
    client: httpx.AsyncClient,
) -> None:
    await _agent(client, "a")
    await _ok(await _submit(client, "t"))
    await _assigned(client, "t")
    await _agent(client, "b")  # free and capable while the task is deferred
    resp = await client.post("/v1/commands", params=WAIT, json={"type": "DeferTask", "data": {
        "task_id": "t", "agent_id": "a", "reason": "RATE_LIMITED", "delay_s": 600}})
    await _ok(resp)
    await settle(client.service)  # type: ignore[attr-defined]
    task = await _task(client, "t", lambda t: t["status"] == "queued")
    waiting = task["waiting_reason"]
    assert (waiting["code"], waiting["agent_id"], waiting["reason"], waiting["delay_s"]) == (
        "deferred_by_agent", "a", "RATE_LIMITED", 600)
    since, until = datetime.fromisoformat(waiting["since"]), datetime.fromisoformat(waiting["until"])
    assert until - since == timedelta(seconds=600)
    assert (task["agent_id"], task["deferred_by"], task["deferred_reason"]) == (None, "a", "RATE_LIMITED")
    assert task["failures"] == 0 and task["attempts"] == 1
    assert (await _ok(await client.get("/v1/agents/a")))["load"] == 0
    assert (await _ok(await client.get("/v1/agents/b")))["load"] == 0  # not given to b meanwhile
    rejected = (await _ok(await client.get("/v1/audit/rejections")))["items"]
    assert not [r for r in rejected if r["command_type"] == "AssignTask"]


async def test_a_deferred_task_is_assigned_again_once_its_delay_is_over(client: httpx.AsyncClient) -> None:
    await _agent(client, "a")
    await _ok(await _submit(client, "t"))
    await _assigned(client, "t")
    await _ok(await client.post("/v1/commands", params=WAIT, json={"type": "DeferTask", "data": {
        "task_id": "t", "agent_id": "a", "reason": "OVERLOADED", "delay_s": 0.3}}))
    task = await _assigned(client, "t", attempts=2)
    assert task["agent_id"] == "a" and task["failures"] == 0 and task["waiting_reason"] is None
    assert task["requeue_reason"] == "deferred by agent a (OVERLOADED): back in the queue"


async def test_a_deferral_by_an_agent_not_holding_the_task_is_409(client: httpx.AsyncClient) -> None:
    await _agent(client, "a")
    await _agent(client, "b")
    await _ok(await _submit(client, "t"))
    holder = (await _assigned(client, "t"))["agent_id"]
    other = "b" if holder == "a" else "a"
    resp = await client.post("/v1/commands", params=WAIT, json={"type": "DeferTask", "data": {
        "task_id": "t", "agent_id": other}})
    assert resp.status_code == 409 and resp.json()["code"] == "WRONG_AGENT"


async def test_action_and_parameters_round_trip(client: httpx.AsyncClient) -> None:
    params = {"url": "https://example.org/items/{id}", "id": 7, "headers": {"Accept": "application/json"}}
    resp = await _submit(client, "t", action="http.get", parameters=params)
    assert resp.status_code == 201, resp.text
    [submitted] = [ev["data"] for ev in resp.json()["events"] if ev["type"] == "TaskSubmitted"]
    assert (submitted["action"], submitted["parameters"]) == ("http.get", params)
    task = await _task(client, "t", lambda t: True)
    assert (task["action"], task["parameters"]) == ("http.get", params)
    plain = await _ok(await _submit(client, "u"))
    assert plain["events"][0]["data"]["parameters"] == {}
    assert (await _task(client, "u", lambda t: True))["action"] is None


async def test_agent_name_pins_the_task_to_the_agent_of_that_name(client: httpx.AsyncClient) -> None:
    await _agent(client, "a", name="general")
    await _agent(client, "b", name="special")
    resp = await _submit(client, "t", agent_name="special")
    assert resp.status_code == 201, resp.text
    [submitted] = [ev["data"] for ev in resp.json()["events"] if ev["type"] == "TaskSubmitted"]
    assert (submitted["agent_id"], submitted["agent_name"]) == ("b", "special")
    task = await _assigned(client, "t")
    assert (task["agent_id"], task["pinned_agent_id"]) == ("b", "b")
    # b is full now: a pinned task waits for it, although a is free.
    await _ok(await _submit(client, "t2", agent_name="special"))
    await settle(client.service)  # type: ignore[attr-defined]
    waiting = await _task(client, "t2", lambda t: True)
    assert (waiting["status"], waiting["pinned_agent_id"]) == ("queued", "b")


async def test_an_unknown_agent_name_is_404_and_a_mismatch_409(client: httpx.AsyncClient) -> None:
    await _agent(client, "a", name="general")
    resp = await _submit(client, "t", agent_name="nobody")  # a name that names nothing, as an id would
    assert resp.status_code == 404 and resp.json()["code"] == "UNKNOWN_AGENT"
    assert "nobody" in resp.json()["message"]
    both = await _submit(client, "t", agent_id="x", agent_name="general")
    assert both.status_code == 409 and both.json()["code"] == "INVALID_COMMAND"
    assert (await client.get("/v1/tasks/t")).status_code == 404


async def test_a_workflow_step_deferred_by_its_agent_stays_in_flight(client: httpx.AsyncClient) -> None:
    await _agent(client, "a")
    definition = {"name": "wf", "tasks": [{"name": "fetch", "action": "http.get"},
                                          {"name": "store", "depends_on": ["fetch"]}]}
    await _ok(await client.post("/v1/commands", params=WAIT, json={
        "type": "StartWorkflow", "data": {"workflow_id": "w", "definition": definition}}))
    await _assigned(client, "w.fetch")
    await _ok(await client.post("/v1/commands", params=WAIT, json={"type": "DeferTask", "data": {
        "task_id": "w.fetch", "agent_id": "a", "reason": "RATE_LIMITED", "delay_s": 600}}))
    await settle(client.service)  # type: ignore[attr-defined]
    run = await poll(client, "/v1/workflows/w",
                     lambda r: {s["name"]: s["status"] for s in r["steps"]}["fetch"] == "queued")
    steps = {s["name"]: s for s in run["steps"]}
    assert run["status"] == "running"
    assert (steps["fetch"]["agent_id"], steps["store"]["status"]) == (None, "pending")
    assert (await client.get("/v1/tasks/w.store")).status_code == 404  # not started early
