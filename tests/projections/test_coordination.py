"""Coordination events in the read models: health, retries, timeouts, breakers, fallbacks,
deferrals, budgets, timers, policies, scaling, performance, and the queries built on them.

The histories are made by the real decider (``history.Decided``), so the read model is checked
against the decider's own state: what ``evolve`` says a task or an agent is, the tables say too.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from contracts import Envelope
from contracts import commands as c
from contracts import event_types as ev
from projections import ProjectionStore, Projector, queries, tables
from projections.performance import profiles_from, report
from services.domain.state import PoolState

from .history import Decided, Story, audit, coordination_history, realistic_history

TOPIC = "events"


async def project(store: ProjectionStore, envelopes: list[Envelope], batch: int = 1000) -> None:
    items = list(enumerate(envelopes))
    projector = Projector(store)
    for i in range(0, len(items), batch):
        await projector.apply(TOPIC, 0, items[i : i + batch])


async def rows(store: ProjectionStore, table: sa.Table, pool: str) -> dict[str, dict[str, Any]]:
    """The pool's rows of ``table`` by the last primary-key column."""
    key = list(table.primary_key.columns)[-1].name
    async with store.engine.connect() as conn:
        found = (await conn.execute(sa.select(table).where(table.c.pool == pool))).mappings()
        return {r[key]: dict(r) for r in found}


# --- the read model says what the decider says ---


async def assert_mirrors(store: ProjectionStore, state: PoolState) -> None:
    pool = state.pool
    tasks = await rows(store, tables.tasks, pool)
    assert set(tasks) == set(state.tasks)
    for task_id, t in state.tasks.items():
        row = tasks[task_id]
        assert (row["status"], row["agent_id"], row["attempts"], row["failures"]) == (
            t.status, t.agent_id, t.attempts, t.failures), task_id
        missing = None if row["unassignable"] is None else tuple(row["unassignable"]["missing"])
        assert missing == t.unassignable, task_id
        assert set(row["inferred_capabilities"]) == t.preferred
        assert row["timeout_s"] == t.timeout_s
        assert row["retry"] == (None if t.retry is None else t.retry.model_dump(mode="json"))
    agents = await rows(store, tables.agents, pool)
    assert set(agents) == set(state.agents)
    for agent_id, a in state.agents.items():
        row = agents[agent_id]
        status = "deregistered" if not a.active else "active" if a.healthy else "unhealthy"
        assert (row["status"], row["healthy"], row["circuit"], row["consecutive_failures"]) == (
            status, a.healthy, a.breaker, a.failures), agent_id
        assert (row["weight"], row["heartbeat_timeout_s"]) == (a.weight, a.heartbeat_timeout_s)
        if a.active:
            assert row["load"] == len(a.tasks), agent_id
    timers = await rows(store, tables.timers, pool)
    pending = {k: r["generation"] for k, r in timers.items() if r["status"] == "pending"}
    assert pending == {k: t.generation for k, t in state.timers.items()}
    policy = await queries.pool_policy(store, pool)
    assert policy["policy"] == state.policy.model_dump(mode="json")
    scaling = await queries.scaling_policies(store, pool)
    assert {p["agent_kind"]: p["max_agents"] for p in scaling["items"]} == {
        k: p.max_agents for k, p in state.scaling.items()}
    limits = await rows(store, tables.resource_limits, pool)
    assert limits.get(pool, {}).get("max_agents") == state.max_agents
    pools = await rows(store, tables.pools, pool)
    assert pools[pool]["last_sequence"] == state.sequence


@pytest.mark.parametrize("batch", [1, 4, 1000])
async def test_read_model_mirrors_the_decider_state(store: ProjectionStore, batch: int) -> None:
    d = coordination_history()
    await project(store, d.envelopes, batch)
    await assert_mirrors(store, d.state)


