"""Costs and budgets: the cost trail, and what each budget has spent.

A cost counts toward the budgets of ``contracts.budgets.cost_scopes`` that exist when it is
recorded; a budget set later starts from the costs already recorded in its scope, so the spend
does not depend on the order of the two. ``exceeded`` is only ever the decider's word. Amounts
are whole micro-dollars (``contracts.money``), so a sum is exact in any order and any batching.
"""

from __future__ import annotations

from contracts import Envelope
from contracts import event_types as ev
from contracts.budgets import workflow_of
from contracts.money import to_micros
from projections.batch import Batch, budget_key, cost_budget_keys, counts_toward
from projections.handlers.registry import Registry
from projections.loading import BUDGET, COST_BUDGETS, TASK

handlers = Registry()


@handlers.on(ev.CostRecorded, reads=(TASK, COST_BUDGETS))
def _cost_recorded(b: Batch, env: Envelope, d: ev.CostRecorded) -> None:
    task = b.tasks.rows.get((env.pool, d.task_id)) if d.task_id is not None else None
    workflow_id = None if task is None else workflow_of(task["data"])
    cost = to_micros(d.cost_usd)
    b.costs.append(
        {
            "pool": env.pool,
            "cost_id": d.cost_id,
            "agent_id": d.agent_id,
            "task_id": d.task_id,
            "workflow_id": workflow_id,
            "model": d.model,
            "input_tokens": d.input_tokens,
            "output_tokens": d.output_tokens,
            "cost_micros": cost,
            "priced_from_table": d.priced_from_table,
            "recorded_at": env.time,
        }
    )
    for key in cost_budget_keys(env.pool, d.agent_id, workflow_id):
        budget = b.budgets.rows.get(key)
        if budget is not None:
            budget["spent_micros"] += cost
            budget["updated_at"] = env.time
            b.budgets.touch(key)


@handlers.on(ev.BudgetSet, reads=(BUDGET,))
def _budget_set(b: Batch, env: Envelope, d: ev.BudgetSet) -> None:
    key = budget_key(env.pool, d)
    row = b.budgets.rows.get(key)
    if row is None:
        # Costs recorded before the budget existed count toward it.
        earlier = b.prior_costs.get(key, [])
        spent = sum(earlier) + sum(c["cost_micros"] for c in b.costs if counts_toward(c, key))
        b.budgets.put(
            key,
            {
                "pool": key[0],
                "scope": key[1],
                "scope_id": key[2],
                "limit_micros": to_micros(d.limit_usd),
                "spent_micros": spent,
                "exceeded": False,
                "updated_at": env.time,
            },
        )
        return
    # ``exceeded`` is the decider's word (BudgetExceeded); a new limit above what was spent
    # lifts it, a lower one leaves it to the decider to say so.
    limit = to_micros(d.limit_usd)
    row.update(
        limit_micros=limit,
        exceeded=row["exceeded"] and row["spent_micros"] >= limit,
        updated_at=env.time,
    )
    b.budgets.touch(key)


@handlers.on(ev.BudgetExceeded, reads=(BUDGET,))
def _budget_exceeded(b: Batch, env: Envelope, d: ev.BudgetExceeded) -> None:
    key = budget_key(env.pool, d)
    row = b.budgets.rows.get(key)
    if row is None:
        raise b.fail(f"no {d.scope} budget {key[2]!r}")
    row.update(exceeded=True, updated_at=env.time)
    b.budgets.touch(key)
