"""Why a queued task waits, as the coordinator puts it on the log: ``NoteTaskWaiting`` ->
``TaskWaiting`` when the reason changes (budgets spent, circuits open, agents unhealthy, and back
to busy), never for the ordinary case of busy agents. Through the real decider and coordinator on
a simulated clock (``tests.unit.fleet.World``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from contracts import commands as c
from contracts import event_types as e
from tests.unit.fleet import T0, World

HOUR = 3600


def register(agent_id: str, caps: tuple[str, ...] = ("x",), capacity: int = 1, **kw: Any) -> c.RegisterAgent:
    kw.setdefault("heartbeat_timeout_s", HOUR)
    return c.RegisterAgent(agent_id=agent_id, name=agent_id, capabilities=caps, capacity=capacity, **kw)


def submit(task_id: str, req: tuple[str, ...] = ("x",), **kw: Any) -> c.SubmitTask:
    return c.SubmitTask(task_id=task_id, type="w", required_capabilities=req, **kw)


def cost(cost_id: str, agent_id: str, usd: float, task_id: str | None = None) -> c.RecordCost:
    return c.RecordCost(cost_id=cost_id, agent_id=agent_id, task_id=task_id, model="m", cost_usd=usd)


def waits(w: World) -> list[tuple[str, str, str | None, str | None]]:
    return [(x.task_id, x.code, x.scope, x.scope_id) for x in w.events(e.TaskWaiting)]


def test_busy_agents_cost_no_events_however_many_tasks_wait() -> None:
    w = World()
    w.do(register("a"), *[submit(f"t{i}") for i in range(500)])
    assert w.state.tasks["t0"].agent_id == "a"
    assert sum(1 for t in w.state.tasks.values() if t.status == "queued") == 499
    assert w.events(e.TaskWaiting) == [] and w.events(e.CommandRejected) == []


def test_the_only_capable_agent_has_spent_its_budget_then_the_budget_is_raised() -> None:
    w = World()
    w.do(register("a"), register("other", caps=("y",)), c.SetBudget(scope="agent", scope_id="a", limit_usd=1))
    w.do(cost("k", "a", 2.0))
    w.do(submit("t1"), submit("t2"))
    assert w.state.tasks["t1"].status == w.state.tasks["t2"].status == "queued"
    assert waits(w) == [("t1", "budget_exceeded", "agent", "a"), ("t2", "budget_exceeded", "agent", "a")]
    assert w.events(e.TaskWaiting)[0].agents == ("a",)
    w.do(submit("t3"))  # a task joining the queue is told too, alone
    assert waits(w)[2:] == [("t3", "budget_exceeded", "agent", "a")]

    w.do(c.SetBudget(scope="agent", scope_id="a", limit_usd=100))
    assert w.state.tasks["t1"].agent_id == "a"  # a takes one; the others now wait for it to be free
    assert waits(w)[3:] == [("t2", "all_capable_agents_busy", None, None),
                            ("t3", "all_capable_agents_busy", None, None)]
    w.do(c.CompleteTask(task_id="t1"), submit("t4"))
    assert w.state.tasks["t2"].agent_id == "a" and len(waits(w)) == 5  # nothing new to say
    assert w.events(e.CommandRejected) == []


def test_every_capable_circuit_open_says_until_when() -> None:
    w = World()
    w.do(c.SetPoolPolicy(breaker_threshold=1, breaker_cooldown_s=30), register("a", capacity=2))
    w.do(submit("f"))
    w.advance(5)
    w.do(c.FailTask(task_id="f"), submit("t"))
    [note] = w.events(e.TaskWaiting)
    assert (note.task_id, note.code, note.agents) == ("t", "circuit_open", ("a",))
    assert note.until == T0 + timedelta(seconds=35)
    w.advance(30)  # half-open: t is the trial
    assert w.state.tasks["t"].agent_id == "a"
    assert len(w.events(e.TaskWaiting)) == 1


def test_an_unhealthy_agent_is_why_its_reassigned_task_waits() -> None:
    w = World()
    w.do(register("a", heartbeat_timeout_s=5), submit("t"))
    w.advance(5)
    assert not w.state.agents["a"].healthy
    [note] = w.events(e.TaskWaiting)
    assert (note.task_id, note.code, note.agents) == ("t", "agents_unhealthy", ("a",))
    w.do(c.AgentHeartbeat(agent_id="a"))
    assert w.state.tasks["t"].agent_id == "a"


def test_a_spent_pool_budget_holds_every_queued_task_then_lets_them_go() -> None:
    w = World()
    w.do(c.SetBudget(scope="pool", limit_usd=1), register("a"))
    w.do(submit("t1"), submit("t2"), submit("t3", req=("z",)))
    assert [x.task_id for x in w.events(e.TaskUnassignable)] == ["t3"]
    w.do(cost("k", "a", 2.0, task_id="t1"))
    spent = ("budget_exceeded", "pool", "default")
    assert waits(w) == [("t2", *spent), ("t3", *spent)]
    w.do(c.CompleteTask(task_id="t1"))
    assert w.state.tasks["t2"].status == "queued" and len(waits(w)) == 2  # a is free; nothing starts
    w.do(c.SetBudget(scope="pool", limit_usd=10))
    assert w.state.tasks["t2"].agent_id == "a"
    # t3 still has no capable agent, and says so again.
    assert waits(w)[2:] == [("t3", "no_capable_agent", None, None)]
    assert w.events(e.CommandRejected) == []


def test_a_spent_workflow_budget_holds_its_tasks_only() -> None:
    w = World()
    w.do(register("a"), c.SetBudget(scope="workflow", scope_id="wf", limit_usd=1))
    w.do(submit("w1", data={"workflow_id": "wf"}), submit("w2", data={"workflow_id": "wf"}), submit("plain"))
    assert w.state.tasks["w1"].agent_id == "a"
    w.do(cost("k", "a", 2.0, task_id="w1"), c.CompleteTask(task_id="w1"))
    # w2 came first, but its workflow's budget is spent: plain goes, w2 says why it waits.
    assert w.state.tasks["plain"].agent_id == "a" and w.state.tasks["w2"].status == "queued"
    assert waits(w) == [("w2", "budget_exceeded", "workflow", "wf")]
    w.do(c.CompleteTask(task_id="plain"), c.SetBudget(scope="workflow", scope_id="wf", limit_usd=5))
    assert w.state.tasks["w2"].agent_id == "a"
    assert w.events(e.CommandRejected) == []
