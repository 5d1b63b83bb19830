"""Idempotency keys: a retry with the same key and request answers the first outcome and appends
nothing; the same key with another request is a 422 (``idempotency_key_reused``), nothing appended,
and the first outcome still stands; after a restart too."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.http.app import create_app
from services.runtime.embedded import Runner
from services.runtime.service import Service
from services.runtime.settings import Settings
from tests.api.conftest import end_offsets, event_count, settle

TASK = {"task_id": "t1", "type": "x", "priority": 3}
KEY = {"Idempotency-Key": "submit-t1"}


def reused(resp: httpx.Response, loc: list[str]) -> None:
    """``resp`` is the 422 of a key used with another request, located at ``loc``."""
    assert resp.status_code == 422, resp.text
    [err] = resp.json()["detail"]
    assert err["type"] == "idempotency_key_reused" and err["loc"] == loc
    assert "already used for a request with other parameters" in err["msg"]


async def test_a_retry_answers_the_first_outcome_and_appends_nothing(
    client: httpx.AsyncClient, service: Service
) -> None:
    first = await client.post("/v1/tasks", params={"wait": "true"}, headers=KEY, json=TASK)
    assert first.status_code == 201 and first.json()["duplicate"] is False
    await settle(service)
    ends, events = await end_offsets(service), await event_count(client)
    for params in ({"wait": "true"}, {}):
        again = await client.post("/v1/tasks", params=params, headers=KEY, json=TASK)
        assert again.json()["duplicate"] is True and again.json()["command_id"] == "submit-t1"
        if params:
            assert again.status_code == 201 and again.json()["events"] == first.json()["events"]
        else:
            assert again.status_code == 202
    # Fields left at their defaults are the same request as fields sent with them.
    same = await client.post("/v1/tasks", headers=KEY, json={**TASK, "data": {}, "required_capabilities": []})
    assert same.status_code == 202 and same.json()["duplicate"] is True
    await settle(service)
    assert await end_offsets(service) == ends
    assert await event_count(client) == events


async def test_a_key_reused_with_another_body_is_422_and_appends_nothing(
    client: httpx.AsyncClient, service: Service
) -> None:
    first = await client.post("/v1/tasks", params={"wait": "true"}, headers=KEY, json=TASK)
    assert first.status_code == 201
    await settle(service)
    ends, events = await end_offsets(service), await event_count(client)
    for body in ({**TASK, "priority": 4}, {**TASK, "task_id": "t2"}, {**TASK, "pool": "other"}):
        for params in ({"wait": "true"}, {}):
            reused(await client.post("/v1/tasks", params=params, headers=KEY, json=body),
                   ["header", "Idempotency-Key"])
    # Another command type under the key, through any endpoint.
    reused(await client.post("/v1/agents", headers=KEY, json={"agent_id": "a1", "name": "n"}),
           ["header", "Idempotency-Key"])
    reused(await client.post("/v1/commands", json={"type": "SubmitTask", "data": {**TASK, "priority": 9},
                                                   "command_id": "submit-t1"}),
           ["body", "command_id"])
    await settle(service)
    assert await end_offsets(service) == ends
    assert await event_count(client) == events
    # The first outcome stands, and the key still answers it.
    task = await client.get("/v1/tasks/t1", params={"min_position": first.json()["position"]})
    assert task.json()["priority"] == 3
    again = await client.post("/v1/tasks", params={"wait": "true"}, headers=KEY, json=TASK)
    assert again.status_code == 201 and again.json()["events"] == first.json()["events"]


async def test_the_body_command_id_is_a_key_too(client: httpx.AsyncClient) -> None:
    body = {"command_id": "reg-a1", "agent_id": "a1", "name": "n"}
    assert (await client.post("/v1/agents", params={"wait": "true"}, json=body)).status_code == 201
    reused(await client.post("/v1/agents", json={**body, "name": "other"}), ["body", "command_id"])
    again = await client.post("/v1/agents", params={"wait": "true"}, json=body)
    assert again.status_code == 201 and again.json()["duplicate"] is True


async def test_an_id_the_api_made_up_is_not_part_of_the_request(client: httpx.AsyncClient) -> None:
    """A retry of a body without agent_id is the same request, though each try makes up an id."""
    key = {"Idempotency-Key": "anon"}
    first = await client.post("/v1/agents", params={"wait": "true"}, headers=key, json={"name": "anon"})
    again = await client.post("/v1/agents", params={"wait": "true"}, headers=key, json={"name": "anon"})
    assert first.status_code == again.status_code == 201
    assert again.json()["duplicate"] is True and again.json()["events"] == first.json()["events"]
    # Naming the id the first try made up is another request: the client asked for a given id.
    made_up = first.json()["events"][0]["data"]["agent_id"]
    reused(await client.post("/v1/agents", headers=key, json={"name": "anon", "agent_id": made_up}),
           ["header", "Idempotency-Key"])


async def test_a_reuse_racing_its_first_request_is_422(client: httpx.AsyncClient, service: Service) -> None:
    """Sent together: one of the two is appended, the other refused, before any outcome is known."""
    answers = await asyncio.gather(
        client.post("/v1/tasks", headers=KEY, json=TASK),
        client.post("/v1/tasks", headers=KEY, json={**TASK, "priority": 4}),
    )
    assert sorted(r.status_code for r in answers) == [202, 422]
    await settle(service)
    assert len((await client.get("/v1/events", params={"type": "TaskSubmitted"})).json()["items"]) == 1


@pytest.mark.embedded
async def test_keys_are_remembered_across_a_restart(tmp_path: Path) -> None:
    """The digests live on the log (the outcome's first event): a new process knows them."""
    settings = Settings(data_dir=tmp_path)
    answers: list[dict[str, Any]] = []
    ends: list[tuple[int, int]] = []
    for _ in range(2):
        async with Runner(settings) as r:
            await r.ready()
            transport = httpx.ASGITransport(app=create_app(service=r))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                await settle(r)
                before = await end_offsets(r)
                resp = await c.post("/v1/tasks", params={"wait": "true"}, headers=KEY, json=TASK)
                assert resp.status_code == 201
                answers.append(resp.json())
                reused(await c.post("/v1/tasks", headers=KEY, json={**TASK, "priority": 4}),
                       ["header", "Idempotency-Key"])
                await settle(r)
                ends += [before, await end_offsets(r)]
    first, second = answers
    assert ends[2] == ends[3]  # after the restart, neither request appended anything
    assert second["duplicate"] is True and second["events"] == first["events"]
    assert first["events"][0]["commanddigest"] is not None
