"""Coordination over HTTP: pool policy, rate limits, scaling policies, task retry/timeout/strategy
input, the ScalingDecided stream, the scaling webhook and the assignment audit exports."""

from __future__ import annotations

import asyncio
import csv
import io
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from events.codec import decode, from_record
from services.http.app import create_app
from services.runtime.embedded import Runner
from services.runtime.service import Service
from services.runtime.settings import Settings
from tests.api.conftest import end_offsets, poll, settle

WAIT = {"wait": "true"}


def _errors(resp: httpx.Response) -> list[tuple[str, ...]]:
    assert resp.status_code == 422, resp.text
    return [tuple(str(x) for x in item["loc"]) for item in resp.json()["detail"]]


# --- writes -------------------------------------------------------------------------------------


async def test_pool_policy_is_set_and_replaced(client: httpx.AsyncClient) -> None:
    resp = await client.put("/v1/pools/policy", params=WAIT, json={
        "default_strategy": "round_robin", "min_capability_match": 0.5, "breaker_threshold": 3,
        "weights": {"capability": 0.5, "performance": 0.2, "specialization": 0.2, "load": 0.1}})
    assert resp.status_code == 200, resp.text
    [event] = resp.json()["events"]
    assert event["type"] == "PoolPolicySet"
    assert event["data"]["default_strategy"] == "round_robin" and event["data"]["breaker_threshold"] == 3
    # No body: every field takes its default (the policy is replaced as a whole).
    reset = await client.put("/v1/pools/policy", params=WAIT)
    assert reset.status_code == 200
    assert reset.json()["events"][0]["data"]["default_strategy"] == "least_loaded"


@pytest.mark.http_layer
async def test_pool_policy_bad_input_is_422_and_appends_nothing(client: httpx.AsyncClient,
                                                               service: Service) -> None:
    before = await end_offsets(service)
    assert ("body", "default_strategy") in _errors(
        await client.put("/v1/pools/policy", json={"default_strategy": "fastest"}))
    assert ("body", "min_capability_match") in _errors(
        await client.put("/v1/pools/policy", json={"min_capability_match": 1.5}))
    assert ("body", "weights", "load") in _errors(
        await client.put("/v1/pools/policy", json={"weights": {"load": -1}}))
    assert await end_offsets(service) == before


async def test_rate_limit_is_set(client: httpx.AsyncClient, service: Service) -> None:
    resp = await client.put("/v1/rate-limits", params=WAIT, json={
        "scope": "model", "scope_id": "gpt-4o", "requests_per_min": 60, "tokens_per_min": 90000})
    assert resp.status_code == 200, resp.text
    [event] = resp.json()["events"]
    assert event["type"] == "RateLimitSet" and event["subject"] == "gpt-4o"
    before = await end_offsets(service)
    assert ("body", "scope_id") in _errors(await client.put("/v1/rate-limits", json={"scope": "agent"}))
    assert ("body", "scope") in _errors(
        await client.put("/v1/rate-limits", json={"scope": "team", "scope_id": "x"}))
    assert ("body", "requests_per_min") in _errors(
        await client.put("/v1/rate-limits", json={"scope_id": "a1", "requests_per_min": 0}))
    assert await end_offsets(service) == before


