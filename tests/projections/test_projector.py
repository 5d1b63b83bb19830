"""The projector against every backend: each event's effect, re-delivery, atomicity, waiting."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from contracts import event_types as ev
from projections import ProjectionError, ProjectionStore, Projector, sql, tables
from projections.batch import Rows

from .history import T0, Story

TOPIC = "events"


async def apply(store: ProjectionStore, story: Story, start: int = 0) -> int:
    """Apply the story's envelopes from ``start`` on as one batch."""
    return await Projector(store).apply(TOPIC, 0, story.items(start))


async def row(store: ProjectionStore, table: sa.Table, **key: Any) -> dict[str, Any] | None:
    stmt = sa.select(table).where(*(table.c[k] == v for k, v in key.items()))
    async with store.engine.connect() as conn:
        found = (await conn.execute(stmt)).mappings().all()
    assert len(found) <= 1
    return dict(found[0]) if found else None


async def count(store: ProjectionStore, table: sa.Table) -> int:
    async with store.engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


async def agent(store: ProjectionStore, agent_id: str, pool: str = "default") -> dict[str, Any]:
    found = await row(store, tables.agents, pool=pool, agent_id=agent_id)
    assert found is not None
    return found


async def task(store: ProjectionStore, task_id: str, pool: str = "default") -> dict[str, Any]:
    found = await row(store, tables.tasks, pool=pool, task_id=task_id)
    assert found is not None
    return found


# --- each event's effect ---


async def test_agent_registered_heartbeat_deregistered(store: ProjectionStore) -> None:
    s = Story()
    s.register("a1", 3, "python", "gpu")
    await apply(store, s)
    a = await agent(store, "a1")
    assert a["name"] == "agent a1" and a["kind"] == "llm"
    assert a["capabilities"] == ["python", "gpu"] and a["capacity"] == 3
    assert (a["status"], a["load"], a["tasks_completed"], a["tasks_failed"]) == ("active", 0, 0, 0)
    assert a["registered_at"] == s.envelopes[0].time and a["registered_at"].tzinfo is not None
    assert a["heartbeat"] is None and a["last_heartbeat_at"] is None

    s.add(ev.AgentHeartbeatReceived(agent_id="a1", load=0.5, cpu=1.5, memory=256.0, queue=2))
    s.add(ev.AgentDeregistered(agent_id="a1", reason="bye"))
    await apply(store, s, 1)
    a = await agent(store, "a1")
    assert a["heartbeat"] == {"load": 0.5, "cpu": 1.5, "memory": 256.0, "queue": 2}
    assert a["last_heartbeat_at"] == s.envelopes[1].time
    assert a["status"] == "deregistered" and a["deregistered_at"] == s.envelopes[2].time


async def test_agent_registering_again_keeps_its_counters(store: ProjectionStore) -> None:
    s = Story()
    s.register("a1")
    s.submit("t1")
    s.assign("t1", "a1")
    s.complete("t1", "a1")
    s.add(ev.AgentDeregistered(agent_id="a1"))
    s.register("a1", 7, "new-skill")
    await apply(store, s)
    a = await agent(store, "a1")
    assert (a["status"], a["capacity"], a["capabilities"]) == ("active", 7, ["new-skill"])
    assert a["tasks_completed"] == 1 and a["deregistered_at"] is None