async def test_mirrors_the_decider_after_every_decision(store: ProjectionStore) -> None:
    """Decision by decision (each its own batch, as the live projector sees them)."""
    d = Decided("ops")
    projector = Projector(store)
    applied = 0

    async def step(cmd: c.Command) -> None:
        nonlocal applied
        d.do(cmd)
        await projector.apply(TOPIC, 0, d.items(applied))
        applied = len(d.envelopes)
        await assert_mirrors(store, d.state)

    await step(c.SetPoolPolicy(breaker_threshold=1, breaker_cooldown_s=5))
    await step(c.SetResourceLimits(max_cpu_cores=1, max_memory_mb=1, max_disk_mb=1,
                                   max_network_mbps=1, max_agents=2))
    await step(c.RegisterAgent(agent_id="a1", name="a1", capabilities=("x",), capacity=2,
                               heartbeat_timeout_s=3))
    await step(c.AgentHeartbeat(agent_id="a1"))
    await step(c.SubmitTask(task_id="t1", type="x", required_capabilities=("x",), timeout_s=9,
                            retry=c.RetryPolicy(max_attempts=2, strategy="immediate")))
    await step(c.AssignTask(task_id="t1", agent_id="a1"))
    await step(c.FailTask(task_id="t1"))  # immediate retry: requeued at once; breaker opens
    d.fire("circuit:a1")
    await projector.apply(TOPIC, 0, d.items(applied))
    applied = len(d.envelopes)
    await assert_mirrors(store, d.state)
    await step(c.AssignTask(task_id="t1", agent_id="a1"))
    await step(c.CancelTask(task_id="t1", reason="enough"))
    await step(c.DeregisterAgent(agent_id="a1"))


# --- each event's effect ---


async def test_retry_then_timeout_then_reassignment_of_one_task(store: ProjectionStore) -> None:
    d = coordination_history()
    await project(store, d.envelopes, batch=5)
    t1 = (await rows(store, tables.tasks, "ops"))["t1"]
    assert (t1["status"], t1["agent_id"], t1["attempts"]) == ("queued", None, 3)
    assert (t1["failures"], t1["timeouts"], t1["reassignments"]) == (2, 1, 1)
    assert t1["requeue_reason"] == "agent unhealthy: no heartbeat for 5.0s"
    assert t1["error"] == "timed out after 30.0s" and t1["next_attempt_at"] is None
    assert t1["retry"] == {"max_attempts": 3, "strategy": "exponential", "base_delay_s": 2.0,
                           "max_delay_s": 300.0, "multiplier": 2.0, "jitter": 0.0}


async def test_retry_scheduled_waits_with_its_next_attempt_time(store: ProjectionStore) -> None:
    d = Decided()
    d.do(c.RegisterAgent(agent_id="a1", name="a1", capacity=2))
    d.do(c.SubmitTask(task_id="t1", type="x", retry=c.RetryPolicy(max_attempts=2, base_delay_s=4)))
    d.do(c.AssignTask(task_id="t1", agent_id="a1"))
    events = d.do(c.FailTask(task_id="t1", error="boom"))
    await project(store, d.envelopes)
    [retry_env] = [e for e in d.envelopes if isinstance(e.data, ev.TaskRetryScheduled)]
    t1 = (await rows(store, tables.tasks, "default"))["t1"]
    assert (t1["status"], t1["agent_id"], t1["failures"], t1["error"]) == (
        "retrying", "a1", 1, "boom")
    assert t1["next_attempt_at"] == retry_env.time + timedelta(seconds=4)
    a1 = (await rows(store, tables.agents, "default"))["a1"]
    assert (a1["load"], a1["consecutive_failures"], a1["tasks_failed"]) == (1 - 1, 1, 0)
    assert [type(e).__name__ for e in events] == ["TaskRetryScheduled", "TimerScheduled"]
    # The other pending timer is a1's liveness timer, armed at registration.
    timers = {t["timer_id"]: t for t in await queries.list_timers(store, "default")}
    assert sorted(timers) == ["heartbeat:a1", "retry:t1"]
    timer = timers["retry:t1"]
    assert (timer["timer_id"], timer["kind"], timer["status"], timer["attempt"]) == (
        "retry:t1", "retry", "pending", 1)
    assert timer["due_at"] == (d.envelopes[-1].time + timedelta(seconds=4)).isoformat()

    d.fire("retry:t1")
    await project(store, d.envelopes)  # already applied offsets are skipped
    t1 = (await rows(store, tables.tasks, "default"))["t1"]
    assert (t1["status"], t1["agent_id"], t1["next_attempt_at"]) == ("queued", None, None)
    assert [t["timer_id"] for t in await queries.list_timers(store, "default")] == ["heartbeat:a1"]
    [fired] = await queries.list_timers(store, "default", status="fired")
    assert fired["ended_at"] == d.envelopes[-2].time.isoformat()


