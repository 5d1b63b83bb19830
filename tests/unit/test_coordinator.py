"""The coordinator reactor: capability match, least loaded, capacity, priority, rejections, ids, audit;
and the driver that runs it on a log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contracts import Envelope, Payload
from contracts import commands as c
from contracts import event_types as e
from events import open_log, partition_for
from events.codec import from_record, to_record
from services.coordination.coordinator import AUDIT_TOP, STRATEGY, Assignment, Coordinator, PoolView
from services.runtime.coordinator import CoordinatorDriver
from services.runtime.topics import Topics
from tests.gwt import Loop, wrap

# -- helpers ---------------------------------------------------------------------------------------


class Feed:
    """Feeds events to a PoolView one decision at a time, numbering them like the runner."""

    def __init__(self, pool: str = "default") -> None:
        self.view = PoolView(pool)
        self.seq = 0
        self.n = 0

    def __call__(
        self, *events: Payload, command_id: str | None = None, correlation: str | None = None
    ) -> None:
        self.n += 1
        envs = wrap(
            events,
            pool=self.view.pool,
            start=self.seq,
            command_id=command_id or f"cmd-{self.n}",
            correlation_id=correlation,
        )
        self.seq += len(envs)
        for env in envs:
            self.view.observe(env)

    def schedule(self) -> list[Assignment]:
        return self.view.schedule()


def agent(agent_id: str, caps: tuple[str, ...] = (), capacity: int = 1) -> e.AgentRegistered:
    return e.AgentRegistered(
        agent_id=agent_id, name=agent_id, kind="generic", capabilities=caps, capacity=capacity
    )


def task(task_id: str, req: tuple[str, ...] = (), priority: int = 5) -> e.TaskSubmitted:
    return e.TaskSubmitted(task_id=task_id, type="work", priority=priority, required_capabilities=req)


def reject(a: Assignment, code: str = "AGENT_OVER_CAPACITY", **details: Any) -> e.CommandRejected:
    return e.CommandRejected(
        command_type="AssignTask", code=code, message="no", details={"task_id": a.command.task_id, **details}
    )


def pairs(assignments: list[Assignment]) -> list[tuple[str, str]]:
    return [(a.command.task_id, a.command.agent_id) for a in assignments]


def loads(view: PoolView) -> dict[str, int]:
    return {a.agent_id: a.load for a in view.agents.values()}


# -- capability match ------------------------------------------------------------------------------


def test_a_task_goes_only_to_an_agent_with_every_required_capability() -> None:
    f = Feed()
    f(agent("a", ("x",), 5), agent("b", ("y",), 5), agent("c", ("x", "y", "z"), 1))
    f(task("t", ("x", "y")))
    assert pairs(f.schedule()) == [("t", "c")]
    f(task("u", ("x", "y")))
    assert f.schedule() == []  # c is full and nobody else has both
    f(task("v", ("y",)))
    assert pairs(f.schedule()) == [("v", "b")]


def test_a_task_nobody_can_serve_waits_until_a_capable_agent_registers() -> None:
    f = Feed()
    f(agent("a", ("x",), 3), task("t", ("gpu",)))
    # Nobody registered has "gpu": the coordinator asks for the task to be marked unassignable.
    [mark] = f.schedule()
    assert mark.command == c.MarkTaskUnassignable(
        task_id="t", missing=("gpu",), best_match=0.0, threshold=1.0
    )
    assert mark.command_id == "unassignable:default:t:0:0"
    f(e.TaskUnassignable(task_id="t", missing=("gpu",)), command_id=mark.command_id)
    assert f.schedule() == []
    assert f.view.tasks["t"].status == "queued"
    f(agent("g", ("gpu", "x")))
    assert pairs(f.schedule()) == [("t", "g")]


def test_the_loop_never_assigns_to_an_agent_lacking_a_capability() -> None:
    loop = Loop()
    profiles = {"a": ("x",), "b": ("y",), "c": ("x", "y"), "d": ()}
    for name, caps in profiles.items():
        loop.send(c.RegisterAgent(agent_id=name, name=name, capabilities=caps, capacity=2))
    reqs = [(), ("x",), ("y",), ("x", "y"), ("z",)]
    for i in range(20):
        loop.send(c.SubmitTask(task_id=f"t{i}", type="w", required_capabilities=reqs[i % len(reqs)]))
    loop.run()
    assert len(loop.assignments()) == 8  # every slot of 4 agents x 2 filled
    for cmd in loop.assignments():
        assert set(loop.state.tasks[cmd.task_id].required) <= set(profiles[cmd.agent_id])
    assert loop.rejections() == []


# -- least loaded ----------------------------------------------------------------------------------


def test_least_loaded_by_load_ratio() -> None:
    f = Feed()
    f(agent("a", capacity=4), agent("b", capacity=2), task("t1"), task("t2"))
    f(
        e.TaskAssigned(task_id="t1", agent_id="a", attempt=1),
        e.TaskAssigned(task_id="t2", agent_id="b", attempt=1),
    )
    f(task("t3"))
    assert pairs(f.schedule()) == [("t3", "a")]  # 1/4 < 1/2


def test_ties_are_broken_by_agent_id() -> None:
    f = Feed()
    f(agent("b"), agent("c"), agent("a"), task("t"))
    assert pairs(f.schedule()) == [("t", "a")]


def test_work_is_spread_over_equally_free_agents() -> None:
    f = Feed()
    f(agent("a", capacity=2), agent("b", capacity=2))
    f(task("t1"), task("t2"), task("t3"), task("t4"), task("t5"))
    assert pairs(f.schedule()) == [("t1", "a"), ("t2", "b"), ("t3", "a"), ("t4", "b")]
    assert loads(f.view) == {"a": 2, "b": 2}


# -- capacity and the queue ------------------------------------------------------------------------


def test_capacity_is_respected_and_the_rest_waits() -> None:
    loop = Loop()
    loop.do(c.RegisterAgent(agent_id="a", name="a", capacity=2))
    for i in range(5):
        loop.do(c.SubmitTask(task_id=f"t{i}", type="w"))
    assert [cmd.task_id for cmd in loop.assignments()] == ["t0", "t1"]
    assert loop.state.agents["a"].tasks == {"t0", "t1"}
    assert [t.status for t in loop.state.tasks.values()] == ["assigned"] * 2 + ["queued"] * 3


def test_freed_capacity_goes_to_the_highest_priority_then_oldest_task_the_agent_can_serve() -> None:
    loop = Loop()
    loop.do(c.RegisterAgent(agent_id="a", name="a", capabilities=("x",)))
    loop.do(c.SubmitTask(task_id="busy", type="w"))
    for task_id, prio, req in [
        ("low", 2, ()),
        ("high-old", 8, ("x",)),
        ("gpu", 10, ("gpu",)),
        ("mid", 5, ()),
        ("high-new", 8, ()),
    ]:
        loop.do(c.SubmitTask(task_id=task_id, type="w", priority=prio, required_capabilities=req))
    assert [cmd.task_id for cmd in loop.assignments()] == ["busy"]
    order = []
    current = "busy"
    for _ in range(4):
        loop.do(c.CompleteTask(task_id=current))
        current = loop.assignments()[-1].task_id
        order.append(current)
    assert order == ["high-old", "high-new", "mid", "low"]
    loop.do(c.CompleteTask(task_id=current))
    assert loop.state.tasks["gpu"].status == "queued"  # nobody can serve it
    assert len(loop.assignments()) == 5


@pytest.mark.parametrize("finish", ["complete", "fail", "cancel"])
def test_any_ending_frees_the_slot(finish: str) -> None:
    loop = Loop()
    loop.do(c.RegisterAgent(agent_id="a", name="a"))
    loop.do(c.SubmitTask(task_id="t1", type="w"))
    loop.do(c.SubmitTask(task_id="t2", type="w"))
    ending = {
        "complete": c.CompleteTask(task_id="t1"),
        "fail": c.FailTask(task_id="t1"),
        "cancel": c.CancelTask(task_id="t1"),
    }[finish]
    loop.do(ending)
    assert [(x.task_id, x.agent_id) for x in loop.assignments()] == [("t1", "a"), ("t2", "a")]
    assert loop.coordinator.view("default").agents["a"].load == 1


def test_cancelling_a_queued_task_takes_it_out_of_the_queue() -> None:
    loop = Loop()
    loop.do(c.SubmitTask(task_id="t1", type="w"))
    loop.do(c.CancelTask(task_id="t1"))
    loop.do(c.RegisterAgent(agent_id="a", name="a"))
    assert loop.assignments() == []


# -- requeue and deregistration --------------------------------------------------------------------


def test_a_requeued_task_is_assigned_again() -> None:
    loop = Loop()
    loop.do(c.RegisterAgent(agent_id="a", name="a", capacity=2))
    loop.do(c.RegisterAgent(agent_id="b", name="b", capacity=1))
    loop.do(c.SubmitTask(task_id="t1", type="w"))
    loop.do(c.SubmitTask(task_id="t2", type="w"))
    loop.do(c.SubmitTask(task_id="t3", type="w"))
    assert {(x.task_id, x.agent_id) for x in loop.assignments()} == {("t1", "a"), ("t2", "b"), ("t3", "a")}
    loop.do(c.RegisterAgent(agent_id="c", name="c", capacity=5))
    loop.do(c.DeregisterAgent(agent_id="a"))
    assert [(x.task_id, x.agent_id) for x in loop.assignments()[3:]] == [("t1", "c"), ("t3", "c")]
    assert loads(loop.coordinator.view("default")) == {"a": 0, "b": 1, "c": 2}
    assert loop.state.tasks["t1"].attempts == 2


def test_requeue_event_returns_the_task_to_the_queue() -> None:
    f = Feed()
    f(agent("a", capacity=2), agent("b"), task("t"))
    [first] = f.schedule()
    f(e.TaskAssigned(task_id="t", agent_id="a", attempt=1), command_id=first.command_id)
    assert loads(f.view) == {"a": 1, "b": 0}
    f(e.TaskRequeued(task_id="t", agent_id="a", reason="lost"))
    assert loads(f.view) == {"a": 0, "b": 0}
    [again] = f.schedule()
    assert again.command.task_id == "t"
    assert again.command_id == "assign:default:t:1:0" != first.command_id


def test_deregistered_agents_get_nothing() -> None:
    loop = Loop()
    loop.do(c.RegisterAgent(agent_id="a", name="a", capacity=10))
    loop.do(c.RegisterAgent(agent_id="b", name="b", capacity=10))
    loop.do(c.DeregisterAgent(agent_id="a"))
    for i in range(6):
        loop.do(c.SubmitTask(task_id=f"t{i}", type="w"))
    assert {x.agent_id for x in loop.assignments()} == {"b"}
    loop.do(c.DeregisterAgent(agent_id="b"))
    loop.do(c.SubmitTask(task_id="late", type="w"))
    assert [x.task_id for x in loop.assignments()] == [f"t{i}" for i in range(6)]
    assert all(t.status == "queued" for t in loop.state.tasks.values())


def test_a_reregistered_agent_gets_work_again() -> None:
    loop = Loop()
    loop.do(c.RegisterAgent(agent_id="a", name="a"))
    loop.do(c.DeregisterAgent(agent_id="a"))
    loop.do(c.SubmitTask(task_id="t", type="w"))
    assert loop.assignments() == []
    loop.do(c.RegisterAgent(agent_id="a", name="a"))
    assert [(x.task_id, x.agent_id) for x in loop.assignments()] == [("t", "a")]


# -- assignments rejected in flight ----------------------------------------------------------------


def test_a_rejected_assignment_returns_the_task_to_the_queue_under_a_new_command_id() -> None:
    f = Feed()
    f(agent("a", capacity=2), agent("b", capacity=2), task("t"))
    [first] = f.schedule()
    assert first.command_id == "assign:default:t:0:0"
    assert loads(f.view) == {"a": 1, "b": 0}  # counted while in flight
    assert f.schedule() == []  # not issued twice
    f(reject(first), command_id=first.command_id)
    assert loads(f.view) == {"a": 0, "b": 0}
    [second] = f.schedule()
    assert second.command_id == "assign:default:t:0:1"
    assert second.command.task_id == "t"


def test_a_stale_rejection_does_not_release_the_assignment_in_flight() -> None:
    f = Feed()
    f(agent("a", capacity=2), task("t"))
    [first] = f.schedule()
    f(reject(first), command_id="someone-else")  # e.g. a client's own AssignTask for t
    assert loads(f.view) == {"a": 1}
    assert f.schedule() == []
    f(e.TaskAssigned(task_id="t", agent_id="a", attempt=1), command_id=first.command_id)
    assert loads(f.view) == {"a": 1}  # counted once


def test_rejections_of_other_commands_are_ignored() -> None:
    f = Feed()
    f(agent("a"), task("t"))
    [first] = f.schedule()
    f(
        e.CommandRejected(command_type="StartTask", code="X", message="", details={"task_id": "t"}),
        command_id=first.command_id,
    )
    assert loads(f.view) == {"a": 1}
    assert f.view.tasks["t"].pending is not None


def test_an_assignment_landing_on_another_agent_moves_the_load() -> None:
    f = Feed()
    f(agent("a", capacity=2), agent("b", capacity=2), task("t"))
    [first] = f.schedule()
    assert first.command.agent_id == "a"
    f(e.TaskAssigned(task_id="t", agent_id="b", attempt=1), command_id="client")
    assert loads(f.view) == {"a": 0, "b": 1}


def test_the_loop_recovers_from_an_in_flight_cancellation() -> None:
    loop = Loop()
    loop.do(c.RegisterAgent(agent_id="a", name="a"))
    loop.send(c.SubmitTask(task_id="t1", type="w"))
    loop.send(c.CancelTask(task_id="t1"))  # decided before the coordinator's AssignTask
    loop.send(c.SubmitTask(task_id="t2", type="w"))
    loop.run()
    [rejected] = loop.rejections()
    assert (rejected.command_type, rejected.code, rejected.details["task_id"]) == (
        "AssignTask",
        "INVALID_TASK_STATE",
        "t1",
    )
    assert [(x.task_id, x.agent_id) for x in loop.assignments()] == [("t1", "a"), ("t2", "a")]
    assert loop.state.tasks["t2"].status == "assigned"
    assert loop.coordinator.view("default").agents["a"].load == 1


# -- deterministic command ids ---------------------------------------------------------------------


def _in_flight(loop: Loop) -> list[tuple[str, str, str]]:
    return [
        (cid, cmd.task_id, cmd.agent_id)
        for cid, cmd, by in loop.queue
        if by and isinstance(cmd, c.AssignTask)
    ]


def test_a_rebuilt_coordinator_issues_the_same_command_ids() -> None:
    loop = Loop()
    loop.do(c.RegisterAgent(agent_id="a", name="a", capacity=2))
    loop.do(c.SubmitTask(task_id="t1", type="w"))
    loop.do(c.SubmitTask(task_id="t2", type="w"))
    loop.do(c.DeregisterAgent(agent_id="a"))  # both requeued: next ids carry attempt 1
    loop.send(c.RegisterAgent(agent_id="b", name="b", capacity=3))
    loop.send(c.SubmitTask(task_id="t3", type="w", priority=9))
    loop.step()
    loop.step()  # b registered, t3 submitted; assignments are now in flight, not yet decided
    flying = _in_flight(loop)
    assert [cid for cid, _, _ in flying] == [
        "assign:default:t1:1:0",
        "assign:default:t2:1:0",
        "assign:default:t3:0:0",
    ]

    rebuilt = Coordinator()
    for env in loop.log:
        rebuilt.observe(env)
    reissued = [(a.command_id, a.command.task_id, a.command.agent_id) for a in rebuilt.schedule()]
    assert sorted(reissued) == sorted(flying)

    # The originals are decided; re-sent copies under the same ids are skipped as repeats.
    loop.run()
    n = len(loop.log)
    for cid, task_id, agent_id in flying:
        loop.queue.append((cid, c.AssignTask(task_id=task_id, agent_id=agent_id), True))
    loop.run()
    assert len(loop.log) == n


def test_ids_count_assignments_and_rejections() -> None:
    f = Feed()
    f(agent("a", capacity=3), task("t"))
    ids = []
    for _ in range(3):
        [a] = f.schedule()
        ids.append(a.command_id)
        f(reject(a), command_id=a.command_id)
    [a] = f.schedule()
    f(e.TaskAssigned(task_id="t", agent_id="a", attempt=1), command_id=a.command_id)
    f(e.TaskRequeued(task_id="t", agent_id="a", reason="x"))
    [b] = f.schedule()
    assert [*ids, a.command_id, b.command_id] == [
        "assign:default:t:0:0",
        "assign:default:t:0:1",
        "assign:default:t:0:2",
        "assign:default:t:0:3",
        "assign:default:t:1:3",
    ]


# -- audit -----------------------------------------------------------------------------------------


def _ticks(*values: float) -> Iterator[float]:
    yield from values


def test_audit_lists_the_best_three_candidates_with_scores() -> None:
    f = Feed()
    f(
        agent("e", ("x",), 4),
        agent("d", ("x", "y"), 2),
        agent("c", ("x",), 1),
        agent("b", ("x",), 4),
        agent("a", ("x",), 2),
        agent("z", ("y",), 9),
        agent("f", ("x",), 1),
    )
    f(task("p1"), task("p2"), task("p3"), task("p4"), task("p5"))
    f(
        e.TaskAssigned(task_id="p1", agent_id="a", attempt=1),
        e.TaskAssigned(task_id="p2", agent_id="b", attempt=1),
        e.TaskAssigned(task_id="p3", agent_id="b", attempt=1),
        e.TaskAssigned(task_id="p4", agent_id="e", attempt=1),
        e.TaskAssigned(task_id="p5", agent_id="f", attempt=1),
    )
    # Free ratios: c 0/1, d 0/2, e 1/4, a 1/2, b 2/4; f is full and z lacks x.
    f(task("t", ("x",)))
    clock = _ticks(10.0, 10.0000125)
    [a] = f.view.schedule(clock=lambda: next(clock))
    audit = a.command.audit
    assert audit is not None
    assert a.command.agent_id == "c"
    assert audit.strategy == STRATEGY
    assert [(x.agent_id, x.score, x.load, x.capacity) for x in audit.candidates] == [
        ("c", 1.0, 0, 1),
        ("d", 1.0, 0, 2),
        ("e", 0.75, 1, 4),
    ]
    assert len(audit.candidates) == AUDIT_TOP == 3
    assert audit.eligible == 6  # every active agent with x, full ones included
    assert audit.considered == 2  # capability groups {x} and {x, y}
    assert audit.decision_us == 12.5


def test_audit_with_fewer_candidates_and_a_real_clock() -> None:
    coordinator = Coordinator()
    for env in wrap(
        [agent("b", capacity=2), agent("a", capacity=2), task("t")], pool="p", start=0, command_id="c1"
    ):
        coordinator.observe(env)
    [a] = coordinator.schedule()
    audit = a.command.audit
    assert audit is not None
    assert [x.agent_id for x in audit.candidates] == ["a", "b"]
    assert [x.score for x in audit.candidates] == [1.0, 1.0]
    assert audit.eligible == 2
    assert audit.decision_us >= 0


# -- pools and correlation -------------------------------------------------------------------------


def test_pools_are_scheduled_independently() -> None:
    coordinator = Coordinator()
    for pool, events in [("p1", [agent("a"), task("t1")]), ("p2", [agent("b"), task("t2"), task("t3")])]:
        for env in wrap(events, pool=pool, start=0, command_id=f"c-{pool}", correlation_id=f"corr-{pool}"):
            coordinator.observe(env)
    out = coordinator.schedule()
    assert [(a.pool, a.command.task_id, a.command.agent_id, a.command_id, a.correlation) for a in out] == [
        ("p1", "t1", "a", "assign:p1:t1:0:0", "corr-p1"),
        ("p2", "t2", "b", "assign:p2:t2:0:0", "corr-p2"),
    ]
    assert coordinator.schedule() == []


def test_observe_ignores_events_it_does_not_schedule_on() -> None:
    f = Feed()
    f(agent("a"), task("t"))
    before = (loads(f.view), {k: v.status for k, v in f.view.tasks.items()})
    other: list[Envelope] = wrap(
        [
            e.AgentHeartbeatReceived(agent_id="a", load=9),
            e.CostRecorded(cost_id="k", agent_id="a", model="m", input_tokens=1, output_tokens=1, cost_usd=1),
        ],
        pool="default",
        start=10,
        command_id="x",
    )
    for env in other:
        f.view.observe(env)
    assert (loads(f.view), {k: v.status for k, v in f.view.tasks.items()}) == before
    assert pairs(f.schedule()) == [("t", "a")]


# -- known bugs ------------------------------------------------------------------------------------


def test_a_reregistered_agent_with_fewer_capabilities_is_not_chosen_for_its_old_ones() -> None:
    loop = Loop()
    loop.do(c.RegisterAgent(agent_id="a", name="a", capabilities=("x",)))
    loop.do(c.DeregisterAgent(agent_id="a"))
    loop.do(c.RegisterAgent(agent_id="a", name="a", capabilities=()))
    loop.do(c.SubmitTask(task_id="t", type="w", required_capabilities=("x",)))
    assert loop.assignments() == []
    assert loop.rejections() == []


def test_audit_lists_a_reregistered_agent_once() -> None:
    loop = Loop()
    loop.do(c.RegisterAgent(agent_id="a", name="a", capacity=2))
    loop.do(c.DeregisterAgent(agent_id="a"))
    loop.do(c.RegisterAgent(agent_id="a", name="a", capacity=2))
    loop.do(c.SubmitTask(task_id="t", type="w"))
    [cmd] = loop.assignments()
    assert cmd.audit is not None
    assert [x.agent_id for x in cmd.audit.candidates] == ["a"]


def test_reregistering_while_an_assignment_is_in_flight_keeps_loads_in_step() -> None:
    loop = Loop()
    loop.send(c.RegisterAgent(agent_id="a", name="a"))
    loop.send(c.SubmitTask(task_id="t1", type="w"))
    loop.send(c.DeregisterAgent(agent_id="a"))
    loop.send(c.RegisterAgent(agent_id="a", name="a"))  # both decided before the AssignTask
    loop.run()
    assert loop.state.agents["a"].tasks == {"t1"}
    assert loop.coordinator.view("default").agents["a"].load == 1
    loop.do(c.SubmitTask(task_id="t2", type="w"))  # without the fix this never settles
    assert loop.rejections() == []


def test_an_assignment_to_an_agent_deregistered_in_flight_goes_to_another_agent() -> None:
    loop = Loop()
    loop.send(c.RegisterAgent(agent_id="a", name="a"))
    loop.send(c.RegisterAgent(agent_id="b", name="b"))
    loop.send(c.SubmitTask(task_id="t", type="w"))
    loop.send(c.DeregisterAgent(agent_id="a"))  # decided before the AssignTask to a
    loop.run()
    assert [r.code for r in loop.rejections()] == ["AGENT_NOT_ACTIVE"]
    assert loop.state.tasks["t"].agent_id == "b"


def test_a_budget_rejected_assignment_waits_for_the_budget_without_a_retry_storm() -> None:
    loop = Loop()
    loop.do(c.RegisterAgent(agent_id="a", name="a"))
    loop.do(c.SubmitTask(task_id="t1", type="w"))
    loop.do(c.SubmitTask(task_id="t2", type="w"))
    loop.do(c.SetBudget(limit_usd=1))
    loop.do(c.RecordCost(cost_id="k", agent_id="a", model="m", cost_usd=2))
    loop.send(c.CompleteTask(task_id="t1"))
    loop.run(limit=50)  # settles: at most a bounded number of rejected attempts
    loop.do(c.SetBudget(limit_usd=10))
    assert loop.state.tasks["t2"].status == "assigned"


# -- the driver: one for both runtimes, on a real SQLite log ---------------------------------------


@pytest.mark.parametrize("fenced", [False, True], ids=["embedded", "cluster"])
async def test_the_driver_appends_to_the_pools_partition_and_reissues_the_same_ids_after_a_crash(
    tmp_path: Path, fenced: bool
) -> None:
    topics = Topics.prefixed("x.")
    log = open_log(f"sqlite:///{tmp_path}/log.db")
    await log.start()
    try:
        await log.ensure_topic(topics.commands, 2)
        await log.ensure_topic(topics.events, 2, retention_ms=-1)
        p = partition_for("default", 2)
        envs = [env for i, ev in enumerate([agent("a"), task("t1")])
                for env in wrap([ev], pool="default", start=i, command_id=f"c{i}")]
        await log.append(topics.events, [to_record(x) for x in envs], partition=p)

        driver = CoordinatorDriver(log, (0, 1), topics, "g", fenced=fenced)
        assert await driver.rebuild() == {0: 0, 1: 0}  # nothing committed yet: nothing known
        assert driver.ready.is_set()
        await driver.react(p, [(r.offset, from_record(r)) for r in await log.read(topics.events, p, 0, 10)])
        [cmd] = await log.read(topics.commands, p, 0, 10)
        assert cmd.id == "assign:default:t1:0:0"
        assert await log.read(topics.commands, 1 - p, 0, 10) == []
        assert await log.committed("g", topics.events, p) == 2

        # The AssignTask was never decided: a driver rebuilt from the log issues it again, same id
        # (which the log and the decider drop as a repeat).
        again = CoordinatorDriver(log, (p,), topics, "g", fenced=fenced)
        assert await again.rebuild() == {p: 2}
        assert again.coordinators[p].view("default").tasks["t1"].pending == (cmd.id, "a")
        assert [r.id for r in await log.read(topics.commands, p, 0, 10)] == [cmd.id]
        assert await log.committed("g", topics.events, p) == 2
    finally:
        await log.close()


# -- ended tasks leave the view --------------------------------------------------------------------


def test_an_ended_task_leaves_the_view_and_a_later_cost_still_counts_against_its_workflow() -> None:
    f = Feed()
    f(agent("a", capacity=2))
    f(e.TaskSubmitted(task_id="t", type="work", priority=5, data={"workflow_id": "w"}), task("u"))
    assigned = f.schedule()
    assert sorted(pairs(assigned)) == [("t", "a"), ("u", "a")]
    for a in assigned:
        f(e.TaskAssigned(task_id=a.command.task_id, agent_id="a", attempt=1), command_id=a.command_id)
    f(e.TaskCompleted(task_id="t", agent_id="a"))
    f(e.TaskFailed(task_id="u", agent_id="a", error="x", attempt=1))
    assert f.view.tasks == {} and f.view.ended_in == {"t": "w"}
    assert loads(f.view) == {"a": 0}
    f(e.CostRecorded(cost_id="k", agent_id="a", task_id="t", model="m", input_tokens=1, output_tokens=1,
                     cost_usd=2))
    assert f.view.spent[("workflow", "w")] == 2_000_000
    assert f.view.spent[("agent", "a")] == f.view.spent[("pool", "default")] == 2_000_000


def test_a_task_ended_with_an_assignment_in_flight_stays_until_the_rejection_frees_the_agent() -> None:
    f = Feed()
    f(agent("a"), task("t"))
    [first] = f.schedule()
    assert loads(f.view) == {"a": 1}  # counted when issued
    f(e.TaskCancelled(task_id="t", reason="no longer needed"))
    assert f.view.tasks["t"].status == "done"  # its AssignTask is still to be answered
    f(reject(first, code="INVALID_TASK_STATE"), command_id=first.command_id)
    assert "t" not in f.view.tasks and loads(f.view) == {"a": 0}
    # The heap's entry for the task is passed over: the next task gets the agent.
    f(task("u"))
    assert pairs(f.schedule()) == [("u", "a")]


def test_a_compacted_fold_holds_only_live_entries_and_decides_exactly_as_before() -> None:
    """A fold of history never schedules: its heaps keep an entry of every task ever queued and its
    list of tasks to check every task. Compacting drops the dead ones and no decision changes."""

    def history(f: Feed) -> None:
        f(agent("a", capacity=3), agent("b", ("gpu",), capacity=1))
        for i in range(12):
            f(task(f"t{i}", ("gpu",) if i % 4 == 0 else (), priority=i % 3))
        for i in (1, 2, 3):  # assigned, and one given back to the queue
            f(e.TaskAssigned(task_id=f"t{i}", agent_id="a", attempt=1))
        f(e.TaskRequeued(task_id="t3", agent_id="a", reason="agent left"))
        f(e.TaskCompleted(task_id="t1", agent_id="a"))
        f(e.TaskCancelled(task_id="t5", reason="not needed"))
        f(e.TaskAssigned(task_id="t0", agent_id="b", attempt=1))
        f(e.TaskFailed(task_id="t0", agent_id="b", error="x", attempt=1))
        f(e.AgentDeregistered(agent_id="b", reason="gone"))  # the gpu tasks left nobody can serve

    plain, compacted = Feed(), Feed()
    history(plain)
    history(compacted)
    compacted.view.compact()
    v = compacted.view
    entries = [entry for q in v.queues.values() for entry in q.heap]
    assert sorted(entry[2] for entry in entries) == sorted(
        t.task_id for t in v.tasks.values() if t.status == "queued")
    assert all(v.tasks[entry[2]].qversion == entry[3] for entry in entries)
    assert sum(len(q.heap) for q in plain.view.queues.values()) > len(entries)
    assert {t.task_id for t in v.to_mark} <= v.tasks.keys() and len(plain.view.to_mark) > len(v.to_mark)

    def decisions(f: Feed) -> list[tuple[str, Any]]:
        out = []
        for a in f.schedule():
            command = a.command.model_dump()
            if command.get("audit"):
                del command["audit"]["decision_us"]  # the time the choice took
            out.append((a.command_id, command))
        return out

    first = decisions(plain)
    assert first and decisions(compacted) == first
    f_more = [agent("c", ("gpu",), capacity=5), task("late")]
    plain(*f_more)
    compacted(*f_more)
    assert decisions(compacted) == decisions(plain)
