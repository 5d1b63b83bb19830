"""Money over the API: amounts out of bounds are refused at the door, sums are exact, and the cost
that once overflowed the spend to infinity (and bricked the service) can no longer be recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from projections import ProjectionStore, rebuild
from projections.queries import dump_tables
from services.runtime.embedded import Runner
from tests.api.conftest import ServiceClient, end_offsets, last_position
from tests.api.runtimes import embedded

WAIT = {"wait": "true"}
TEN_DOLLARS = {"agent_id": "a", "model": "m", "cost_usd": 10}


async def register(client: httpx.AsyncClient, agent_id: str = "a") -> None:
    resp = await client.post("/v1/agents", params=WAIT, json={"agent_id": agent_id, "name": agent_id})
    assert resp.status_code == 201, resp.text


def field_errors(resp: httpx.Response) -> list[list[Any]]:
    assert resp.status_code == 422, resp.text
    return [err["loc"] for err in resp.json()["detail"]]


async def budgets(client: httpx.AsyncClient, resp: httpx.Response) -> list[dict[str, Any]]:
    """The pool's budgets as of the write ``resp`` answered."""
    read = await client.get("/v1/budgets", params={"min_position": await last_position(resp)})
    assert read.status_code == 200, read.text
    return list(read.json()["items"])


async def reproduce_the_overflow(client: httpx.AsyncClient) -> httpx.Response:
    """The report: an agent, a budget of 10, a cost of 1e308 twice, a budget of 20."""
    await register(client)
    assert (await client.put("/v1/budgets", params=WAIT, json={"limit_usd": 10})).status_code == 200
    before = await end_offsets(client.service)  # type: ignore[attr-defined]
    for _ in range(2):
        huge = await client.post("/v1/costs", json={"agent_id": "a", "model": "m", "cost_usd": 1e308})
        assert field_errors(huge) == [["body", "cost_usd"]]
    assert await end_offsets(client.service) == before  # type: ignore[attr-defined]  # nothing appended
    raised = await client.put("/v1/budgets", params=WAIT, json={"limit_usd": 20})
    assert raised.status_code == 200, raised.text
    return raised


async def test_the_reported_overflow_is_refused_and_the_service_keeps_working(
    client: httpx.AsyncClient,
) -> None:
    raised = await reproduce_the_overflow(client)
    [budget] = await budgets(client, raised)
    assert (budget["limit_usd"], budget["spent_usd"], budget["exceeded"]) == (20.0, 0.0, False)
    assert (await client.get("/v1/health")).json()["status"] == "ok"


@pytest.mark.embedded
async def test_after_the_overflow_the_service_restarts_and_the_read_models_rebuild(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with embedded(data) as service, ServiceClient(service) as client:
        raised = await reproduce_the_overflow(client)
        ten = await client.post("/v1/costs", params=WAIT, json=TEN_DOLLARS)
        assert [e["type"] for e in ten.json()["events"]] == ["CostRecorded"]
        assert (await budgets(client, ten))[0]["spent_usd"] == 10.0
        assert raised.status_code == 200
    async with embedded(data) as service, ServiceClient(service) as client:
        assert isinstance(service, Runner)
        more = await client.post("/v1/costs", params=WAIT, json=TEN_DOLLARS)
        assert [e["type"] for e in more.json()["events"]] == ["CostRecorded", "BudgetExceeded"]
        [budget] = await budgets(client, more)
        assert (budget["spent_usd"], budget["exceeded"]) == (20.0, True)
        rebuilt = ProjectionStore(f"sqlite+aiosqlite:///{tmp_path / 'rebuilt.db'}")
        await rebuilt.start()
        try:
            assert await rebuild(service.log, rebuilt, service.topics.events) > 0
            assert await dump_tables(rebuilt) == await dump_tables(service.store)
        finally:
            await rebuilt.close()


async def test_ten_costs_of_ten_cents_trip_a_one_dollar_budget(client: httpx.AsyncClient) -> None:
    await register(client)
    assert (await client.put("/v1/budgets", params=WAIT, json={"limit_usd": 1.00})).status_code == 200
    outcomes = []
    for i in range(10):
        resp = await client.post("/v1/costs", params=WAIT,
                                 json={"cost_id": f"k{i}", "agent_id": "a", "model": "m", "cost_usd": 0.10})
        assert resp.status_code == 201, resp.text
        outcomes.append([e["type"] for e in resp.json()["events"]])
    assert outcomes == [["CostRecorded"]] * 9 + [["CostRecorded", "BudgetExceeded"]]
    exceeded = resp.json()["events"][1]["data"]
    assert (exceeded["limit_usd"], exceeded["spent_usd"]) == (1.0, 1.0)
    [budget] = await budgets(client, resp)
    assert budget == {**budget, "limit_usd": 1.0, "spent_usd": 1.0, "left_usd": 0.0, "exceeded": True}
    position = await last_position(resp)
    summary = (await client.get("/v1/costs/summary", params={"min_position": position})).json()
    assert summary["total_usd"] == 1.0 and summary["by_agent"] == {"a": 1.0}
    refused = await client.post("/v1/tasks", params=WAIT, json={"task_id": "t", "type": "x"})
    assert refused.status_code == 409 and refused.json()["code"] == "BUDGET_EXCEEDED"


@pytest.mark.http_layer
@pytest.mark.parametrize(("path", "method", "body", "field"), [
    ("/v1/costs", "POST", {"agent_id": "a", "model": "m", "cost_usd": 1_000_000.01}, "cost_usd"),
    ("/v1/costs", "POST", {"agent_id": "a", "model": "m", "cost_usd": -1}, "cost_usd"),
    ("/v1/costs", "POST", {"agent_id": "a", "model": "m", "input_tokens": 10**9 + 1}, "input_tokens"),
    ("/v1/costs", "POST", {"agent_id": "a", "model": "m", "output_tokens": 2**63}, "output_tokens"),
    ("/v1/budgets", "PUT", {"limit_usd": 1e308}, "limit_usd"),
    ("/v1/budgets", "PUT", {"limit_usd": 10**9 + 1}, "limit_usd"),
    ("/v1/prices", "PUT", {"models": {"gpt-4": {"input_per_1k": 1e308, "output_per_1k": 1}}}, "models"),
])
async def test_amounts_out_of_bounds_are_refused_naming_the_field(
    client: httpx.AsyncClient, path: str, method: str, body: dict[str, Any], field: str
) -> None:
    before = await end_offsets(client.service)  # type: ignore[attr-defined]
    resp = await client.request(method, path, json=body)
    assert ["body", field] in [loc[:2] for loc in field_errors(resp)]
    assert await end_offsets(client.service) == before  # type: ignore[attr-defined]


@pytest.mark.http_layer
@pytest.mark.parametrize("raw", [b'{"agent_id": "a", "model": "m", "cost_usd": 1e400}',
                                 b'{"agent_id": "a", "model": "m", "cost_usd": NaN}',
                                 b'{"agent_id": "a", "model": "m", "cost_usd": Infinity}'])
async def test_numbers_json_cannot_hold_are_refused(client: httpx.AsyncClient, raw: bytes) -> None:
    resp = await client.post("/v1/costs", content=raw)
    assert resp.status_code == 422, resp.text