async def test_health_breakers_fallbacks_deferrals_and_budget_flags(
    store: ProjectionStore,
) -> None:
    d = Decided()
    d.do(c.SetPoolPolicy(breaker_threshold=1, breaker_cooldown_s=10, min_capability_match=0.5))
    d.do(c.RegisterAgent(agent_id="a1", name="a1", capabilities=("py",), capacity=2,
                         heartbeat_timeout_s=5))
    d.do(c.AgentHeartbeat(agent_id="a1", load=0.5, cpu=2, memory=3, queue=4))
    d.do(c.SubmitTask(task_id="t1", type="x", required_capabilities=("py", "gpu")))
    d.do(c.SubmitTask(task_id="t2", type="x", required_capabilities=("rust",)))
    d.do(c.MarkTaskUnassignable(task_id="t1", missing=("gpu",), best_match=0.5, threshold=1.0))
    d.do(c.MarkTaskUnassignable(task_id="t2", missing=("rust",), best_match=0.0, threshold=0.5))
    d.do(c.DeferTask(task_id="t1", reason="RATE_LIMITED", delay_s=1.5))
    await project(store, d.envelopes)
    t1 = (await rows(store, tables.tasks, "default"))["t1"]
    assert t1["unassignable"] == {"missing": ["gpu"], "best_match": 0.5, "threshold": 1.0}
    deferral = d.envelopes[-2]
    assert (t1["deferred_reason"], t1["deferred_until"]) == (
        "RATE_LIMITED", deferral.time + timedelta(seconds=1.5))

    d.do(c.AssignTask(task_id="t1", agent_id="a1", allow_partial=True))  # the fallback
    d.do(c.SetBudget(scope="agent", scope_id="a1", limit_usd=0.1))
    d.do(c.RecordCost(cost_id="k", agent_id="a1", model="m", cost_usd=0.2))
    d.fire("heartbeat:a1")
    await project(store, d.envelopes)
    t1 = (await rows(store, tables.tasks, "default"))["t1"]
    assert (t1["status"], t1["capability_gap"], t1["unassignable"], t1["deferred_until"]) == (
        "queued", ["gpu"], None, None)
    assert t1["budget_flag"] == {"scope": "agent", "scope_id": "a1"}
    assert t1["reassignments"] == 1
    [trail] = await queries.assignments(store, "default")
    assert trail["capability_gap"] == ["gpu"]
    a1 = (await rows(store, tables.agents, "default"))["a1"]
    assert (a1["status"], a1["healthy"], a1["load"]) == ("unhealthy", False, 0)
    assert a1["unhealthy_reason"] == "no heartbeat for 5.0s"
    assert a1["heartbeat"] == {"load": 0.5, "cpu": 2.0, "memory": 3.0, "queue": 4}
    listed = await queries.list_agents(store, "default", status="unhealthy")
    assert [a["agent_id"] for a in listed] == ["a1"]

    d.do(c.AgentHeartbeat(agent_id="a1"))
    d.do(c.SetBudget(scope="agent", scope_id="a1", limit_usd=10))  # room again
    d.do(c.AssignTask(task_id="t1", agent_id="a1", allow_partial=True))
    d.do(c.FailTask(task_id="t1"))  # threshold 1: the breaker opens
    await project(store, d.envelopes)
    a1 = (await rows(store, tables.agents, "default"))["a1"]
    opened = next(e for e in d.envelopes if isinstance(e.data, ev.CircuitOpened))
    assert (a1["status"], a1["healthy"], a1["unhealthy_reason"]) == ("active", True, None)
    assert (a1["circuit"], a1["circuit_until"]) == ("open", opened.time + timedelta(seconds=10))
    assert a1["consecutive_failures"] == 1 and a1["tasks_failed"] == 1
    timers = await rows(store, tables.timers, "default")
    assert timers["dead:a1"]["status"] == "cancelled"
    assert timers["dead:a1"]["cancel_reason"] == "heartbeat received"
    assert timers["heartbeat:a1"]["status"] == "pending"  # re-armed by the heartbeat
    assert timers["heartbeat:a1"]["generation"] > timers["dead:a1"]["generation"]

    d.fire("circuit:a1")
    await project(store, d.envelopes)
    a1 = (await rows(store, tables.agents, "default"))["a1"]
    assert (a1["circuit"], a1["circuit_until"]) == ("half_open", None)
    await assert_mirrors(store, d.state)


