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
from contracts import events as e
from services.state import RESOURCE_NAMES, Allocation, AgentState, PoolState, TaskState

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
    if task is None:
        return None
    wf = task.data.get("workflow_id")
    return str(wf) if wf is not None else None


def _check_budget(state: PoolState, scope: str, scope_id: str | None) -> None:
    if state.budget_exhausted(scope, scope_id):
        limit = state.budgets.get((scope, scope_id or ""), 0.0)
        raise Rejected(
            Reason.BUDGET_EXCEEDED,
            f"{scope} budget {scope_id!r} of {limit} USD is spent",
            scope=scope,
            scope_id=scope_id,
        )


def decide(state: PoolState, cmd: Payload, config: DeciderConfig | None = None) -> list[Payload]:
    """Events that follow from ``cmd`` in ``state``; raises Rejected when a rule is broken."""
    match cmd:
        case c.RegisterAgent():
            existing = state.agents.get(cmd.agent_id)
            if existing is not None and existing.active:
                raise Rejected(Reason.AGENT_EXISTS, f"agent {cmd.agent_id!r} is already registered",
                               agent_id=cmd.agent_id)
            return [e.AgentRegistered(**cmd.model_dump())]

        case c.AgentHeartbeat():
            _agent(state, cmd.agent_id)
            return [e.AgentHeartbeatReceived(**cmd.model_dump())]

        case c.DeregisterAgent():
            agent = _agent(state, cmd.agent_id)
            out: list[Payload] = [
                e.TaskRequeued(task_id=t, agent_id=agent.agent_id, reason="agent deregistered")
                for t in sorted(agent.tasks)
            ]
            out += [_release(state.allocations[a], "agent deregistered") for a in sorted(agent.allocations)]
            out.append(e.AgentDeregistered(agent_id=cmd.agent_id, reason=cmd.reason))
            return out

        case c.SubmitTask():
            if cmd.task_id in state.tasks:
                raise Rejected(Reason.TASK_EXISTS, f"task {cmd.task_id!r} already exists", task_id=cmd.task_id)
            _check_budget(state, "pool", state.pool)
            wf = cmd.data.get("workflow_id")
            _check_budget(state, "workflow", None if wf is None else str(wf))
            return [e.TaskSubmitted(**cmd.model_dump())]

        case c.AssignTask():
            task = _task(state, cmd.task_id, "queued")
            agent = _agent(state, cmd.agent_id)
            missing = task.required - agent.capabilities
            if missing:
                raise Rejected(Reason.CAPABILITY_MISMATCH,
                               f"agent {agent.agent_id!r} lacks {sorted(missing)}",
                               task_id=task.task_id, agent_id=agent.agent_id, missing=sorted(missing))
            if len(agent.tasks) >= agent.capacity:
                raise Rejected(Reason.AGENT_OVER_CAPACITY,
                               f"agent {agent.agent_id!r} holds {len(agent.tasks)} of {agent.capacity} tasks",
                               task_id=task.task_id, agent_id=agent.agent_id)
            _check_budget(state, "pool", state.pool)
            _check_budget(state, "agent", agent.agent_id)
            _check_budget(state, "workflow", _workflow_of(task))
            return [e.TaskAssigned(task_id=task.task_id, agent_id=agent.agent_id,
                                   attempt=task.attempts + 1, audit=cmd.audit)]

        case c.StartTask():
            task = _task(state, cmd.task_id, "assigned")
            return [e.TaskStarted(task_id=task.task_id, agent_id=_holder(task, cmd.agent_id))]

        case c.CompleteTask():
            task = _task(state, cmd.task_id, "assigned", "running")
            return [e.TaskCompleted(task_id=task.task_id, agent_id=_holder(task, cmd.agent_id),
                                    result=cmd.result)]

        case c.FailTask():
            task = _task(state, cmd.task_id, "assigned", "running")
            return [e.TaskFailed(task_id=task.task_id, agent_id=_holder(task, cmd.agent_id),
                                 error=cmd.error, attempt=task.attempts)]

        case c.CancelTask():
            task = _task(state, cmd.task_id, "queued", "assigned", "running")
            return [e.TaskCancelled(task_id=task.task_id, agent_id=task.agent_id, reason=cmd.reason)]

        case c.SetResourceLimits():
            limits = (cmd.max_cpu_cores, cmd.max_memory_mb, cmd.max_disk_mb, cmd.max_network_mbps)
            over = [n for n, used, lim in zip(RESOURCE_NAMES, state.used, limits, strict=True)
                    if used > lim + EPSILON]
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
            out = [e.CostRecorded(cost_id=cmd.cost_id, agent_id=cmd.agent_id, task_id=cmd.task_id,
                                  model=cmd.model, input_tokens=cmd.input_tokens,
                                  output_tokens=cmd.output_tokens, cost_usd=cost, priced_from_table=priced)]
            for key in _scopes(state.pool, cmd.agent_id, _workflow_of(task)):
                limit = state.budgets.get(key)
                spent = state.spent.get(key, 0.0) + cost
                if limit is not None and key not in state.exceeded and spent >= limit:
                    out.append(e.BudgetExceeded(scope=key[0], scope_id=key[1], limit_usd=limit, spent_usd=spent))  # type: ignore[arg-type]
            return out

        case c.SetBudget():
            # A pool budget always belongs to this pool, whatever scope_id the client sent.
            scope_id = state.pool if cmd.scope == "pool" else cmd.scope_id
            assert scope_id is not None  # SetBudget validates scope_id for the other scopes
            out = [e.BudgetSet(scope=cmd.scope, scope_id=scope_id, limit_usd=cmd.limit_usd)]
            spent = state.spent.get((cmd.scope, scope_id), 0.0)
            if spent >= cmd.limit_usd:
                out.append(e.BudgetExceeded(scope=cmd.scope, scope_id=scope_id,
                                            limit_usd=cmd.limit_usd, spent_usd=spent))
            return out

    raise Rejected(Reason.UNKNOWN_COMMAND, f"{type(cmd).__name__} is not a command this pool accepts")


