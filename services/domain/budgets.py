"""Command handlers for costs, budgets and prices: recording what a model call cost (priced from the
pool's prices when not given), capping spending, flagging the work a spent budget covers, and
changing the pool's prices.

Money is counted in whole micro-dollars (``contracts.money``): a cost is rounded to the
micro-dollar once, here, and every sum after it is exact. The events carry USD amounts that
convert back to the same integers. Which budgets a cost counts against is
``contracts.budgets.cost_scopes``, the one copy of that rule. Pure: handlers never change the
state, do no I/O and read no clock.
"""

from __future__ import annotations

from contracts import Payload, Reason
from contracts import commands as c
from contracts import event_types as e
from contracts.budgets import BudgetKey, cost_scopes
from contracts.commands import ModelPrice
from contracts.money import (
    MAX_COST_MICROS,
    MAX_COST_USD,
    MAX_PRICED_MODELS,
    MAX_SPEND_MICROS,
    MAX_SPEND_USD,
    to_micros,
    to_usd,
)
from services.domain.decision import DeciderConfig, Rejected, agent_of, task_of, task_workflow
from services.domain.prices import cost_micros, model_key, quantized
from services.domain.state import PoolState


def check_budget(state: PoolState, scope: str, scope_id: str | None) -> None:
    """Rejects new work in a scope whose budget is spent (no scope id: nothing to check)."""
    if state.budget_exhausted(scope, scope_id):
        limit = to_usd(state.budgets.get((scope, scope_id or ""), 0))
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


def _cost_of(state: PoolState, cmd: c.RecordCost) -> int:
    """The cost in micro-dollars: as sent, or priced from the pool's prices."""
    if cmd.cost_usd is not None:
        return to_micros(cmd.cost_usd)
    price = state.prices.price_of(cmd.model)
    if price is None:
        raise Rejected(Reason.UNKNOWN_MODEL_PRICE,
                       f"no price for model {cmd.model!r} and the pool's prices are strict; send cost_usd "
                       "or price the model (PUT /v1/prices)",
                       model=cmd.model)
    micros = cost_micros(cmd.input_tokens, cmd.output_tokens, price)
    if micros > MAX_COST_MICROS:
        raise Rejected(Reason.COST_OUT_OF_RANGE,
                       f"{cmd.input_tokens} input and {cmd.output_tokens} output tokens of {cmd.model!r} "
                       f"cost {to_usd(micros)} USD, above the {MAX_COST_USD} USD one call may record",
                       model=cmd.model, cost_usd=to_usd(micros), max_usd=MAX_COST_USD)
    return micros


def record_cost(state: PoolState, cmd: c.RecordCost, config: DeciderConfig) -> list[Payload]:
    """A cost, priced from the pool's prices when not given; each budget it exhausts is exceeded once."""
    if cmd.cost_id in state.costs:
        raise Rejected(Reason.COST_EXISTS, f"cost {cmd.cost_id!r} already recorded", cost_id=cmd.cost_id)
    agent_of(state, cmd.agent_id, active=False)
    task = task_of(state, cmd.task_id) if cmd.task_id is not None else None
    cost = _cost_of(state, cmd)
    # Every cost counts toward its pool, so the pool's total bounds every other total too.
    pool_spent = state.spent.get(("pool", state.pool), 0)
    if pool_spent + cost > MAX_SPEND_MICROS:
        raise Rejected(Reason.COST_OUT_OF_RANGE,
                       f"the costs recorded in pool {state.pool!r} would add up to more than "
                       f"{MAX_SPEND_USD} USD, the most a pool may record",
                       spent_usd=to_usd(pool_spent), cost_usd=to_usd(cost), max_usd=MAX_SPEND_USD)
    out: list[Payload] = [
        e.CostRecorded(cost_id=cmd.cost_id, agent_id=cmd.agent_id, task_id=cmd.task_id, model=cmd.model,
                       input_tokens=cmd.input_tokens, output_tokens=cmd.output_tokens, cost_usd=to_usd(cost),
                       priced_from_table=cmd.cost_usd is None)
    ]
    for key in cost_scopes(state.pool, cmd.agent_id, task_workflow(task)):
        limit = state.budgets.get(key)
        spent = state.spent.get(key, 0) + cost
        if limit is not None and key not in state.exceeded and spent >= limit:
            out.append(e.BudgetExceeded(scope=key[0], scope_id=key[1], limit_usd=to_usd(limit),
                                        spent_usd=to_usd(spent)))
            out += budget_flags(state, key)
    return out


def set_budget(state: PoolState, cmd: c.SetBudget, config: DeciderConfig) -> list[Payload]:
    """A new limit; one already reached is exceeded at once (held work flagged if newly so)."""
    # A pool budget always belongs to this pool, whatever scope_id the client sent.
    scope_id = state.pool if cmd.scope == "pool" else cmd.scope_id
    assert scope_id is not None  # SetBudget validates scope_id for the other scopes
    limit = to_micros(cmd.limit_usd)
    out: list[Payload] = [e.BudgetSet(scope=cmd.scope, scope_id=scope_id, limit_usd=to_usd(limit))]
    spent = state.spent.get((cmd.scope, scope_id), 0)
    if spent >= limit:
        out.append(e.BudgetExceeded(scope=cmd.scope, scope_id=scope_id, limit_usd=to_usd(limit),
                                    spent_usd=to_usd(spent)))
        if (cmd.scope, scope_id) not in state.exceeded:
            out += budget_flags(state, (cmd.scope, scope_id))
    return out


def set_prices(state: PoolState, cmd: c.SetPrices, config: DeciderConfig) -> list[Payload]:
    """The pool's prices with the command's changes merged in (after a reset, into the built-in
    ones); prices are kept to the nano-dollar per 1K tokens."""
    current = state.prices
    models: dict[str, ModelPrice] = {} if cmd.reset else dict(current.models)
    for name, price in cmd.models.items():
        if price is None:
            models.pop(model_key(name), None)
        else:
            models[model_key(name)] = quantized(price)
    if len(models) > MAX_PRICED_MODELS:
        raise Rejected(Reason.INVALID_COMMAND,
                       f"the pool would price {len(models)} models of its own, more than {MAX_PRICED_MODELS}",
                       models=len(models), max_models=MAX_PRICED_MODELS)
    default = current.default if cmd.default is None and not cmd.reset else cmd.default
    strict = cmd.strict if cmd.strict is not None else (False if cmd.reset else current.strict)
    return [e.PricesSet(models=dict(sorted(models.items())),
                        default=None if default is None else quantized(default), strict=strict)]
