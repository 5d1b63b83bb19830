"""The pool decider: ``decide(state, command) -> events`` and ``evolve(state, event) -> state``.

Pure: no I/O, no clock, no randomness. Time and ids come from the envelopes the runner passes
in, so the same history always yields the same decisions, in the embedded runner and on Faust.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from contracts import Envelope, Payload, Reason
from contracts import commands as c
from contracts import event_types as e
from contracts.budgets import cost_scopes, workflow_of
from contracts.commands import STRATEGIES, PoolPolicy
from services.domain.capabilities import DEFAULT_RULES, capability_match, infer
from services.domain.retries import attempts_left, retry_delay
from services.domain.state import RESOURCE_NAMES, AgentState, Allocation, PoolState, TaskState, TimerState

# USD per 1,000 input and output tokens; override with AGENTBUS_PRICES (a JSON file).
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (0.0025, 0.01),
    "gpt-4o-mini": (0.00015, 0.0006),
    "gpt-4.1": (0.002, 0.008),
    "o3": (0.002, 0.008),
    "claude-sonnet-4": (0.003, 0.015),
    "claude-haiku-3.5": (0.0008, 0.004),
    "claude-opus-4": (0.015, 0.075),
    "gemini-2.5-pro": (0.00125, 0.01),
    "llama-3.1-70b": (0.00088, 0.00088),
}


@dataclass(frozen=True)
class DeciderConfig:
    """Deterministic settings the decider reads (never changes mid-history)."""

    prices: Mapping[str, tuple[float, float]] = field(default_factory=lambda: DEFAULT_PRICES)


# Resource amounts are floats: compare with a tolerance and keep sums rounded, so that allocating
# 0.1 + 0.2 and releasing both leaves exactly 0 and re-setting the same limits is accepted.
EPSILON = 1e-9
ROUND = 9


class Rejected(Exception):
    """A command broke a rule; becomes a CommandRejected event with ``code``."""

    def __init__(self, code: Reason, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


def _agent(state: PoolState, agent_id: str, *, active: bool = True) -> AgentState:
    agent = state.agents.get(agent_id)
    if agent is None:
        raise Rejected(Reason.UNKNOWN_AGENT, f"agent {agent_id!r} is not registered", agent_id=agent_id)
    if active and not agent.active:
        raise Rejected(Reason.AGENT_NOT_ACTIVE, f"agent {agent_id!r} is deregistered", agent_id=agent_id)
    return agent


def _task(state: PoolState, task_id: str, *allowed: str) -> TaskState:
    task = state.tasks.get(task_id)
    if task is None:
        raise Rejected(Reason.UNKNOWN_TASK, f"task {task_id!r} does not exist", task_id=task_id)
    if allowed and task.status not in allowed:
        raise Rejected(
            Reason.INVALID_TASK_STATE,
            f"task {task_id!r} is {task.status}; needs {' or '.join(allowed)}",
            task_id=task_id,
            status=task.status,
        )
    return task


def _holder(task: TaskState, agent_id: str | None) -> str:
    assert task.agent_id is not None
    if agent_id is not None and agent_id != task.agent_id:
        raise Rejected(
            Reason.WRONG_AGENT,
            f"task {task.task_id!r} is held by {task.agent_id!r}, not {agent_id!r}",
            task_id=task.task_id,
            agent_id=agent_id,
            holder=task.agent_id,
        )
    return task.agent_id


def _workflow_of(task: TaskState | None) -> str | None:
    return None if task is None else workflow_of(task.data)


def _check_budget(state: PoolState, scope: str, scope_id: str | None) -> None:
    if state.budget_exhausted(scope, scope_id):
        limit = state.budgets.get((scope, scope_id or ""), 0.0)
        raise Rejected(
            Reason.BUDGET_EXCEEDED,
            f"{scope} budget {scope_id!r} of {limit} USD is spent",
            scope=scope,
            scope_id=scope_id,
        )


class _Out(list[Payload]):
    """A decision's events, with helpers that number and cancel durable timers."""

    def __init__(self, state: PoolState) -> None:
        super().__init__()
        self.state = state
        self.generation = state.timer_seq
        self.fired: str | None = None  # the timer this decision fires (nothing left to cancel)

    def schedule(self, timer_id: str, kind: str, delay_s: float, *, task_id: str | None = None,
                 agent_id: str | None = None, attempt: int = 0) -> None:
        self.generation += 1
        self.append(e.TimerScheduled(timer_id=timer_id, kind=kind, delay_s=delay_s,
                                     generation=self.generation, task_id=task_id, agent_id=agent_id,
                                     attempt=attempt))

    def cancel(self, timer_id: str, reason: str) -> None:
        timer = self.state.timers.get(timer_id)
        if timer is not None and timer_id != self.fired:
            self.append(e.TimerCancelled(timer_id=timer_id, generation=timer.generation, reason=reason))


