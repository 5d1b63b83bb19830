"""``evolve(state, envelope)``: how each event of a pool changes its state, one handler per event type.

Replay (rebuilding a partition's deciders from the log) calls this once per event, so it is the
hot path of every restart: handlers change the state in place, check nothing (the decider checked
before emitting) and are found by exact type in one dict lookup. A ``match`` over the payload
classes runs one isinstance per case, each an ABC check on pydantic models: measured on a
297,020-event history, the table replays about 280,000 events/s of CPU where the ``match`` did
about 165,000. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from contracts import Envelope
from contracts import event_types as e
from contracts.budgets import cost_scopes, workflow_of
from contracts.commands import PoolPolicy
from contracts.money import to_micros
from services.domain import access, subscriptions, webhooks
from services.domain.capabilities import capability_set
from services.domain.decision import ROUND, task_workflow
from services.domain.prices import Prices
from services.domain.state import AgentState, Allocation, PoolState, TaskState, TimerState
from services.workflows.machine import new_run, set_status


def evolve(state: PoolState, env: Envelope) -> PoolState:
    """Apply one event of this pool to ``state`` (in place, for speed) and return it."""
    return apply_event(state, type(env.data), env.data, env.sequence, env.commandid)


def apply_event(state: PoolState, kind: type[Any], ev: Any, sequence: int | None,
                commandid: str | None) -> PoolState:
    """``evolve`` from an envelope's parts. ``kind`` is the payload's class and picks the handler;
    ``ev`` is the payload, or anything with the attributes the handler reads (the replay's views,
    ``services.domain.replay``)."""
    if sequence is not None:
        state.sequence = sequence
    if commandid is not None:
        state.seen.add(commandid)
    apply = EVENT_HANDLERS.get(kind)
    if apply is not None:  # heartbeats, rate limits, rejections, unknown types: no state
        apply(state, ev)
        if state.step_of_task and kind in _TASK_EVENTS:
            _step_follows_task(state, ev.task_id)
    return state


# -- agents ----------------------------------------------------------------------------------------


def _agent_registered(state: PoolState, ev: e.AgentRegistered) -> None:
    state.agents[ev.agent_id] = AgentState(ev.agent_id, ev.kind, capability_set(ev.capabilities), ev.capacity,
                                           heartbeat_timeout_s=ev.heartbeat_timeout_s, weight=ev.weight,
                                           name=ev.name, retry=ev.retry,
                                           breaker_threshold=ev.breaker_threshold,
                                           breaker_cooldown_s=ev.breaker_cooldown_s)


def _agent_deregistered(state: PoolState, ev: e.AgentDeregistered) -> None:
    state.agents[ev.agent_id].active = False


def _agent_unhealthy(state: PoolState, ev: e.AgentMarkedUnhealthy) -> None:
    state.agents[ev.agent_id].healthy = False


def _agent_healthy(state: PoolState, ev: e.AgentMarkedHealthy) -> None:
    state.agents[ev.agent_id].healthy = True


def _circuit_opened(state: PoolState, ev: e.CircuitOpened) -> None:
    state.agents[ev.agent_id].breaker = "open"


def _circuit_half_opened(state: PoolState, ev: e.CircuitHalfOpened) -> None:
    state.agents[ev.agent_id].breaker = "half_open"


def _circuit_closed(state: PoolState, ev: e.CircuitClosed) -> None:
    agent = state.agents[ev.agent_id]
    agent.breaker, agent.failures = "closed", 0


# -- tasks -----------------------------------------------------------------------------------------


def _task_submitted(state: PoolState, ev: e.TaskSubmitted) -> None:
    state.tasks[ev.task_id] = TaskState(ev.task_id, ev.type, ev.priority,
                                        capability_set(ev.required_capabilities), workflow_of(ev.data),
                                        strategy=ev.strategy, retry=ev.retry, timeout_s=ev.timeout_s,
                                        preferred=capability_set(ev.inferred_capabilities),
                                        pinned=ev.agent_id)
    if state.workflows:
        workflow_id, name = ev.data.get("workflow_id"), ev.data.get("step")
        run = state.workflows.get(workflow_id) if isinstance(workflow_id, str) else None
        if run is not None and isinstance(name, str) and name in run.steps:
            state.step_of_task[ev.task_id] = (run.workflow_id, name)
            set_status(run, run.steps[name], "queued")


def _task_assigned(state: PoolState, ev: e.TaskAssigned) -> None:
    task = state.tasks[ev.task_id]
    task.status, task.agent_id, task.attempts = "assigned", ev.agent_id, ev.attempt
    task.unassignable = None
    state.agents[ev.agent_id].tasks.add(ev.task_id)


def _task_started(state: PoolState, ev: e.TaskStarted) -> None:
    state.tasks[ev.task_id].status = "running"


def _task_completed(state: PoolState, ev: e.TaskCompleted) -> None:
    _finish(state, ev.task_id, "completed")
    agent = state.agents.get(ev.agent_id)
    if agent is not None:
        agent.failures = 0  # a success ends the agent's run of consecutive failures


def _task_failed(state: PoolState, ev: e.TaskFailed) -> None:
    # A failure running again cannot help is the task's, not the agent's: no count for its breaker.
    _failed(state, ev.task_id, ev.agent_id if ev.retryable else None, "failed")


def _task_retry_scheduled(state: PoolState, ev: e.TaskRetryScheduled) -> None:
    _failed(state, ev.task_id, ev.agent_id, "retrying")


def _task_cancelled(state: PoolState, ev: e.TaskCancelled) -> None:
    _finish(state, ev.task_id, "cancelled")


def _task_requeued(state: PoolState, ev: e.TaskRequeued | e.TaskReassigned) -> None:
    _finish(state, ev.task_id, "queued")
    state.tasks[ev.task_id].deferred = None


def _task_deferred(state: PoolState, ev: e.TaskDeferred) -> None:
    if ev.agent_id is None:
        return  # the coordinator's: the task stays queued, the coordinator holds off by itself
    _finish(state, ev.task_id, "queued")  # its slot is free; no failure counted
    state.tasks[ev.task_id].deferred = (ev.agent_id, ev.reason)


def _task_unassignable(state: PoolState, ev: e.TaskUnassignable) -> None:
    state.tasks[ev.task_id].unassignable = ev.missing


def _failed(state: PoolState, task_id: str, agent_id: str | None, status: str) -> None:
    state.tasks[task_id].failures += 1
    _finish(state, task_id, status)
    agent = state.agents.get(agent_id) if agent_id is not None else None
    if agent is not None:
        agent.failures += 1


def _finish(state: PoolState, task_id: str, status: str) -> None:
    task = state.tasks[task_id]
    if task.agent_id is not None:
        agent = state.agents.get(task.agent_id)
        if agent is not None:
            agent.tasks.discard(task_id)
    task.status = status
    task.agent_id = None if status == "queued" else task.agent_id


# -- workflows -------------------------------------------------------------------------------------


def _step_follows_task(state: PoolState, task_id: str) -> None:
    where = state.step_of_task.get(task_id)
    if where is not None:
        run = state.workflows[where[0]]
        set_status(run, run.steps[where[1]], state.tasks[task_id].status)


def _workflow_started(state: PoolState, ev: e.WorkflowStarted) -> None:
    state.workflows[ev.workflow_id] = new_run(ev.workflow_id, ev.definition)


def _step_skipped(state: PoolState, ev: e.WorkflowStepSkipped) -> None:
    run = state.workflows[ev.workflow_id]
    set_status(run, run.steps[ev.step], "skipped")


def _signal_awaited(state: PoolState, ev: e.WorkflowSignalAwaited) -> None:
    run = state.workflows[ev.workflow_id]
    set_status(run, run.steps[ev.step], "waiting")


def _signalled(state: PoolState, ev: e.WorkflowSignalled) -> None:
    state.workflows[ev.workflow_id].steps[ev.step].signal = ev.data


def _step_completed(state: PoolState, ev: e.WorkflowStepCompleted) -> None:
    run = state.workflows[ev.workflow_id]
    set_status(run, run.steps[ev.step], "completed")


def _step_failed(state: PoolState, ev: e.WorkflowStepFailed) -> None:
    run = state.workflows[ev.workflow_id]
    set_status(run, run.steps[ev.step], "failed")


def _workflow_ended(state: PoolState, ev: e.WorkflowEnded) -> None:
    state.workflows[ev.workflow_id].status = ev.status


def _definition_registered(state: PoolState, ev: e.WorkflowDefinitionRegistered) -> None:
    state.definitions[(ev.name, ev.version)] = ev.digest


# -- timers ----------------------------------------------------------------------------------------


def _timer_scheduled(state: PoolState, ev: e.TimerScheduled) -> None:
    state.timers[ev.timer_id] = TimerState(ev.timer_id, ev.kind, ev.generation, ev.task_id, ev.agent_id,
                                           ev.attempt, ev.workflow_id, ev.step)
    state.timer_seq = max(state.timer_seq, ev.generation)


def _timer_ended(state: PoolState, ev: e.TimerCancelled | e.TimerFired) -> None:
    timer = state.timers.get(ev.timer_id)
    if timer is not None and timer.generation == ev.generation:  # else a later arming replaced it
        del state.timers[ev.timer_id]


# -- policies --------------------------------------------------------------------------------------


def _pool_policy_set(state: PoolState, ev: e.PoolPolicySet) -> None:
    state.policy = PoolPolicy.model_validate(ev.model_dump())


def _scaling_policy_set(state: PoolState, ev: e.ScalingPolicySet) -> None:
    state.scaling[ev.agent_kind] = ev


def _scaling_decided(state: PoolState, ev: e.ScalingDecided) -> None:
    state.scaled[ev.agent_kind] = ev


# -- resources -------------------------------------------------------------------------------------


def _limits_set(state: PoolState, ev: e.ResourceLimitsSet) -> None:
    state.limits = (ev.max_cpu_cores, ev.max_memory_mb, ev.max_disk_mb, ev.max_network_mbps)
    state.max_agents = ev.max_agents


def _allocated(state: PoolState, ev: e.ResourcesAllocated) -> None:
    amounts = (ev.cpu_cores, ev.memory_mb, ev.disk_mb, ev.network_mbps)
    state.allocations[ev.allocation_id] = Allocation(ev.allocation_id, ev.agent_id, amounts)
    state.agents[ev.agent_id].allocations.add(ev.allocation_id)
    state.used = [round(u + a, ROUND) for u, a in zip(state.used, amounts, strict=True)]


def _released(state: PoolState, ev: e.ResourcesReleased) -> None:
    alloc = state.allocations.pop(ev.allocation_id)
    agent = state.agents.get(alloc.agent_id)
    if agent is not None:
        agent.allocations.discard(ev.allocation_id)
    state.used = [max(0.0, round(u - a, ROUND)) for u, a in zip(state.used, alloc.amounts, strict=True)]


# -- costs and budgets -----------------------------------------------------------------------------


def _cost_recorded(state: PoolState, ev: e.CostRecorded) -> None:
    state.costs.add(ev.cost_id)
    task = state.tasks.get(ev.task_id) if ev.task_id is not None else None
    # Whole micro-dollars: ten costs of 0.1 are exactly 1. Older events carry floats with more
    # decimals; they count to the nearest micro-dollar.
    cost = to_micros(ev.cost_usd)
    for key in cost_scopes(state.pool, ev.agent_id, task_workflow(task)):
        state.spent[key] = state.spent.get(key, 0) + cost


def _budget_set(state: PoolState, ev: e.BudgetSet) -> None:
    key = (ev.scope, ev.scope_id)
    limit = state.budgets[key] = to_micros(ev.limit_usd)
    if state.spent.get(key, 0) < limit:
        state.exceeded.discard(key)


def _budget_exceeded(state: PoolState, ev: e.BudgetExceeded) -> None:
    state.exceeded.add((ev.scope, ev.scope_id))


def _prices_set(state: PoolState, ev: e.PricesSet) -> None:
    state.prices = Prices.of(ev)


# Event type -> how it changes the state. Types not listed change nothing the decider checks:
# heartbeats, timeouts (their TaskRetryScheduled or TaskFailed follows), rate limits, budget flags
# and rejections.
EVENT_HANDLERS: dict[type[Any], Callable[[PoolState, Any], None]] = {
    e.AgentRegistered: _agent_registered,
    e.AgentDeregistered: _agent_deregistered,
    e.AgentMarkedUnhealthy: _agent_unhealthy,
    e.AgentMarkedHealthy: _agent_healthy,
    e.CircuitOpened: _circuit_opened,
    e.CircuitHalfOpened: _circuit_half_opened,
    e.CircuitClosed: _circuit_closed,
    e.TaskSubmitted: _task_submitted,
    e.TaskAssigned: _task_assigned,
    e.TaskStarted: _task_started,
    e.TaskCompleted: _task_completed,
    e.TaskFailed: _task_failed,
    e.TaskRetryScheduled: _task_retry_scheduled,
    e.TaskCancelled: _task_cancelled,
    e.TaskRequeued: _task_requeued,
    e.TaskReassigned: _task_requeued,
    e.TaskUnassignable: _task_unassignable,
    e.TaskDeferred: _task_deferred,
    e.TimerScheduled: _timer_scheduled,
    e.TimerCancelled: _timer_ended,
    e.TimerFired: _timer_ended,
    e.PoolPolicySet: _pool_policy_set,
    e.ScalingPolicySet: _scaling_policy_set,
    e.ScalingDecided: _scaling_decided,
    e.ResourceLimitsSet: _limits_set,
    e.ResourcesAllocated: _allocated,
    e.ResourcesReleased: _released,
    e.CostRecorded: _cost_recorded,
    e.BudgetSet: _budget_set,
    e.BudgetExceeded: _budget_exceeded,
    e.PricesSet: _prices_set,
    e.WorkflowStarted: _workflow_started,
    e.WorkflowStepSkipped: _step_skipped,
    e.WorkflowSignalAwaited: _signal_awaited,
    e.WorkflowSignalled: _signalled,
    e.WorkflowStepCompleted: _step_completed,
    e.WorkflowStepFailed: _step_failed,
    e.WorkflowEnded: _workflow_ended,
    e.WorkflowDefinitionRegistered: _definition_registered,
    e.ApiTokenIssued: access.token_issued,
    e.ApiTokenRevoked: access.token_revoked,
    e.SubscriptionSet: subscriptions.subscription_set,
    e.SubscriptionDeleted: subscriptions.subscription_deleted,
    e.WebhookSourceSet: webhooks.source_set,
    e.WebhookSourceDeleted: webhooks.source_deleted,
}

# Task events after which a workflow step takes its task's status.
_TASK_EVENTS: frozenset[type[Any]] = frozenset({
    e.TaskAssigned, e.TaskStarted, e.TaskCompleted, e.TaskFailed, e.TaskRetryScheduled, e.TaskCancelled,
    e.TaskRequeued, e.TaskReassigned, e.TaskDeferred,
})

# Events that change nothing the decider checks (listed so every event type has its row).
STATELESS_EVENTS: frozenset[type[Any]] = frozenset({
    e.AgentHeartbeatReceived,
    e.TaskTimedOut,
    e.TaskWaiting,
    e.RateLimitSet,
    e.TaskBudgetFlagged,
    e.CommandRejected,
    e.SubscriptionDeliveryFailed,
    e.ExternalEventReceived,
    e.WebhookMappingFailed,
    e.AuditCheckpointRecorded,
})