async def test_scaling_policy_decides_and_the_stream_carries_it(client: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": "scale-llm"}
    resp = await client.put("/v1/scaling/policies", params=WAIT, headers=key, json={
        "agent_kind": "llm", "min_agents": 2, "max_agents": 5, "target_utilization": 0.7,
        "queue_threshold": 3, "cooldown_s": 0})
    assert resp.status_code == 200, resp.text
    assert resp.json()["events"][0]["type"] == "ScalingPolicySet"
    again = await client.put("/v1/scaling/policies", params=WAIT, headers=key, json={
        "agent_kind": "llm", "min_agents": 2, "max_agents": 5, "target_utilization": 0.7,
        "queue_threshold": 3, "cooldown_s": 0})
    assert again.json()["duplicate"] is True and again.json()["events"] == resp.json()["events"]
    other = await client.put("/v1/scaling/policies", params=WAIT, headers=key, json={"agent_kind": "llm"})
    assert other.status_code == 422  # the key was used with other parameters
    # No agents of the kind, min_agents 2: the scaling reactor decides 0 -> 2, on the event stream.
    stream = await poll(client, "/v1/events", lambda j: len(j["items"]) == 1, type="ScalingDecided")
    [decided] = stream["items"]
    assert decided["subject"] == "llm" and decided["source"] == "urn:agentbus:decider"
    assert decided["data"]["from_agents"] == 0 and decided["data"]["to_agents"] == 2
    assert "min_agents" in decided["data"]["reason"] and "queue_depth" in decided["data"]["metrics"]


@pytest.mark.http_layer
async def test_scaling_policy_bad_input(client: httpx.AsyncClient, service: Service) -> None:
    before = await end_offsets(service)
    resp = await client.put("/v1/scaling/policies",
                            json={"agent_kind": "llm", "min_agents": 5, "max_agents": 2})
    assert _errors(resp) == [("body",)]
    assert "min_agents must not exceed max_agents" in resp.json()["detail"][0]["msg"]
    assert ("body", "agent_kind") in _errors(await client.put("/v1/scaling/policies", json={}))
    assert ("body", "target_utilization") in _errors(
        await client.put("/v1/scaling/policies", json={"agent_kind": "llm", "target_utilization": 0}))
    assert await end_offsets(service) == before


async def test_agents_take_weight_and_heartbeat_timeout(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/agents", params=WAIT, json={
        "agent_id": "a1", "name": "a", "weight": 3.5, "heartbeat_timeout_s": 12})
    assert resp.status_code == 201, resp.text
    data = resp.json()["events"][0]["data"]
    assert data["weight"] == 3.5 and data["heartbeat_timeout_s"] == 12
    assert ("body", "weight") in _errors(await client.post("/v1/agents", json={"name": "b", "weight": 0}))
    assert ("body", "heartbeat_timeout_s") in _errors(
        await client.post("/v1/agents", json={"name": "b", "heartbeat_timeout_s": -1}))


async def test_tasks_take_strategy_retry_and_timeout(client: httpx.AsyncClient) -> None:
    retry = {"max_attempts": 3, "strategy": "exponential", "base_delay_s": 0.5, "max_delay_s": 10,
             "jitter": 0.1}
    resp = await client.post("/v1/tasks", params=WAIT, json={
        "task_id": "t1", "type": "x", "strategy": "performance_weighted", "retry": retry, "timeout_s": 30})
    assert resp.status_code == 201, resp.text
    data = resp.json()["events"][0]["data"]
    assert data["strategy"] == "performance_weighted" and data["timeout_s"] == 30
    assert data["retry"] == {**retry, "multiplier": 2.0}  # the default factor, recorded


async def test_unknown_strategy_is_refused_at_the_door(client: httpx.AsyncClient) -> None:
    # Refused before anything is appended, naming the valid strategies (the decider would only
    # reject it later); the OpenAPI document lists them as an enum.
    resp = await client.post("/v1/tasks", params=WAIT,
                             json={"task_id": "t1", "type": "x", "strategy": "fastest"})
    assert resp.status_code == 422, resp.text
    [err] = resp.json()["detail"]
    assert err["loc"] == ["body", "strategy"] and "'round_robin'" in err["msg"]
    assert (await client.get("/v1/tasks/t1")).status_code == 404


@pytest.mark.http_layer
@pytest.mark.parametrize(("retry", "loc"), [
    ({"max_attempts": 0}, ("body", "retry", "max_attempts")),
    ({"strategy": "fibonacci"}, ("body", "retry", "strategy")),
    ({"base_delay_s": -1}, ("body", "retry", "base_delay_s")),
    ({"jitter": 2}, ("body", "retry", "jitter")),
    ({"max_attempts": 2, "surprise": True}, ("body", "retry", "surprise")),
    ("three times", ("body", "retry")),
])
async def test_invalid_retry_policy_is_422_with_field_errors(
    client: httpx.AsyncClient, service: Service, retry: Any, loc: tuple[str, ...]
) -> None:
    before = await end_offsets(service)
    resp = await client.post("/v1/tasks", json={"task_id": "t1", "type": "x", "retry": retry})
    assert loc in _errors(resp)
    assert await end_offsets(service) == before