# Timer ids: one per purpose and entity, so re-arming replaces and cancelling needs no lookup.
def timeout_timer(task_id: str) -> str:
    return f"timeout:{task_id}"


def retry_timer(task_id: str) -> str:
    return f"retry:{task_id}"


def defer_timer(task_id: str) -> str:
    return f"defer:{task_id}"


def heartbeat_timer(agent_id: str) -> str:
    return f"heartbeat:{agent_id}"


def dead_timer(agent_id: str) -> str:
    return f"dead:{agent_id}"


def circuit_timer(agent_id: str) -> str:
    return f"circuit:{agent_id}"


def _failure(state: PoolState, task: TaskState, agent_id: str | None, error: str, out: _Out) -> None:
    """A run of a held task failed: retry it after its backoff, or fail it for good."""
    out.cancel(timeout_timer(task.task_id), "run ended")
    failures = task.failures + 1
    if attempts_left(task.retry, failures):
        assert task.retry is not None
        delay = retry_delay(task.retry, task.task_id, failures)
        out.append(e.TaskRetryScheduled(task_id=task.task_id, agent_id=agent_id, error=error,
                                        attempt=failures, delay_s=delay))
        if delay > 0:
            out.schedule(retry_timer(task.task_id), "retry", delay, task_id=task.task_id, attempt=failures)
        else:
            out.append(e.TaskRequeued(task_id=task.task_id, agent_id=agent_id or "",
                                      reason=f"retry after failed run {failures}"))
    else:
        out.append(e.TaskFailed(task_id=task.task_id, agent_id=agent_id, error=error, attempt=task.attempts))
    if agent_id is not None:
        _breaker_failure(state, agent_id, out)


def _breaker_failure(state: PoolState, agent_id: str, out: _Out) -> None:
    threshold = state.policy.breaker_threshold
    agent = state.agents.get(agent_id)
    if threshold is None or agent is None or not agent.active or agent.breaker == "open":
        return
    failures = agent.failures + 1
    if agent.breaker == "half_open" or failures >= threshold:
        cooldown = state.policy.breaker_cooldown_s
        out.append(e.CircuitOpened(agent_id=agent_id, failures=failures, cooldown_s=cooldown))
        out.schedule(circuit_timer(agent_id), "circuit", cooldown, agent_id=agent_id)


def _take_back(agent: AgentState, out: _Out, event: type[e.TaskRequeued] | type[e.TaskReassigned],
               reason: str) -> None:
    """Every task the agent holds goes back to the queue (sorted, so replay is stable)."""
    for task_id in sorted(agent.tasks):
        out.append(event(task_id=task_id, agent_id=agent.agent_id, reason=reason))
        out.cancel(timeout_timer(task_id), reason)


def _leave(state: PoolState, agent: AgentState, out: _Out, reason: str) -> None:
    """An agent leaves the pool: tasks back to the queue, allocations released, timers cancelled."""
    _take_back(agent, out, e.TaskRequeued, reason)
    out += [_release(state.allocations[a], reason) for a in sorted(agent.allocations)]
    for timer in (heartbeat_timer, dead_timer, circuit_timer):
        out.cancel(timer(agent.agent_id), reason)