async def test_task_lifecycle_to_completion(store: ProjectionStore) -> None:
    s = Story()
    s.register("a1")
    s.add(ev.TaskSubmitted(task_id="t1", type="summarize", priority=7,
                           required_capabilities=("python",), data={"doc": 1}, strategy="fifo"))
    await apply(store, s)
    t = await task(store, "t1")
    assert (t["status"], t["agent_id"], t["attempts"], t["priority"]) == ("queued", None, 0, 7)
    assert t["required_capabilities"] == ["python"] and t["data"] == {"doc": 1}
    assert t["submitted_at"] == s.envelopes[1].time and t["last_seq"] == 2

    s.assign("t1", "a1")
    await apply(store, s, 2)
    t, a = await task(store, "t1"), await agent(store, "a1")
    assert (t["status"], t["agent_id"], t["attempts"]) == ("assigned", "a1", 1)
    assert t["assigned_at"] == s.envelopes[2].time and a["load"] == 1
    audit = await row(store, tables.assignments, pool="default", position=2)
    assert audit is not None
    assert (audit["task_id"], audit["agent_id"], audit["attempt"]) == ("t1", "a1", 1)
    assert audit["strategy"] == "least_loaded" and audit["eligible"] == 3
    assert audit["considered"] == 3 and audit["decision_us"] == 12.5
    assert audit["candidates"] == [
        {"agent_id": "a1", "score": 0.9, "load": 0, "capacity": 2, "capability_match": 1.0,
         "components": {"capability": 1.0, "load": 0.5}}
    ]
    assert (audit["capability_gap"], audit["preferred"], audit["skipped"]) == (
        [], ["low_latency"], {"rate_limited": 1})
    assert audit["event_id"] == s.envelopes[2].id

    s.complete("t1", "a1")
    await apply(store, s, 3)
    t, a = await task(store, "t1"), await agent(store, "a1")
    assert (t["status"], t["agent_id"], t["result"]) == ("completed", "a1", {"ok": True})
    assert t["started_at"] == s.envelopes[3].time and t["finished_at"] == s.envelopes[4].time
    assert (a["load"], a["tasks_completed"], a["tasks_failed"]) == (0, 1, 0)


async def test_assignment_without_audit_uses_the_task_strategy(store: ProjectionStore) -> None:
    s = Story()
    s.register("a1")
    s.add(ev.TaskSubmitted(task_id="t1", type="x", priority=1, strategy="round_robin"))
    s.add(ev.TaskAssigned(task_id="t1", agent_id="a1", attempt=1))
    await apply(store, s)
    audit = await row(store, tables.assignments, pool="default", position=2)
    assert audit is not None
    assert (audit["strategy"], audit["candidates"], audit["eligible"]) == ("round_robin", [], None)


async def test_failed_task_frees_its_agent_and_counts_the_failure(store: ProjectionStore) -> None:
    s = Story()
    s.register("a1")
    s.submit("t1")
    s.assign("t1", "a1")
    s.add(ev.TaskStarted(task_id="t1", agent_id="a1"))
    s.add(ev.TaskFailed(task_id="t1", agent_id="a1", error="boom", attempt=1))
    await apply(store, s)
    t, a = await task(store, "t1"), await agent(store, "a1")
    assert (t["status"], t["error"], t["agent_id"]) == ("failed", "boom", "a1")
    assert t["finished_at"] == s.envelopes[-1].time
    assert (a["load"], a["tasks_failed"], a["tasks_completed"]) == (0, 1, 0)


async def test_cancelling_frees_the_agent_only_if_it_held_one(store: ProjectionStore) -> None:
    s = Story()
    s.register("a1")
    s.submit("queued")
    s.submit("held")
    s.submit("other")
    s.assign("held", "a1")
    s.assign("other", "a1")
    s.add(ev.TaskCancelled(task_id="queued", reason="not needed"))
    s.add(ev.TaskCancelled(task_id="held", agent_id="a1", reason="user"))
    await apply(store, s)
    assert (await agent(store, "a1"))["load"] == 1  # still holds "other"
    for task_id, reason in (("queued", "not needed"), ("held", "user")):
        t = await task(store, task_id)
        assert (t["status"], t["error"]) == ("cancelled", reason)
    assert (await task(store, "queued"))["agent_id"] is None


