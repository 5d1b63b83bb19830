"""Workflow runs, steps and definitions in the read models, and the queries built on them.

The histories are made by the real decider (``history.workflow_history``), so the tables are
checked against the decider's own state; a rebuild from offset 0 must equal the live tables.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from contracts import Envelope
from contracts import commands as c
from contracts import event_types as ev
from contracts.money import to_micros
from contracts.scheduling import RetryPolicy
from contracts.workflows import WorkflowDefinition
from events import open_log
from events.codec import from_record, to_record
from projections import ProjectionStore, Projector, rebuild, tables
from projections import workflows as wq
from projections.batch import Batch
from projections.handlers.registry import Registry, merge
from projections.queries import dump_tables
from services.domain.state import PoolState

from .history import Decided, realistic_history, step_submission, workflow_history

TOPIC = "events"
POOL = "flows"
WORKFLOW_TABLES = ("workflows", "workflow_steps", "workflow_definitions")


def in_progress(d: Decided) -> None:
    """Runs still going: one with steps in flight and a signal awaited, one between steps."""
    d.do(c.SetRateLimit(scope="agent", scope_id="w1", requests_per_min=30))
    d.do(c.RegisterAgent(agent_id="old", name="worker-two", capacity=1))  # shares a name, then leaves
    d.do(c.DeregisterAgent(agent_id="old"))
    waits = WorkflowDefinition.model_validate({"name": "waits", "tasks": [
        {"name": "work"}, {"name": "more"}, {"name": "gate", "type": "signal"},
        {"name": "last", "depends_on": ["work", "more", "gate"]}]})
    d.do(c.StartWorkflow(workflow_id="run9", definition=waits))
    d.do(step_submission("run9", "work"))
    d.do(step_submission("run9", "more", retry=RetryPolicy(max_attempts=3, base_delay_s=5)))
    d.do(c.AwaitSignal(workflow_id="run9", step="gate"))
    d.do(c.AssignTask(task_id="run9.work", agent_id="w1"))
    d.do(c.StartTask(task_id="run9.work"))
    d.do(c.AssignTask(task_id="run9.more", agent_id="w2"))
    d.do(c.FailTask(task_id="run9.more", error="try again"))  # waits to retry
    chain = WorkflowDefinition.model_validate({"name": "chain", "tasks": [
        {"name": "one"}, {"name": "two", "depends_on": ["one"]}]})
    d.do(c.StartWorkflow(workflow_id="run10", definition=chain))
    d.do(step_submission("run10", "one"))
    d.do(c.AssignTask(task_id="run10.one", agent_id="w1"))
    d.do(c.CompleteTask(task_id="run10.one", result={"n": 1}))  # "two" not submitted yet


def decided() -> Decided:
    d = workflow_history()
    in_progress(d)
    return d


async def project(store: ProjectionStore, envelopes: list[Envelope], batch: int = 1000) -> None:
    items = list(enumerate(envelopes))
    projector = Projector(store)
    for i in range(0, len(items), batch):
        await projector.apply(TOPIC, 0, items[i : i + batch])


async def rows(store: ProjectionStore, table: sa.Table, pool: str = POOL) -> list[dict[str, Any]]:
    async with store.engine.connect() as conn:
        found = await conn.execute(sa.select(table).where(table.c.pool == pool)
                                   .order_by(*table.primary_key.columns))
        return [dict(r) for r in found.mappings()]


@pytest.fixture
async def flows(store: ProjectionStore) -> tuple[ProjectionStore, Decided]:
    """The workflow history with runs in progress, projected in batches of 5."""
    d = decided()
    await project(store, d.envelopes, batch=5)
    return store, d


# --- rebuild == live ---


async def test_rebuild_from_offset_0_equals_the_live_tables(
    store: ProjectionStore, second_store: ProjectionStore, tmp_path: Path
) -> None:
    # A mixed history: every other kind of event in three pools, the workflow pool's interleaved.
    others = [env for env in realistic_history() if env.pool != POOL]
    runs = decided().envelopes
    history: list[Envelope] = []
    for i in range(max(len(others), len(runs))):
        history += others[i : i + 1] + runs[i : i + 1]
    log = open_log("sqlite:///" + str(tmp_path / "log.db"))
    await log.start()
    try:
        await log.ensure_topic(TOPIC, 3)
        for i in range(0, len(history), 10):
            await log.append(TOPIC, [to_record(e) for e in history[i : i + 10]])
        live = Projector(store)
        for p in range(await log.partitions(TOPIC)):
            offset, end = 0, await log.end_offset(TOPIC, p)
            while offset < end:  # small batches, each re-delivering a little, as a restarted consumer
                records = await log.read(TOPIC, p, max(offset - 3, 0), limit=6)
                await live.apply(TOPIC, p, [(r.offset, from_record(r)) for r in records])
                offset = records[-1].offset + 1

        assert await rebuild(log, second_store, TOPIC) == len(history)
        live_tables = await dump_tables(store)
        assert live_tables == await dump_tables(second_store)
        for name in WORKFLOW_TABLES:
            assert any(r["pool"] == POOL for r in live_tables[name]), name
        assert len([r for r in live_tables["workflows"] if r["pool"] == POOL]) == 10
    finally:
        await log.close()


# --- the read model says what the decider says ---


def _counts(state: PoolState, workflow_id: str) -> tuple[int, int, int]:
    steps = state.workflows[workflow_id].steps.values()
    return (sum(s.status == "completed" for s in steps),
            sum(s.failed and s.status == "failed" for s in steps),
            sum(s.status == "skipped" for s in steps))


@pytest.mark.parametrize("batch", [1, 7, 10_000])
async def test_runs_and_steps_mirror_the_decider(store: ProjectionStore, batch: int) -> None:
    d = decided()
    await project(store, d.envelopes, batch)
    runs = {r["workflow_id"]: r for r in await rows(store, tables.workflows)}
    assert set(runs) == set(d.state.workflows)
    steps = await rows(store, tables.workflow_steps)
    for workflow_id, run in d.state.workflows.items():
        row = runs[workflow_id]
        assert row["status"] == run.status, workflow_id
        mine = {s["step"]: s for s in steps if s["workflow_id"] == workflow_id}
        assert {n: s["status"] for n, s in mine.items()} == {n: s.status for n, s in run.steps.items()}
        assert [s["step"] for s in sorted(mine.values(), key=lambda s: s["position"])] == list(run.steps)
        counts = (row["completed_tasks"], row["failed_tasks"], row["skipped_tasks"])
        assert counts == _counts(d.state, workflow_id)
        assert row["total_tasks"] == len(run.steps)
        # A step's task is the one the decider links to it.
        linked = {name: task for task, (wf, name) in d.state.step_of_task.items() if wf == workflow_id}
        assert {n: s["task_id"] for n, s in mine.items() if s["task_id"]} == linked
        for name, task_id in linked.items():
            task = d.state.tasks[task_id]
            assert mine[name]["attempts"] == task.attempts
    # What WorkflowEnded said is what the rows say.
    for env in d.envelopes:
        if isinstance(env.data, ev.WorkflowEnded) and env.data.workflow_id != "run7":
            row = runs[env.data.workflow_id]
            assert (row["completed_tasks"], row["failed_tasks"], row["skipped_tasks"]) == (
                env.data.completed_tasks, env.data.failed_tasks, env.data.skipped_tasks)
            assert (row["reason"], row["code"], row["ended_at"]) == (env.data.reason, env.data.code, env.time)


async def test_costs_land_on_their_step_and_run(flows: tuple[ProjectionStore, Decided]) -> None:
    store, d = flows
    by_task: dict[str, int] = {}
    for env in d.envelopes:
        if isinstance(env.data, ev.CostRecorded) and env.data.task_id is not None:
            by_task[env.data.task_id] = by_task.get(env.data.task_id, 0) + to_micros(env.data.cost_usd)
    steps = await rows(store, tables.workflow_steps)
    for step in steps:
        assert step["cost_micros"] == by_task.get(step["task_id"] or "", 0), step["task_id"]
    for run in await rows(store, tables.workflows):
        mine = [s["cost_micros"] for s in steps if s["workflow_id"] == run["workflow_id"]]
        assert run["cost_micros"] == sum(mine)
    # A task that names the run only to share its budget counts toward the budget, not the steps.
    costs = {r["cost_id"]: r for r in await rows(store, tables.costs)}
    assert costs["rc3"]["workflow_id"] == "run1"
    run1 = await wq.get_workflow(store, POOL, "run1")
    assert run1 is not None and run1["cost_usd"] == 0.25 + 0.125
    assert {s["name"]: s["cost_usd"] for s in run1["steps"]} == {
        "fetch_a": 0.25, "fetch_b": 0.125, "approve": 0.0, "merge": 0.0}


async def test_tasks_that_only_claim_a_step_are_no_steps(flows: tuple[ProjectionStore, Decided]) -> None:
    store, _ = flows
    task_ids = {s["task_id"] for s in await rows(store, tables.workflow_steps)}
    assert "side" not in task_ids and "ghost.fetch_a" not in task_ids
    tasks = {t["task_id"] for t in await rows(store, tables.tasks)}
    assert {"side", "ghost.fetch_a"} <= tasks


# --- one run, its steps and its audit ---


async def test_a_completed_run_in_detail(flows: tuple[ProjectionStore, Decided]) -> None:
    store, d = flows
    run = await wq.get_workflow(store, POOL, "run1")
    assert run is not None
    started = _event(d, ev.WorkflowStarted, "run1")
    assert isinstance(started.data, ev.WorkflowStarted)
    assert (run["execution_id"], run["name"], run["version"]) == ("run1", "etl", "1.0.0")
    assert run["status"] == "completed"
    assert run["inputs"] == {"day": "monday"} and run["definition"] == started.data.definition
    assert run["created_at"] == started.time.isoformat()
    steps = {s["name"]: s for s in run["steps"]}
    assert list(steps) == ["fetch_a", "fetch_b", "approve", "merge"]
    # The run started with its first step's submission and ran until its end.
    ended = _event(d, ev.WorkflowEnded, "run1")
    assert run["started_at"] == steps["fetch_a"]["submitted_at"]
    assert run["ended_at"] == ended.time.isoformat() >= steps["merge"]["ended_at"]
    span = (_from_iso(run["ended_at"]) - _from_iso(run["started_at"])).total_seconds()
    assert run["execution_time"] == span > 0
    a = steps["fetch_a"]
    assert (a["task_id"], a["agent_id"], a["attempts"], a["status"]) == ("run1.fetch_a", "w2", 2, "completed")
    assert a["result"] == {"rows": 10} and a["error"] == "flaky"  # the failure it recovered from
    assert [(x["agent_id"], x["attempt"]) for x in a["audit"]] == [("w1", 1), ("w2", 2)]
    assert a["audit"][0]["strategy"] == "least_loaded" and a["audit"][0]["candidates"][0]["agent_id"] == "w1"
    assert a["audit"] == [{k: v for k, v in x.items() if k not in ("pool", "task_id")}
                          for x in await _assignments(store, "run1.fetch_a")]
    assert a["started_at"] < a["ended_at"]  # its first start, before the retry
    # The signal came before the step waited: it completed as it began to wait.
    g = steps["approve"]
    assert (g["kind"], g["status"], g["result"], g["task_id"]) == ("signal", "completed", {"by": "ann"}, None)
    assert g["submitted_at"] == g["started_at"] <= g["ended_at"] and "audit" not in g
    assert steps["merge"]["depends_on"] == ["fetch_a", "fetch_b", "approve"]
    assert await wq.get_workflow(store, POOL, "nope") is None
    assert await wq.get_workflow(store, "default", "run1") is None  # runs are per pool


def _event(d: Decided, kind: type[Any], workflow_id: str) -> Envelope:
    return next(e for e in d.envelopes if isinstance(e.data, kind) and e.data.workflow_id == workflow_id)


async def _assignments(store: ProjectionStore, task_id: str) -> list[dict[str, Any]]:
    a = tables.assignments
    async with store.engine.connect() as conn:
        found = await conn.execute(sa.select(a).where(a.c.pool == POOL, a.c.task_id == task_id)
                                   .order_by(a.c.position))
        return [{k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in r.items()}
                for r in found.mappings()]


async def test_failures_cancellations_skips_and_ends(flows: tuple[ProjectionStore, Decided]) -> None:
    store, _ = flows

    async def steps(workflow_id: str) -> dict[str, dict[str, Any]]:
        run = await wq.get_workflow(store, POOL, workflow_id)
        assert run is not None
        return {s["name"]: s for s in run["steps"]}

    run2 = await steps("run2")
    assert (run2["fetch_a"]["status"], run2["fetch_a"]["error"]) == ("failed", "source down")
    assert run2["fetch_b"]["status"] == "cancelled" and "run2" in run2["fetch_b"]["error"]
    assert run2["fetch_b"]["agent_id"] is None  # it went back to the queue when w2 went silent
    assert {run2[n]["reason"] for n in ("approve", "merge")} == {"workflow stopped: step fetch_a failed"}
    run3 = await steps("run3")
    assert run3["optional"]["status"] == "failed" and run3["optional"]["continue_on_failure"]
    assert run3["after_left"]["error"] == "no agent named"  # it could not start
    run5 = await steps("run5")
    assert run5["gate"]["status"] == "failed" and "not received" in run5["gate"]["error"]
    summary = {r["execution_id"]: r for r in (await wq.list_workflows(store, POOL))["workflows"]}
    assert (summary["run3"]["status"], summary["run3"]["failed_tasks"]) == ("partially_completed", 2)
    run7 = await wq.get_workflow(store, POOL, "run7")
    assert run7 is not None and (run7["status"], run7["code"]) == ("failed", "BUDGET_EXCEEDED")
    # Work a spent budget let finish still counts once it ends.
    assert run7["steps"][0]["status"] == "completed" and run7["completed_tasks"] == 1
    assert summary["run6"]["status"] == "timed_out"
    queued = summary["run8"]
    assert (queued["status"], queued["started_at"], queued["execution_time"]) == ("queued", None, None)


async def test_status_of_runs(flows: tuple[ProjectionStore, Decided]) -> None:
    store, _ = flows
    running = await wq.workflow_status(store, POOL, "run9")
    assert running == {
        "execution_id": "run9", "status": "running", "progress": 0.0,
        "current_tasks": ["work", "more", "gate"],
        "message": "0 of 4 steps done; running: work, more; waiting for signal: gate",
    }
    between = await wq.workflow_status(store, POOL, "run10")
    assert between is not None and between["progress"] == 0.5 and between["current_tasks"] == []
    assert between["message"] == "1 of 2 steps done; next steps about to start"
    done = await wq.workflow_status(store, POOL, "run1")
    assert done is not None and done["progress"] == 1.0
    assert done["message"] == "completed: 4 of 4 steps completed"
    cancelled = await wq.workflow_status(store, POOL, "run4")
    assert cancelled is not None and cancelled["message"] == "cancelled: not needed"
    queued = await wq.workflow_status(store, POOL, "run8")
    assert queued is not None and queued["message"] == "0 of 4 steps done; no step started yet"
    assert await wq.workflow_status(store, POOL, "nope") is None


async def test_a_running_run_counts_its_time_up_to_now(flows: tuple[ProjectionStore, Decided]) -> None:
    store, _ = flows
    run = await wq.get_workflow(store, POOL, "run9")
    assert run is not None and run["ended_at"] is None
    started = _from_iso(run["started_at"])
    later = await wq.get_workflow(store, POOL, "run9", now=started + timedelta(seconds=90))
    assert later is not None and later["execution_time"] == 90.0
    # Without a clock, up to the pool's latest event.
    last = max(r["last_event_at"] for r in await rows(store, tables.pools))
    assert run["execution_time"] == pytest.approx((last - started).total_seconds())
    page = await wq.list_workflows(store, POOL, status="running", now=started + timedelta(seconds=2))
    assert {r["execution_id"]: r["execution_time"] for r in page["workflows"]}["run9"] == 2.0


def _from_iso(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- lists ---


async def test_lists_filter_and_page_newest_first(flows: tuple[ProjectionStore, Decided]) -> None:
    store, d = flows
    started = [e.data.workflow_id for e in d.envelopes if isinstance(e.data, ev.WorkflowStarted)]
    everything = await wq.list_workflows(store, POOL)
    assert [r["execution_id"] for r in everything["workflows"]] == started[::-1]
    assert everything["total"] == len(started) == 10
    pages = [await wq.list_workflows(store, POOL, page=n, page_size=3) for n in (1, 2, 3, 4, 5)]
    assert [r for p in pages for r in p["workflows"]] == everything["workflows"]
    assert {p["total"] for p in pages} == {10} and pages[4]["workflows"] == []
    failed = await wq.list_workflows(store, POOL, status="failed")
    assert {r["execution_id"] for r in failed["workflows"]} == {
        w for w, run in d.state.workflows.items() if run.status == "failed"} and failed["total"] == 3
    etl = await wq.list_workflows(store, POOL, name="etl", status="completed")
    assert [r["execution_id"] for r in etl["workflows"]] == ["run1"]
    assert (await wq.list_workflows(store, "default"))["total"] == 0
    with pytest.raises(ValueError):
        await wq.list_workflows(store, POOL, page=0)
    with pytest.raises(ValueError):
        await wq.list_workflows(store, POOL, page_size=wq.MAX_PAGE_SIZE + 1)


# --- definitions ---


async def test_definitions_by_name_version_and_latest(flows: tuple[ProjectionStore, Decided]) -> None:
    store, d = flows
    registered = [e.data for e in d.envelopes if isinstance(e.data, ev.WorkflowDefinitionRegistered)]
    assert [(r.name, r.version) for r in registered] == [
        ("etl", "1.0.0"), ("etl", "0.9.0"), ("fanout", "1.0.0")]
    listing = await wq.list_definitions(store, POOL)
    # The latest is the last registered, whatever the version strings.
    assert listing == {"definitions": [{"name": "etl", "versions": ["1.0.0", "0.9.0"], "latest": "0.9.0"},
                                       {"name": "fanout", "versions": ["1.0.0"], "latest": "1.0.0"}]}
    etl = await wq.definition_versions(store, POOL, "etl")
    assert etl is not None and etl["latest"] == "0.9.0"
    assert [(v["version"], v["digest"]) for v in etl["versions"]] == [
        (r.version, r.digest) for r in registered if r.name == "etl"]
    one = await wq.definition_versions(store, POOL, "etl", "1.0.0")
    assert one is not None and [v["version"] for v in one["versions"]] == ["1.0.0"]
    none = await wq.definition_versions(store, POOL, "etl", "7")
    assert none is not None and none["versions"] == [] and none["latest"] == "0.9.0"
    assert await wq.definition_versions(store, POOL, "nope") is None
    # The snapshot the writes start a run from.
    snapshot = await wq.definition_snapshot(store, POOL, "etl", "1.0.0")
    assert snapshot is not None and snapshot == registered[0].definition
    assert WorkflowDefinition.model_validate(snapshot).version == "1.0.0"
    latest = await wq.definition_snapshot(store, POOL, "etl")
    assert latest is not None and latest["version"] == "0.9.0"
    assert await wq.definition_snapshot(store, POOL, "etl", "3.0") is None
    assert await wq.definition_snapshot(store, "default", "etl") is None
    row = await wq.get_definition(store, POOL, "fanout")
    assert row is not None and row["name"] == "fanout" and row["registered_at"].endswith("+00:00")


async def test_agents_by_id_or_name(flows: tuple[ProjectionStore, Decided]) -> None:
    store, _ = flows
    by_id = await wq.find_agent(store, POOL, "w1")
    assert by_id is not None and by_id["agent_id"] == "w1"
    # "worker-two" is w2's name and that of the deregistered "old": the registered one wins.
    by_name = await wq.find_agent(store, POOL, "worker-two")
    assert by_name is not None and by_name["agent_id"] == "w2"
    gone = await wq.find_agent(store, POOL, "old")
    assert gone is not None and gone["status"] == "deregistered"
    assert await wq.agent_exists(store, POOL, "worker-one")
    assert not await wq.agent_exists(store, POOL, "old")
    assert not await wq.agent_exists(store, POOL, "nobody")
    assert await wq.find_agent(store, "default", "w1") is None


# --- the system at a glance ---


async def test_system_status(flows: tuple[ProjectionStore, Decided]) -> None:
    store, d = flows
    status = await wq.system_status(store, POOL)
    state = d.state

    def count(values: list[str]) -> dict[str, int]:
        return {v: values.count(v) for v in sorted(set(values))}

    assert status["workflows"] == count([r.status for r in state.workflows.values()])
    assert status["tasks"] == count([t.status for t in state.tasks.values()])
    assert status["agents"] == count([a["status"] for a in await rows(store, tables.agents)])
    spent = sum(to_micros(e.data.cost_usd) for e in d.envelopes if isinstance(e.data, ev.CostRecorded))
    assert to_micros(status["total_cost_usd"]) == spent
    waiting = [t for t in await rows(store, tables.tasks) if t["status"] in ("queued", "retrying")]
    assert status["queue"]["depth"] == len(waiting) >= 3
    assert status["queue"]["oldest_queued_at"] == min(t["submitted_at"] for t in waiting).isoformat()
    assert status["queue"]["waiting_by_reason"] == count([t["waiting_reason"]["code"] for t in waiting])
    assert "retry_backoff" in status["queue"]["waiting_by_reason"]
    assert [(r["scope"], r["scope_id"], r["requests_per_min"]) for r in status["rate_limits"]] == [
        ("agent", "w1", 30.0)]
    empty = await wq.system_status(store, "nowhere")
    assert empty["queue"] == {"depth": 0, "oldest_queued_at": None, "waiting_by_reason": {}}
    assert (empty["workflows"], empty["total_cost_usd"]) == ({}, 0.0)


# --- the handler table's followers ---


def test_a_follower_runs_after_the_handler_and_reads_what_both_read() -> None:
    seen: list[str] = []

    def first(b: Batch, env: object, d: object) -> None:
        seen.append("handler")

    def then(b: Batch, env: object, d: object) -> None:
        seen.append("follower")

    def need_a(w: Any, pool: str, d: Any) -> None: ...

    def need_b(w: Any, pool: str, d: Any) -> None: ...

    tasks, steps = Registry(), Registry()
    tasks.on(ev.TaskStarted, reads=(need_a,))(first)
    steps.also(ev.TaskStarted, reads=(need_b,))(then)
    for table in (merge(tasks, steps), merge(steps, tasks)):
        seen.clear()
        entry = table[ev.TaskStarted]
        entry.handle(Batch(TOPIC, 0), object(), object())  # type: ignore[arg-type]
        assert seen == ["handler", "follower"] and entry.reads == (need_a, need_b)
    lonely = Registry()
    lonely.also(ev.TaskFailed)(then)
    with pytest.raises(ValueError, match="TaskFailed is followed but has no handler"):
        merge(tasks, lonely)
    with pytest.raises(ValueError, match="followed twice"):
        steps.also(ev.TaskStarted)(then)
