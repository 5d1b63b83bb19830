"""Workflow reads over HTTP: runs and their steps, progress, definitions and the system status.

Runs are started and driven with commands (``POST /v1/commands``). A step is submitted by the
workflow reactor when the runtime has one; where it has not submitted a step shortly, the test
submits it as the reactor would (``SubmitTask`` of ``<run>.<step>``, which the decider accepts
once the step's dependencies are done). Every answer is checked against its response model.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

import services.http.deps
from services.http.workflow_reads import (
    DefinitionList,
    DefinitionVersions,
    SystemStatus,
    WorkflowDetail,
    WorkflowPage,
    WorkflowProgress,
)
from tests.api.conftest import last_position, patience, poll

WAIT = {"wait": "true"}
# How long a step may stay pending before the test submits it itself (a reactor takes milliseconds).
REACTOR_GRACE_S = 0.5


def etl(version: str = "1.0.0", **fields: Any) -> dict[str, Any]:
    return {"name": "etl", "version": version, "tasks": [
        {"name": "fetch_a", "required_capabilities": ["fetch"]},
        {"name": "fetch_b", "required_capabilities": ["fetch"]},
        {"name": "merge", "depends_on": ["fetch_a", "fetch_b"], "required_capabilities": ["fetch"]},
    ], **fields}


async def command(client: httpx.AsyncClient, type_: str, data: dict[str, Any], *, pool: str = "default",
                  accepted: tuple[int, ...] = (200, 201)) -> httpx.Response:
    resp = await client.post("/v1/commands", params=WAIT, json={"type": type_, "data": data, "pool": pool})
    assert resp.status_code in accepted, resp.text
    return resp


async def agent(client: httpx.AsyncClient, agent_id: str = "a1", pool: str = "default") -> None:
    resp = await client.post("/v1/agents", params=WAIT, json={
        "agent_id": agent_id, "name": agent_id, "capabilities": ["fetch"], "capacity": 4, "pool": pool})
    assert resp.status_code == 201, resp.text


def valid(model: type[BaseModel], body: dict[str, Any]) -> dict[str, Any]:
    model.model_validate(body)
    return body


async def run_of(client: httpx.AsyncClient, workflow_id: str, **params: Any) -> dict[str, Any]:
    resp = await client.get(f"/v1/workflows/{workflow_id}", params=params)
    assert resp.status_code == 200, resp.text
    return valid(WorkflowDetail, resp.json())


async def step_of(client: httpx.AsyncClient, workflow_id: str, name: str) -> dict[str, Any]:
    return next(s for s in (await run_of(client, workflow_id))["steps"] if s["name"] == name)


async def submitted(client: httpx.AsyncClient, workflow_id: str, name: str, pool: str = "default") -> None:
    """Step ``name`` has left 'pending': by the reactor's submission, or else by ours."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REACTOR_GRACE_S * patience(client)
    while (await step_of(client, workflow_id, name))["status"] == "pending":
        if loop.time() > deadline:
            # 409: the reactor's submission came first after all.
            await command(client, "SubmitTask", {
                "task_id": f"{workflow_id}.{name}", "type": name, "required_capabilities": ["fetch"],
                "data": {"workflow_id": workflow_id, "step": name}}, pool=pool, accepted=(200, 201, 409))
            break
        await asyncio.sleep(0.02)
    await poll(client, f"/v1/workflows/{workflow_id}",
               lambda j: next(s for s in j["steps"] if s["name"] == name)["status"] != "pending")


async def finish(client: httpx.AsyncClient, task_id: str, result: dict[str, Any]) -> int:
    """Complete a step's task once the coordinator assigned it; the completion's position."""
    await poll(client, f"/v1/tasks/{task_id}", lambda j: j["status"] == "assigned")
    resp = await client.post(f"/v1/tasks/{task_id}/complete", params=WAIT, json={"result": result})
    assert resp.status_code == 200, resp.text
    return await last_position(resp)


