"""Read your own writes: the ``position`` a write answers, passed to any read as ``min_position``,
makes that read reflect the write, on every runtime; a position no write answered is a 409 at once.

The token covers the write's own outcome (and every earlier command of its pool's partition), not
what reactors do about it later: a task read at its submission's position exists, queued or
already assigned; the coordinator's assignment is a command of its own.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

import services.http.deps
from services.http.app import create_app
from services.runtime.embedded import Runner
from services.runtime.service import Service
from services.runtime.settings import Settings
from tests.api.conftest import settle

ROUNDS = 200


async def test_every_202_position_reads_its_write(client: httpx.AsyncClient) -> None:
    """Straight after each 202, a read at its position sees the write: 200 times, no polling."""
    first = await client.post("/v1/agents", json={"agent_id": "worker", "name": "w", "capacity": 1000})
    assert first.status_code == 202
    misses: list[str] = []
    for i in range(ROUNDS):
        if i % 2 == 0:
            resp = await client.post("/v1/agents", json={"agent_id": f"a{i}", "name": f"n{i}"})
            assert resp.status_code == 202, resp.text
            got = await client.get(f"/v1/agents/a{i}", params={"min_position": resp.json()["position"]})
            if got.status_code != 200 or got.json()["name"] != f"n{i}":
                misses.append(f"agent a{i}: {got.status_code} {got.text}")
        else:
            resp = await client.post("/v1/tasks", json={"task_id": f"t{i}", "type": "x"})
            assert resp.status_code == 202, resp.text
            got = await client.get(f"/v1/tasks/t{i}", params={"min_position": resp.json()["position"]})
            # An agent is free, so the coordinator may have assigned it already: either is the write.
            if got.status_code != 200 or got.json()["status"] not in ("queued", "assigned"):
                misses.append(f"task t{i}: {got.status_code} {got.text}")
    assert misses == []


async def test_an_update_is_read_at_its_position(client: httpx.AsyncClient) -> None:
    for i in range(20):
        reg = await client.post("/v1/agents", json={"agent_id": f"a{i}", "name": "n"})
        gone = await client.delete(f"/v1/agents/a{i}")
        assert reg.status_code == gone.status_code == 202
        got = await client.get(f"/v1/agents/a{i}", params={"min_position": gone.json()["position"]})
        assert got.status_code == 200 and got.json()["status"] == "deregistered", got.text
    listed = await client.get("/v1/agents", params={"status": "deregistered",
                                                    "min_position": gone.json()["position"]})
    assert len(listed.json()["items"]) == 20


async def test_wait_true_answers_a_position_reads_reflect(client: httpx.AsyncClient) -> None:
    for i in range(50):
        resp = await client.post("/v1/agents", params={"wait": "true"},
                                  json={"agent_id": f"a{i}", "name": f"n{i}"})
        assert resp.status_code == 201, resp.text
        body = resp.json()
        assert body["partition"] == body["events"][0]["partition"]
        got = await client.get(f"/v1/agents/a{i}", params={"min_position": body["position"]})
        assert got.status_code == 200 and got.json()["name"] == f"n{i}", got.text
    # A rejection answers a position too; a read there sees the rejection in the audit trail.
    rejected = await client.post("/v1/tasks/nope/start", params={"wait": "true"})
    assert rejected.status_code == 404
    trail = await client.get("/v1/audit/rejections",
                             params={"min_position": rejected.json()["position"]})
    assert trail.status_code == 200
    assert [r["code"] for r in trail.json()["items"]] == ["UNKNOWN_TASK"]


async def test_a_log_read_at_the_position_has_the_write(client: httpx.AsyncClient) -> None:
    for i in range(20):
        resp = await client.post("/v1/tasks", json={"task_id": f"t{i}", "type": "x"})
        page = await client.get("/v1/events", params={"min_position": resp.json()["position"],
                                                     "type": "TaskSubmitted", "limit": 1000})
        assert page.status_code == 200
        assert [e["data"]["task_id"] for e in page.json()["items"]][-1] == f"t{i}"


async def test_a_repeat_answers_a_position_that_reads_its_first_outcome(client: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": "reg-once"}
    first = await client.post("/v1/agents", headers=key, json={"agent_id": "a1", "name": "n"})
    again = await client.post("/v1/agents", headers=key, json={"agent_id": "a1", "name": "n"})
    assert first.status_code == again.status_code == 202 and again.json()["duplicate"] is True
    got = await client.get("/v1/agents/a1", params={"min_position": again.json()["position"]})
    assert got.status_code == 200


async def test_a_position_beyond_the_end_is_409_at_once(client: httpx.AsyncClient, service: Service) -> None:
    resp = await client.post("/v1/agents", params={"wait": "true"}, json={"agent_id": "a1", "name": "n"})
    assert resp.status_code == 201
    await settle(service)
    partition = service.partition_of("default")
    end = await service.log.end_offset(service.topics.commands, partition)
    for path in ("/v1/agents/a1", "/v1/agents", "/v1/events", "/v1/audit/assignments"):
        started = time.monotonic()
        far = await client.get(path, params={"min_position": end + 1_000_000})
        # "At once": after the short grace for other processes' writes, never the read's whole
        # wait (READ_WAIT_S, 5 s). Not a speed bound: a busy CI machine took 1.2 s on Kafka.
        assert time.monotonic() - started < services.http.deps.READ_WAIT_S / 2, path
        assert far.status_code == 409, far.text
        body = far.json()
        assert body == {"detail": body["detail"], "position": end + 1_000_000, "partition": partition,
                        "end": end}
        assert f"ends at {end}" in body["detail"]
    # The end itself is not a position yet either; the last one is.
    assert (await client.get("/v1/agents/a1", params={"min_position": end})).status_code == 409
    assert (await client.get("/v1/agents/a1", params={"min_position": end - 1})).status_code == 200


@pytest.mark.embedded
async def test_a_command_not_decided_in_time_is_504(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services.http.deps, "READ_WAIT_S", 0.3)
    # No deciders: the command is on the log, never decided.
    r = Runner(Settings(data_dir=tmp_path), deciders=False, coordinator=False)
    await r.start()
    try:
        transport = httpx.ASGITransport(app=create_app(service=r))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            resp = await c.post("/v1/agents", json={"agent_id": "a1", "name": "n"})
            assert resp.status_code == 202
            for path in ("/v1/agents/a1", "/v1/events"):
                got = await c.get(path, params={"min_position": resp.json()["position"]})
                assert got.status_code == 504 and "not decided yet" in got.json()["detail"], got.text
    finally:
        await r.stop()


async def test_reads_at_positions_of_concurrent_writes(client: httpx.AsyncClient) -> None:
    """Writes racing each other: each read at its own write's position sees that write."""

    async def one(i: int) -> int:
        resp = await client.post("/v1/agents", json={"agent_id": f"a{i}", "name": "n"})
        got = await client.get(f"/v1/agents/a{i}", params={"min_position": resp.json()["position"]})
        return got.status_code

    assert await asyncio.gather(*(one(i) for i in range(100))) == [200] * 100