def _release(alloc: Allocation, reason: str | None) -> e.ResourcesReleased:
    cpu, mem, disk, net = alloc.amounts
    return e.ResourcesReleased(allocation_id=alloc.allocation_id, agent_id=alloc.agent_id, cpu_cores=cpu,
                               memory_mb=mem, disk_mb=disk, network_mbps=net, reason=reason)


def _scopes(pool: str, agent_id: str, workflow: str | None) -> list[tuple[str, str]]:
    keys = [("pool", pool), ("agent", agent_id)]
    if workflow is not None:
        keys.append(("workflow", workflow))
    return keys


def evolve(state: PoolState, env: Envelope) -> PoolState:
    """Apply one event of this pool to ``state`` (in place, for speed) and return it."""
    if env.sequence is not None:
        state.sequence = env.sequence
    if env.commandid is not None:
        state.seen.add(env.commandid)
    ev = env.data
    match ev:
        case e.AgentRegistered():
            state.agents[ev.agent_id] = AgentState(ev.agent_id, ev.kind, frozenset(ev.capabilities), ev.capacity)
        case e.AgentDeregistered():
            state.agents[ev.agent_id].active = False
        case e.TaskSubmitted():
            state.tasks[ev.task_id] = TaskState(ev.task_id, ev.type, ev.priority,
                                                frozenset(ev.required_capabilities), ev.data)
        case e.TaskAssigned():
            task = state.tasks[ev.task_id]
            task.status, task.agent_id, task.attempts = "assigned", ev.agent_id, ev.attempt
            state.agents[ev.agent_id].tasks.add(ev.task_id)
        case e.TaskStarted():
            state.tasks[ev.task_id].status = "running"
        case e.TaskCompleted():
            _finish(state, ev.task_id, "completed")
        case e.TaskFailed():
            _finish(state, ev.task_id, "failed")
        case e.TaskCancelled():
            _finish(state, ev.task_id, "cancelled")
        case e.TaskRequeued():
            _finish(state, ev.task_id, "queued")
        case e.ResourceLimitsSet():
            state.limits = (ev.max_cpu_cores, ev.max_memory_mb, ev.max_disk_mb, ev.max_network_mbps)
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
            for key in _scopes(state.pool, ev.agent_id, _workflow_of(task)):
                state.spent[key] = state.spent.get(key, 0.0) + ev.cost_usd
        case e.BudgetSet():
            key = (ev.scope, ev.scope_id)
            state.budgets[key] = ev.limit_usd
            if state.spent.get(key, 0.0) < ev.limit_usd:
                state.exceeded.discard(key)
        case e.BudgetExceeded():
            state.exceeded.add((ev.scope, ev.scope_id))
        case _:
            pass  # heartbeats, rejections and unknown types change nothing the decider checks
    return state


def _finish(state: PoolState, task_id: str, status: str) -> None:
    task = state.tasks[task_id]
    if task.agent_id is not None:
        agent = state.agents.get(task.agent_id)
        if agent is not None:
            agent.tasks.discard(task_id)
    task.status = status
    task.agent_id = None if status == "queued" else task.agent_id