async def test_requeued_task_goes_back_to_the_queue(store: ProjectionStore) -> None:
    s = Story()
    s.register("a1")
    s.register("a2")
    s.submit("t1")
    s.assign("t1", "a1")
    s.add(ev.TaskStarted(task_id="t1", agent_id="a1"))
    s.add(ev.TaskRequeued(task_id="t1", agent_id="a1", reason="agent deregistered"))
    await apply(store, s)
    t = await task(store, "t1")
    assert (t["status"], t["agent_id"], t["attempts"]) == ("queued", None, 1)
    assert t["assigned_at"] is None and t["started_at"] is None
    assert (await agent(store, "a1"))["load"] == 0

    s.assign("t1", "a2", attempt=2)
    await apply(store, s, len(s.envelopes) - 1)
    t = await task(store, "t1")
    assert (t["status"], t["agent_id"], t["attempts"]) == ("assigned", "a2", 2)
    assert ((await agent(store, "a1"))["load"], (await agent(store, "a2"))["load"]) == (0, 1)
    assert await count(store, tables.assignments) == 2


async def test_resource_limits_and_allocations(store: ProjectionStore) -> None:
    s = Story()
    s.register("a1")
    s.add(ev.ResourceLimitsSet(max_cpu_cores=8, max_memory_mb=1024, max_disk_mb=10,
                               max_network_mbps=100))
    s.add(ev.ResourceLimitsSet(max_cpu_cores=16, max_memory_mb=2048, max_disk_mb=20,
                               max_network_mbps=200))
    s.add(ev.ResourcesAllocated(allocation_id="al1", agent_id="a1", cpu_cores=2, memory_mb=256,
                                disk_mb=1, network_mbps=10))
    await apply(store, s)
    limits = await row(store, tables.resource_limits, pool="default")
    assert limits is not None
    assert (limits["max_cpu_cores"], limits["max_network_mbps"]) == (16.0, 200.0)
    assert limits["updated_at"] == s.envelopes[2].time
    al = await row(store, tables.allocations, pool="default", allocation_id="al1")
    assert al is not None
    assert (al["status"], al["agent_id"], al["cpu_cores"], al["memory_mb"]) == (
        "active", "a1", 2.0, 256.0)

    s.add(ev.ResourcesReleased(allocation_id="al1", agent_id="a1", cpu_cores=2, memory_mb=256,
                               disk_mb=1, network_mbps=10))
    # The decider lets a released allocation id be used again.
    s.add(ev.ResourcesAllocated(allocation_id="al1", agent_id="a1", cpu_cores=1, memory_mb=1,
                                disk_mb=1, network_mbps=1))
    s.add(ev.ResourcesReleased(allocation_id="al1", agent_id="a1", cpu_cores=1, memory_mb=1,
                               disk_mb=1, network_mbps=1))
    await apply(store, s, 4)
    al = await row(store, tables.allocations, pool="default", allocation_id="al1")
    assert al is not None
    assert (al["status"], al["cpu_cores"]) == ("released", 1.0)
    assert al["released_at"] == s.envelopes[-1].time


