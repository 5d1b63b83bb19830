"""The read-model queries against every backend: filters, pagination, summaries, JSON-ready output."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from contracts import event_types as ev
from projections import ProjectionStore, Projector, queries

from .history import Story, realistic_history

POOL = "default"


@pytest.fixture
async def projected(store: ProjectionStore) -> ProjectionStore:
    """The realistic history, projected in batches of 7."""
    items = list(enumerate(realistic_history()))
    projector = Projector(store)
    for i in range(0, len(items), 7):
        await projector.apply("events", 0, items[i : i + 7])
    return store


async def test_agents_filtered_by_status_and_isolated_by_pool(projected: ProjectionStore) -> None:
    all_agents = await queries.list_agents(projected, POOL)
    assert [a["agent_id"] for a in all_agents] == ["a1", "a2", "a3"]
    await Projector(projected).apply("events", 0, [(10_000, Story().add(
        ev.AgentDeregistered(agent_id="a2")))])
    active = await queries.list_agents(projected, POOL, status="active")
    assert [a["agent_id"] for a in active] == ["a1", "a3"]
    gone = await queries.list_agents(projected, POOL, status="deregistered")
    assert [a["agent_id"] for a in gone] == ["a2"]
    blue = await queries.list_agents(projected, "blue")
    assert [(a["agent_id"], a["capacity"]) for a in blue] == [("a1", 1)]
    assert await queries.list_agents(projected, "no-such-pool") == []


async def test_get_agent(projected: ProjectionStore) -> None:
    a1 = await queries.get_agent(projected, POOL, "a1")
    assert a1 is not None
    assert a1["capabilities"] == ["python", "gpu"] and a1["capacity"] == 2
    assert (a1["status"], a1["load"], a1["tasks_completed"]) == ("active", 0, 2)
    a3 = await queries.get_agent(projected, POOL, "a3")
    assert a3 is not None and a3["load"] == 1  # t6 is running on it
    assert isinstance(a1["registered_at"], str) and a1["registered_at"].endswith("+00:00")
    assert await queries.get_agent(projected, POOL, "nobody") is None
    blue = await queries.get_agent(projected, "blue", "a1")
    assert blue is not None and blue["load"] == 1


async def test_list_tasks_filters(projected: ProjectionStore) -> None:
    async def ids(**filters: Any) -> list[str]:
        page = await queries.list_tasks(projected, POOL, **filters)
        assert page["total"] == len(page["items"])
        return [t["task_id"] for t in page["items"]]

    assert await ids() == ["t1", "t2", "t3", "t4", "t5", "t6"]  # submission order
    assert await ids(status="completed") == ["t1", "t3"]
    assert await ids(status="cancelled") == ["t4", "t5"]
    assert await ids(status="running") == ["t6"]
    assert await ids(agent_id="a1") == ["t1", "t3"]
    assert await ids(agent_id="a3", status="running") == ["t6"]
    assert await ids(type="summarize") == ["t1", "t2", "t3", "t4", "t5", "t6"]
    assert await ids(type="translate") == []


async def test_list_tasks_pages(store: ProjectionStore) -> None:
    s = Story()
    for i in range(23):
        s.submit(f"t{i:02d}")
    await Projector(store).apply("events", 0, s.items())
    pages = [await queries.list_tasks(store, POOL, page=p, page_size=10) for p in (1, 2, 3, 4)]
    assert [len(p["items"]) for p in pages] == [10, 10, 3, 0]
    assert all(p["total"] == 23 and p["page_size"] == 10 for p in pages)
    assert [p["page"] for p in pages] == [1, 2, 3, 4]
    seen = [t["task_id"] for p in pages for t in p["items"]]
    assert seen == [f"t{i:02d}" for i in range(23)]
    with pytest.raises(ValueError):
        await queries.list_tasks(store, POOL, page=0)
    with pytest.raises(ValueError):
        await queries.list_tasks(store, POOL, page_size=0)


async def test_get_task_with_timings(projected: ProjectionStore) -> None:
    t3 = await queries.get_task(projected, POOL, "t3")
    assert t3 is not None
    assert (t3["status"], t3["agent_id"], t3["attempts"]) == ("completed", "a1", 2)
    for timing in ("submitted_at", "assigned_at", "started_at", "finished_at"):
        assert isinstance(t3[timing], str) and t3[timing].endswith("+00:00"), timing
    assert t3["submitted_at"] < t3["assigned_at"] < t3["started_at"] < t3["finished_at"]
    t2 = await queries.get_task(projected, POOL, "t2")
    assert t2 is not None and (t2["status"], t2["error"]) == ("failed", "timeout")
    assert await queries.get_task(projected, POOL, "t99") is None
    orjson.dumps(t3)  # JSON-ready


async def test_resources(projected: ProjectionStore) -> None:
    r = await queries.resources(projected, POOL)
    assert r["limits"] is not None and r["limits"]["max_cpu_cores"] == 16
    assert r["allocated"] == {"cpu_cores": 2, "memory_mb": 2000, "disk_mb": 500,
                              "network_mbps": 50}
    assert r["free"] == {"cpu_cores": 14, "memory_mb": 30_000, "disk_mb": 99_500,
                         "network_mbps": 950}
    assert [a["allocation_id"] for a in r["allocations"]] == ["al2"]  # al1 was released
    orjson.dumps(r)
    blue = await queries.resources(projected, "blue")
    assert blue == {
        "limits": None,
        "allocated": {"cpu_cores": 0, "memory_mb": 0, "disk_mb": 0, "network_mbps": 0},
        "free": None,
        "allocations": [],
    }


async def test_cost_summary(projected: ProjectionStore) -> None:
    summary = await queries.cost_summary(projected, POOL)
    assert summary["total_usd"] == pytest.approx(0.1 + 0.125 + 0.2 + 0.05)
    assert summary["by_agent"] == pytest.approx({"a1": 0.275, "a2": 0.2})
    assert summary["by_model"] == pytest.approx(
        {"gpt-4o": 0.225, "claude-sonnet-4": 0.2, "gpt-4o-mini": 0.05})
    assert summary["by_task"] == pytest.approx({"t1": 0.125, "t2": 0.2, "t3": 0.05})
    budgets = {(b["scope"], b["scope_id"]): b for b in summary["budgets"]}
    assert set(budgets) == {("pool", "default"), ("agent", "a1"), ("workflow", "wf1")}
    pool = budgets[("pool", "default")]
    assert pool["spent_usd"] == pytest.approx(0.475)
    assert pool["left_usd"] == pytest.approx(10 - 0.475) and pool["exceeded"] is False
    wf1 = budgets[("workflow", "wf1")]
    assert (wf1["limit_usd"], wf1["spent_usd"]) == pytest.approx((1.0, 0.325))
    assert wf1["left_usd"] == pytest.approx(0.675) and wf1["exceeded"] is False
    orjson.dumps(summary)

    blue = await queries.cost_summary(projected, "blue")
    assert blue["total_usd"] == 1.5
    [blue_budget] = blue["budgets"]
    # Overspent: nothing left (not a negative allowance), and flagged.
    assert (blue_budget["scope_id"], blue_budget["left_usd"], blue_budget["exceeded"]) == (
        "blue", 0.0, True)
    empty = await queries.cost_summary(projected, "no-such-pool")
    assert empty == {"total_usd": 0.0, "by_agent": {}, "by_model": {}, "by_task": {},
                     "budgets": []}


async def test_assignment_audit_trail(projected: ProjectionStore) -> None:
    trail = await queries.assignments(projected, POOL)
    assert [(a["task_id"], a["agent_id"], a["attempt"]) for a in trail] == [
        ("t1", "a1", 1), ("t2", "a2", 1), ("t3", "a1", 1), ("t3", "a1", 2), ("t5", "a3", 1),
        ("t6", "a3", 1)]
    positions = [a["position"] for a in trail]
    assert positions == sorted(positions)
    assert [a["attempt"] for a in await queries.assignments(projected, POOL, task_id="t3")] == [
        1, 2]
    assert {a["task_id"] for a in await queries.assignments(projected, POOL, agent_id="a3")} == {
        "t5", "t6"}
    first_two = await queries.assignments(projected, POOL, limit=2)
    rest = await queries.assignments(projected, POOL, after=first_two[-1]["position"])
    assert first_two + rest == trail
    assert trail[0]["candidates"][0]["agent_id"] == "a1"
    assert trail[0]["assigned_at"].endswith("+00:00")
    orjson.dumps(trail)


async def test_rejections(projected: ProjectionStore) -> None:
    all_rejections = await queries.rejections(projected, POOL)
    assert [r["code"] for r in all_rejections] == ["BUDGET_EXCEEDED", "AGENT_OVER_CAPACITY"]
    [one] = await queries.rejections(projected, POOL, command_id="cmd-rejected-2")
    assert (one["command_type"], one["details"]) == ("AssignTask", {"agent_id": "a2"})
    assert await queries.rejections(projected, POOL, command_id="nope") == []
    assert await queries.rejections(projected, "blue") == []
    assert len(await queries.rejections(projected, POOL, limit=1)) == 1
    orjson.dumps(all_rejections)


async def test_rows_read_in_bulk_equal_each_row_made_json_ready_alone(projected: ProjectionStore) -> None:
    """``_rows`` finds the keys and the datetime columns once per result: every table's rows come
    back exactly as ``_jsonable`` makes each one (ISO strings, None kept, plain str keys)."""
    import sqlalchemy as sa

    from projections import tables

    def one_by_one(conn: sa.Connection, stmt: sa.Select[Any]) -> list[dict[str, Any]]:
        return [queries._jsonable(r) for r in conn.execute(stmt).mappings()]

    checked = 0
    for table in tables.READ_MODELS:
        stmt = sa.select(table).order_by(*table.primary_key.columns)
        bulk = await projected.run_read(queries._rows, stmt)
        assert bulk == await projected.run_read(one_by_one, stmt), table.name
        assert all(type(k) is str for row in bulk for k in row)
        checked += len(bulk)
    tasks = await queries.list_tasks(projected, POOL, page_size=100)
    assert any(t["started_at"] is None for t in tasks["items"])  # a None among the datetimes
    assert all(t["submitted_at"].endswith("+00:00") for t in tasks["items"])
    assert checked > 20
