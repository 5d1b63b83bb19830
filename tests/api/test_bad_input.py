"""Bad input is refused before anything is appended: 422 with field errors, 413 when oversized."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from services.runtime.service import Service
from services.runtime.settings import MAX_BODY_BYTES
from tests.api.conftest import LOOP, end_offsets, event_count, settle

pytestmark = pytest.mark.http_layer


@pytest_asyncio.fixture(loop_scope=LOOP)
async def unchanged(client: httpx.AsyncClient, service: Service) -> AsyncIterator[None]:
    """Asserts after the test that neither topic grew and the API lists the same events."""
    seed = await client.post("/v1/tasks", params={"wait": "true"}, json={"task_id": "seed", "type": "x"})
    assert seed.status_code == 201
    await settle(service)  # the coordinator marks the task unassignable (no agents): let it
    offsets, events = await end_offsets(service), await event_count(client)
    yield
    assert await end_offsets(service) == offsets
    assert await event_count(client) == events


def detail(resp: httpx.Response) -> list[dict[str, Any]]:
    assert resp.status_code == 422, resp.text
    items = resp.json()["detail"]
    assert isinstance(items, list) and items
    for item in items:
        assert {"type", "loc", "msg"} <= set(item)
    return list(items)


@pytest.mark.usefixtures("unchanged")
class TestRefusedWrites:
    async def test_malformed_json_names_the_problem(self, client: httpx.AsyncClient) -> None:
        resp = await client.post(
            "/v1/tasks", content=b'{"task_id": "t1", "type": }', headers={"content-type": "application/json"}
        )
        [err] = detail(resp)
        assert err["type"] == "json_invalid" and err["loc"][0] == "body"
        assert "JSON decode error" in err["msg"] and "column" in err["msg"]

    @pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"42", b"null"])
    async def test_json_that_is_not_an_object(self, client: httpx.AsyncClient, raw: bytes) -> None:
        [err] = detail(await client.post("/v1/agents", content=raw))
        assert err["loc"] == ["body"] and "JSON object" in err["msg"]

    async def test_missing_body_where_one_is_required(self, client: httpx.AsyncClient) -> None:
        [err] = detail(await client.post("/v1/agents"))
        assert err["type"] == "missing"

    async def test_unknown_command_type_is_named(self, client: httpx.AsyncClient) -> None:
        [err] = detail(await client.post("/v1/commands", json={"type": "LaunchRocket", "data": {}}))
        assert err["loc"] == ["body", "type"] and "LaunchRocket" in err["msg"]

    async def test_event_type_is_not_a_command(self, client: httpx.AsyncClient) -> None:
        [err] = detail(await client.post("/v1/commands", json={"type": "TaskSubmitted", "data": {}}))
        assert err["loc"] == ["body", "type"] and "event" in err["msg"]

    async def test_cloudevent_of_an_event_type_is_refused(self, client: httpx.AsyncClient) -> None:
        ce = {
            "specversion": "1.0",
            "id": "e1",
            "source": "x",
            "type": "AgentRegistered",
            "data": {"agent_id": "a", "name": "a", "kind": "k", "capacity": 1},
        }
        [err] = detail(await client.post("/v1/commands", json=ce))
        assert err["loc"] == ["body", "type"] and "event" in err["msg"]

    async def test_cloudevent_with_invalid_data_has_field_errors(self, client: httpx.AsyncClient) -> None:
        ce = {
            "specversion": "1.0",
            "id": "c1",
            "source": "x",
            "type": "SubmitTask",
            "data": {"task_id": "t", "type": "x", "priority": 11},
        }
        errors = detail(await client.post("/v1/commands", json=ce))
        assert ["body", "data", "priority"] in [e["loc"] for e in errors]

    async def test_cloudevent_with_an_unsupported_specversion(self, client: httpx.AsyncClient) -> None:
        ce = {"specversion": "0.3", "id": "c1", "type": "SubmitTask", "data": {"task_id": "t", "type": "x"}}
        [err] = detail(await client.post("/v1/commands", json=ce))
        assert err["loc"] == ["body", "specversion"]

    async def test_schema_violations_are_field_errors(self, client: httpx.AsyncClient) -> None:
        errors = detail(
            await client.post(
                "/v1/tasks", json={"task_id": "t1", "priority": 11, "required_capabilities": "text"}
            )
        )
        locs = {tuple(e["loc"]): e for e in errors}
        assert ("body", "type") in locs and locs[("body", "type")]["type"] == "missing"
        assert ("body", "priority") in locs and "10" in locs[("body", "priority")]["msg"]
        assert ("body", "required_capabilities") in locs

    async def test_unknown_fields_are_refused(self, client: httpx.AsyncClient) -> None:
        [err] = detail(await client.post("/v1/agents", json={"name": "n", "colour": "blue"}))
        assert err["loc"] == ["body", "colour"] and err["type"] == "extra_forbidden"
        [err] = detail(
            await client.post("/v1/commands", json={"type": "RegisterAgent", "data": {}, "extra": 1})
        )
        assert err["loc"] == ["body", "extra"]

    async def test_model_rule_violation_is_json_safe(self, client: httpx.AsyncClient) -> None:
        [err] = detail(await client.put("/v1/budgets", json={"scope": "agent", "limit_usd": 5}))
        assert "scope_id is required" in err["msg"]

    async def test_command_data_must_be_an_object(self, client: httpx.AsyncClient) -> None:
        [err] = detail(await client.post("/v1/commands", json={"type": "RegisterAgent", "data": [1]}))
        assert err["loc"] == ["body", "data"]

    @pytest.mark.parametrize("pool", [5, "", "p" * 201])
    async def test_bad_pool(self, client: httpx.AsyncClient, pool: object) -> None:
        [err] = detail(await client.post("/v1/agents", json={"name": "n", "pool": pool}))
        assert err["loc"] == ["body", "pool"]

    @pytest.mark.parametrize("pool", ["a/b", "../etc", "a\nb", " ", " p", "p ", ".", "..", "a\x1bb"])
    async def test_a_pool_follows_the_id_rules_wherever_it_is_named(self, client: httpx.AsyncClient,
                                                                    pool: str) -> None:
        # As the README's table says: one way to read pool/<pool>/<channel>, nothing that breaks a
        # line of a log or a terminal.
        [err] = detail(await client.post("/v1/agents", json={"name": "n", "pool": pool}))
        assert err["loc"] == ["body", "pool"] and err["type"] in ("pool_invalid", "string_type"), err
        task = {"task_id": "t", "type": "x"}
        [err] = detail(await client.post("/v1/tasks", params={"pool": pool}, json=task))
        assert err["loc"] == ["query", "pool"], err
        [err] = detail(await client.post("/v1/commands", json={"type": "RegisterAgent", "pool": pool,
                                                               "data": {"agent_id": "a", "name": "n"}}))
        assert err["loc"] == ["body", "pool"], err
        ce = {"specversion": "1.0", "id": "c-pool", "source": "x", "type": "SubmitTask", "pool": pool,
              "data": {"task_id": "t", "type": "x"}}
        [err] = detail(await client.post("/v1/commands", json=ce))
        assert err["loc"] == ["body", "pool"], err
        [err] = detail(await client.get("/v1/tasks", params={"pool": pool}))
        assert err["loc"] == ["query", "pool"], err
        run = {"definition": {"name": "w", "tasks": [{"name": "a", "type": "x"}]}, "pool": pool}
        errors = detail(await client.post("/v1/workflows", json=run))
        assert ["body", "pool"] in [e["loc"] for e in errors], errors

    async def test_the_system_pool_takes_only_its_own_commands(self, client: httpx.AsyncClient) -> None:
        [err] = detail(await client.post("/v1/agents", json={"name": "n", "pool": "_system"}))
        assert err["loc"] == ["body", "pool"] and err["type"] == "pool_reserved", err
        task = {"task_id": "t", "type": "x"}
        [err] = detail(await client.post("/v1/tasks", params={"pool": "_system"}, json=task))
        assert err["loc"] == ["query", "pool"] and err["type"] == "pool_reserved", err
        ce = {"specversion": "1.0", "id": "c-sys", "source": "x", "type": "SubmitTask", "pool": "_system",
              "data": {"task_id": "t", "type": "x"}}
        [err] = detail(await client.post("/v1/commands", json=ce))
        assert err["type"] == "pool_reserved", err

    async def test_path_and_body_disagree(self, client: httpx.AsyncClient) -> None:
        [err] = detail(await client.post("/v1/tasks/seed/complete", json={"task_id": "other"}))
        assert err["loc"] == ["body", "task_id"]

    async def test_oversized_idempotency_key(self, client: httpx.AsyncClient) -> None:
        resp = await client.post("/v1/agents", json={"name": "n"}, headers={"Idempotency-Key": "k" * 201})
        assert resp.status_code == 422

    @pytest.mark.parametrize("params", [{"timeout": "61"}, {"timeout": "0"}, {"wait": "maybe"}])
    async def test_bad_write_options(self, client: httpx.AsyncClient, params: dict[str, str]) -> None:
        assert (await client.post("/v1/agents", params=params, json={"name": "n"})).status_code == 422

    async def test_oversized_body_with_content_length_is_413(self, client: httpx.AsyncClient) -> None:
        big = b'{"name": "n", "metadata": {"blob": "' + b"x" * MAX_BODY_BYTES + b'"}}'
        resp = await client.post("/v1/agents", content=big, headers={"content-type": "application/json"})
        assert resp.status_code == 413
        assert "larger than" in resp.json()["detail"]

    async def test_oversized_streamed_body_is_413_before_it_is_read_whole(
        self, client: httpx.AsyncClient
    ) -> None:
        sent = 0

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal sent
            yield b'{"name": "n", "metadata": {"blob": "'
            for _ in range(64):  # 4 MiB offered in 64 KiB chunks, no Content-Length
                sent += 1
                yield b"x" * 65536
            yield b'"}}'

        resp = await client.post("/v1/agents", content=chunks())
        assert resp.status_code == 413
        assert sent <= 17  # stopped just past 1 MiB, not after all 4 MiB

    async def test_body_at_the_limit_is_accepted_as_input(self, client: httpx.AsyncClient) -> None:
        head, tail = b'{"name": "n", "colour": "', b'"}'
        body = head + b"x" * (MAX_BODY_BYTES - len(head) - len(tail)) + tail
        assert len(body) == MAX_BODY_BYTES
        # Within the limit: it reaches validation (422 for the unknown field), not 413.
        assert (await client.post("/v1/agents", content=body)).status_code == 422


@pytest.mark.parametrize(
    "params", [{"page": "0"}, {"page_size": "501"}, {"page_size": "0"}, {"min_position": "x"}]
)
async def test_bad_read_parameters(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    assert (await client.get("/v1/tasks", params=params)).status_code == 422


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "1001"}, {"after": "-2"}])
async def test_bad_events_parameters(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    assert (await client.get("/v1/events", params=params)).status_code == 422