async def test_costs_and_budgets_in_every_scope(store: ProjectionStore) -> None:
    s = Story()
    s.register("a1")
    s.register("a2")
    s.submit("t1", workflow_id="wf1")
    s.submit("t2")
    s.cost("c1", "a1", 0.5, task_id="t1")  # before the budgets: counted when they are set
    s.cost("c2", "a2", 0.25)
    await apply(store, s)
    s.add(ev.BudgetSet(scope="pool", scope_id="default", limit_usd=10))
    s.add(ev.BudgetSet(scope="agent", scope_id="a1", limit_usd=1))
    s.add(ev.BudgetSet(scope="workflow", scope_id="wf1", limit_usd=0.6))
    s.cost("c3", "a1", 0.125, task_id="t1")  # pool, agent a1, workflow wf1
    s.cost("c4", "a2", 2.0, task_id="t2", model="o3")  # pool only (t2 has no workflow)
    await apply(store, s, 6)

    cost = await row(store, tables.costs, pool="default", cost_id="c3")
    assert cost is not None
    assert (cost["agent_id"], cost["task_id"], cost["workflow_id"]) == ("a1", "t1", "wf1")
    assert (cost["model"], cost["input_tokens"], cost["output_tokens"]) == ("gpt-4o", 1000, 200)
    assert cost["cost_micros"] == 125_000 and cost["priced_from_table"] is False
    assert cost["recorded_at"] == s.envelopes[9].time

    async def budget(scope: str, scope_id: str) -> dict[str, Any]:
        found = await row(store, tables.budgets, pool="default", scope=scope, scope_id=scope_id)
        assert found is not None
        return found

    # Whole micro-dollars: exact, whatever the order and batching.
    assert (await budget("pool", "default"))["spent_micros"] == 2_875_000
    assert (await budget("agent", "a1"))["spent_micros"] == 625_000
    wf = await budget("workflow", "wf1")
    assert (wf["spent_micros"], wf["limit_micros"], wf["exceeded"]) == (625_000, 600_000, False)

    s.add(ev.BudgetExceeded(scope="workflow", scope_id="wf1", limit_usd=0.6, spent_usd=0.625))
    await apply(store, s, 11)
    assert (await budget("workflow", "wf1"))["exceeded"] is True
    s.add(ev.BudgetSet(scope="workflow", scope_id="wf1", limit_usd=0.5))  # still below spent
    await apply(store, s, 12)
    assert (await budget("workflow", "wf1"))["exceeded"] is True
    s.add(ev.BudgetSet(scope="workflow", scope_id="wf1", limit_usd=5))  # lifts it
    await apply(store, s, 13)
    wf = await budget("workflow", "wf1")
    assert (wf["exceeded"], wf["limit_micros"], wf["spent_micros"]) == (False, 5_000_000, 625_000)
    assert wf["updated_at"] == s.envelopes[13].time


async def test_pool_budget_is_keyed_by_the_pool(store: ProjectionStore) -> None:
    s = Story(pool="blue")
    s.register("a1")
    s.add(ev.BudgetSet(scope="pool", scope_id="whatever-the-client-sent", limit_usd=3))
    s.cost("c1", "a1", 1.0)
    await apply(store, s)
    found = await row(store, tables.budgets, pool="blue", scope="pool", scope_id="blue")
    assert found is not None and found["spent_micros"] == 1_000_000


async def test_command_rejected_is_kept_for_audit(store: ProjectionStore) -> None:
    s = Story()
    s.add(ev.CommandRejected(command_type="AssignTask", code="UNKNOWN_AGENT",
                             message="agent 'x' is not registered", details={"agent_id": "x"}),
          commandid="cmd-1")
    await apply(store, s)
    r = await row(store, tables.rejections, pool="default", position=0)
    assert r is not None
    assert (r["command_id"], r["command_type"], r["code"]) == ("cmd-1", "AssignTask",
                                                               "UNKNOWN_AGENT")
    assert r["message"] == "agent 'x' is not registered" and r["details"] == {"agent_id": "x"}
    assert r["at"] == s.envelopes[0].time and r["event_id"] == s.envelopes[0].id


async def test_unknown_event_types_only_advance_the_position(store: ProjectionStore) -> None:
    s = Story()
    s.add({"whatever": 1}, type="FromANewerVersion")
    s.add({"whatever": 2}, type="FromANewerVersion")
    projector = Projector(store)
    assert await projector.apply(TOPIC, 0, s.items()) == 2
    assert await projector.position(TOPIC, 0) == 2
    for table in tables.READ_MODELS:
        assert await count(store, table) == 0


# --- positions: re-delivery, atomicity, order ---


async def test_position_starts_at_zero_and_is_per_topic_partition_and_projector(
    store: ProjectionStore,
) -> None:
    s = Story()
    s.register("a1")
    projector = Projector(store)
    assert await projector.position(TOPIC, 0) == 0
    await projector.apply(TOPIC, 3, [(41, s.envelopes[0])])  # offsets may have gaps (Kafka)
    assert await projector.position(TOPIC, 3) == 42
    assert await projector.position(TOPIC, 0) == 0
    assert await projector.position("other", 3) == 0
    assert await Projector(store, "audit_only").position(TOPIC, 3) == 0


