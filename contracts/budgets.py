"""Which budgets a cost counts against: one rule for the decider, the coordinator and the read models.

A cost recorded by an agent counts against the pool's budget, the agent's budget and, when the task
belongs to a workflow (its ``data["workflow_id"]``), the workflow's budget. Pure; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

BudgetKey = tuple[str, str]  # (scope, scope_id)


def workflow_of(task_data: Mapping[str, Any] | None) -> str | None:
    """The workflow a task belongs to: its ``data["workflow_id"]`` as a string, or None."""
    if task_data is None:
        return None
    wf = task_data.get("workflow_id")
    return None if wf is None else str(wf)


def cost_scopes(pool: str, agent_id: str, workflow_id: str | None) -> list[BudgetKey]:
    """The (scope, scope_id) budgets a cost of ``agent_id`` in ``pool`` counts against."""
    keys: list[BudgetKey] = [("pool", pool), ("agent", agent_id)]
    if workflow_id is not None:
        keys.append(("workflow", workflow_id))
    return keys