async def test_a_run_from_start_to_end(client: httpx.AsyncClient) -> None:
    registered = await client.post("/v1/agents", params=WAIT, json={
        "agent_id": "a1", "name": "fetcher", "capabilities": ["fetch"], "capacity": 4})
    assert registered.status_code == 201, registered.text
    started = await command(client, "StartWorkflow", {"workflow_id": "run1", "definition": etl(),
                                                      "inputs": {}})
    # Read your own write: the run is there at once.
    fresh = await run_of(client, "run1", min_position=await last_position(started))
    assert (fresh["execution_id"], fresh["name"], fresh["version"]) == ("run1", "etl", "1.0.0")
    assert fresh["status"] in ("queued", "running") and fresh["total_tasks"] == 3
    assert fresh["definition"]["tasks"][2]["depends_on"] == ["fetch_a", "fetch_b"]
    assert [s["name"] for s in fresh["steps"]] == ["fetch_a", "fetch_b", "merge"]
    assert fresh["steps"][2]["status"] == "pending" and fresh["steps"][2]["task_id"] is None
    assert (fresh["steps"][2]["agent_id"], fresh["steps"][2]["agent_name"]) == (None, None)

    await submitted(client, "run1", "fetch_a")
    await submitted(client, "run1", "fetch_b")
    for task_id in ("run1.fetch_a", "run1.fetch_b"):
        await poll(client, f"/v1/tasks/{task_id}", lambda j: j["status"] == "assigned")
    status = await client.get("/v1/workflows/run1/status")
    assert status.status_code == 200
    assert valid(WorkflowProgress, status.json()) == {
        "execution_id": "run1", "status": "running", "progress": 0.0, "current_tasks": ["fetch_a", "fetch_b"],
        "message": "0 of 3 steps done; running: fetch_a, fetch_b"}
    running = await run_of(client, "run1")
    assert running["started_at"] is not None and running["execution_time"] >= 0

    await finish(client, "run1.fetch_a", {"rows": 2})
    cost = await client.post("/v1/costs", params=WAIT, json={
        "agent_id": "a1", "task_id": "run1.fetch_a", "model": "gpt-4o", "cost_usd": 0.25})
    assert cost.status_code == 201, cost.text
    one_done = await client.get("/v1/workflows/run1/status",
                                params={"min_position": await last_position(cost)})
    assert one_done.json()["progress"] == pytest.approx(1 / 3)
    assert one_done.json()["message"] == "1 of 3 steps done; running: fetch_b"
    await finish(client, "run1.fetch_b", {"rows": 3})
    await submitted(client, "run1", "merge")
    done = await finish(client, "run1.merge", {"rows": 5})

    run = await run_of(client, "run1", min_position=done)
    assert (run["status"], run["completed_tasks"], run["failed_tasks"]) == ("completed", 3, 0)
    assert run["cost_usd"] == 0.25 and run["ended_at"] is not None
    assert run["execution_time"] > 0 and (run["reason"], run["code"]) == (None, None)
    steps = {s["name"]: s for s in run["steps"]}
    a = steps["fetch_a"]
    assert (a["status"], a["task_id"], a["agent_id"], a["attempts"]) == ("completed", "run1.fetch_a", "a1", 1)
    assert a["agent_name"] == "fetcher"  # as registered, beside the id
    assert a["result"] == {"rows": 2} and a["cost_usd"] == 0.25 and steps["merge"]["cost_usd"] == 0.0
    # The coordinator's reasoning for each step's assignment, as the audit trail has it.
    trail = (await client.get("/v1/audit/assignments", params={"task_id": "run1.fetch_a"})).json()["items"]
    assert [x["agent_id"] for x in a["audit"]] == [x["agent_id"] for x in trail] == ["a1"]
    assert a["audit"][0]["position"] == trail[0]["position"] and a["audit"][0]["candidates"]
    final = await client.get("/v1/workflows/run1/status")
    assert valid(WorkflowProgress, final.json()) == {
        "execution_id": "run1", "status": "completed", "progress": 1.0, "current_tasks": [],
        "message": "completed: 3 of 3 steps completed"}


async def test_unknown_runs_are_404(client: httpx.AsyncClient) -> None:
    for path in ("/v1/workflows/nope", "/v1/workflows/nope/status"):
        resp = await client.get(path)
        assert resp.status_code == 404
        assert resp.json()["detail"] == "workflow 'nope' not found in pool 'default'"