@pytest.mark.http_layer
async def test_invalid_timeout_is_422(client: httpx.AsyncClient) -> None:
    assert ("body", "timeout_s") in _errors(
        await client.post("/v1/tasks", json={"task_id": "t1", "type": "x", "timeout_s": 0}))


# --- the assignment audit exports ---------------------------------------------------------------


async def _two_assignments(client: httpx.AsyncClient, service: Service) -> None:
    await client.put("/v1/pools/policy", params=WAIT, json={"default_strategy": "performance_weighted"})
    for agent_id, caps in (("a1", ["text"]), ("a2", ["text", "code"]), ("a3", ["text"])):
        resp = await client.post("/v1/agents", params=WAIT, json={
            "agent_id": agent_id, "name": agent_id, "capabilities": caps, "capacity": 2})
        assert resp.status_code == 201
    for task_id in ("t1", "t2"):
        resp = await client.post("/v1/tasks", params=WAIT, json={
            "task_id": task_id, "type": "x", "required_capabilities": ["text"], "data": {"n": task_id}})
        assert resp.status_code == 201
    await poll(client, "/v1/audit/assignments", lambda j: len(j["items"]) == 2)
    await settle(service)


async def test_audit_assignments_json_is_the_default(client: httpx.AsyncClient, service: Service) -> None:
    await _two_assignments(client, service)
    resp = await client.get("/v1/audit/assignments")
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == (await client.get("/v1/audit/assignments", params={"format": "json"})).json()
    [first, _] = resp.json()["items"]
    assert first["task_id"] == "t1" and first["strategy"] == "performance_weighted"
    assert len(first["candidates"]) >= 2 and first["candidates"][0]["components"]


