"""Reads: the event log over HTTP, read-your-writes, health, OpenAPI; and the embedded runner an app
starts itself, or finds corrupt."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

import services.http.deps
import services.http.reads
from services.http.app import create_app
from services.runtime.embedded import Runner
from services.runtime.service import Service
from services.runtime.settings import Settings
from tests.api.conftest import last_position, settle


async def seed(client: httpx.AsyncClient, service: Service) -> None:
    """Five tasks in the default pool, one agent in another; no agent can take the tasks, so the
    coordinator marks each unassignable. Returns once it has."""
    for i in range(5):
        resp = await client.post(
            "/v1/tasks",
            params={"wait": "true"},
            json={"task_id": f"t{i}", "type": "even" if i % 2 == 0 else "odd"},
        )
        assert resp.status_code == 201
    other = await client.post("/v1/agents", params={"wait": "true"}, json={"name": "x", "pool": "other"})
    assert other.status_code == 201
    await settle(service)


# Kafka's transaction markers take offsets too, so only the embedded log's positions are dense.
@pytest.mark.embedded
async def test_events_are_listed_with_positions(client: httpx.AsyncClient, runner: Runner) -> None:
    await seed(client, runner)
    body = (await client.get("/v1/events")).json()
    end = await runner.log.end_offset("events", 0)
    positions = [e["position"] for e in body["items"]]
    # "other" shares the partition: its agent's registration and heartbeat timer are not listed.
    assert positions == sorted(positions) and len(positions) == end - 2
    types = [e["type"] for e in body["items"]]
    assert types.count("TaskSubmitted") == 5 and types.count("TaskUnassignable") == 5
    assert body["next_after"] == end - 1  # the last record looked at, the other pool's included
    first = body["items"][0]
    assert first["type"] == "TaskSubmitted" and first["partition"] == 0 and first["pool"] == "default"
    assert first["data"]["task_id"] == "t0" and first["sequence"] == 1
    other = (await client.get("/v1/events", params={"pool": "other"})).json()
    assert [e["type"] for e in other["items"]] == ["AgentRegistered", "TimerScheduled"]


async def test_events_paging_and_filters(client: httpx.AsyncClient, service: Service) -> None:
    await seed(client, service)
    everything = [e["position"] for e in (await client.get("/v1/events")).json()["items"]]
    page1 = (await client.get("/v1/events", params={"limit": 2})).json()
    assert [e["position"] for e in page1["items"]] == everything[:2] and page1["next_after"] == everything[1]
    page2 = (await client.get("/v1/events", params={"limit": 2, "after": page1["next_after"]})).json()
    assert [e["position"] for e in page2["items"]] == everything[2:4]
    end = (await client.get("/v1/events", params={"after": 99})).json()
    assert end == {"items": [], "next_after": 99}
    by_subject = (await client.get("/v1/events", params={"subject": "t3"})).json()
    assert [(e["type"], e["data"]["task_id"]) for e in by_subject["items"]] == [
        ("TaskSubmitted", "t3"), ("TaskUnassignable", "t3")]
    submitted = (await client.get("/v1/events", params={"type": "TaskSubmitted"})).json()
    assert [e["data"]["task_id"] for e in submitted["items"]] == [f"t{i}" for i in range(5)]
    by_type = (await client.get("/v1/events", params={"type": "AgentRegistered"})).json()
    assert by_type["items"] == []  # only the other pool has one
    rejected = await client.post("/v1/tasks/t9/start", params={"wait": "true"})
    assert rejected.status_code == 404
    by_type = (await client.get("/v1/events", params={"type": "CommandRejected"})).json()
    assert [e["data"]["code"] for e in by_type["items"]] == ["UNKNOWN_TASK"]


async def test_tasks_are_paged_and_filtered(client: httpx.AsyncClient, service: Service) -> None:
    await seed(client, service)
    params = {"page_size": 2, "min_position": 5}
    page = (await client.get("/v1/tasks", params=params)).json()
    assert [t["task_id"] for t in page["items"]] == ["t0", "t1"] and page["total"] == 5
    page3 = (await client.get("/v1/tasks", params={**params, "page": 3})).json()
    assert [t["task_id"] for t in page3["items"]] == ["t4"]
    odd = (await client.get("/v1/tasks", params={"type": "odd"})).json()
    assert [t["task_id"] for t in odd["items"]] == ["t1", "t3"] and odd["total"] == 2
    assert (await client.get("/v1/tasks", params={"status": "completed"})).json()["total"] == 0
    assert (await client.get("/v1/tasks", params={"pool": "other"})).json()["total"] == 0


async def test_min_position_reads_your_writes(client: httpx.AsyncClient) -> None:
    for i in range(20):
        resp = await client.post(
            "/v1/agents", params={"wait": "true"}, json={"agent_id": f"a{i}", "name": "n"}
        )
        # Straight after each write, a read at its position must see it: no polling.
        got = await client.get(f"/v1/agents/a{i}", params={"min_position": await last_position(resp)})
        assert got.status_code == 200, got.text
    listed = await client.get("/v1/agents", params={"min_position": await last_position(resp)})
    assert len(listed.json()["items"]) == 20


# A position no write answered is refused at once, with the end; a command not decided in time is
# a 504 (tests/api/test_read_your_writes.py).
async def test_min_position_beyond_the_end_is_409(client: httpx.AsyncClient) -> None:
    for path in (
        "/v1/agents",
        "/v1/tasks",
        "/v1/resources",
        "/v1/costs/summary",
        "/v1/audit/assignments",
        "/v1/audit/rejections",
        "/v1/agents/a1",
        "/v1/tasks/t1",
        "/v1/events",
    ):
        resp = await client.get(path, params={"min_position": 1000})
        assert resp.status_code == 409, path
        assert resp.json()["end"] < 1000 and "beyond the end of the commands log" in resp.json()["detail"]


async def test_empty_pool_reads(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/agents")).json() == {"items": []}
    resources = (await client.get("/v1/resources")).json()
    assert resources["limits"] is None and resources["allocations"] == []
    assert (await client.get("/v1/costs/summary")).json()["total_usd"] == 0
    assert (await client.get("/v1/audit/assignments")).json() == {"items": []}
    assert (await client.get("/v1/audit/rejections")).json() == {"items": []}
    assert (await client.get("/v1/events")).json() == {"items": [], "next_after": -1}


async def test_health(client: httpx.AsyncClient, service: Service) -> None:
    resp = await client.get("/v1/health")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok" and body["deciders_ready"] is True and body["partitions"] == 1
    assert body["log"] == service.settings.broker and body["database"] == service.settings.database


@pytest.mark.http_layer
async def test_openapi_documents_the_contract_bodies(client: httpx.AsyncClient) -> None:
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = (await client.get("/openapi.json")).json()
    register = spec["paths"]["/v1/agents"]["post"]
    schema = register["requestBody"]["content"]["application/json"]["schema"]
    assert {"name", "capabilities", "capacity", "agent_id", "pool", "command_id"} <= set(schema["properties"])
    assert schema["required"] == ["name"]  # agent_id is generated when absent
    complete = spec["paths"]["/v1/tasks/{task_id}/complete"]["post"]["requestBody"]
    assert "task_id" not in complete["content"]["application/json"]["schema"]["properties"]
    assert complete["required"] is False
    params = {p["name"] for p in register["parameters"]}
    assert {"wait", "timeout", "Idempotency-Key", "X-Agentbus-Actor", "X-Correlation-Id"} <= params
    # Nested models referenced from request bodies resolve.
    assert "SelectionAudit" in spec["components"]["schemas"]
    assert "Candidate" in spec["components"]["schemas"]
    assert "/v1/commands" in spec["paths"] and "/v1/events" in spec["paths"]


@pytest.mark.embedded
async def test_app_without_a_runner_starts_and_stops_its_own(tmp_path: Path) -> None:
    app = create_app(settings=Settings(data_dir=tmp_path))
    async with app.router.lifespan_context(app):
        runner = app.state.service
        assert isinstance(runner, Runner)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.get("/v1/health")).json()["deciders_ready"] is True
            resp = await c.post("/v1/agents", params={"wait": "true"}, json={"name": "n"})
            assert resp.status_code == 201
    assert (tmp_path / "log.db").exists()


@pytest.mark.embedded
async def test_corrupt_log_makes_health_503_and_writes_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    async with Runner(settings) as first:
        await first.ready()
        transport = httpx.ASGITransport(app=create_app(service=first))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (
                await c.post("/v1/agents", params={"wait": "true"}, json={"name": "n"})
            ).status_code == 201
    with sqlite3.connect(tmp_path / "log.db") as db:
        db.execute("""UPDATE records SET crc = crc + 1 WHERE topic = 'events' AND "offset" = 0""")
    broken = Runner(settings)
    await broken.start()
    try:
        with pytest.raises(RuntimeError, match=r"corrupt record at events\[0\]@0"):
            await broken.ready()
        transport = httpx.ASGITransport(app=create_app(service=broken))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            health = await c.get("/v1/health")
            assert health.status_code == 503
            assert health.json()["status"] == "failed" and "events[0]@0" in health.json()["error"]
            write = await c.post("/v1/agents", json={"name": "n"})
            assert write.status_code == 503
            events = await c.get("/v1/events")  # reading the damaged record names it
            assert events.status_code == 503 and "events[0]@0" in events.json()["detail"]
    finally:
        await broken.stop()


def test_health_never_shows_a_database_password() -> None:
    assert services.http.reads._redact("postgresql+asyncpg://agentbus:s3cret@db:5432/x") == (
        "postgresql+asyncpg://agentbus:***@db:5432/x"
    )
    assert services.http.reads._redact("sqlite:///data/log.db") == "sqlite:///data/log.db"