async def test_lists_filter_and_page(client: httpx.AsyncClient) -> None:
    for i, (name, pool) in enumerate([("etl", "default"), ("etl", "default"), ("other", "default"),
                                      ("etl", "blue")]):
        defn = etl() if name == "etl" else {"name": name, "tasks": [{"name": "only"}]}
        await command(client, "StartWorkflow", {"workflow_id": f"w{i}", "definition": defn}, pool=pool)
    cancelled = await command(client, "CancelWorkflow", {"workflow_id": "w1", "reason": "not today"})
    position = await last_position(cancelled)
    listed = await client.get("/v1/workflows", params={"min_position": position})
    assert listed.status_code == 200
    page = valid(WorkflowPage, listed.json())
    assert [r["execution_id"] for r in page["workflows"]] == ["w2", "w1", "w0"]  # newest first
    assert (page["total"], page["page"], page["page_size"]) == (3, 1, 50)
    by_id = {r["execution_id"]: r for r in page["workflows"]}
    assert by_id["w1"]["status"] == "cancelled" and by_id["w1"]["ended_at"] is not None
    assert by_id["w2"]["name"] == "other" and by_id["w2"]["total_tasks"] == 1

    async def ids(**params: Any) -> list[str]:
        resp = await client.get("/v1/workflows", params=params)
        assert resp.status_code == 200, resp.text
        return [r["execution_id"] for r in valid(WorkflowPage, resp.json())["workflows"]]

    assert await ids(status="cancelled") == ["w1"]
    assert await ids(name="etl") == ["w1", "w0"]
    assert await ids(name="etl", status="completed") == []
    assert await ids(page=2, page_size=2) == ["w0"]
    assert await ids(pool="blue") == ["w3"]
    assert (await run_of(client, "w1"))["reason"] == "not today"
    cancelled_status = (await client.get("/v1/workflows/w1/status")).json()
    assert cancelled_status["message"] == "cancelled: not today"
    for bad in ({"status": "sleeping"}, {"page": 0}, {"page_size": 501}):
        assert (await client.get("/v1/workflows", params=bad)).status_code == 422


async def test_definitions(client: httpx.AsyncClient) -> None:
    await command(client, "RegisterWorkflowDefinition", {"definition": etl("2.0.0")})
    await command(client, "RegisterWorkflowDefinition", {"definition": etl("1.5.0", description="a fix")})
    last = await command(client, "RegisterWorkflowDefinition", {"definition": {
        "name": "solo", "tasks": [{"name": "only"}]}})
    listed = await client.get("/v1/workflow-definitions", params={"min_position": await last_position(last)})
    assert listed.status_code == 200
    # The latest is the one registered last.
    assert valid(DefinitionList, listed.json()) == {"definitions": [
        {"name": "etl", "versions": ["2.0.0", "1.5.0"], "latest": "1.5.0"},
        {"name": "solo", "versions": ["1.0.0"], "latest": "1.0.0"}]}
    one = await client.get("/v1/workflow-definitions/etl")
    body = valid(DefinitionVersions, one.json())
    assert body["name"] == "etl" and body["latest"] == "1.5.0"
    assert [v["version"] for v in body["versions"]] == ["2.0.0", "1.5.0"]
    assert body["versions"][1]["definition"]["description"] == "a fix"
    assert all(len(v["digest"]) == 64 for v in body["versions"])
    picked = valid(DefinitionVersions, (await client.get("/v1/workflow-definitions/etl",
                                                         params={"version": "2.0.0"})).json())
    assert [v["version"] for v in picked["versions"]] == ["2.0.0"] and picked["latest"] == "1.5.0"
    assert picked["versions"][0]["definition"]["tasks"][0]["name"] == "fetch_a"
    unknown = await client.get("/v1/workflow-definitions/nope")
    assert unknown.status_code == 404 and "'nope'" in unknown.json()["detail"]
    no_version = await client.get("/v1/workflow-definitions/etl", params={"version": "9"})
    assert no_version.status_code == 404
    assert no_version.json()["detail"] == "workflow definition 'etl' has no version '9' (latest: '1.5.0')"
    other_pool = await client.get("/v1/workflow-definitions", params={"pool": "blue"})
    assert other_pool.json() == {"definitions": []}


async def test_system_status(client: httpx.AsyncClient) -> None:
    await agent(client)
    await command(client, "StartWorkflow", {"workflow_id": "s1", "definition": etl()})
    await command(client, "StartWorkflow", {"workflow_id": "s2", "definition": etl()})
    await command(client, "CancelWorkflow", {"workflow_id": "s2"})
    # Two tasks no agent can take.
    for task_id, caps in (("lonely", ["rust"]), ("other", ["go"])):
        resp = await client.post("/v1/tasks", params=WAIT, json={"task_id": task_id, "type": "x",
                                                                  "required_capabilities": caps})
        assert resp.status_code == 201
    limit = await client.put("/v1/rate-limits", params=WAIT, json={"scope": "agent", "scope_id": "a1",
                                                                   "requests_per_min": 30})
    assert limit.status_code == 200, limit.text
    cost = await client.post("/v1/costs", params=WAIT, json={"agent_id": "a1", "model": "gpt-4o",
                                                              "cost_usd": 0.125})
    assert cost.status_code == 201
    # Wait for the coordinator's verdict on the two tasks (no capable agent).
    await poll(client, "/v1/system/status",
               lambda j: j["queue"]["waiting_by_reason"].get("no_capable_agent", 0) >= 2)
    resp = await client.get("/v1/system/status", params={"min_position": await last_position(cost)})
    assert resp.status_code == 200
    status = valid(SystemStatus, resp.json())
    assert status["workflows"]["cancelled"] == 1
    assert sum(status["workflows"].values()) == 2
    assert set(status["workflows"]) <= {"cancelled", "queued", "running"}
    assert status["agents"] == {"active": 1}
    assert status["total_cost_usd"] == 0.125
    tasks = (await client.get("/v1/tasks", params={"page_size": 500})).json()["items"]
    by_status: dict[str, int] = {}
    for t in tasks:
        by_status[t["status"]] = by_status.get(t["status"], 0) + 1
    assert status["tasks"] == by_status
    waiting = [t for t in tasks if t["status"] in ("queued", "retrying")]
    assert status["queue"]["depth"] == len(waiting)
    assert status["queue"]["oldest_queued_at"] == min(t["submitted_at"] for t in waiting)
    assert [(r["scope"], r["scope_id"], r["requests_per_min"]) for r in status["rate_limits"]] == [
        ("agent", "a1", 30.0)]
    empty = valid(SystemStatus, (await client.get("/v1/system/status", params={"pool": "nowhere"})).json())
    assert empty["queue"] == {"depth": 0, "oldest_queued_at": None, "waiting_by_reason": {}}