async def test_a_stale_timer_firing_or_cancellation_changes_nothing(
    store: ProjectionStore,
) -> None:
    s = Story()
    s.add(ev.TimerScheduled(timer_id="x", kind="defer", delay_s=1, generation=1, task_id="t"))
    s.add(ev.TimerScheduled(timer_id="x", kind="defer", delay_s=2, generation=2, task_id="t"))
    s.add(ev.TimerCancelled(timer_id="x", generation=1, reason="old arming"))
    s.add(ev.TimerFired(timer_id="nobody", kind="defer", generation=3))
    await project(store, s.envelopes)
    timers = await rows(store, tables.timers, "default")
    assert set(timers) == {"x"}
    assert (timers["x"]["status"], timers["x"]["generation"], timers["x"]["delay_s"]) == (
        "pending", 2, 2.0)
    assert timers["x"]["due_at"] == s.envelopes[1].time + timedelta(seconds=2)


async def test_policies_rate_limits_scaling_and_limits(store: ProjectionStore) -> None:
    d = coordination_history()
    await project(store, d.envelopes)
    policy = await queries.pool_policy(store, "ops")
    assert policy["policy"]["default_strategy"] == "performance_weighted"
    assert policy["policy"]["min_capability_match"] == 0.5
    assert policy["policy"]["weights"] == {"capability": 0.4, "performance": 0.3,
                                           "specialization": 0.2, "load": 0.1}
    assert policy["set_at"] == d.envelopes[0].time.isoformat()
    assert await queries.pool_policy(store, "nowhere") == {
        "policy": c.PoolPolicy().model_dump(mode="json"), "set_at": None}

    limits = await queries.rate_limits(store, "ops")
    assert [(r["scope"], r["scope_id"], r["requests_per_min"], r["tokens_per_min"],
             r["concurrent"]) for r in limits["items"]] == [
        ("agent", "a2", 60.0, None, 1), ("model", "gpt-4o", None, 10_000.0, None)]

    policies = await queries.scaling_policies(store, "ops")
    assert [p["agent_kind"] for p in policies["items"]] == ["gpu", "llm"]
    llm = policies["items"][1]
    assert (llm["min_agents"], llm["max_agents"], llm["queue_threshold"]) == (1, 5, 2)
    assert (llm["target_utilization"], llm["cooldown_s"], llm["stability_window_s"]) == (
        0.75, 60.0, 120.0)

    decisions = (await queries.scaling_decisions(store, "ops"))["items"]
    assert [(x["agent_kind"], x["from"], x["to"], x["reason"]) for x in decisions] == [
        ("llm", 2, 3, "queue above 2"), ("gpu", 1, 0, "idle")]  # the third was rejected
    assert decisions[0]["metrics"] == {"queue": 3.0, "utilization": 0.9}
    assert (decisions[0]["from_agents"], decisions[0]["to_agents"]) == (2, 3)
    decided = [e for e in d.envelopes if isinstance(e.data, ev.ScalingDecided)]
    assert decisions[0]["time"] == decided[0].time.isoformat()
    assert decisions[0]["position"] < decisions[1]["position"]
    gpu = (await queries.scaling_decisions(store, "ops", agent_kind="gpu"))["items"]
    assert [x["to"] for x in gpu] == [0]
    after = await queries.scaling_decisions(store, "ops", after=decisions[0]["position"])
    assert after["items"] == decisions[1:]
    assert (await queries.scaling_decisions(store, "ops", limit=1))["items"] == decisions[:1]
    orjson.dumps(decisions)


async def test_tasks_and_agents_carry_the_new_fields(store: ProjectionStore) -> None:
    d = coordination_history()
    await project(store, d.envelopes)
    t3 = await queries.get_task(store, "ops", "t3")
    assert t3 is not None
    assert t3["inferred_capabilities"] == ["low_latency", "postgresql_optimization"]
    assert t3["capability_gap"] == ["gpu"] and t3["status"] == "completed"
    t4 = await queries.get_task(store, "ops", "t4")
    assert t4 is not None and t4["unassignable"]["missing"] == ["rust"]
    t5 = await queries.get_task(store, "ops", "t5")
    assert t5 is not None and t5["deferred_reason"] == "RATE_LIMITED"
    assert isinstance(t5["deferred_until"], str)
    t2 = await queries.get_task(store, "ops", "t2")
    assert t2 is not None and t2["budget_flag"] == {"scope": "agent", "scope_id": "a2"}
    a1 = await queries.get_agent(store, "ops", "a1")
    assert a1 is not None
    assert (a1["status"], a1["healthy"], a1["circuit"], a1["weight"]) == (
        "deregistered", False, "closed", 2.0)
    orjson.dumps([t3, t4, t5, a1])


