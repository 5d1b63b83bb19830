"""The pool decider as given / when / then: every rule of ``decide`` and the fold of ``evolve``."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest

from contracts import Reason
from contracts import commands as c
from contracts import event_types as e
from contracts.commands import ModelPrice
from events.codec import to_record
from events.log import StoredRecord
from services.domain.decider import COMMAND_HANDLERS, DeciderConfig, Rejected, decide, evolve
from services.domain.envelopes import event_envelopes, rejection
from services.domain.evolution import EVENT_HANDLERS, STATELESS_EVENTS
from services.domain.prices import BUILTIN_PRICES
from services.domain.state import PoolState
from services.runtime.decider import PartitionDecider
from services.runtime.ingest import command_envelope
from services.runtime.outcomes import Outcomes
from tests.gwt import build_state, given, wrap
from tests.gwt import rejection as gwt_rejection

# -- history builders ------------------------------------------------------------------------------


def registered(agent_id: str = "a", caps: tuple[str, ...] = (), capacity: int = 1) -> e.AgentRegistered:
    return e.AgentRegistered(
        agent_id=agent_id, name=agent_id, kind="generic", capabilities=caps, capacity=capacity
    )


def submitted(
    task_id: str = "t", req: tuple[str, ...] = (), priority: int = 5, data: dict[str, Any] | None = None
) -> e.TaskSubmitted:
    return e.TaskSubmitted(
        task_id=task_id, type="work", priority=priority, required_capabilities=req, data=data or {}
    )


def assigned(task_id: str = "t", agent_id: str = "a", attempt: int = 1) -> e.TaskAssigned:
    return e.TaskAssigned(task_id=task_id, agent_id=agent_id, attempt=attempt)


def limits(cpu: float = 4, mem: float = 1024, disk: float = 1024, net: float = 100) -> e.ResourceLimitsSet:
    return e.ResourceLimitsSet(max_cpu_cores=cpu, max_memory_mb=mem, max_disk_mb=disk, max_network_mbps=net)


def allocated(
    alloc_id: str = "x", agent_id: str = "a", cpu: float = 1, mem: float = 0, disk: float = 0, net: float = 0
) -> e.ResourcesAllocated:
    return e.ResourcesAllocated(
        allocation_id=alloc_id,
        agent_id=agent_id,
        cpu_cores=cpu,
        memory_mb=mem,
        disk_mb=disk,
        network_mbps=net,
    )


def cost(
    cost_id: str = "k", agent_id: str = "a", usd: float = 1.0, task_id: str | None = None
) -> e.CostRecorded:
    return e.CostRecorded(
        cost_id=cost_id,
        agent_id=agent_id,
        task_id=task_id,
        model="m",
        input_tokens=0,
        output_tokens=0,
        cost_usd=usd,
    )


A = registered("a")
T = submitted("t")
T_ASSIGNED = (A, T, assigned("t", "a"))
T_RUNNING = (*T_ASSIGNED, e.TaskStarted(task_id="t", agent_id="a"))

# The history that leaves task "t" in each status (the agent "a" exists in all of them).
STATUS_HISTORY: dict[str, tuple[Any, ...]] = {
    "queued": (A, T),
    "assigned": T_ASSIGNED,
    "running": T_RUNNING,
    "completed": (*T_RUNNING, e.TaskCompleted(task_id="t", agent_id="a")),
    "failed": (*T_RUNNING, e.TaskFailed(task_id="t", agent_id="a", error="boom", attempt=1)),
    "cancelled": (A, T, e.TaskCancelled(task_id="t", reason="no")),
}


def test_status_histories_reach_their_status() -> None:
    for status, history in STATUS_HISTORY.items():
        assert build_state(history).tasks["t"].status == status


def wrong_states(*allowed: str) -> list[str]:
    return [s for s in STATUS_HISTORY if s not in allowed]


# -- RegisterAgent ---------------------------------------------------------------------------------


def test_register_agent() -> None:
    given().when(
        c.RegisterAgent(
            agent_id="a",
            name="Alpha",
            kind="llm",
            capabilities=("py", "sql"),
            capacity=3,
            heartbeat_timeout_s=12.5,
            metadata={"zone": "eu"},
        )
    ).then(
        e.AgentRegistered(
            agent_id="a",
            name="Alpha",
            kind="llm",
            capabilities=("py", "sql"),
            capacity=3,
            heartbeat_timeout_s=12.5,
            metadata={"zone": "eu"},
        ),
        # Liveness is watched from registration: the first heartbeat is due within the timeout.
        e.TimerScheduled(timer_id="heartbeat:a", kind="heartbeat", delay_s=12.5, generation=1, agent_id="a"),
    ).then_state(
        lambda s: (
            s.agents["a"].active
            and s.agents["a"].capacity == 3
            and s.agents["a"].capabilities == frozenset({"py", "sql"})
        )
    )


def test_register_agent_twice_is_rejected() -> None:
    given(A).when(c.RegisterAgent(agent_id="a", name="again")).rejects(Reason.AGENT_EXISTS, agent_id="a")


def test_reregistering_a_deregistered_agent_works_with_its_new_profile() -> None:
    given(registered("a", ("x",), 1), e.AgentDeregistered(agent_id="a")).when(
        c.RegisterAgent(agent_id="a", name="a2", capabilities=("y",), capacity=4)
    ).then(
        e.AgentRegistered(agent_id="a", name="a2", kind="generic", capabilities=("y",), capacity=4),
        e.TimerScheduled(timer_id="heartbeat:a", kind="heartbeat", delay_s=30.0, generation=1, agent_id="a"),
    ).then_state(
        lambda s: (
            s.agents["a"].active
            and s.agents["a"].capabilities == frozenset({"y"})
            and s.agents["a"].capacity == 4
            and not s.agents["a"].tasks
            and not s.agents["a"].allocations
        )
    )


# -- AgentHeartbeat --------------------------------------------------------------------------------


def test_heartbeat() -> None:
    # Each heartbeat (re-)arms the agent's liveness timer for its heartbeat_timeout_s (30 by default).
    given(A).when(c.AgentHeartbeat(agent_id="a", load=0.5, cpu=1.5, memory=300, queue=2)).then(
        e.AgentHeartbeatReceived(agent_id="a", load=0.5, cpu=1.5, memory=300, queue=2),
        e.TimerScheduled(timer_id="heartbeat:a", kind="heartbeat", delay_s=30.0, generation=1, agent_id="a"),
    )


def test_heartbeat_of_unknown_agent() -> None:
    given().when(c.AgentHeartbeat(agent_id="ghost")).rejects(Reason.UNKNOWN_AGENT, agent_id="ghost")


def test_heartbeat_of_deregistered_agent() -> None:
    given(A, e.AgentDeregistered(agent_id="a")).when(c.AgentHeartbeat(agent_id="a")).rejects(
        Reason.AGENT_NOT_ACTIVE, agent_id="a"
    )


# -- DeregisterAgent -------------------------------------------------------------------------------


def test_deregister_idle_agent() -> None:
    given(A).when(c.DeregisterAgent(agent_id="a", reason="scale down")).then(
        e.AgentDeregistered(agent_id="a", reason="scale down")
    ).then_state(lambda s: s.agents["a"].active is False)


def test_deregister_requeues_held_tasks_sorted_and_releases_allocations_sorted() -> None:
    history = (
        registered("a", capacity=5),
        registered("b"),
        limits(),
        submitted("t2"),
        submitted("t1"),
        submitted("t3"),
        submitted("t4"),
        submitted("t5"),
        assigned("t2", "a"),
        assigned("t1", "a"),
        e.TaskStarted(task_id="t1", agent_id="a"),
        assigned("t3", "b"),  # held by another agent: untouched
        assigned("t4", "a"),
        e.TaskCompleted(task_id="t4", agent_id="a"),  # finished: untouched
        allocated("z", "a", cpu=1),
        allocated("y", "a", cpu=0.5, mem=64, disk=10, net=5),
        allocated("w", "b", cpu=2),
    )
    given(*history).when(c.DeregisterAgent(agent_id="a")).then(
        e.TaskRequeued(task_id="t1", agent_id="a", reason="agent deregistered"),
        e.TaskRequeued(task_id="t2", agent_id="a", reason="agent deregistered"),
        e.ResourcesReleased(
            allocation_id="y",
            agent_id="a",
            cpu_cores=0.5,
            memory_mb=64,
            disk_mb=10,
            network_mbps=5,
            reason="agent deregistered",
        ),
        e.ResourcesReleased(
            allocation_id="z",
            agent_id="a",
            cpu_cores=1,
            memory_mb=0,
            disk_mb=0,
            network_mbps=0,
            reason="agent deregistered",
        ),
        e.AgentDeregistered(agent_id="a"),
    ).then_state(
        lambda s: (
            [s.tasks[t].status for t in ("t1", "t2", "t3", "t4", "t5")]
            == ["queued", "queued", "assigned", "completed", "queued"]
            and s.tasks["t1"].agent_id is None
            and s.tasks["t2"].agent_id is None
            and s.tasks["t1"].attempts == 1  # kept: the next assignment is attempt 2
            and not s.agents["a"].tasks
            and not s.agents["a"].allocations
            and set(s.allocations) == {"w"}
            and s.used == [2.0, 0.0, 0.0, 0.0]
            and s.agents["b"].tasks == {"t3"}
        )
    )


def test_deregister_unknown_agent() -> None:
    given().when(c.DeregisterAgent(agent_id="a")).rejects(Reason.UNKNOWN_AGENT, agent_id="a")


def test_deregister_twice() -> None:
    given(A, e.AgentDeregistered(agent_id="a")).when(c.DeregisterAgent(agent_id="a")).rejects(
        Reason.AGENT_NOT_ACTIVE, agent_id="a"
    )


def test_requeued_task_is_assigned_again_as_next_attempt() -> None:
    history = (
        *T_ASSIGNED,
        registered("b"),
        e.TaskRequeued(task_id="t", agent_id="a", reason="agent deregistered"),
        e.AgentDeregistered(agent_id="a"),
    )
    given(*history).when(c.AssignTask(task_id="t", agent_id="b")).then(assigned("t", "b", attempt=2))


# -- SubmitTask ------------------------------------------------------------------------------------


def test_submit_task() -> None:
    given().when(
        c.SubmitTask(
            task_id="t",
            type="summarise",
            priority=9,
            required_capabilities=("nlp",),
            data={"doc": 1, "workflow_id": "wf"},
            strategy="round_robin",
        )
    ).then(
        e.TaskSubmitted(
            task_id="t",
            type="summarise",
            priority=9,
            required_capabilities=("nlp",),
            data={"doc": 1, "workflow_id": "wf"},
            strategy="round_robin",
        )
    ).then_state(lambda s: s.tasks["t"].status == "queued" and s.tasks["t"].required == frozenset({"nlp"}))


def test_submit_with_an_unknown_strategy_is_rejected() -> None:
    # The contract refuses it at the door (tests/unit/test_bounds.py); the decider still rejects
    # one that reaches it unvalidated, as a command of an older version on the log might.
    unvalidated = c.SubmitTask.model_construct(task_id="t", type="x", strategy="fast")
    given().when(unvalidated).rejects(Reason.UNKNOWN_STRATEGY, task_id="t", strategy="fast")


@pytest.mark.parametrize("status", list(STATUS_HISTORY))
def test_submit_existing_task_id_in_any_status(status: str) -> None:
    given(*STATUS_HISTORY[status]).when(c.SubmitTask(task_id="t", type="x")).rejects(
        Reason.TASK_EXISTS, task_id="t"
    )


def test_submit_rejected_when_pool_budget_is_spent() -> None:
    history = (
        e.BudgetSet(scope="pool", scope_id="default", limit_usd=1),
        e.BudgetExceeded(scope="pool", scope_id="default", limit_usd=1, spent_usd=1),
    )
    given(*history).when(c.SubmitTask(task_id="t", type="x")).rejects(
        Reason.BUDGET_EXCEEDED, scope="pool", scope_id="default"
    )


def test_another_pools_budget_does_not_apply() -> None:
    history = (e.BudgetExceeded(scope="pool", scope_id="default", limit_usd=1, spent_usd=1),)
    given(*history, pool="p2").when(c.SubmitTask(task_id="t", type="work")).then(submitted("t"))


@pytest.mark.parametrize("wf", ["wf", 7])
def test_submit_rejected_when_workflow_budget_is_spent(wf: object) -> None:
    history = (e.BudgetExceeded(scope="workflow", scope_id=str(wf), limit_usd=1, spent_usd=2),)
    given(*history).when(c.SubmitTask(task_id="t", type="x", data={"workflow_id": wf})).rejects(
        Reason.BUDGET_EXCEEDED, scope="workflow", scope_id=str(wf)
    )


def test_submit_in_another_workflow_or_with_a_spent_agent_budget_is_accepted() -> None:
    history = (
        e.BudgetExceeded(scope="workflow", scope_id="wf", limit_usd=1, spent_usd=2),
        e.BudgetExceeded(scope="agent", scope_id="a", limit_usd=1, spent_usd=2),
    )
    given(*history).when(c.SubmitTask(task_id="t", type="x", data={"workflow_id": "other"})).then(
        e.TaskSubmitted(task_id="t", type="x", priority=5, data={"workflow_id": "other"})
    )


# -- AssignTask ------------------------------------------------------------------------------------


def test_assign_task() -> None:
    audit = c.SelectionAudit(
        strategy="s",
        candidates=(c.Candidate(agent_id="a", score=1, load=0, capacity=2),),
        eligible=1,
        considered=1,
        decision_us=3.5,
    )
    given(registered("a", ("x", "y"), 2), submitted("t", ("x",))).when(
        c.AssignTask(task_id="t", agent_id="a", audit=audit)
    ).then(e.TaskAssigned(task_id="t", agent_id="a", attempt=1, audit=audit)).then_state(
        lambda s: (
            s.tasks["t"].status == "assigned"
            and s.tasks["t"].agent_id == "a"
            and s.tasks["t"].attempts == 1
            and s.agents["a"].tasks == {"t"}
        )
    )


def test_assign_unknown_task() -> None:
    given(A).when(c.AssignTask(task_id="t", agent_id="a")).rejects(Reason.UNKNOWN_TASK, task_id="t")


@pytest.mark.parametrize("status", wrong_states("queued"))
def test_assign_task_not_queued(status: str) -> None:
    given(*STATUS_HISTORY[status], registered("b", capacity=9)).when(
        c.AssignTask(task_id="t", agent_id="b")
    ).rejects(Reason.INVALID_TASK_STATE, task_id="t", status=status)


def test_assign_to_unknown_agent() -> None:
    given(T).when(c.AssignTask(task_id="t", agent_id="a")).rejects(Reason.UNKNOWN_AGENT, agent_id="a")


def test_assign_to_deregistered_agent() -> None:
    given(A, T, e.AgentDeregistered(agent_id="a")).when(c.AssignTask(task_id="t", agent_id="a")).rejects(
        Reason.AGENT_NOT_ACTIVE, agent_id="a"
    )


def test_assign_to_agent_lacking_capabilities() -> None:
    given(registered("a", ("x",), 3), submitted("t", ("z", "x", "y"))).when(
        c.AssignTask(task_id="t", agent_id="a")
    ).rejects(Reason.CAPABILITY_MISMATCH, task_id="t", agent_id="a", missing=["y", "z"])


def test_assign_to_full_agent() -> None:
    given(
        registered("a", capacity=2),
        submitted("t1"),
        submitted("t2"),
        T,
        assigned("t1", "a"),
        assigned("t2", "a"),
    ).when(c.AssignTask(task_id="t", agent_id="a")).rejects(
        Reason.AGENT_OVER_CAPACITY, task_id="t", agent_id="a"
    )


def test_finished_task_frees_capacity_for_the_next_assignment() -> None:
    given(*T_RUNNING, e.TaskCompleted(task_id="t", agent_id="a"), submitted("u")).when(
        c.AssignTask(task_id="u", agent_id="a")
    ).then(assigned("u", "a"))


@pytest.mark.parametrize(("scope", "scope_id"), [("pool", "default"), ("agent", "a"), ("workflow", "wf")])
def test_assign_rejected_when_a_budget_is_spent(scope: Any, scope_id: str) -> None:
    history = (
        A,
        submitted("t", data={"workflow_id": "wf"}),
        e.BudgetSet(scope=scope, scope_id=scope_id, limit_usd=2),
        e.BudgetExceeded(scope=scope, scope_id=scope_id, limit_usd=2, spent_usd=3),
    )
    given(*history).when(c.AssignTask(task_id="t", agent_id="a")).rejects(
        Reason.BUDGET_EXCEEDED, scope=scope, scope_id=scope_id
    )


def test_assign_ignores_spent_budgets_of_other_agents_and_workflows() -> None:
    history = (
        A,
        submitted("t", data={"workflow_id": "wf"}),
        e.BudgetExceeded(scope="agent", scope_id="b", limit_usd=1, spent_usd=1),
        e.BudgetExceeded(scope="workflow", scope_id="other", limit_usd=1, spent_usd=1),
    )
    given(*history).when(c.AssignTask(task_id="t", agent_id="a")).then(assigned("t", "a"))


# -- StartTask -------------------------------------------------------------------------------------


@pytest.mark.parametrize("agent_id", [None, "a"])
def test_start_task(agent_id: str | None) -> None:
    given(*T_ASSIGNED).when(c.StartTask(task_id="t", agent_id=agent_id)).then(
        e.TaskStarted(task_id="t", agent_id="a")
    ).then_state(lambda s: s.tasks["t"].status == "running" and s.agents["a"].tasks == {"t"})


def test_start_unknown_task() -> None:
    given(A).when(c.StartTask(task_id="t")).rejects(Reason.UNKNOWN_TASK, task_id="t")


@pytest.mark.parametrize("status", wrong_states("assigned"))
def test_start_task_not_assigned(status: str) -> None:
    given(*STATUS_HISTORY[status]).when(c.StartTask(task_id="t")).rejects(
        Reason.INVALID_TASK_STATE, task_id="t", status=status
    )


def test_start_task_by_another_agent() -> None:
    given(*T_ASSIGNED, registered("b")).when(c.StartTask(task_id="t", agent_id="b")).rejects(
        Reason.WRONG_AGENT, task_id="t", agent_id="b", holder="a"
    )


# -- CompleteTask / FailTask -----------------------------------------------------------------------


@pytest.mark.parametrize("status", ["assigned", "running"])
def test_complete_task(status: str) -> None:
    given(*STATUS_HISTORY[status]).when(
        c.CompleteTask(task_id="t", agent_id="a", result={"ok": [1, 2]})
    ).then(e.TaskCompleted(task_id="t", agent_id="a", result={"ok": [1, 2]})).then_state(
        lambda s: s.tasks["t"].status == "completed" and not s.agents["a"].tasks
    )


def test_complete_unknown_task() -> None:
    given(A).when(c.CompleteTask(task_id="t")).rejects(Reason.UNKNOWN_TASK, task_id="t")


@pytest.mark.parametrize("status", wrong_states("assigned", "running"))
def test_complete_task_in_wrong_state(status: str) -> None:
    given(*STATUS_HISTORY[status]).when(c.CompleteTask(task_id="t")).rejects(
        Reason.INVALID_TASK_STATE, task_id="t", status=status
    )


@pytest.mark.parametrize("status", ["assigned", "running"])
def test_complete_task_by_another_agent(status: str) -> None:
    given(*STATUS_HISTORY[status]).when(c.CompleteTask(task_id="t", agent_id="b")).rejects(
        Reason.WRONG_AGENT, task_id="t", agent_id="b", holder="a"
    )


@pytest.mark.parametrize("status", ["assigned", "running"])
def test_fail_task(status: str) -> None:
    history = (A, T, assigned("t", "a", attempt=3))
    if status == "running":
        history += (e.TaskStarted(task_id="t", agent_id="a"),)
    given(*history).when(c.FailTask(task_id="t", error="timeout")).then(
        e.TaskFailed(task_id="t", agent_id="a", error="timeout", attempt=3)
    ).then_state(lambda s: s.tasks["t"].status == "failed" and not s.agents["a"].tasks)


def test_fail_unknown_task() -> None:
    given(A).when(c.FailTask(task_id="t")).rejects(Reason.UNKNOWN_TASK, task_id="t")


@pytest.mark.parametrize("status", wrong_states("assigned", "running"))
def test_fail_task_in_wrong_state(status: str) -> None:
    given(*STATUS_HISTORY[status]).when(c.FailTask(task_id="t")).rejects(
        Reason.INVALID_TASK_STATE, task_id="t", status=status
    )


@pytest.mark.parametrize("status", ["assigned", "running"])
def test_fail_task_by_another_agent(status: str) -> None:
    given(*STATUS_HISTORY[status]).when(c.FailTask(task_id="t", agent_id="b")).rejects(
        Reason.WRONG_AGENT, task_id="t", agent_id="b", holder="a"
    )


# -- CancelTask ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "holder"), [("queued", None), ("assigned", "a"), ("running", "a")])
def test_cancel_task(status: str, holder: str | None) -> None:
    given(*STATUS_HISTORY[status]).when(c.CancelTask(task_id="t", reason="user")).then(
        e.TaskCancelled(task_id="t", agent_id=holder, reason="user")
    ).then_state(lambda s: s.tasks["t"].status == "cancelled" and not s.agents["a"].tasks)


def test_cancel_unknown_task() -> None:
    given().when(c.CancelTask(task_id="t")).rejects(Reason.UNKNOWN_TASK, task_id="t")


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_cancel_ended_task(status: str) -> None:
    given(*STATUS_HISTORY[status]).when(c.CancelTask(task_id="t")).rejects(
        Reason.INVALID_TASK_STATE, task_id="t", status=status
    )


# -- Resources -------------------------------------------------------------------------------------


def test_set_resource_limits() -> None:
    given().when(
        c.SetResourceLimits(max_cpu_cores=8, max_memory_mb=2048, max_disk_mb=10, max_network_mbps=1)
    ).then(limits(8, 2048, 10, 1)).then_state(lambda s: s.limits == (8, 2048, 10, 1))


def test_lowering_limits_to_exactly_the_usage_is_accepted() -> None:
    given(A, limits(), allocated("x", cpu=2, mem=512)).when(
        c.SetResourceLimits(max_cpu_cores=2, max_memory_mb=512, max_disk_mb=0, max_network_mbps=0)
    ).then(limits(2, 512, 0, 0))


def test_lowering_limits_below_usage_is_rejected() -> None:
    given(A, limits(), allocated("x", cpu=2, mem=512, net=10)).when(
        c.SetResourceLimits(max_cpu_cores=1, max_memory_mb=1024, max_disk_mb=1024, max_network_mbps=9)
    ).rejects(
        Reason.RESOURCE_LIMIT_EXCEEDED,
        over=["cpu_cores", "network_mbps"],
        used={"cpu_cores": 2, "memory_mb": 512, "disk_mb": 0, "network_mbps": 10},
    )


def test_resetting_the_current_limits_is_accepted_after_allocations_admitted_under_them() -> None:
    history = (A, limits(0.3, 0, 0, 0), allocated("x", cpu=0.1), allocated("y", cpu=0.2))
    given(*history).when(
        c.SetResourceLimits(max_cpu_cores=0.3, max_memory_mb=0, max_disk_mb=0, max_network_mbps=0)
    ).then(limits(0.3, 0, 0, 0))


def test_zero_limits_accepted_once_every_allocation_is_released() -> None:
    history = (
        A,
        allocated("x", cpu=0.1),
        allocated("y", cpu=0.2),
        e.ResourcesReleased(
            allocation_id="x", agent_id="a", cpu_cores=0.1, memory_mb=0, disk_mb=0, network_mbps=0
        ),
        e.ResourcesReleased(
            allocation_id="y", agent_id="a", cpu_cores=0.2, memory_mb=0, disk_mb=0, network_mbps=0
        ),
    )
    given(*history).when(
        c.SetResourceLimits(max_cpu_cores=0, max_memory_mb=0, max_disk_mb=0, max_network_mbps=0)
    ).then(limits(0, 0, 0, 0))


def test_allocate_without_limits() -> None:
    given(A).when(c.AllocateResources(allocation_id="x", agent_id="a", memory_mb=1e6)).then(
        allocated("x", cpu=0, mem=1e6)
    ).then_state(lambda s: s.used == [0, 1e6, 0, 0] and s.agents["a"].allocations == {"x"})


def test_allocate_up_to_the_limit() -> None:
    given(A, limits(4, 1024, 1024, 100), allocated("x", cpu=3, mem=1000)).when(
        c.AllocateResources(
            allocation_id="y", agent_id="a", cpu_cores=1, memory_mb=24, disk_mb=1024, network_mbps=100
        )
    ).then(allocated("y", cpu=1, mem=24, disk=1024, net=100)).then_state(
        lambda s: s.used == [4, 1024, 1024, 100]
    )


def test_allocate_beyond_the_limit() -> None:
    given(A, limits(4, 1024, 1024, 100), allocated("x", cpu=3)).when(
        c.AllocateResources(allocation_id="y", agent_id="a", cpu_cores=2, memory_mb=2000)
    ).rejects(
        Reason.RESOURCE_LIMIT_EXCEEDED,
        allocation_id="y",
        over={"cpu_cores": {"requested": 2, "free": 1}, "memory_mb": {"requested": 2000, "free": 1024}},
    )


def test_released_resources_can_be_allocated_again() -> None:
    history = (
        A,
        limits(4, 0, 0, 0),
        allocated("x", cpu=4),
        e.ResourcesReleased(
            allocation_id="x", agent_id="a", cpu_cores=4, memory_mb=0, disk_mb=0, network_mbps=0
        ),
    )
    given(*history).when(c.AllocateResources(allocation_id="y", agent_id="a", cpu_cores=4)).then(
        allocated("y", cpu=4)
    )


def test_allocate_existing_allocation_id() -> None:
    given(A, allocated("x")).when(c.AllocateResources(allocation_id="x", agent_id="a")).rejects(
        Reason.ALLOCATION_EXISTS, allocation_id="x"
    )


def test_allocate_for_unknown_agent() -> None:
    given().when(c.AllocateResources(allocation_id="x", agent_id="a")).rejects(
        Reason.UNKNOWN_AGENT, agent_id="a"
    )


def test_allocate_for_deregistered_agent() -> None:
    given(A, e.AgentDeregistered(agent_id="a")).when(
        c.AllocateResources(allocation_id="x", agent_id="a")
    ).rejects(Reason.AGENT_NOT_ACTIVE, agent_id="a")


def test_release_resources() -> None:
    given(A, allocated("x", cpu=1.5, mem=2, disk=3, net=4)).when(c.ReleaseResources(allocation_id="x")).then(
        e.ResourcesReleased(
            allocation_id="x",
            agent_id="a",
            cpu_cores=1.5,
            memory_mb=2,
            disk_mb=3,
            network_mbps=4,
            reason=None,
        )
    ).then_state(lambda s: s.used == [0, 0, 0, 0] and not s.allocations and not s.agents["a"].allocations)


def test_release_unknown_allocation() -> None:
    given(A).when(c.ReleaseResources(allocation_id="x")).rejects(Reason.UNKNOWN_ALLOCATION, allocation_id="x")


def test_release_twice() -> None:
    history = (
        A,
        allocated("x"),
        e.ResourcesReleased(
            allocation_id="x", agent_id="a", cpu_cores=1, memory_mb=0, disk_mb=0, network_mbps=0
        ),
    )
    given(*history).when(c.ReleaseResources(allocation_id="x")).rejects(
        Reason.UNKNOWN_ALLOCATION, allocation_id="x"
    )


# -- RecordCost ------------------------------------------------------------------------------------


def test_record_cost_given_in_usd() -> None:
    given(A, T).when(
        c.RecordCost(
            cost_id="k",
            agent_id="a",
            task_id="t",
            model="no-such-model",
            input_tokens=5,
            output_tokens=7,
            cost_usd=0.25,
        )
    ).then(
        e.CostRecorded(
            cost_id="k",
            agent_id="a",
            task_id="t",
            model="no-such-model",
            input_tokens=5,
            output_tokens=7,
            cost_usd=0.25,
            priced_from_table=False,
        )
    ).then_state(
        lambda s: s.costs == {"k"} and s.spent == {("pool", "default"): 250_000, ("agent", "a"): 250_000}
    )


def _exact(tokens_in: int, tokens_out: int, price: tuple[float, float]) -> float:
    """The cost in decimal arithmetic, rounded half up to the micro-dollar."""
    usd = Decimal(tokens_in) / 1000 * Decimal(str(price[0])) + Decimal(tokens_out) / 1000 * Decimal(
        str(price[1])
    )
    return float(usd.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP))


@pytest.mark.parametrize("model", sorted(BUILTIN_PRICES))
@pytest.mark.parametrize(("tokens_in", "tokens_out"), [(0, 0), (1, 1), (1234, 567), (1_000_000, 333_333)])
def test_record_cost_priced_from_the_table(model: str, tokens_in: int, tokens_out: int) -> None:
    expected = _exact(tokens_in, tokens_out, BUILTIN_PRICES[model])
    given(A).when(
        c.RecordCost(cost_id="k", agent_id="a", model=model, input_tokens=tokens_in, output_tokens=tokens_out)
    ).then(
        e.CostRecorded(
            cost_id="k",
            agent_id="a",
            model=model,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            cost_usd=expected,
            priced_from_table=True,
        )
    )


def test_record_cost_known_value() -> None:
    # 1234 * 0.003 / 1000 + 567 * 0.015 / 1000 = 0.003702 + 0.008505
    given(A).when(
        c.RecordCost(cost_id="k", agent_id="a", model="claude-sonnet-4", input_tokens=1234, output_tokens=567)
    ).then(
        e.CostRecorded(
            cost_id="k",
            agent_id="a",
            model="claude-sonnet-4",
            input_tokens=1234,
            output_tokens=567,
            cost_usd=0.012207,
            priced_from_table=True,
        )
    )


def test_record_cost_uses_the_pools_own_prices() -> None:
    prices = e.PricesSet(models={"house": ModelPrice(input_per_1k=0.5, output_per_1k=2.0)}, strict=True)
    given(A, prices).when(
        c.RecordCost(cost_id="k", agent_id="a", model="house", input_tokens=3000, output_tokens=500)
    ).then(
        e.CostRecorded(
            cost_id="k",
            agent_id="a",
            model="house",
            input_tokens=3000,
            output_tokens=500,
            cost_usd=2.5,
            priced_from_table=True,
        )
    )
    given(A, prices).when(c.RecordCost(cost_id="k", agent_id="a", model="mystery")).rejects(
        Reason.UNKNOWN_MODEL_PRICE, model="mystery"
    )


def test_record_cost_of_unpriced_model_is_priced_at_the_default() -> None:
    given(A).when(c.RecordCost(cost_id="k", agent_id="a", model="mystery", input_tokens=10)).then(
        e.CostRecorded(cost_id="k", agent_id="a", model="mystery", input_tokens=10, output_tokens=0,
                       cost_usd=0.0001, priced_from_table=True)  # 10 tokens at 0.01 USD per 1K
    )


def test_record_cost_twice() -> None:
    given(A, cost("k")).when(c.RecordCost(cost_id="k", agent_id="a", model="m", cost_usd=1)).rejects(
        Reason.COST_EXISTS, cost_id="k"
    )


def test_record_cost_for_unknown_agent() -> None:
    given().when(c.RecordCost(cost_id="k", agent_id="a", model="m", cost_usd=1)).rejects(
        Reason.UNKNOWN_AGENT, agent_id="a"
    )


def test_record_cost_for_deregistered_agent_is_accepted() -> None:
    given(A, e.AgentDeregistered(agent_id="a")).when(
        c.RecordCost(cost_id="k", agent_id="a", model="m", cost_usd=1)
    ).then(cost("k", usd=1))


def test_record_cost_for_unknown_task() -> None:
    given(A).when(c.RecordCost(cost_id="k", agent_id="a", task_id="t", model="m", cost_usd=1)).rejects(
        Reason.UNKNOWN_TASK, task_id="t"
    )


def test_cost_crossing_budgets_emits_budget_exceeded_per_scope_in_order() -> None:
    history = (
        A,
        submitted("t", data={"workflow_id": "wf"}),
        e.BudgetSet(scope="pool", scope_id="default", limit_usd=1),
        e.BudgetSet(scope="agent", scope_id="a", limit_usd=0.75),
        e.BudgetSet(scope="workflow", scope_id="wf", limit_usd=0.5),
        e.BudgetSet(scope="agent", scope_id="other", limit_usd=0.1),
        cost("k1", usd=0.5, task_id=None),
    )
    given(*history).when(c.RecordCost(cost_id="k2", agent_id="a", task_id="t", model="m", cost_usd=0.5)).then(
        cost("k2", usd=0.5, task_id="t"),
        e.BudgetExceeded(scope="pool", scope_id="default", limit_usd=1, spent_usd=1.0),
        e.BudgetExceeded(scope="agent", scope_id="a", limit_usd=0.75, spent_usd=1.0),
        e.BudgetExceeded(scope="workflow", scope_id="wf", limit_usd=0.5, spent_usd=0.5),
    ).then_state(
        lambda s: (
            s.exceeded == {("pool", "default"), ("agent", "a"), ("workflow", "wf")}
            and s.spent == {("pool", "default"): 1_000_000, ("agent", "a"): 1_000_000,
                            ("workflow", "wf"): 500_000}
        )
    )


def test_cost_below_the_budget_emits_no_budget_exceeded() -> None:
    given(A, e.BudgetSet(scope="pool", scope_id="default", limit_usd=1)).when(
        c.RecordCost(cost_id="k", agent_id="a", model="m", cost_usd=0.75)
    ).then(cost("k", usd=0.75))


def test_budget_exceeded_is_emitted_once() -> None:
    history = (
        A,
        e.BudgetSet(scope="pool", scope_id="default", limit_usd=1),
        cost("k1", usd=1),
        e.BudgetExceeded(scope="pool", scope_id="default", limit_usd=1, spent_usd=1),
    )
    given(*history).when(c.RecordCost(cost_id="k2", agent_id="a", model="m", cost_usd=5)).then(
        cost("k2", usd=5)
    )


# -- SetBudget -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sent_scope_id", [None, "elsewhere"])
def test_pool_budget_always_belongs_to_this_pool(sent_scope_id: str | None) -> None:
    given(pool="p1").when(c.SetBudget(scope="pool", scope_id=sent_scope_id, limit_usd=10)).then(
        e.BudgetSet(scope="pool", scope_id="p1", limit_usd=10)
    ).then_state(lambda s: s.budgets == {("pool", "p1"): 10_000_000})


@pytest.mark.parametrize("scope", ["agent", "workflow"])
def test_scoped_budget(scope: Any) -> None:
    given().when(c.SetBudget(scope=scope, scope_id="x", limit_usd=3)).then(
        e.BudgetSet(scope=scope, scope_id="x", limit_usd=3)
    )


def test_budget_below_current_spend_is_exceeded_at_once() -> None:
    given(A, cost("k", usd=2)).when(c.SetBudget(scope="agent", scope_id="a", limit_usd=1.5)).then(
        e.BudgetSet(scope="agent", scope_id="a", limit_usd=1.5),
        e.BudgetExceeded(scope="agent", scope_id="a", limit_usd=1.5, spent_usd=2),
    ).then_state(lambda s: s.budget_exhausted("agent", "a"))


def test_raising_a_spent_budget_reopens_the_scope() -> None:
    history = (
        A,
        cost("k", usd=2),
        e.BudgetSet(scope="pool", scope_id="default", limit_usd=1),
        e.BudgetExceeded(scope="pool", scope_id="default", limit_usd=1, spent_usd=2),
    )
    given(*history).when(c.SetBudget(limit_usd=5)).then(
        e.BudgetSet(scope="pool", scope_id="default", limit_usd=5)
    ).then_state(lambda s: not s.budget_exhausted("pool", "default"))
    given(*history, e.BudgetSet(scope="pool", scope_id="default", limit_usd=5)).when(
        c.SubmitTask(task_id="t", type="x")
    ).then(e.TaskSubmitted(task_id="t", type="x", priority=5))


def test_lowering_a_budget_that_is_still_above_spend_emits_no_exceeded() -> None:
    given(A, cost("k", usd=2), e.BudgetSet(scope="pool", scope_id="default", limit_usd=10)).when(
        c.SetBudget(limit_usd=3)
    ).then(e.BudgetSet(scope="pool", scope_id="default", limit_usd=3))


# -- Unknown commands ------------------------------------------------------------------------------


class Frobnicate(c.Command):
    """A command this decider has never heard of."""

    what: str = "x"


@pytest.mark.parametrize("cmd", [Frobnicate(), e.TaskStarted(task_id="t", agent_id="a")])
def test_unknown_command(cmd: Any) -> None:
    given(A, T).when(cmd).rejects(Reason.UNKNOWN_COMMAND)


# -- the dispatch tables: every contract has its row ------------------------------------------------


def test_every_command_has_a_handler() -> None:
    assert set(COMMAND_HANDLERS) == set(c.ALL)


def test_every_event_changes_the_state_or_is_declared_stateless() -> None:
    assert not set(EVENT_HANDLERS) & STATELESS_EVENTS
    assert set(EVENT_HANDLERS) | STATELESS_EVENTS == set(e.ALL)


# -- evolve bookkeeping ----------------------------------------------------------------------------


def test_evolve_records_sequence_and_command_ids() -> None:
    state = PoolState("default")
    envs = wrap([A, T], pool="default", start=0, command_id="cmd-1")
    envs += wrap(
        [e.CommandRejected(command_type="X", code="Y", message="z")],
        pool="default",
        start=2,
        command_id="cmd-2",
    )
    for env in envs:
        evolve(state, env)
    assert state.sequence == 3
    assert state.seen == {"cmd-1", "cmd-2"}


def test_evolve_ignores_heartbeats_rejections_and_unknown_types() -> None:
    state = build_state([A, T])
    before = build_state([A, T])
    for env in wrap(
        [e.AgentHeartbeatReceived(agent_id="a", load=3)], pool="default", start=2, command_id="h"
    ):
        evolve(state, env)
    unknown = wrap([A], pool="default", start=3, command_id="u")[0].model_copy(
        update={"type": "SomethingNew", "data": {"x": 1}}
    )
    evolve(state, unknown)
    before.sequence, before.seen = state.sequence, set(state.seen)
    assert state == before


# -- the gwt helpers mirror the runner's wrapping --------------------------------------------------


def test_gwt_wrapping_matches_the_runner() -> None:
    state = build_state([A])
    cmd = command_envelope(c.SubmitTask(task_id="t", type="work"), pool="default", command_id="cid")
    events = [submitted("t"), e.CommandRejected(command_type="SubmitTask", code="X", message="m")]
    ours = wrap(events, pool="default", start=state.sequence, command_id="cid", command_subject="t")
    theirs = event_envelopes(cmd, events, state)
    keys = (
        "type",
        "sequence",
        "commandid",
        "causationid",
        "subject",
        "dataschema",
        "schemaversion",
        "pool",
        "data",
    )
    assert [{k: getattr(x, k) for k in keys} for x in ours] == [
        {k: getattr(x, k) for k in keys} for x in theirs
    ]
    exc = Rejected(Reason.UNKNOWN_TASK, "no", task_id="t")
    assert gwt_rejection("StartTask", exc, "t") == rejection("StartTask", exc, "t")


# -- the runner's idempotency and malformed commands -----------------------------------------------


def stored(value: bytes, *, offset: int, rec_id: str | None, key: str = "default") -> StoredRecord:
    return StoredRecord(
        topic="commands",
        partition=3,
        offset=offset,
        key=key,
        value=value,
        id=rec_id,
        headers=(),
        timestamp_ms=0,
    )


def record_of(cmd: c.Command, command_id: str, offset: int) -> StoredRecord:
    rec = to_record(command_envelope(cmd, pool="default", command_id=command_id))
    return stored(rec.value, offset=offset, rec_id=rec.id, key=rec.key)


def partition_decider() -> PartitionDecider:
    return PartitionDecider(log=None, partition=3, outcomes=Outcomes(), config=DeciderConfig())  # type: ignore[arg-type]


def test_a_repeated_command_id_yields_no_events() -> None:
    d = partition_decider()
    cid, first = d.decide_one(record_of(c.RegisterAgent(agent_id="a", name="a"), "cmd-1", 0))
    assert cid == "cmd-1"
    armed = e.TimerScheduled(timer_id="heartbeat:a", kind="heartbeat", delay_s=30.0, generation=1,
                             agent_id="a")
    assert [x.data for x in first] == [registered("a"), armed]
    assert [(x.sequence, x.commandid) for x in first] == [(1, "cmd-1"), (2, "cmd-1")]
    assert "cmd-1" in d.states["default"].seen
    snapshot = build_state([registered("a"), armed])
    snapshot.seen = {"cmd-1"}
    assert d.states["default"] == snapshot

    cid, again = d.decide_one(record_of(c.RegisterAgent(agent_id="a", name="a"), "cmd-1", 1))
    assert (cid, again) == ("cmd-1", [])
    assert d.states["default"] == snapshot

    # The same command under a new id is decided afresh, here as a rejection.
    _, other = d.decide_one(record_of(c.RegisterAgent(agent_id="a", name="a"), "cmd-2", 2))
    assert [x.data.code for x in other] == ["AGENT_EXISTS"]  # type: ignore[union-attr]


def test_a_repeated_rejected_command_id_yields_no_events() -> None:
    d = partition_decider()
    _, first = d.decide_one(record_of(c.StartTask(task_id="t"), "cmd-1", 0))
    rejected = first[0].data
    assert isinstance(rejected, e.CommandRejected)
    assert (rejected.code, rejected.command_type, rejected.details) == (
        "UNKNOWN_TASK",
        "StartTask",
        {"task_id": "t", "subject": "t"},
    )
    assert first[0].subject == "t" and first[0].commandid == "cmd-1"
    assert d.decide_one(record_of(c.StartTask(task_id="t"), "cmd-1", 1)) == ("cmd-1", [])


@pytest.mark.parametrize(
    "value", [b"{not json", b"[1, 2]", b'{"id": "x", "type": "RegisterAgent", "data": {}}']
)
def test_a_malformed_record_becomes_an_invalid_command_rejection(value: bytes) -> None:
    d = partition_decider()
    cid, envs = d.decide_one(stored(value, offset=41, rec_id="rec-9", key="p7"))
    assert cid == "rec-9"
    [env] = envs
    rejected = env.data
    assert isinstance(rejected, e.CommandRejected)
    assert rejected.code == Reason.INVALID_COMMAND.value
    assert rejected.command_type == "invalid"
    assert rejected.details == {"topic": "commands", "partition": 3, "offset": 41}
    assert (env.pool, env.commandid, env.sequence) == ("p7", "rec-9", 1)


def test_a_record_with_a_nul_in_its_pool_key_or_id_is_rejected_where_every_store_can_hold_it() -> None:
    """PostgreSQL refuses NUL in text: a foreign record carrying one in its pool, key or id must not
    become an event whose pool or command id holds it (the projector would stop on it for good)."""
    d = partition_decider()
    value = (b'{"id": "x", "type": "RegisterAgent", "time": "2025-01-01T00:00:00Z", "pool": "p\\u0000",'
             b' "data": {"agent_id": "a", "name": "a"}}')
    cid, [env] = d.decide_one(stored(value, offset=5, rec_id="rec\x00-5", key="p\x00"))
    assert isinstance(env.data, e.CommandRejected) and env.data.code == Reason.INVALID_COMMAND.value
    assert "NUL" in env.data.message
    assert (env.pool, cid, env.commandid) == ("default", "commands:3:5", "commands:3:5")


def test_a_malformed_record_advances_the_pool_sequence() -> None:
    d = partition_decider()
    _, bad = d.decide_one(stored(b"{not json", offset=0, rec_id="rec-0"))
    _, good = d.decide_one(record_of(c.RegisterAgent(agent_id="a", name="a"), "cmd-1", 1))
    assert [x.sequence for x in bad + good] == [1, 2, 3]  # registering also arms the heartbeat timer
    assert d.states["default"].seen == {"rec-0", "cmd-1"}


def test_a_malformed_record_without_id_is_named_by_its_position() -> None:
    d = partition_decider()
    cid, [env] = d.decide_one(stored(b"\xff", offset=7, rec_id=None))
    assert cid == "commands:3:7" == env.commandid
    assert isinstance(env.data, e.CommandRejected)
    assert env.data.details == {"topic": "commands", "partition": 3, "offset": 7}


def test_an_unknown_command_type_on_the_log_is_rejected() -> None:
    d = partition_decider()
    value = b'{"id": "c1", "type": "Frobnicate", "time": "2025-01-01T00:00:00Z", "subject": "s", "data": {}}'
    cid, [env] = d.decide_one(stored(value, offset=0, rec_id="c1"))
    assert cid == "c1"
    assert isinstance(env.data, e.CommandRejected)
    assert (env.data.code, env.data.command_type, env.data.details) == (
        "UNKNOWN_COMMAND",
        "Frobnicate",
        {"subject": "s"},
    )


def test_decisions_are_numbered_within_their_pool() -> None:
    d = partition_decider()
    _, a = d.decide_one(record_of(c.RegisterAgent(agent_id="a", name="a"), "c1", 0))
    _, b = d.decide_one(record_of(c.SubmitTask(task_id="t", type="x"), "c2", 1))
    _, r = d.decide_one(record_of(c.DeregisterAgent(agent_id="zz"), "c3", 2))
    assert [x.sequence for x in a + b + r] == [1, 2, 3, 4]  # registering also arms the heartbeat timer
    assert d.states["default"].sequence == 4
    assert decide(d.states["default"], c.AssignTask(task_id="t", agent_id="a")) == [assigned("t", "a")]


def test_gwt_reports_mismatches() -> None:
    when = given(A).when(c.AgentHeartbeat(agent_id="a"))
    with pytest.raises(AssertionError, match="yielded"):
        when.then(e.AgentHeartbeatReceived(agent_id="a", load=1))
    with pytest.raises(AssertionError, match="expected AGENT_EXISTS"):
        given(A).when(c.AgentHeartbeat(agent_id="a")).rejects(Reason.AGENT_EXISTS)
    with pytest.raises(AssertionError, match="rejected with UNKNOWN_AGENT"):
        given().when(c.AgentHeartbeat(agent_id="a")).then(e.AgentHeartbeatReceived(agent_id="a"))
    with pytest.raises(AssertionError, match="expected AGENT_NOT_ACTIVE"):
        given().when(c.AgentHeartbeat(agent_id="a")).rejects(Reason.AGENT_NOT_ACTIVE)
    with pytest.raises(AssertionError, match="details"):
        given().when(c.AgentHeartbeat(agent_id="a")).rejects(Reason.UNKNOWN_AGENT, agent_id="b")
    with pytest.raises(AssertionError, match="state check failed"):
        given(A).when(c.DeregisterAgent(agent_id="a")).then_state(lambda s: s.agents["a"].active)