async def test_audit_assignments_csv_has_a_row_per_candidate(client: httpx.AsyncClient,
                                                             service: Service) -> None:
    await _two_assignments(client, service)
    items = (await client.get("/v1/audit/assignments")).json()["items"]
    resp = await client.get("/v1/audit/assignments", params={"format": "csv"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/csv; charset=utf-8"
    assert 'filename="assignments.csv"' in resp.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert len(rows) == sum(len(i["candidates"]) for i in items)
    components = sorted({k for i in items for c in i["candidates"] for k in c["components"]})
    assert components and set(rows[0]) >= {"position", "task_id", "agent_id", "strategy", "decision_us",
                                           "candidate_agent_id", "candidate_score", "candidate_chosen",
                                           *(f"component_{c}" for c in components)}
    for item in items:
        mine = [r for r in rows if r["position"] == str(item["position"])]
        assert [r["candidate_agent_id"] for r in mine] == [c["agent_id"] for c in item["candidates"]]
        assert [r["candidate_rank"] for r in mine] == [str(n) for n in range(1, len(mine) + 1)]
        for row, cand in zip(mine, item["candidates"], strict=True):
            assert float(row["candidate_score"]) == pytest.approx(cand["score"])
            assert row["candidate_chosen"] == str(cand["agent_id"] == item["agent_id"]).lower()
            for name, value in cand["components"].items():
                assert float(row[f"component_{name}"]) == pytest.approx(value)
        assert sum(r["candidate_chosen"] == "true" for r in mine) == 1


async def test_audit_assignments_xml_is_well_formed(client: httpx.AsyncClient, service: Service) -> None:
    await _two_assignments(client, service)
    items = (await client.get("/v1/audit/assignments")).json()["items"]
    resp = await client.get("/v1/audit/assignments", params={"format": "xml"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/xml"
    assert resp.content.startswith(b"<?xml")
    root = ET.fromstring(resp.content)
    assert root.tag == "assignments" and root.get("pool") == "default" and root.get("count") == "2"
    nodes = root.findall("assignment")
    expected = [(i["task_id"], i["agent_id"]) for i in items]
    assert [(n.get("task_id"), n.get("agent_id")) for n in nodes] == expected
    for node, item in zip(nodes, items, strict=True):
        cands = node.findall("candidate")
        assert [c.get("agent_id") for c in cands] == [c["agent_id"] for c in item["candidates"]]
        for c_node, cand in zip(cands, item["candidates"], strict=True):
            assert float(c_node.get("score") or "nan") == pytest.approx(cand["score"])
            parts = {x.get("name"): float(x.get("value") or "nan") for x in c_node.findall("component")}
            assert parts == pytest.approx(cand["components"])


async def test_audit_export_of_hostile_ids_stays_well_formed(client: httpx.AsyncClient) -> None:
    # Control characters never get into an id (the contract refuses them); markup does.
    hostile = 'a<"&>]]>'
    resp = await client.post("/v1/agents", params=WAIT, json={"agent_id": hostile, "name": "x",
                                                                "capabilities": ["t"]})
    assert resp.status_code == 201
    submitted = await client.post("/v1/tasks", params=WAIT, json={
        "task_id": "=cmd|' -C calc'!A0", "type": "x", "required_capabilities": ["t"]})
    assert submitted.status_code == 201, submitted.text
    await poll(client, "/v1/audit/assignments", lambda j: len(j["items"]) == 1)
    root = ET.fromstring((await client.get("/v1/audit/assignments", params={"format": "xml"})).content)
    assert root.find("assignment").get("agent_id") == hostile  # type: ignore[union-attr]
    rows = list(csv.DictReader(io.StringIO(
        (await client.get("/v1/audit/assignments", params={"format": "csv"})).text)))
    assert rows[0]["agent_id"] == hostile


@pytest.mark.http_layer
async def test_audit_assignments_unknown_format_is_422(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/audit/assignments", params={"format": "yaml"})
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["query", "format"]


# --- the scaling webhook ------------------------------------------------------------------------


class Receiver:
    """An autoscaler's endpoint behind httpx.MockTransport: fails the first ``failures`` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[httpx.Request] = []
        self.received: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        if len(self.calls) <= self.failures:
            if len(self.calls) % 2:
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(503)
        self.received.append(orjson.loads(request.content))
        return httpx.Response(204)


async def _runner(path: Path, receiver: Receiver) -> Runner:
    r = Runner(Settings(data_dir=path), scaling_webhook="https://autoscaler.example/hooks/agentbus",
               webhook_transport=httpx.MockTransport(receiver))
    await r.start()
    await r.ready()
    assert r.webhook is not None
    r.webhook.backoff_s = 0.01
    return r


async def _until(check: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


# The scaling webhook runs with the embedded runner only (on Kafka, ScalingDecided is consumed
# from the events topic), and these tests restart it.
@pytest.mark.embedded
async def test_scaling_webhook_posts_cloudevents_at_least_once(tmp_path: Path) -> None:
    receiver = Receiver(failures=3)
    r = await _runner(tmp_path, receiver)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service=r)),
                                     base_url="http://t") as client:
            resp = await client.put("/v1/scaling/policies", params=WAIT, json={
                "agent_kind": "llm", "min_agents": 2, "max_agents": 4, "cooldown_s": 0})
            assert resp.status_code == 200
            await _until(lambda: len(receiver.received) == 1)
            stream = (await client.get("/v1/events", params={"type": "ScalingDecided"})).json()["items"]
        assert r.webhook is not None and r.webhook.failed_attempts == 3 and r.webhook.delivered == 1
    finally:
        await r.stop()
    [event] = receiver.received
    [logged] = stream
    assert {k: event[k] for k in ("specversion", "id", "type", "source", "subject", "pool", "data")} == {
        k: logged[k] for k in ("specversion", "id", "type", "source", "subject", "pool", "data")}
    assert event["type"] == "ScalingDecided" and event["data"]["to_agents"] == 2
    last = receiver.calls[-1]
    assert last.method == "POST" and str(last.url) == "https://autoscaler.example/hooks/agentbus"
    assert last.headers["content-type"] == "application/cloudevents+json"
    # Only ScalingDecided goes out, and once acknowledged it is not sent again after a restart.
    again = Receiver()
    r = await _runner(tmp_path, again)
    try:
        await asyncio.sleep(0.3)
        assert again.calls == []
        # The scaling webhook is the subscription "scaling-webhook": its position is its own group's.
        assert r.webhook is not None
        group = r.webhook.group(r.webhook.book.current["scaling-webhook"])
        assert await r.log.committed(group, "events", 0) == await r.log.end_offset("events", 0)
    finally:
        await r.stop()


@pytest.mark.embedded
async def test_scaling_webhook_resends_what_was_not_acknowledged_before_a_restart(tmp_path: Path) -> None:
    down = Receiver(failures=10**9)  # the autoscaler is down the whole time this runner lives
    r = await _runner(tmp_path, down)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service=r)),
                                     base_url="http://t") as client:
            # Never blocking the deciders: writes are decided while the webhook keeps failing.
            resp = await client.put("/v1/scaling/policies", params=WAIT, json={
                "agent_kind": "llm", "min_agents": 1, "cooldown_s": 0})
            assert resp.status_code == 200
            await _until(lambda: len(down.calls) >= 3)
            agent = await client.post("/v1/agents", params=WAIT, json={"name": "x", "kind": "llm"})
            assert agent.status_code == 201
    finally:
        await r.stop()
    assert down.received == []
    up = Receiver()
    r = await _runner(tmp_path, up)
    try:
        await _until(lambda: len(up.received) == 1)
        assert up.received[0]["type"] == "ScalingDecided" and up.received[0]["data"]["to_agents"] == 1
    finally:
        await r.stop()


@pytest.mark.embedded
async def test_no_webhook_without_a_url(runner: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    assert runner.webhook is None
    monkeypatch.setenv("AGENTBUS_SCALING_WEBHOOK", "http://127.0.0.1:9/hook")
    assert Runner(Settings(data_dir=runner.settings.data_dir)).webhook_url == "http://127.0.0.1:9/hook"


async def test_the_longest_pool_and_ids_go_through_assignment(client: httpx.AsyncClient,
                                                              service: Service) -> None:
    # The coordinator's commands are named after the pool and the task (assign:<pool>:<task>...):
    # at the id limit, still commands the log accepts and reads back, so the task is assigned and
    # completed, and every record of the run decodes as a reader of the log decodes it.
    pool, agent, task = "p" * 200, "a" * 200, "t" * 200
    params = {**WAIT, "pool": pool}
    reg = await client.post("/v1/agents", params=params, json={"agent_id": agent, "name": "long"})
    assert reg.status_code == 201, reg.text
    sub = await client.post("/v1/tasks", params=params, json={"task_id": task, "type": "work"})
    assert sub.status_code == 201, sub.text
    got = await poll(client, f"/v1/tasks/{task}", lambda j: j["status"] == "assigned", pool=pool)
    assert got["agent_id"] == agent
    done = await client.post(f"/v1/tasks/{task}/complete", params=params, json={"result": {"ok": 1}})
    assert done.status_code == 200, done.text
    position = done.json()["position"]
    read = await client.get(f"/v1/tasks/{task}", params={"pool": pool, "min_position": position})
    assert read.json()["status"] == "completed"
    for p in range(service.partitions):
        # The deciders check every command they read as one from another system (not trusted).
        commands = await service.log.read(service.topics.commands, p, 0, 100_000)
        assert [decode(r.value).type for r in commands]  # raises on a command it cannot read
        assert [from_record(r).type for r in await service.log.read(service.topics.events, p, 0, 100_000)]
