"""Costs and budgets: the cost trail, and what each budget has spent.

A cost counts toward the budgets of ``contracts.budgets.cost_scopes`` that exist when it is
recorded; a budget set later starts from the costs already recorded in its scope, so the spend
does not depend on the order of the two. ``exceeded`` is only ever the decider's word.
"""

from __future__ import annotations

import math

from contracts import Envelope
from contracts import event_types as ev
from contracts.budgets import workflow_of
from projections.batch import Batch, budget_key, cost_budget_keys, counts_toward
from projections.handlers.registry import Registry
from projections.loading import BUDGET, COST_BUDGETS, TASK

handlers = Registry()


@handlers.on(ev.CostRecorded, reads=(TASK, COST_BUDGETS))
def _cost_recorded(b: Batch, env: Envelope, d: ev.CostRecorded) -> None:
    task = b.tasks.rows.get((env.pool, d.task_id)) if d.task_id is not None else None
    workflow_id = None if task is None else workflow_of(task["data"])
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
            "cost_usd": d.cost_usd,
            "priced_from_table": d.priced_from_table,
            "recorded_at": env.time,
        }
    )
    for key in cost_budget_keys(env.pool, d.agent_id, workflow_id):
        budget = b.budgets.rows.get(key)
        if budget is not None:
            budget["spent_usd"] += d.cost_usd
            budget["updated_at"] = env.time
            b.budgets.touch(key)


@handlers.on(ev.BudgetSet, reads=(BUDGET,))
def _budget_set(b: Batch, env: Envelope, d: ev.BudgetSet) -> None:
    key = budget_key(env.pool, d)
    row = b.budgets.rows.get(key)
    if row is None:
        # Costs recorded before the budget existed count toward it. fsum is exactly rounded,
        # so the total does not depend on how the history was split into batches.
        earlier = b.prior_costs.get(key, [])
        pending = [c["cost_usd"] for c in b.costs if counts_toward(c, key)]
        spent = math.fsum(earlier + pending)
        b.budgets.put(
            key,
            {
                "pool": key[0],
                "scope": key[1],
                "scope_id": key[2],
                "limit_usd": d.limit_usd,
                "spent_usd": spent,
                "exceeded": False,
                "updated_at": env.time,
            },
        )
        return
    # ``exceeded`` is the decider's word (BudgetExceeded); a new limit above what was spent
    # lifts it, a lower one leaves it to the decider to say so.
    row.update(
        limit_usd=d.limit_usd,
        exceeded=row["exceeded"] and row["spent_usd"] >= d.limit_usd,
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
