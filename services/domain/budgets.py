"""Command handlers for costs and budgets: recording what a model call cost, capping spending, and
flagging the work a spent budget covers.

Which budgets a cost counts against is ``contracts.budgets.cost_scopes``, the one copy of that
rule. Pure: handlers never change the state, do no I/O and read no clock.
"""

from __future__ import annotations

from contracts import Payload, Reason
from contracts import commands as c
from contracts import event_types as e
from contracts.budgets import BudgetKey, cost_scopes
from services.domain.decision import DeciderConfig, Rejected, agent_of, task_of, task_workflow
from services.domain.state import PoolState


def check_budget(state: PoolState, scope: str, scope_id: str | None) -> None:
    """Rejects new work in a scope whose budget is spent (no scope id: nothing to check)."""
    if state.budget_exhausted(scope, scope_id):
        limit = state.budgets.get((scope, scope_id or ""), 0.0)
        raise Rejected(
            Reason.BUDGET_EXCEEDED,
            f"{scope} budget {scope_id!r} of {limit} USD is spent",
            scope=scope,
            scope_id=scope_id,
        )


def budget_flags(state: PoolState, key: BudgetKey) -> list[Payload]:
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
        if scope == "workflow" and task_workflow(task) != scope_id:
            continue
        out.append(e.TaskBudgetFlagged(task_id=task_id, agent_id=task.agent_id, scope=scope,
                                       scope_id=scope_id))
    return out


def record_cost(state: PoolState, cmd: c.RecordCost, config: DeciderConfig) -> list[Payload]:
    """A cost, priced from the table when not given; each budget it exhausts is exceeded once."""
    if cmd.cost_id in state.costs:
        raise Rejected(Reason.COST_EXISTS, f"cost {cmd.cost_id!r} already recorded", cost_id=cmd.cost_id)
    agent_of(state, cmd.agent_id, active=False)
    task = task_of(state, cmd.task_id) if cmd.task_id is not None else None
    priced = cmd.cost_usd is None
    cost = cmd.cost_usd
    if cost is None:
        price = config.prices.get(cmd.model)
        if price is None:
            raise Rejected(Reason.UNKNOWN_MODEL_PRICE,
                           f"no price for model {cmd.model!r}; send cost_usd or add it to the price table",
                           model=cmd.model)
        cost = round(cmd.input_tokens / 1000 * price[0] + cmd.output_tokens / 1000 * price[1], 10)
    out: list[Payload] = [
        e.CostRecorded(cost_id=cmd.cost_id, agent_id=cmd.agent_id, task_id=cmd.task_id, model=cmd.model,
                       input_tokens=cmd.input_tokens, output_tokens=cmd.output_tokens, cost_usd=cost,
                       priced_from_table=priced)
    ]
    for key in cost_scopes(state.pool, cmd.agent_id, task_workflow(task)):
        limit = state.budgets.get(key)
        spent = state.spent.get(key, 0.0) + cost
        if limit is not None and key not in state.exceeded and spent >= limit:
            out.append(e.BudgetExceeded(scope=key[0], scope_id=key[1], limit_usd=limit, spent_usd=spent))
            out += budget_flags(state, key)
    return out


def set_budget(state: PoolState, cmd: c.SetBudget, config: DeciderConfig) -> list[Payload]:
    """A new limit; one already reached is exceeded at once (held work flagged if newly so)."""
    # A pool budget always belongs to this pool, whatever scope_id the client sent.
    scope_id = state.pool if cmd.scope == "pool" else cmd.scope_id
    assert scope_id is not None  # SetBudget validates scope_id for the other scopes
    out: list[Payload] = [e.BudgetSet(scope=cmd.scope, scope_id=scope_id, limit_usd=cmd.limit_usd)]
    spent = state.spent.get((cmd.scope, scope_id), 0.0)
    if spent >= cmd.limit_usd:
        out.append(e.BudgetExceeded(scope=cmd.scope, scope_id=scope_id, limit_usd=cmd.limit_usd,
                                    spent_usd=spent))
        if (cmd.scope, scope_id) not in state.exceeded:
            out += budget_flags(state, (cmd.scope, scope_id))
    return out