def _budget_flags(state: PoolState, key: tuple[str, str]) -> list[Payload]:
    """A TaskBudgetFlagged for every held task the spent budget ``key`` covers."""
    scope, scope_id = key
    if scope == "agent":
        agent = state.agents.get(scope_id)
        agents = [agent] if agent is not None else []
    else:
        agents = list(state.agents.values())
    held = sorted(t for a in agents for t in a.tasks)
    out: list[Payload] = []
    for task_id in held:
        task = state.tasks[task_id]
        if scope == "workflow" and _workflow_of(task) != scope_id:
            continue
        out.append(e.TaskBudgetFlagged(task_id=task_id, agent_id=task.agent_id, scope=scope,
                                       scope_id=scope_id))
    return out


def _fire(state: PoolState, timer: TimerState, out: _Out) -> None:
    """The effects of a due timer whose subject is still in the state it was armed for."""
    match timer.kind:
        case "task_timeout":
            task = state.tasks.get(timer.task_id or "")
            if task is not None and task.held and task.attempts == timer.attempt and task.agent_id:
                out.append(e.TaskTimedOut(task_id=task.task_id, agent_id=task.agent_id, attempt=task.attempts,
                                          timeout_s=task.timeout_s or 0.0))
                _failure(state, task, task.agent_id, f"timed out after {task.timeout_s}s", out)
        case "retry":
            task = state.tasks.get(timer.task_id or "")
            if task is not None and task.status == "retrying" and task.failures == timer.attempt:
                total = task.retry.max_attempts if task.retry is not None else 1
                out.append(e.TaskRequeued(task_id=task.task_id, agent_id=task.agent_id or "",
                                          reason=f"retry: run {task.failures + 1} of {total}"))
        case "heartbeat":
            agent = state.agents.get(timer.agent_id or "")
            if agent is not None and agent.active and agent.healthy:
                reason = f"no heartbeat for {agent.heartbeat_timeout_s}s"
                out.append(e.AgentMarkedUnhealthy(agent_id=agent.agent_id, reason=reason))
                _take_back(agent, out, e.TaskReassigned, f"agent unhealthy: {reason}")
                grace = agent.heartbeat_timeout_s * state.policy.dead_after_timeouts
                out.schedule(dead_timer(agent.agent_id), "agent_dead", grace, agent_id=agent.agent_id)
        case "agent_dead":
            agent = state.agents.get(timer.agent_id or "")
            if agent is not None and agent.active and not agent.healthy:
                reason = "agent declared dead: no heartbeat"
                _leave(state, agent, out, reason)
                out.append(e.AgentDeregistered(agent_id=agent.agent_id, reason=reason))
        case "circuit":
            agent = state.agents.get(timer.agent_id or "")
            if agent is not None and agent.active and agent.breaker == "open":
                out.append(e.CircuitHalfOpened(agent_id=agent.agent_id))
        case _:
            pass  # e.g. "defer": firing only wakes the coordinator up


def decide(state: PoolState, cmd: Payload, config: DeciderConfig | None = None) -> list[Payload]:
    """Events that follow from ``cmd`` in ``state``; raises Rejected when a rule is broken."""
    return list(_decide(state, cmd, config))