async def test_a_read_waits_for_min_position(client: httpx.AsyncClient,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    started = await command(client, "StartWorkflow", {"workflow_id": "ryw", "definition": etl()})
    position = await last_position(started)
    for path in ("/v1/workflows/ryw", "/v1/workflows/ryw/status", "/v1/workflows", "/v1/system/status",
                 "/v1/workflow-definitions"):
        resp = await client.get(path, params={"min_position": position})
        assert resp.status_code == 200, (path, resp.text)
    monkeypatch.setattr(services.http.deps, "BEYOND_END_GRACE_S", 0.01)
    beyond = await client.get("/v1/workflows/ryw", params={"min_position": position + 10_000})
    assert beyond.status_code == 409


async def test_the_readme_list_query_with_a_blank_name_lists_every_run(client: httpx.AsyncClient) -> None:
    await command(client, "StartWorkflow", {"workflow_id": "b1", "definition": etl()})
    other = {"name": "other", "tasks": [{"name": "only"}]}
    await command(client, "StartWorkflow", {"workflow_id": "b2", "definition": other})
    cancelled = await command(client, "CancelWorkflow", {"workflow_id": "b1", "reason": "done"})
    position = await last_position(cancelled)

    async def ids(**params: Any) -> list[str]:
        resp = await client.get("/v1/workflows", params={"min_position": position, **params})
        assert resp.status_code == 200, resp.text
        return [r["execution_id"] for r in valid(WorkflowPage, resp.json())["workflows"]]

    # A form (or the README's curl) sends name= when no name was chosen: every name.
    assert await ids(status="cancelled", name="", page=1, page_size=50) == ["b1"]
    assert await ids(name="") == await ids() == ["b2", "b1"]
    assert await ids(name="other") == ["b2"]


async def test_runs_and_their_status_are_read_as_of_a_point(client: httpx.AsyncClient) -> None:
    started = await command(client, "StartWorkflow", {"workflow_id": "then", "definition": etl()})
    at_start = await last_position(started)
    cancelled = await command(client, "CancelWorkflow", {"workflow_id": "then", "reason": "enough"})
    at_end = max(event["position"] for event in cancelled.json()["events"])  # the run ended there
    reads = {"runs": "/v1/workflows", "status": "/v1/workflows/then/status", "run": "/v1/workflows/then"}

    async def read(point: int) -> dict[str, httpx.Response]:
        return {name: await client.get(path, params={"as_of": point}) for name, path in reads.items()}

    ended = await last_position(cancelled)
    live = await client.get("/v1/workflows/then/status", params={"min_position": ended})
    assert live.status_code == 200 and live.json()["status"] == "cancelled", live.text
    before = await read(-1)  # before the first event: no run at all
    assert before["runs"].status_code == 200 and valid(WorkflowPage, before["runs"].json())["total"] == 0
    assert before["status"].status_code == before["run"].status_code == 404
    for point, status in ((at_start, "queued"), (at_end, "cancelled")):
        then = await read(point)
        assert all(resp.status_code == 200 for resp in then.values()), {k: r.text for k, r in then.items()}
        runs = valid(WorkflowPage, then["runs"].json())["workflows"]
        assert [(r["execution_id"], r["status"]) for r in runs] == [("then", status)], point
        assert valid(WorkflowProgress, then["status"].json())["status"] == status, point
        assert valid(WorkflowDetail, then["run"].json())["status"] == status, point
    malformed = await client.get("/v1/workflows", params={"as_of": "yesterday"})
    assert malformed.status_code == 422