# --- performance ---


def _by_pool(envelopes: list[Envelope]) -> dict[str, list[Envelope]]:
    out: dict[str, list[Envelope]] = {}
    for env in envelopes:
        out.setdefault(env.pool, []).append(env)
    return out


@pytest.mark.parametrize("batch", [1, 7, 10_000])
async def test_performance_read_model_equals_the_fold(store: ProjectionStore, batch: int) -> None:
    history = realistic_history()
    # Custom weights in one more pool, to see the policy's weights used.
    d = Decided("weighted")
    d.do(c.SetPoolPolicy(performance=c.PerformanceWeights(
        success=0.7, time=0.1, availability=0.1, errors=0.1, reference_duration_s=0.001)))
    d.do(c.RegisterAgent(agent_id="w", name="w", capacity=3))
    for i in range(3):
        d.do(c.SubmitTask(task_id=f"t{i}", type="x"))
        d.do(c.AssignTask(task_id=f"t{i}", agent_id="w"))
    d.do(c.StartTask(task_id="t0"))
    d.do(c.CompleteTask(task_id="t0"))
    d.do(c.FailTask(task_id="t1"))
    history += d.envelopes
    await project(store, history, batch)

    checked = 0
    for pool, envelopes in _by_pool(history).items():
        book = profiles_from(envelopes)
        weights = (await queries.pool_policy(store, pool))["policy"]["performance"]
        now = max(e.time for e in envelopes if isinstance(e.data, ev.Event))
        for agent_id, profile in book.profiles.items():
            expected = report(profile, c.PerformanceWeights(**weights), now.timestamp())
            got = await queries.agent_performance(store, pool, agent_id)
            assert got is not None
            assert {k: got[k] for k in expected} == expected, (pool, agent_id)
            assert got["components"] == {
                "success_rate": expected["success_rate"],
                "execution_time": expected["speed"],
                "availability": expected["availability"],
                "error_rate": expected["error_rate"],
            }
            assert sum(got["contributions"].values()) == pytest.approx(got["score"], abs=1e-5)
            assert got["as_of"] == now.isoformat()
            orjson.dumps(got)
            checked += 1
    assert checked >= 8
    w = await queries.agent_performance(store, "weighted", "w")
    assert w is not None and w["weights"]["success"] == 0.7
    assert (w["completed"], w["failed"]) == (1, 1)
    assert await queries.agent_performance(store, "weighted", "nobody") is None
    ops_a1 = await queries.agent_performance(store, "ops", "a1")
    assert ops_a1 is not None
    assert (ops_a1["failed"], ops_a1["timeouts"], ops_a1["lost"], ops_a1["healthy"]) == (
        2, 1, 1, False)


# --- load balancing, capacity, audit ---


def _fleet(loads: dict[str, tuple[int, int]], **limits: Any) -> Decided:
    """Agents ``{id: (capacity, tasks held)}``, each task requiring nothing."""
    d = Decided()
    for agent_id, (capacity, held) in loads.items():
        d.do(c.RegisterAgent(agent_id=agent_id, name=agent_id, capacity=capacity,
                             capabilities=("py",)))
        for i in range(held):
            d.do(c.SubmitTask(task_id=f"{agent_id}-{i}", type="x"))
            d.do(c.AssignTask(task_id=f"{agent_id}-{i}", agent_id=agent_id))
    if limits:
        d.do(c.SetResourceLimits(**limits))
    return d