def _decide(state: PoolState, cmd: Payload, config: DeciderConfig | None) -> list[Payload]:
    out = _Out(state)
    match cmd:
        case c.RegisterAgent():
            existing = state.agents.get(cmd.agent_id)
            if existing is not None and existing.active:
                raise Rejected(Reason.AGENT_EXISTS, f"agent {cmd.agent_id!r} is already registered",
                               agent_id=cmd.agent_id)
            if state.max_agents is not None and state.active_agents() >= state.max_agents:
                raise Rejected(Reason.RESOURCE_LIMIT_EXCEEDED,
                               f"the pool has its maximum of {state.max_agents} agents",
                               agent_id=cmd.agent_id, over=["agents"], max_agents=state.max_agents)
            return [e.AgentRegistered(**cmd.model_dump())]

        case c.AgentHeartbeat():
            agent = _agent(state, cmd.agent_id)
            out.append(e.AgentHeartbeatReceived(**cmd.model_dump()))
            if not agent.healthy:
                out.append(e.AgentMarkedHealthy(agent_id=agent.agent_id))
                out.cancel(dead_timer(agent.agent_id), "heartbeat received")
            # Liveness is watched from an agent's first heartbeat on: each one re-arms the timer.
            out.schedule(heartbeat_timer(agent.agent_id), "heartbeat", agent.heartbeat_timeout_s,
                         agent_id=agent.agent_id)
            return out

        case c.DeregisterAgent():
            agent = _agent(state, cmd.agent_id)
            _leave(state, agent, out, "agent deregistered")
            out.append(e.AgentDeregistered(agent_id=cmd.agent_id, reason=cmd.reason))
            return out

        case c.SubmitTask():
            if cmd.task_id in state.tasks:
                raise Rejected(Reason.TASK_EXISTS, f"task {cmd.task_id!r} already exists", task_id=cmd.task_id)
            if cmd.strategy is not None and cmd.strategy not in STRATEGIES:
                raise Rejected(Reason.UNKNOWN_STRATEGY,
                               f"unknown strategy {cmd.strategy!r}; use one of {', '.join(STRATEGIES)}",
                               task_id=cmd.task_id, strategy=cmd.strategy)
            _check_budget(state, "pool", state.pool)
            wf = cmd.data.get("workflow_id")
            _check_budget(state, "workflow", None if wf is None else str(wf))
            rules = state.policy.inference_rules
            inferred = infer(cmd.data, DEFAULT_RULES if rules is None else rules, cmd.required_capabilities)
            return [e.TaskSubmitted(**cmd.model_dump(), inferred_capabilities=inferred)]

        case c.AssignTask():
            task = _task(state, cmd.task_id, "queued")
            agent = _agent(state, cmd.agent_id)
            if not agent.healthy:
                raise Rejected(Reason.AGENT_UNHEALTHY, f"agent {agent.agent_id!r} missed its heartbeat",
                               task_id=task.task_id, agent_id=agent.agent_id)
            if agent.breaker == "open" or (agent.breaker == "half_open" and agent.tasks):
                raise Rejected(Reason.CIRCUIT_OPEN,
                               f"agent {agent.agent_id!r}'s circuit breaker is {agent.breaker}",
                               task_id=task.task_id, agent_id=agent.agent_id, breaker=agent.breaker)
            missing = task.required - agent.capabilities
            if missing:
                match = capability_match(task.required, agent.capabilities)
                threshold = state.policy.min_capability_match
                if not cmd.allow_partial or threshold >= 1.0 or match + EPSILON < threshold:
                    raise Rejected(Reason.CAPABILITY_MISMATCH,
                                   f"agent {agent.agent_id!r} lacks {sorted(missing)}",
                                   task_id=task.task_id, agent_id=agent.agent_id, missing=sorted(missing),
                                   match=round(match, 6), threshold=threshold)
            if len(agent.tasks) >= agent.capacity:
                raise Rejected(Reason.AGENT_OVER_CAPACITY,
                               f"agent {agent.agent_id!r} holds {len(agent.tasks)} of {agent.capacity} tasks",
                               task_id=task.task_id, agent_id=agent.agent_id)
            _check_budget(state, "pool", state.pool)
            _check_budget(state, "agent", agent.agent_id)
            _check_budget(state, "workflow", _workflow_of(task))
            out.append(e.TaskAssigned(task_id=task.task_id, agent_id=agent.agent_id,
                                      attempt=task.attempts + 1, audit=cmd.audit,
                                      capability_gap=tuple(sorted(missing))))
            if task.timeout_s is not None:
                out.schedule(timeout_timer(task.task_id), "task_timeout", task.timeout_s,
                             task_id=task.task_id, agent_id=agent.agent_id, attempt=task.attempts + 1)
            return out

        case c.StartTask():
            task = _task(state, cmd.task_id, "assigned")
            return [e.TaskStarted(task_id=task.task_id, agent_id=_holder(task, cmd.agent_id))]

        case c.CompleteTask():
            task = _task(state, cmd.task_id, "assigned", "running")
            holder = _holder(task, cmd.agent_id)
            out.append(e.TaskCompleted(task_id=task.task_id, agent_id=holder, result=cmd.result))
            out.cancel(timeout_timer(task.task_id), "run ended")
            trial = state.agents.get(holder)
            if trial is not None and trial.active and trial.breaker == "half_open":
                out.append(e.CircuitClosed(agent_id=holder))
            return out

        case c.FailTask():
            task = _task(state, cmd.task_id, "assigned", "running")
            _failure(state, task, _holder(task, cmd.agent_id), cmd.error, out)
            return out

        case c.CancelTask():
            task = _task(state, cmd.task_id, "queued", "assigned", "running", "retrying")
            out.append(e.TaskCancelled(task_id=task.task_id, agent_id=task.agent_id, reason=cmd.reason))
            out.cancel(timeout_timer(task.task_id), "task cancelled")
            out.cancel(retry_timer(task.task_id), "task cancelled")
            return out

        case c.SetResourceLimits():
            limits = (cmd.max_cpu_cores, cmd.max_memory_mb, cmd.max_disk_mb, cmd.max_network_mbps)
            over = [n for n, used, lim in zip(RESOURCE_NAMES, state.used, limits, strict=True)
                    if used > lim + EPSILON]
            if cmd.max_agents is not None and state.active_agents() > cmd.max_agents:
                over.append("agents")
            if over:
                raise Rejected(Reason.RESOURCE_LIMIT_EXCEEDED,
                               f"current allocations exceed the new limits for {over}",
                               over=over, used=dict(zip(RESOURCE_NAMES, state.used, strict=True)))
            return [e.ResourceLimitsSet(**cmd.model_dump())]

        case c.AllocateResources():
            if cmd.allocation_id in state.allocations:
                raise Rejected(Reason.ALLOCATION_EXISTS, f"allocation {cmd.allocation_id!r} exists",
                               allocation_id=cmd.allocation_id)
            _agent(state, cmd.agent_id)
            want = (cmd.cpu_cores, cmd.memory_mb, cmd.disk_mb, cmd.network_mbps)
            if state.limits is not None:
                over = {
                    n: {"requested": w, "free": lim - used}
                    for n, w, used, lim in zip(RESOURCE_NAMES, want, state.used, state.limits, strict=True)
                    if used + w > lim + EPSILON
                }
                if over:
                    raise Rejected(Reason.RESOURCE_LIMIT_EXCEEDED,
                                   f"allocation exceeds pool limits for {sorted(over)}",
                                   allocation_id=cmd.allocation_id, over=over)
            return [e.ResourcesAllocated(**cmd.model_dump())]

        case c.ReleaseResources():
            alloc = state.allocations.get(cmd.allocation_id)
            if alloc is None:
                raise Rejected(Reason.UNKNOWN_ALLOCATION, f"no active allocation {cmd.allocation_id!r}",
                               allocation_id=cmd.allocation_id)
            return [_release(alloc, None)]

        case c.RecordCost():
            if cmd.cost_id in state.costs:
                raise Rejected(Reason.COST_EXISTS, f"cost {cmd.cost_id!r} already recorded", cost_id=cmd.cost_id)
            _agent(state, cmd.agent_id, active=False)
            task = _task(state, cmd.task_id) if cmd.task_id is not None else None
            priced = cmd.cost_usd is None
            cost = cmd.cost_usd
            if cost is None:
                prices = (config or DeciderConfig()).prices
                price = prices.get(cmd.model)
                if price is None:
                    raise Rejected(Reason.UNKNOWN_MODEL_PRICE,
                                   f"no price for model {cmd.model!r}; send cost_usd or add it to the price table",
                                   model=cmd.model)
                cost = round(cmd.input_tokens / 1000 * price[0] + cmd.output_tokens / 1000 * price[1], 10)
            out += [e.CostRecorded(cost_id=cmd.cost_id, agent_id=cmd.agent_id, task_id=cmd.task_id,
                                  model=cmd.model, input_tokens=cmd.input_tokens,
                                  output_tokens=cmd.output_tokens, cost_usd=cost, priced_from_table=priced)]
            for key in cost_scopes(state.pool, cmd.agent_id, _workflow_of(task)):
                limit = state.budgets.get(key)
                spent = state.spent.get(key, 0.0) + cost
                if limit is not None and key not in state.exceeded and spent >= limit:
                    out.append(e.BudgetExceeded(scope=key[0], scope_id=key[1], limit_usd=limit, spent_usd=spent))  # type: ignore[arg-type]
                    out += _budget_flags(state, key)
            return out

        case c.SetBudget():
            # A pool budget always belongs to this pool, whatever scope_id the client sent.
            scope_id = state.pool if cmd.scope == "pool" else cmd.scope_id
            assert scope_id is not None  # SetBudget validates scope_id for the other scopes
            out.append(e.BudgetSet(scope=cmd.scope, scope_id=scope_id, limit_usd=cmd.limit_usd))
            spent = state.spent.get((cmd.scope, scope_id), 0.0)
            if spent >= cmd.limit_usd:
                out.append(e.BudgetExceeded(scope=cmd.scope, scope_id=scope_id,
                                            limit_usd=cmd.limit_usd, spent_usd=spent))
                if (cmd.scope, scope_id) not in state.exceeded:
                    out += _budget_flags(state, (cmd.scope, scope_id))
            return out

        case c.SetPoolPolicy():
            return [e.PoolPolicySet(**cmd.model_dump())]

        case c.FireTimer():
            timer = state.timers.get(cmd.timer_id)
            if timer is None or timer.generation != cmd.generation:
                return []  # fired or cancelled already: a late or repeated firing changes nothing
            out.fired = timer.timer_id
            out.append(e.TimerFired(timer_id=timer.timer_id, kind=timer.kind, generation=timer.generation,
                                    task_id=timer.task_id, agent_id=timer.agent_id))
            _fire(state, timer, out)
            return out

        case c.MarkTaskUnassignable():
            task = _task(state, cmd.task_id, "queued")
            return [e.TaskUnassignable(task_id=task.task_id, missing=cmd.missing, best_match=cmd.best_match,
                                       threshold=cmd.threshold)]

        case c.DeferTask():
            task = _task(state, cmd.task_id, "queued")
            out.append(e.TaskDeferred(task_id=task.task_id, reason=cmd.reason, delay_s=cmd.delay_s))
            out.schedule(defer_timer(task.task_id), "defer", cmd.delay_s, task_id=task.task_id)
            return out

        case c.SetRateLimit():
            return [e.RateLimitSet(**cmd.model_dump())]

        case c.SetScalingPolicy():
            return [e.ScalingPolicySet(**cmd.model_dump())]

        case c.DecideScaling():
            policy = state.scaling.get(cmd.agent_kind)
            if policy is None:
                raise Rejected(Reason.UNKNOWN_SCALING_POLICY,
                               f"no scaling policy for agent kind {cmd.agent_kind!r}",
                               agent_kind=cmd.agent_kind)
            if not policy.min_agents <= cmd.to_agents <= policy.max_agents:
                raise Rejected(Reason.SCALING_OUT_OF_BOUNDS,
                               f"{cmd.to_agents} agents is outside "
                               f"[{policy.min_agents}, {policy.max_agents}]",
                               agent_kind=cmd.agent_kind, to_agents=cmd.to_agents)
            return [e.ScalingDecided(**cmd.model_dump())]

    raise Rejected(Reason.UNKNOWN_COMMAND, f"{type(cmd).__name__} is not a command this pool accepts")


