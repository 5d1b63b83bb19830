"""Prices over the API: a built-in table that prices common models out of the box, changed by
commands (PUT /v1/prices) and read back (GET /v1/prices), never by a file or a setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from projections import ProjectionStore, rebuild
from projections.queries import dump_tables
from tests.api.conftest import ServiceClient, end_offsets, last_position
from tests.api.runtimes import embedded

WAIT = {"wait": "true"}


async def register(client: httpx.AsyncClient, agent_id: str = "a", pool: str = "default") -> None:
    resp = await client.post("/v1/agents", params=WAIT, json={"agent_id": agent_id, "name": agent_id,
                                                              "pool": pool})
    assert resp.status_code == 201, resp.text


async def record(client: httpx.AsyncClient, model: str, input_tokens: int, output_tokens: int,
                 **extra: Any) -> httpx.Response:
    return await client.post("/v1/costs", params=WAIT, json={"agent_id": "a", "model": model,
                                                             "input_tokens": input_tokens,
                                                             "output_tokens": output_tokens, **extra})


def cost_of(resp: httpx.Response) -> float:
    assert resp.status_code == 201, resp.text
    data = resp.json()["events"][0]["data"]
    assert data["priced_from_table"] is True
    return float(data["cost_usd"])


async def prices(client: httpx.AsyncClient, after: httpx.Response | None = None,
                 pool: str = "default") -> dict[str, Any]:
    params: dict[str, Any] = {"pool": pool}
    if after is not None:
        params["min_position"] = await last_position(after)
    resp = await client.get("/v1/prices", params=params)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def test_gpt_4_is_priced_out_of_the_box_and_counts_toward_a_budget(client: httpx.AsyncClient) -> None:
    await register(client)
    # Exactly what the three costs below add up to: the last one trips it.
    assert (await client.put("/v1/budgets", params=WAIT, json={"limit_usd": 0.962})).status_code == 200
    first = await record(client, "gpt-4", 12_000, 5_000)
    assert cost_of(first) == 0.66  # 12K input tokens at 0.03 + 5K output tokens at 0.06 per 1K
    assert cost_of(await record(client, "gpt-3.5-turbo", 1_000, 1_000)) == 0.002
    second = await record(client, "gpt-4", 10_000, 0)
    assert cost_of(second) == 0.3
    assert [e["type"] for e in second.json()["events"]] == ["CostRecorded", "BudgetExceeded"]
    position = await last_position(second)
    summary = (await client.get("/v1/costs/summary", params={"min_position": position})).json()
    assert summary["total_usd"] == 0.962
    assert summary["budgets"][0]["exceeded"] is True


async def test_a_changed_price_prices_the_next_cost(client: httpx.AsyncClient) -> None:
    await register(client)
    before = cost_of(await record(client, "gpt-4", 1000, 1000))
    changed = await client.put("/v1/prices", params=WAIT, json={
        "models": {"gpt-4": {"input_per_1k": 0.01, "output_per_1k": 0.02}}})
    assert changed.status_code == 200, changed.text
    [event] = changed.json()["events"]
    assert event["type"] == "PricesSet"
    assert event["data"]["models"] == {"gpt-4": {"input_per_1k": 0.01, "output_per_1k": 0.02}}
    after = cost_of(await record(client, "gpt-4-0613", 1000, 1000))
    assert (before, after) == (0.09, 0.03)
    # Null gives a model its built-in price back.
    back = await client.put("/v1/prices", params=WAIT, json={"models": {"gpt-4": None}})
    assert back.status_code == 200 and back.json()["events"][0]["data"]["models"] == {}
    assert cost_of(await record(client, "gpt-4", 1000, 1000)) == 0.09


async def test_strict_prices_reject_a_model_in_no_table(client: httpx.AsyncClient) -> None:
    await register(client)
    assert cost_of(await record(client, "house-llm", 1000, 1000)) == 0.04  # the built-in default
    strict = await client.put("/v1/prices", params=WAIT, json={"strict": True})
    assert strict.status_code == 200
    refused = await record(client, "house-llm", 1000, 1000)
    assert refused.status_code == 409 and refused.json()["code"] == "UNKNOWN_MODEL_PRICE"
    assert refused.json()["details"]["model"] == "house-llm"
    assert cost_of(await record(client, "claude-3-5-haiku-20241022", 1000, 1000)) == 0.0048
    sent = await record(client, "house-llm", 1000, 1000, cost_usd=0.5)
    assert sent.status_code == 201
    priced = await client.put("/v1/prices", params=WAIT, json={
        "models": {"house-llm": {"input_per_1k": 0.001, "output_per_1k": 0.001}}})
    assert priced.status_code == 200
    assert cost_of(await record(client, "house-llm", 1000, 1000)) == 0.002
    relaxed = await client.put("/v1/prices", params=WAIT, json={
        "default": {"input_per_1k": 0.0001, "output_per_1k": 0.0002}, "strict": False})
    assert relaxed.status_code == 200
    assert cost_of(await record(client, "other-llm", 1000, 1000)) == 0.0003


async def test_get_prices_answers_the_effective_table(client: httpx.AsyncClient) -> None:
    await register(client)
    table = await prices(client)
    assert table["models"]["gpt-4"] == {"input_per_1k": 0.03, "output_per_1k": 0.06, "source": "built-in"}
    assert table["models"]["gpt-3.5-turbo"] == {"input_per_1k": 0.0005, "output_per_1k": 0.0015,
                                               "source": "built-in"}
    common = {"gpt-4o", "o3", "claude-sonnet-4", "gemini-2.5-pro", "llama-3.1-70b", "deepseek-r1", "qwen-max"}
    assert common <= set(table["models"])
    assert table["default"] == {"input_per_1k": 0.01, "output_per_1k": 0.03, "source": "built-in"}
    assert table["strict"] is False
    changed = await client.put("/v1/prices", params=WAIT, json={
        "models": {"GPT-4": {"input_per_1k": 0.02, "output_per_1k": 0.04},
                   "house": {"input_per_1k": 0.5, "output_per_1k": 1}},
        "default": {"input_per_1k": 0.002, "output_per_1k": 0.004}, "strict": True})
    assert changed.status_code == 200, changed.text
    table = await prices(client, changed)
    assert table["models"]["gpt-4"] == {"input_per_1k": 0.02, "output_per_1k": 0.04, "source": "pool"}
    assert table["models"]["house"]["source"] == "pool"
    assert table["models"]["gpt-4o"]["source"] == "built-in"
    assert table["default"] == {"input_per_1k": 0.002, "output_per_1k": 0.004, "source": "pool"}
    assert table["strict"] is True
    # Prices are a pool's own.
    other = await prices(client, pool="other")
    assert other["models"]["gpt-4"]["source"] == "built-in" and other["strict"] is False


@pytest.mark.embedded
async def test_costs_and_prices_survive_a_restart_and_a_rebuild(tmp_path: Path) -> None:
    """The decider prices from the log: after a restart the pool's own price still holds, and the
    read models rebuild into the same costs and prices."""
    data = tmp_path / "data"
    async with embedded(data) as service, ServiceClient(service) as client:
        await register(client)
        assert cost_of(await record(client, "gpt-4", 1000, 0)) == 0.03
        changed = await client.put("/v1/prices", params=WAIT, json={
            "models": {"gpt-4": {"input_per_1k": 0.01, "output_per_1k": 0.02}}, "strict": True})
        assert changed.status_code == 200
        assert cost_of(await record(client, "gpt-4", 1000, 0)) == 0.01
    async with embedded(data) as service, ServiceClient(service) as client:
        assert cost_of(await record(client, "gpt-4", 1000, 0)) == 0.01
        refused = await record(client, "house-llm", 1, 1)
        assert refused.json()["code"] == "UNKNOWN_MODEL_PRICE"
        summary = (await client.get("/v1/costs/summary",
                                    params={"min_position": await last_position(refused)})).json()
        assert summary["total_usd"] == 0.05
        assert (await prices(client))["models"]["gpt-4"]["source"] == "pool"
        rebuilt = ProjectionStore(f"sqlite+aiosqlite:///{tmp_path / 'rebuilt.db'}")
        await rebuilt.start()
        try:
            await rebuild(service.log, rebuilt, service.topics.events)
            tables = await dump_tables(rebuilt)
            assert tables == await dump_tables(service.store)
            assert [row["cost_micros"] for row in tables["costs"]] and sorted(
                row["cost_micros"] for row in tables["costs"]) == [10_000, 10_000, 30_000]
            assert tables["prices"][0]["strict"] is True
        finally:
            await rebuilt.close()


@pytest.mark.http_layer
@pytest.mark.parametrize("body", [
    {"models": {"gpt-4": {"input_per_1k": -0.01, "output_per_1k": 0.06}}},
    {"models": {"gpt-4": {"input_per_1k": 0.03}}},
    {"models": {"gpt-4": {"input_per_1k": "cheap", "output_per_1k": 0.06}}},
    {"models": {"gpt-4": {"input_per_1k": 0.03, "output_per_1k": 0.06, "per": "1k"}}},
    {"models": {"": {"input_per_1k": 0.03, "output_per_1k": 0.06}}},
    {"models": ["gpt-4"]},
    {"default": {"input_per_1k": 1001, "output_per_1k": 0}},
    {"strict": "sometimes"},
    {"prices": {}},
])
async def test_bad_price_bodies_are_refused(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    before = await end_offsets(client.service)  # type: ignore[attr-defined]
    resp = await client.put("/v1/prices", json=body)
    assert resp.status_code == 422, resp.text
    assert await end_offsets(client.service) == before  # type: ignore[attr-defined]