async def test_redelivered_offsets_are_never_applied_twice(store: ProjectionStore) -> None:
    s = Story()
    s.register("a1")
    s.submit("t1")
    s.assign("t1", "a1")
    s.cost("c1", "a1", 1.0, task_id="t1")
    s.add(ev.AgentHeartbeatReceived(agent_id="a1", load=1))
    s.complete("t1", "a1")  # offsets 5, 6
    s.add(ev.CommandRejected(command_type="X", code="INVALID_COMMAND", message="no"))
    projector = Projector(store)
    assert await projector.apply(TOPIC, 0, s.items()[:5]) == 5
    # A consumer restarting from an older offset sees 2..4 again, then 5..7 for the first time.
    assert await projector.apply(TOPIC, 0, s.items()[2:]) == 3
    assert await projector.apply(TOPIC, 0, s.items()) == 0  # everything again: nothing
    assert await projector.position(TOPIC, 0) == 8
    a = await agent(store, "a1")
    assert (a["load"], a["tasks_completed"]) == (0, 1)
    assert await count(store, tables.assignments) == 1
    assert await count(store, tables.costs) == 1
    assert await count(store, tables.rejections) == 1
    assert (await task(store, "t1"))["attempts"] == 1


async def test_the_position_moves_only_from_where_it_was_read(store: ProjectionStore) -> None:
    """``move_position`` is conditional: a second writer of the same partition (which moved the
    position since it was read) is refused, and an apply reads whatever position is stored."""
    s = Story()
    s.register("a1")
    s.register("a2")
    projector = Projector(store)
    assert await projector.apply(TOPIC, 0, s.items()[:1]) == 1

    def race(conn: sa.Connection) -> list[Any]:
        return [
            sql.read_position(conn, "read_models", TOPIC, 0),
            sql.move_position(conn, "read_models", TOPIC, 0, 1, 2),  # another writer: 1 -> 2
            sql.move_position(conn, "read_models", TOPIC, 0, 1, 3),  # no longer at 1: refused
            sql.read_position(conn, "read_models", TOPIC, 0),
            sql.move_position(conn, "other", TOPIC, 5, 0, 7),  # never stored: created
            sql.read_position(conn, "other", TOPIC, 5),
        ]

    assert await store.run_write(race) == [1, True, False, 2, True, 7]
    assert await projector.position(TOPIC, 0) == 2
    # Offset 1 (a2) is below the stored position now: skipped, not applied.
    assert await projector.apply(TOPIC, 0, s.items()) == 0
    assert await count(store, tables.agents) == 1


async def _snapshot(store: ProjectionStore) -> dict[str, list[dict[str, Any]]]:
    from projections.queries import dump_tables

    return await dump_tables(store)


async def test_a_constraint_violation_rolls_back_rows_and_position(store: ProjectionStore) -> None:
    s = Story()
    s.register("a1")
    s.submit("t1")
    s.cost("c1", "a1", 1.0)
    projector = Projector(store)
    await projector.apply(TOPIC, 0, s.items())
    before = await _snapshot(store)

    # A batch with good effects on several tables, then a cost id that is already stored:
    # the costs primary key rejects it, and none of the batch may remain.
    s.register("a2")
    s.assign("t1", "a1")
    s.add(ev.BudgetSet(scope="pool", scope_id="default", limit_usd=5))
    s.cost("c1", "a1", 9.0)
    with pytest.raises(IntegrityError):
        await projector.apply(TOPIC, 0, s.items(3))
    assert await projector.position(TOPIC, 0) == 3
    assert await _snapshot(store) == before

    # A task submitted twice (the decider never does that) is refused by the tasks key as well.
    s2 = Story()
    s2.submit("t1")
    with pytest.raises(IntegrityError):
        await projector.apply(TOPIC, 0, [(3, s2.envelopes[0])])
    assert await projector.position(TOPIC, 0) == 3
    assert await _snapshot(store) == before

    # The log is fixed (say, the bad event was never appended): the rest applies normally.
    await projector.apply(TOPIC, 0, s.items(3)[:3])
    assert await projector.position(TOPIC, 0) == 6
    assert (await agent(store, "a1"))["load"] == 1