def _release(alloc: Allocation, reason: str | None) -> e.ResourcesReleased:
    cpu, mem, disk, net = alloc.amounts
    return e.ResourcesReleased(allocation_id=alloc.allocation_id, agent_id=alloc.agent_id, cpu_cores=cpu,
                               memory_mb=mem, disk_mb=disk, network_mbps=net, reason=reason)


def evolve(state: PoolState, env: Envelope) -> PoolState:
    """Apply one event of this pool to ``state`` (in place, for speed) and return it."""
    if env.sequence is not None:
        state.sequence = env.sequence
    if env.commandid is not None:
        state.seen.add(env.commandid)
    ev = env.data
    match ev:
        case e.AgentRegistered():
            state.agents[ev.agent_id] = AgentState(ev.agent_id, ev.kind, frozenset(ev.capabilities),
                                                   ev.capacity, heartbeat_timeout_s=ev.heartbeat_timeout_s,
                                                   weight=ev.weight)
        case e.AgentDeregistered():
            state.agents[ev.agent_id].active = False
        case e.TaskSubmitted():
            state.tasks[ev.task_id] = TaskState(ev.task_id, ev.type, ev.priority,
                                                frozenset(ev.required_capabilities), ev.data,
                                                strategy=ev.strategy, retry=ev.retry, timeout_s=ev.timeout_s,
                                                preferred=frozenset(ev.inferred_capabilities))
        case e.TaskAssigned():
            task = state.tasks[ev.task_id]
            task.status, task.agent_id, task.attempts = "assigned", ev.agent_id, ev.attempt
            task.unassignable = None
            state.agents[ev.agent_id].tasks.add(ev.task_id)
        case e.TaskStarted():
            state.tasks[ev.task_id].status = "running"
        case e.TaskCompleted():
            _finish(state, ev.task_id, "completed")
            agent = state.agents.get(ev.agent_id)
            if agent is not None:
                agent.failures = 0
        case e.TaskFailed():
            _failed(state, ev.task_id, ev.agent_id, "failed")
        case e.TaskRetryScheduled():
            _failed(state, ev.task_id, ev.agent_id, "retrying")
        case e.TaskCancelled():
            _finish(state, ev.task_id, "cancelled")
        case e.TaskRequeued() | e.TaskReassigned():
            _finish(state, ev.task_id, "queued")
        case e.TaskUnassignable():
            state.tasks[ev.task_id].unassignable = ev.missing
        case e.AgentMarkedUnhealthy():
            state.agents[ev.agent_id].healthy = False
        case e.AgentMarkedHealthy():
            state.agents[ev.agent_id].healthy = True
        case e.CircuitOpened():
            state.agents[ev.agent_id].breaker = "open"
        case e.CircuitHalfOpened():
            state.agents[ev.agent_id].breaker = "half_open"
        case e.CircuitClosed():
            agent = state.agents[ev.agent_id]
            agent.breaker, agent.failures = "closed", 0
        case e.TimerScheduled():
            state.timers[ev.timer_id] = TimerState(ev.timer_id, ev.kind, ev.generation, ev.task_id,
                                                   ev.agent_id, ev.attempt)
            state.timer_seq = max(state.timer_seq, ev.generation)
        case e.TimerCancelled() | e.TimerFired():
            timer = state.timers.get(ev.timer_id)
            if timer is not None and timer.generation == ev.generation:
                del state.timers[ev.timer_id]
        case e.PoolPolicySet():
            state.policy = PoolPolicy.model_validate(ev.model_dump())
        case e.ScalingPolicySet():
            state.scaling[ev.agent_kind] = ev
        case e.ScalingDecided():
            state.scaled[ev.agent_kind] = ev
        case e.ResourceLimitsSet():
            state.limits = (ev.max_cpu_cores, ev.max_memory_mb, ev.max_disk_mb, ev.max_network_mbps)
            state.max_agents = ev.max_agents
        case e.ResourcesAllocated():
            amounts = (ev.cpu_cores, ev.memory_mb, ev.disk_mb, ev.network_mbps)
            state.allocations[ev.allocation_id] = Allocation(ev.allocation_id, ev.agent_id, amounts)
            state.agents[ev.agent_id].allocations.add(ev.allocation_id)
            state.used = [round(u + a, ROUND) for u, a in zip(state.used, amounts, strict=True)]
        case e.ResourcesReleased():
            alloc = state.allocations.pop(ev.allocation_id)
            agent = state.agents.get(alloc.agent_id)
            if agent is not None:
                agent.allocations.discard(ev.allocation_id)
            state.used = [max(0.0, round(u - a, ROUND)) for u, a in zip(state.used, alloc.amounts, strict=True)]
        case e.CostRecorded():
            state.costs.add(ev.cost_id)
            task = state.tasks.get(ev.task_id) if ev.task_id is not None else None
            for key in cost_scopes(state.pool, ev.agent_id, _workflow_of(task)):
                state.spent[key] = state.spent.get(key, 0.0) + ev.cost_usd
        case e.BudgetSet():
            key = (ev.scope, ev.scope_id)
            state.budgets[key] = ev.limit_usd
            if state.spent.get(key, 0.0) < ev.limit_usd:
                state.exceeded.discard(key)
        case e.BudgetExceeded():
            state.exceeded.add((ev.scope, ev.scope_id))
        case _:
            pass  # heartbeats, deferrals, rate limits, rejections, unknown types: nothing to check
    return state


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