async def test_load_balancing_statistics(store: ProjectionStore) -> None:
    # Loads 1/4, 3/4, 1/2... : 0.25, 0.75, 0.25, 0.75 -> mean 0.5, variance 0.0625, std 0.25.
    d = _fleet({"a": (4, 1), "b": (4, 3), "c": (8, 2), "d": (4, 3)})
    d.do(c.RegisterAgent(agent_id="sick", name="sick", capacity=2))
    d.do(c.AgentHeartbeat(agent_id="sick"))
    d.fire("heartbeat:sick")  # unhealthy: listed, not balanced over
    await project(store, d.envelopes)
    lb = await queries.load_balancing(store, "default")
    assert [(a["agent_id"], a["tasks"], a["capacity"], a["load"]) for a in lb["agents"]] == [
        ("a", 1, 4, 0.25), ("b", 3, 4, 0.75), ("c", 2, 8, 0.25), ("d", 3, 4, 0.75),
        ("sick", 0, 2, 0.0)]
    assert lb["agents"][-1]["healthy"] is False
    assert (lb["balanced_agents"], lb["tasks_held"]) == (4, 9)
    assert (lb["mean"], lb["variance"], lb["std_dev"]) == (0.5, 0.0625, 0.25)
    assert (lb["coefficient_of_variation"], lb["effectiveness"]) == (0.5, 0.5)
    orjson.dumps(lb)

    even = await queries.load_balancing(store, "nowhere")
    assert (even["agents"], even["mean"], even["variance"], even["effectiveness"]) == (
        [], 0.0, 0.0, 1.0)


async def test_load_balancing_extremes(store: ProjectionStore) -> None:
    d = _fleet({"a": (2, 2), "b": (2, 0), "c": (2, 0), "d": (2, 0)})
    await project(store, d.envelopes)
    lb = await queries.load_balancing(store, "default")
    # mean 0.25, variance (0.5625 + 3 * 0.0625) / 4 = 0.1875, cv = sqrt(3) > 1: clipped to 0.
    assert (lb["mean"], lb["variance"], lb["effectiveness"]) == (0.25, 0.1875, 0.0)
    assert lb["std_dev"] == round(0.1875 ** 0.5, 6)


async def test_capacity_bottlenecks_and_recommendations(store: ProjectionStore) -> None:
    d = _fleet({"a": (2, 2), "b": (1, 0)}, max_cpu_cores=10, max_memory_mb=100,
               max_disk_mb=100, max_network_mbps=100, max_agents=3)
    d.do(c.RegisterAgent(agent_id="g", name="g", capabilities=("gpu",), capacity=1))
    d.do(c.AllocateResources(allocation_id="r", agent_id="a", cpu_cores=9, memory_mb=80))
    d.do(c.SubmitTask(task_id="needs-gpu", type="x", required_capabilities=("gpu",)))
    d.do(c.AssignTask(task_id="needs-gpu", agent_id="g"))  # g is now full
    d.do(c.SubmitTask(task_id="gpu-2", type="x", required_capabilities=("gpu",)))
    d.do(c.SubmitTask(task_id="rust", type="x", required_capabilities=("rust", "py")))
    d.do(c.MarkTaskUnassignable(task_id="rust", missing=("rust",), best_match=0.5))
    d.do(c.SubmitTask(task_id="plain", type="x"))
    d.do(c.SubmitTask(task_id="later", type="x"))
    d.do(c.DeferTask(task_id="later", delay_s=60))
    await project(store, d.envelopes)

    cap = await queries.capacity(store, "default")
    assert cap["agents"] == {"total": 3, "available": 1, "healthy": 3, "unhealthy": 0,
                             "circuit_open": 0, "max": 3}
    assert cap["slots"] == {"total": 4, "used": 3, "free": 1, "available": 1}
    assert cap["load"] == 0.75 and cap["utilization"]["slots"] == 0.75
    assert cap["utilization"]["agents"] == 1.0
    assert cap["utilization"]["resources"]["cpu_cores"] == {
        "used": 9.0, "limit": 10.0, "utilization": 0.9}
    assert cap["utilization"]["resources"]["memory_mb"]["utilization"] == 0.8  # not above
    assert cap["queue"] == {"depth": 4, "by_status": {"assigned": 3, "queued": 4},
                            "unassignable": 1, "deferred": 1}
    assert cap["bottlenecks"] == [
        {"kind": "capability", "capability": "gpu", "queued_tasks": 1,
         "agents_with_capability": 1},
        {"kind": "capability", "capability": "rust", "queued_tasks": 1,
         "agents_with_capability": 0},
        {"kind": "resource", "resource": "cpu_cores", "used": 9.0, "limit": 10.0,
         "utilization": 0.9},
        {"kind": "agents", "registered": 3, "max": 3, "utilization": 1.0},
        {"kind": "slots", "queued": 4, "available_slots": 1},
    ]
    assert cap["recommendations"] == [
        "add capacity for capability 'gpu': 1 queued task(s) need it and all 1 agent(s) with "
        "it are busy or unavailable",
        "register an agent with capability 'rust': 1 queued task(s) need it and no agent has it",
        "raise the cpu_cores limit or release allocations: 90% of it is allocated",
        "raise max_agents: 3 of 3 agents are registered",
        "scale out: 4 task(s) queued and 1 free task slot(s) on available agents",
    ]
    assert cap["as_of"] == d.envelopes[-1].time.isoformat()
    orjson.dumps(cap)