async def test_an_event_contradicting_the_model_fails_the_batch(store: ProjectionStore) -> None:
    s = Story()
    s.register("a1")
    s.submit("t1")
    s.add(ev.TaskStarted(task_id="never-submitted", agent_id="a1"))
    projector = Projector(store)
    with pytest.raises(ProjectionError) as raised:
        await projector.apply(TOPIC, 0, s.items())
    assert raised.value.offset == 2 and "never-submitted" in str(raised.value)
    assert f"{TOPIC}[0]@2" in str(raised.value)
    assert await projector.position(TOPIC, 0) == 0
    assert await count(store, tables.agents) == 0 and await count(store, tables.tasks) == 0


async def test_a_load_below_zero_is_an_error_not_clamped(store: ProjectionStore) -> None:
    s = Story()
    s.register("a1")
    s.submit("t1")
    s.assign("t1", "a1")
    projector = Projector(store)
    await projector.apply(TOPIC, 0, s.items())
    # Corrupt the model behind the projector's back, as a bug elsewhere would.
    async with store.engine.begin() as conn:
        await conn.execute(sa.update(tables.agents).values(load=0))
    s.complete("t1", "a1")
    with pytest.raises(ProjectionError, match="negative load"):
        await projector.apply(TOPIC, 0, s.items(3))
    assert await projector.position(TOPIC, 0) == 3
    assert (await task(store, "t1"))["status"] == "assigned"


async def test_offsets_within_a_batch_must_increase(store: ProjectionStore) -> None:
    s = Story()
    s.register("a1")
    s.register("a2")
    with pytest.raises(ValueError, match="increase"):
        await Projector(store).apply(TOPIC, 0, [(1, s.envelopes[0]), (1, s.envelopes[1])])
    assert await Projector(store).apply(TOPIC, 0, []) == 0


async def test_tables_of_another_version_are_rebuilt_from_the_start(
    store: ProjectionStore,
) -> None:
    s = Story()
    s.register("a1")
    s.submit("t1")
    projector = Projector(store)
    await projector.apply(TOPIC, 0, s.items())
    async with store.engine.begin() as conn:  # as an older version left it
        await conn.execute(sa.text("ALTER TABLE agents DROP COLUMN weight"))
    again = ProjectionStore(store.url, schema=store.schema)
    await again.start()
    try:
        # Everything is dropped with the stale table, positions too: the projector replays.
        assert await Projector(again).position(TOPIC, 0) == 0
        for table in tables.READ_MODELS:
            assert await count(again, table) == 0
        await Projector(again).apply(TOPIC, 0, s.items())
        assert (await agent(again, "a1"))["weight"] == 1.0
    finally:
        await again.close()
    # A store of the current version is left as it is.
    third = ProjectionStore(store.url, schema=store.schema)
    await third.start()
    try:
        assert await Projector(third).position(TOPIC, 0) == 2
    finally:
        await third.close()


# --- waiting for a position ---


