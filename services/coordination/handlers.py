"""How each event changes the coordinator's view of a pool: one handler per event type.

``HANDLERS`` maps an event type to ``handler(view, envelope, event)``; ``PoolView.observe`` looks
the handler up and calls it, and event types absent from the table leave the view as it is.
Adding an event the coordinator cares about is adding a function and a row.

Handlers only fold an event in: they never decide what to issue (that is ``choice``), never read
a clock (time is the event's) and never do I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from contracts import Envelope
from contracts import event_types as e
from contracts.budgets import cost_scopes, workflow_of
from contracts.commands import PoolPolicy
from contracts.money import to_micros
from services.coordination.ratelimit import call_tokens, max_tokens_default
from services.coordination.records import Agent, Task, Waiting, pin
from services.domain.capabilities import capability_set

if TYPE_CHECKING:
    from services.coordination.view import PoolView

# The coordinator's own commands: a rejection of one of these is taken back into the view.
_OWN_COMMANDS = frozenset({"AssignTask", "MarkTaskUnassignable", "DeferTask", "NoteTaskWaiting"})
# The reasons the decider's own events give for a task's wait (see ``choice.reconcile``).
NO_CAPABLE_AGENT = Waiting("no_capable_agent")
RATE_LIMITED = Waiting("rate_limited")


# -- tasks ---------------------------------------------------------------------------------------
def _task_submitted(v: PoolView, env: Envelope, ev: e.TaskSubmitted) -> None:
    v.arrivals += 1
    named = ev.data.get("agent_kind")
    req = capability_set(ev.required_capabilities)
    if ev.agent_id is not None:
        v.pin_target(ev.agent_id)
        req = capability_set(req | {pin(ev.agent_id)})
    task = Task(ev.task_id, req, ev.priority, v.arrivals,
                env.correlationid, workflow_of(ev.data), strategy=ev.strategy,
                preferred=capability_set(ev.inferred_capabilities),
                kind=None if named is None else str(named))
    v.tasks[ev.task_id] = task
    task.prompt_tokens, task.max_tokens = call_tokens(ev.parameters or ev.data.get("parameters"))
    v.enqueue(task)


def _task_assigned(v: PoolView, env: Envelope, ev: e.TaskAssigned) -> None:
    task = v.tasks[ev.task_id]
    task.assigned = ev.attempt
    task.flagged = False
    task.waiting = None
    # Our own assignment, confirmed: its load was counted when it was issued.
    counted = task.pending is not None and task.pending[1] == ev.agent_id
    if task.pending is not None and not counted:
        v.add_load(task.pending[1], -1)
    task.pending = None
    task.status, task.agent_id = "held", ev.agent_id
    if not counted:
        agent = v.agents.get(ev.agent_id)
        if agent is not None:
            v.tick += 1
            agent.picked = v.tick
        v.add_load(ev.agent_id, +1)
    if v.limiter:
        # Taken now, at this event's time, whether we issued it (held until now) or a rebuild
        # replays it: so a view rebuilt from the log holds the same buckets as the live one.
        agent = v.agents.get(ev.agent_id)
        model, default = (None, None) if agent is None else (agent.model, agent.max_tokens)
        v.limiter.reserve(task.task_id, ev.agent_id, model, task.tokens(default), v.now)


def _task_ended(v: PoolView, env: Envelope, ev: e.TaskCompleted | e.TaskFailed | e.TaskCancelled) -> None:
    task = v.tasks[ev.task_id]
    if task.status == "held":
        v.add_load(task.agent_id, -1)
    task.status = "done"
    v.limiter.release(task.task_id, v.now)  # ended with no cost recorded for its run
    forget(v, task)


def forget(v: PoolView, task: Task) -> None:
    """Drop an ended task from the view once no command of ours about it is in flight (the
    decider's rejection of one is taken back into the task: its load, its counts). No later event
    names an ended task, bar a cost recorded for its run, which needs only its workflow: kept in
    ``ended_in``. Entries of it left in the queues' heaps are passed over as stale."""
    if task.status != "done" or task.pending is not None or task.marking is not None \
            or task.deferring is not None or task.noting:
        return
    del v.tasks[task.task_id]
    if task.workflow is not None:
        v.ended_in[task.task_id] = task.workflow


def _task_retry_scheduled(v: PoolView, env: Envelope, ev: e.TaskRetryScheduled) -> None:
    task = v.tasks[ev.task_id]
    if task.status == "held":
        v.add_load(task.agent_id, -1)
    task.status = "waiting"
    v.limiter.release(task.task_id, v.now)


def _task_requeued(v: PoolView, env: Envelope, ev: e.TaskRequeued | e.TaskReassigned) -> None:
    task = v.tasks[ev.task_id]
    if task.status == "held":
        v.add_load(task.agent_id, -1)
    v.limiter.release(task.task_id, v.now)
    task.waiting = None  # back in the queue: busy agents until said otherwise
    v.enqueue(task)


def _task_unassignable(v: PoolView, env: Envelope, ev: e.TaskUnassignable) -> None:
    task = v.tasks[ev.task_id]
    task.marks += 1
    task.marking = None
    task.flagged = True
    v.waits(task, NO_CAPABLE_AGENT)


def _task_deferred(v: PoolView, env: Envelope, ev: e.TaskDeferred) -> None:
    task = v.tasks[ev.task_id]
    if ev.agent_id is not None:
        # Its holder gave it back for a while: the slot is free, and the task stays out of the
        # queues (as in a retry's backoff) until the decider requeues it when the delay is over.
        if task.status == "held":
            v.add_load(task.agent_id, -1)
        task.status = "waiting"
        v.limiter.release(task.task_id, v.now)
        return
    task.deferred += 1
    task.deferring = None
    v.waits(task, RATE_LIMITED, look=False)


def _task_waiting(v: PoolView, env: Envelope, ev: e.TaskWaiting) -> None:
    task = v.tasks[ev.task_id]
    task.notes += 1
    task.noting = max(0, task.noting - 1)
    # While a newer note is on its way, the view already holds its reason (``waits`` keeps it).
    v.waits(task, None if ev.code == "all_capable_agents_busy" else Waiting(
        ev.code, ev.scope, ev.scope_id, tuple(ev.agents), None if ev.until is None else ev.until.timestamp()))


# -- agents --------------------------------------------------------------------------------------
def _agent_registered(v: PoolView, env: Envelope, ev: e.AgentRegistered) -> None:
    agent = v.agents.get(ev.agent_id)
    lost = False
    if agent is None:
        v.registrations += 1
        caps = v.caps_of(ev.agent_id, ev.capabilities)
        agent = Agent(ev.agent_id, caps, ev.capacity, order=v.registrations)
        v.agents[ev.agent_id] = agent
    else:
        # Re-registration: keep load (assignments may be in flight) and the version counter, so
        # heap entries from its former life stay invalid.
        if agent.active:
            v.groups[agent.caps].size -= 1
            v.groups[agent.caps].members.discard(agent.agent_id)
            lost = True
        if agent.model is not None and agent.model in v.model_load:
            v.model_load[agent.model] -= agent.load
        agent.caps = v.caps_of(ev.agent_id, ev.capabilities)
        agent.capacity, agent.active = ev.capacity, True
        agent.healthy, agent.breaker = True, "closed"
    model = ev.metadata.get("model")
    agent.kind, agent.weight = ev.kind, ev.weight
    agent.model = model if isinstance(model, str) else None
    agent.max_tokens = max_tokens_default(ev.metadata)
    agent.limit = v.limiter.concurrency("agent", agent.agent_id)
    if agent.model is not None and v.limiter.concurrency("model", agent.model) is not None:
        v.model_load[agent.model] = v.model_load.get(agent.model, 0) + agent.load
    agent.perf = v.score(agent.agent_id)
    group = v.group_for(agent.caps)
    group.size += 1
    group.members.add(agent.agent_id)
    v.touch(agent)
    v.recheck(agent.caps, blocked=False)
    if lost:
        v.coverage_lost()


def _agent_deregistered(v: PoolView, env: Envelope, ev: e.AgentDeregistered) -> None:
    agent = v.agents[ev.agent_id]
    if agent.active:
        agent.active = False
        v.groups[agent.caps].size -= 1
        v.groups[agent.caps].members.discard(agent.agent_id)
    agent.version += 1
    v.coverage_lost()
    v.recheck(agent.caps)


def _agent_unhealthy(v: PoolView, env: Envelope, ev: e.AgentMarkedUnhealthy) -> None:
    agent = v.agents[ev.agent_id]
    agent.healthy = False
    agent.version += 1
    v.recheck(agent.caps)


def _agent_healthy(v: PoolView, env: Envelope, ev: e.AgentMarkedHealthy) -> None:
    agent = v.agents[ev.agent_id]
    agent.healthy = True
    v.touch(agent)
    v.recheck(agent.caps, blocked=False)


def _circuit_opened(v: PoolView, env: Envelope, ev: e.CircuitOpened) -> None:
    agent = v.agents[ev.agent_id]
    agent.breaker = "open"
    agent.reopen_at = v.now + ev.cooldown_s
    agent.version += 1
    v.recheck(agent.caps)


def _circuit_half_opened(v: PoolView, env: Envelope, ev: e.CircuitHalfOpened) -> None:
    agent = v.agents[ev.agent_id]
    agent.breaker = "half_open"
    v.touch(agent)
    v.recheck(agent.caps, blocked=False)


def _circuit_closed(v: PoolView, env: Envelope, ev: e.CircuitClosed) -> None:
    agent = v.agents[ev.agent_id]
    agent.breaker = "closed"
    v.touch(agent)
    v.recheck(agent.caps, blocked=False)


def _agent_heartbeat(v: PoolView, env: Envelope, ev: e.AgentHeartbeatReceived) -> None:
    agent = v.agents.get(ev.agent_id)
    if agent is not None and (ev.cpu is not None or ev.memory is not None):
        agent.cpu = ev.cpu if ev.cpu is not None else agent.cpu
        agent.memory = ev.memory if ev.memory is not None else agent.memory
        group = v.groups.get(agent.caps)
        if group is not None and "resource_based" in group.heaps:
            v.touch(agent)


# -- pool policy and rate limits -----------------------------------------------------------------
def _pool_policy_set(v: PoolView, env: Envelope, ev: e.PoolPolicySet) -> None:
    old = v.policy
    v.policy = PoolPolicy.model_validate(ev.model_dump())
    v.forget_matches()
    for group in v.groups.values():
        group.heaps.clear()  # keys may depend on the weights: rebuilt on next use
    if old.performance != v.policy.performance:
        for agent in v.agents.values():
            agent.perf = v.score(agent.agent_id)
    v.work.update(req for req, q in v.queues.items() if q.heap)
    if v.policy.min_capability_match > old.min_capability_match:
        v.coverage_lost()


def _rate_limit_set(v: PoolView, env: Envelope, ev: e.RateLimitSet) -> None:
    v.limiter.set(ev, v.now)
    parked, v.limited = v.limited, []  # limits changed: everyone parked tries again
    for _, agent_id, version in parked:
        agent = v.agents[agent_id]
        v.groups[agent.caps].limited = 0
        if agent.version == version + 1:
            v.touch(agent)
    for agent_id in sorted(v.model_blocked.pop(ev.scope_id, ())):
        v.touch(v.agents[agent_id])
    if ev.scope == "agent":
        target = v.agents.get(ev.scope_id)
        if target is not None:
            target.limit = ev.concurrent
            v.touch(target)
    elif ev.concurrent is not None:
        v.model_load[ev.scope_id] = sum(a.load for a in v.agents.values() if a.model == ev.scope_id)
    v.work.update(req for req, q in v.queues.items() if q.heap)


# -- budgets -------------------------------------------------------------------------------------
def _cost_recorded(v: PoolView, env: Envelope, ev: e.CostRecorded) -> None:
    workflow = None
    if ev.task_id is not None:
        task = v.tasks.get(ev.task_id)
        workflow = v.ended_in.get(ev.task_id) if task is None else task.workflow
    cost = to_micros(ev.cost_usd)  # whole micro-dollars, as the decider counts
    for key in cost_scopes(v.pool, ev.agent_id, workflow):
        v.spent[key] = v.spent.get(key, 0) + cost
    if v.limiter:  # the run's reservation (if any) settled: the net spend is the real usage
        v.limiter.settle(ev.task_id, ev.agent_id, ev.model, ev.input_tokens + ev.output_tokens, v.now)


def _budget_exceeded(v: PoolView, env: Envelope, ev: e.BudgetExceeded) -> None:
    v.exhausted.add((ev.scope, ev.scope_id))
    # Queued tasks may wait for this budget now: the next look says so.
    v.work.update(req for req, q in v.queues.items() if q.heap)


def _budget_set(v: PoolView, env: Envelope, ev: e.BudgetSet) -> None:
    key = (ev.scope, ev.scope_id)
    limit = v.limits[key] = to_micros(ev.limit_usd)
    if key in v.exhausted and v.spent.get(key, 0) < limit:
        v.budget_restored(key)


# -- the decider's answer to our own commands ----------------------------------------------------
def _command_rejected(v: PoolView, env: Envelope, ev: e.CommandRejected) -> None:
    if ev.command_type not in _OWN_COMMANDS:
        return
    task_id = ev.details.get("task_id") or ev.details.get("subject") or env.subject
    task = v.tasks.get(str(task_id))
    if task is None:
        return
    if ev.command_type == "MarkTaskUnassignable":
        if task.marking == env.commandid:
            task.marking = None
            task.marks += 1
    elif ev.command_type == "DeferTask":
        if task.deferring == env.commandid:
            task.deferring = None
            task.deferred += 1
    elif ev.command_type == "NoteTaskWaiting":
        task.notes += 1  # the task moved on meanwhile; its next queueing starts from busy
        task.noting = max(0, task.noting - 1)
    else:
        task.rejected += 1
        if task.pending is not None and task.pending[0] == env.commandid:
            agent = v.agents.get(task.pending[1])
            v.limiter.rejected(task.task_id, task.pending[1], None if agent is None else agent.model)
            v.add_load(task.pending[1], -1)
            task.pending = None
            if task.status == "queued":
                v.enqueue(task)
    forget(v, task)


HANDLERS: dict[type[Any], Callable[[PoolView, Envelope, Any], None]] = {
    e.TaskSubmitted: _task_submitted,
    e.TaskAssigned: _task_assigned,
    e.TaskCompleted: _task_ended,
    e.TaskFailed: _task_ended,
    e.TaskCancelled: _task_ended,
    e.TaskRetryScheduled: _task_retry_scheduled,
    e.TaskRequeued: _task_requeued,
    e.TaskReassigned: _task_requeued,
    e.TaskUnassignable: _task_unassignable,
    e.TaskDeferred: _task_deferred,
    e.TaskWaiting: _task_waiting,
    e.AgentRegistered: _agent_registered,
    e.AgentDeregistered: _agent_deregistered,
    e.AgentMarkedUnhealthy: _agent_unhealthy,
    e.AgentMarkedHealthy: _agent_healthy,
    e.CircuitOpened: _circuit_opened,
    e.CircuitHalfOpened: _circuit_half_opened,
    e.CircuitClosed: _circuit_closed,
    e.AgentHeartbeatReceived: _agent_heartbeat,
    e.PoolPolicySet: _pool_policy_set,
    e.RateLimitSet: _rate_limit_set,
    e.CostRecorded: _cost_recorded,
    e.BudgetExceeded: _budget_exceeded,
    e.BudgetSet: _budget_set,
    e.CommandRejected: _command_rejected,
}