async def test_capacity_counts_unhealthy_and_broken_agents_out(store: ProjectionStore) -> None:
    d = coordination_history()
    await project(store, d.envelopes)
    cap = await queries.capacity(store, "ops")
    # a1 was declared dead; a2 and a3 are healthy with free slots.
    assert cap["agents"]["total"] == 2 and cap["agents"]["available"] == 2
    assert cap["queue"]["by_status"] == {"completed": 2, "queued": 3}
    assert {b["capability"] for b in cap["bottlenecks"] if b["kind"] == "capability"} == {
        "rust"}

    empty = await queries.capacity(store, "nowhere")
    assert empty["agents"]["total"] == 0 and empty["load"] is None
    assert empty["bottlenecks"] == [] and empty["recommendations"] == []

    d2 = Decided("sick")
    d2.do(c.SetPoolPolicy(breaker_threshold=1))
    d2.do(c.RegisterAgent(agent_id="x", name="x", capacity=1))
    d2.do(c.RegisterAgent(agent_id="y", name="y", capacity=1))
    d2.do(c.AgentHeartbeat(agent_id="y"))
    d2.do(c.SubmitTask(task_id="t", type="x"))
    d2.do(c.AssignTask(task_id="t", agent_id="x"))
    d2.do(c.FailTask(task_id="t"))
    d2.fire("heartbeat:y")
    d2.do(c.SubmitTask(task_id="u", type="x"))
    await project(store, d.envelopes + [e for e in d2.envelopes])
    cap = await queries.capacity(store, "sick")
    assert cap["agents"] == {"total": 2, "available": 0, "healthy": 1, "unhealthy": 1,
                             "circuit_open": 1, "max": None}
    assert cap["recommendations"] == [
        "scale out: 1 task(s) queued and 0 free task slot(s) on available agents",
        "check the unhealthy agent(s): y",
        "investigate the failing agent(s) with an open circuit breaker: x",
    ]


async def test_assignment_audit_has_every_candidate_and_its_components(
    store: ProjectionStore,
) -> None:
    d = coordination_history()
    await project(store, d.envelopes)
    trail = await queries.assignments(store, "ops", task_id="t1")
    first = trail[0]
    assert first["strategy"] == "performance_weighted"
    assert [(x["agent_id"], x["score"]) for x in first["candidates"]] == [("a1", 0.9), ("a2", 0.7)]
    assert first["candidates"][1]["components"] == {"capability": 1.0, "performance": 0.7,
                                                    "load": 1.0}
    assert first["candidates"][0]["capability_match"] == 1.0
    expected = audit("performance_weighted", ("a1", 0.9), ("a2", 0.7))
    assert first["candidates"] == [x.model_dump() for x in expected.candidates]
    assert (first["eligible"], first["considered"], first["decision_us"]) == (2, 2, 3.5)
    assert [x["attempt"] for x in trail] == [1, 2, 3]
    orjson.dumps(trail)


async def test_list_timers_by_status(store: ProjectionStore) -> None:
    d = coordination_history()
    await project(store, d.envelopes)
    pending = await queries.list_timers(store, "ops")
    assert [(t["timer_id"], t["generation"]) for t in pending] == sorted(
        ((k, t.generation) for k, t in d.state.timers.items()),
        key=lambda kv: next(t["due_at"] for t in pending if t["timer_id"] == kv[0]))
    assert all(t["status"] == "pending" for t in pending)
    everything = await queries.list_timers(store, "ops", status=None)
    assert {t["status"] for t in everything} == {"pending", "fired", "cancelled"}
    due = [t["due_at"] for t in everything]
    assert due == sorted(due)
    assert len(await queries.list_timers(store, "ops", status=None, limit=2)) == 2
    cancelled = await queries.list_timers(store, "ops", status="cancelled")
    assert all(t["cancel_reason"] for t in cancelled)
    orjson.dumps(everything)