async def test_wait_for_position_is_woken_by_the_projector(store: ProjectionStore) -> None:
    s = Story()
    for i in range(3):
        s.register(f"a{i}")
    store.poll_interval = 60  # only an in-process wake-up can make this fast
    assert await store.wait_for_position(TOPIC, 0, 0, timeout=0.05) is False
    waiter = asyncio.create_task(store.wait_for_position(TOPIC, 0, 2, timeout=10))
    await asyncio.sleep(0.05)
    await Projector(store).apply(TOPIC, 0, s.items()[:2])
    await asyncio.sleep(0.05)
    assert not waiter.done()  # offset 2 not applied yet
    started = asyncio.get_running_loop().time()
    await Projector(store).apply(TOPIC, 0, s.items()[2:])
    assert await waiter is True
    assert asyncio.get_running_loop().time() - started < 1
    assert await store.wait_for_position(TOPIC, 0, 2, timeout=0) is True


async def test_wait_for_position_sees_a_projector_in_another_process(
    store: ProjectionStore, second_store: ProjectionStore
) -> None:
    # Another ProjectionStore on the same database stands in for another process: it shares
    # nothing in memory, so only the poll of the positions table can notice its writes.
    other = ProjectionStore(store.url, schema=store.schema)
    await other.start()
    try:
        store.poll_interval = 0.02
        s = Story()
        s.register("a1")
        waiter = asyncio.create_task(store.wait_for_position(TOPIC, 1, 0, timeout=10))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await Projector(other).apply(TOPIC, 1, s.items())
        assert await asyncio.wait_for(waiter, 5) is True
        # The positions of a second database are its own.
        assert await second_store.wait_for_position(TOPIC, 1, 0, timeout=0.05) is False
    finally:
        await other.close()


async def test_times_are_utc_whatever_offset_the_envelope_had(store: ProjectionStore) -> None:
    from datetime import timedelta, timezone

    s = Story()
    s.register("a1")
    local = s.envelopes[0].model_copy(
        update={"time": T0.astimezone(timezone(timedelta(hours=5, minutes=30)))}
    )
    await Projector(store).apply(TOPIC, 0, [(0, local)])
    registered = (await agent(store, "a1"))["registered_at"]
    assert registered == T0 and registered.utcoffset() == timedelta(0)


async def test_rows_are_read_in_bulk_exactly_as_sqlalchemy_reads_them(
    store: ProjectionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rows with JSON, times, booleans and NULLs; on SQLite the projector reads them with one JSON
    # array of keys per SELECT (``sql._driver_select``): what it gets must equal SQLAlchemy's read.
    s = Story()
    s.register("a1")
    s.register("a2")
    for i in range(5):
        s.add(ev.TaskSubmitted(task_id=f"t{i}", type="summarize", priority=i,
                               required_capabilities=("python",), data={"doc": i, "é": [1.5, None]}))
    s.assign("t0", "a1")
    s.complete("t0", "a1")
    await apply(store, s)
    monkeypatch.setattr(sql, "_JSON_CHUNK", 2)  # several SELECTs per key prefix
    wanted = {("default", f"t{i}") for i in range(7)} | {("other", "t1")}  # t5, t6 and other/t1: none

    def read(conn: sa.Connection) -> tuple[dict[Any, Any], set[Any], list[dict[str, Any]], dict[Any, Any]]:
        tasks, agents = Rows(tables.tasks), Rows(tables.agents)
        sql.select_rows(conn, tasks, wanted)
        sql.select_rows(conn, agents, {("default", "a1"), ("default", "a2")})
        ordered = sa.select(tables.tasks).order_by(tables.tasks.c.task_id)
        plain = [dict(r._mapping) for r in conn.execute(ordered)]
        return tasks.rows, tasks.stored, plain, agents.rows

    rows, stored, plain, agents = await store.run_write(read)
    assert stored == {("default", f"t{i}") for i in range(5)} == set(rows)
    assert [rows[("default", r["task_id"])] for r in plain] == plain
    t0 = rows[("default", "t0")]
    assert t0["status"] == "completed" and t0["data"] == {"doc": 0, "é": [1.5, None]}
    assert t0["finished_at"] == s.envelopes[-1].time and t0["next_attempt_at"] is None
    assert (await agent(store, "a1")) == agents[("default", "a1")]
    assert (await agent(store, "a2")) == agents[("default", "a2")]
