"""``waiting_reason`` in the task read model: one reason while a task is queued or retrying, from
the events the decider and the coordinator put on the log, on SQLite and PostgreSQL.

The histories come from the real decider and coordinator on a simulated clock
(``tests.unit.fleet.World``), so the read model says what the coordinator decided.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from contracts import commands as c
from projections import ProjectionStore, Projector, queries
from tests.unit.fleet import T0, World


def register(agent_id: str, caps: tuple[str, ...] = ("x",), capacity: int = 1, **kw: Any) -> c.RegisterAgent:
    kw.setdefault("heartbeat_timeout_s", 3600)
    return c.RegisterAgent(agent_id=agent_id, name=agent_id, capabilities=caps, capacity=capacity, **kw)


def submit(task_id: str, req: tuple[str, ...] = ("x",), **kw: Any) -> c.SubmitTask:
    return c.SubmitTask(task_id=task_id, type="w", required_capabilities=req, **kw)


async def reasons(store: ProjectionStore, w: World, *task_ids: str) -> dict[str, dict[str, Any] | None]:
    """Project the world's whole log into ``store`` (as a rebuild would) and read the tasks."""
    await Projector(store).apply("events", 0, list(enumerate(w.log)))
    out = {}
    for task_id in task_ids:
        task = await queries.get_task(store, w.pool, task_id)
        assert task is not None
        out[task_id] = task["waiting_reason"]
    return out


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


async def test_busy_is_the_default_and_assigned_tasks_have_no_reason(store: ProjectionStore) -> None:
    w = World()
    w.do(register("a"), submit("t1"), submit("t2"))
    got = await reasons(store, w, "t1", "t2")
    assert got == {"t1": None, "t2": {"code": "all_capable_agents_busy", "since": at(0)}}


async def test_no_capable_agent(store: ProjectionStore) -> None:
    w = World()
    w.do(register("a"), submit("t", req=("gpu",)))
    assert (await reasons(store, w, "t"))["t"] == {
        "code": "no_capable_agent", "since": at(0), "missing": ["gpu"], "best_match": 0.0, "threshold": 1.0}


async def test_the_only_capable_agents_budget_is_spent(store: ProjectionStore) -> None:
    w = World()
    w.do(register("a"), c.SetBudget(scope="agent", scope_id="a", limit_usd=1),
         c.RecordCost(cost_id="k", agent_id="a", model="m", cost_usd=2))
    w.now += timedelta(seconds=3)
    w.do(submit("t"))
    assert (await reasons(store, w, "t"))["t"] == {
        "code": "budget_exceeded", "since": at(3), "scope": "agent", "scope_id": "a", "agents": ["a"]}
    w.do(c.SetBudget(scope="agent", scope_id="a", limit_usd=10))
    assert (await reasons(store, w, "t"))["t"] is None  # assigned


async def test_rate_limited_until_a_request_token_is_back(store: ProjectionStore) -> None:
    w = World()
    w.do(register("a", capacity=5), c.SetRateLimit(scope="agent", scope_id="a", requests_per_min=1))
    w.do(submit("t1"), submit("t2"))
    assert (await reasons(store, w, "t2"))["t2"] == {"code": "rate_limited", "since": at(0), "until": at(60)}
    w.advance(60)
    assert (await reasons(store, w, "t2"))["t2"] is None


async def test_retry_backoff_until_the_next_run(store: ProjectionStore) -> None:
    w = World()
    retry = c.RetryPolicy(max_attempts=2, strategy="constant", base_delay_s=7)
    w.do(register("a"), submit("t", retry=retry))
    w.advance(1)
    w.do(c.FailTask(task_id="t", error="boom"))
    assert (await reasons(store, w, "t"))["t"] == {
        "code": "retry_backoff", "since": at(1), "until": at(8), "attempt": 1}
    w.advance(7)
    assert (await reasons(store, w, "t"))["t"] is None  # running again


async def test_circuit_open_then_busy_again(store: ProjectionStore) -> None:
    w = World()
    w.do(c.SetPoolPolicy(breaker_threshold=1, breaker_cooldown_s=30), register("a", capacity=1))
    w.do(submit("f"))
    w.do(c.FailTask(task_id="f"), submit("t1"), submit("t2"))
    assert await reasons(store, w, "t1", "t2") == {
        "t1": {"code": "circuit_open", "since": at(0), "agents": ["a"], "until": at(30)},
        "t2": {"code": "circuit_open", "since": at(0), "agents": ["a"], "until": at(30)},
    }
    w.advance(30)  # half-open: t1 is the trial run, t2 waits for a to be free again
    assert await reasons(store, w, "t1", "t2") == {
        "t1": None, "t2": {"code": "all_capable_agents_busy", "since": at(30)}}


async def test_a_spent_pool_budget(store: ProjectionStore) -> None:
    w = World()
    w.do(c.SetBudget(scope="pool", limit_usd=1), register("a"), submit("t1"), submit("t2"))
    w.do(c.RecordCost(cost_id="k", agent_id="a", task_id="t1", model="m", cost_usd=5))
    assert (await reasons(store, w, "t2"))["t2"] == {
        "code": "budget_exceeded", "since": at(0), "scope": "pool", "scope_id": "default"}
    w.do(c.CancelTask(task_id="t2"))
    assert (await reasons(store, w, "t2"))["t2"] is None
