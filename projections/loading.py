"""What a batch reads before it applies anything: the stored rows its events will touch, once.

Each handler declares the rows its event reads (``reads=(TASK, AGENT)`` in
``projections.handlers``): the kinds below name a row by the event's fields. ``load`` gathers the
keys of every event of the batch, then reads each table once; the rows that follow from other
rows (the agent a loaded task holds, the budgets a cost counts toward) are added on the way.
Only reads: nothing here changes a row or decides what an event means.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from contracts import event_types as ev
from contracts.budgets import workflow_of
from projections import sql
from projections.batch import (
    HOLDING,
    PROFILE_EVENTS,
    Batch,
    Item,
    Key,
    budget_key,
    cost_budget_keys,
    step_key,
)


class Wanted:
    """The keys of the stored rows one batch needs, per table, gathered from its events."""

    __slots__ = ("agents", "allocations", "budgets", "costs", "new_runs", "new_tasks", "runs",
                 "step_tasks", "steps", "tasks", "timers", "tokens", "workflows")

    def __init__(self) -> None:
        self.tasks: set[Key] = set()
        # Tasks the batch submits before mentioning them otherwise: new (the decider never
        # submits a task id twice), so not read; the INSERT would fail if one existed.
        self.new_tasks: set[Key] = set()
        self.workflows: dict[Key, str | None] = {}  # task key -> workflow of in-batch submissions
        self.agents: set[Key] = set()
        self.allocations: set[Key] = set()
        self.timers: set[Key] = set()
        self.budgets: set[Key] = set()  # budgets the events name (set or exceeded)
        self.costs: list[tuple[str, ev.CostRecorded]] = []
        self.runs: set[Key] = set()  # workflow runs the events name
        self.new_runs: set[Key] = set()  # runs started in this batch: new, so not read
        self.steps: set[Key] = set()  # workflow steps the events name
        self.step_tasks: set[Key] = set()  # tasks whose step (if they run one) is read
        self.tokens: set[Key] = set()  # API tokens the events name


# A kind of row an event reads: (wanted, pool, payload) -> adds the row's key.
Need = Callable[[Wanted, str, Any], None]


def _agent(w: Wanted, pool: str, d: Any) -> None:
    if d.agent_id is not None:
        w.agents.add((pool, d.agent_id))


def _task(w: Wanted, pool: str, d: Any) -> None:
    if d.task_id is not None:
        key = (pool, d.task_id)
        if key not in w.new_tasks:
            w.tasks.add(key)


def _new_task(w: Wanted, pool: str, d: ev.TaskSubmitted) -> None:
    key = (pool, d.task_id)
    if key not in w.tasks:
        w.new_tasks.add(key)
    w.workflows[key] = workflow_of(d.data)


def _timer(w: Wanted, pool: str, d: Any) -> None:
    w.timers.add((pool, d.timer_id))


def _allocation(w: Wanted, pool: str, d: Any) -> None:
    w.allocations.add((pool, d.allocation_id))


def _budget(w: Wanted, pool: str, d: ev.BudgetSet | ev.BudgetExceeded) -> None:
    w.budgets.add(budget_key(pool, d))


def _cost_budgets(w: Wanted, pool: str, d: ev.CostRecorded) -> None:
    w.costs.append((pool, d))


def _run(w: Wanted, pool: str, d: Any) -> None:
    key = (pool, d.workflow_id)
    if key not in w.new_runs:
        w.runs.add(key)


def _new_run(w: Wanted, pool: str, d: ev.WorkflowStarted) -> None:
    key = (pool, d.workflow_id)
    if key not in w.runs:
        w.new_runs.add(key)


def _step(w: Wanted, pool: str, d: Any) -> None:
    _run(w, pool, d)
    if (pool, d.workflow_id) not in w.new_runs:
        w.steps.add((pool, d.workflow_id, d.step))


def _step_of_task(w: Wanted, pool: str, d: Any) -> None:
    if isinstance(d, ev.TaskSubmitted):
        key = step_key(pool, d.data)
        if key is not None and key[:2] not in w.new_runs:
            w.steps.add(key)
    elif d.task_id is not None:
        w.step_tasks.add((pool, d.task_id))


def _token(w: Wanted, pool: str, d: Any) -> None:
    w.tokens.add((pool, d.token_id))


AGENT: Need = _agent  # the agent named by ``agent_id`` (if set)
TASK: Need = _task  # the task named by ``task_id`` (if set)
NEW_TASK: Need = _new_task  # the task ``TaskSubmitted`` creates
TIMER: Need = _timer  # the timer named by ``timer_id``
ALLOCATION: Need = _allocation  # the allocation named by ``allocation_id``
BUDGET: Need = _budget  # the budget named by ``scope`` and ``scope_id``
COST_BUDGETS: Need = _cost_budgets  # the budgets a cost counts toward (read with TASK)
RUN: Need = _run  # the workflow run named by ``workflow_id``
NEW_RUN: Need = _new_run  # the run ``WorkflowStarted`` creates
STEP: Need = _step  # the run and its step named by ``workflow_id`` and ``step``
STEP_OF_TASK: Need = _step_of_task  # the step (and run) the task named by ``task_id`` runs, if any
TOKEN: Need = _token  # the API token named by ``token_id``


def load(
    conn: sa.Connection, b: Batch, items: Sequence[Item], needs: Mapping[type[Any], tuple[Need, ...]]
) -> None:
    """Read every stored row the batch's events may touch into ``b``, each table once.

    ``needs`` maps each handled event type to the rows it reads; every handled event also reads
    its pool's row and, if it changes a performance profile, that profile.
    """
    w = Wanted()
    pools: set[Key] = set()
    profiles: set[Key] = set()
    for _, env in items:
        data: Any = env.data
        kind = type(data)
        reads = needs.get(kind)
        if reads is None:
            continue
        pool = env.pool
        pools.add((pool,))
        if kind in PROFILE_EVENTS and data.agent_id is not None:
            profiles.add((pool, data.agent_id))
        for need in reads:
            need(w, pool, data)

    sql.select_rows(conn, b.tasks, w.tasks)
    sql.select_rows(conn, b.allocations, w.allocations)
    sql.select_rows(conn, b.pools, pools)
    sql.select_rows(conn, b.timers, w.timers)
    sql.select_rows(conn, b.api_tokens, w.tokens)
    sql.select_rows(conn, b.performance, profiles)
    b.resume_books()
    # Agents a loaded task holds lose that hold when the task moves on.
    for held in b.tasks.rows.values():
        if held["status"] in HOLDING and held["agent_id"] is not None:
            w.agents.add((held["pool"], held["agent_id"]))
    sql.select_rows(conn, b.agents, w.agents)

    # Workflow rows: the runs and steps the events name, and the steps of the tasks they name
    # (as the stored task's data claims; a submission in this batch named its step itself).
    for pool, task_id in w.step_tasks:
        task = b.tasks.rows.get((pool, task_id))
        key = None if task is None else step_key(pool, task["data"])
        if key is not None and key[:2] not in w.new_runs:
            w.steps.add(key)
    w.runs.update(key[:2] for key in w.steps)
    sql.select_rows(conn, b.workflows, w.runs - w.new_runs)
    sql.select_rows(conn, b.workflow_steps, w.steps)

    # A cost's budgets follow from its task's workflow: the stored task's, or that of the task's
    # submission earlier in this batch.
    budgets = set(w.budgets)
    for pool, cost in w.costs:
        task_key = (pool, cost.task_id) if cost.task_id is not None else None
        task = b.tasks.rows.get(task_key) if task_key else None
        candidates = {None if task is None else workflow_of(task["data"])}
        if task_key in w.workflows:
            candidates.add(w.workflows[task_key])
        for workflow_id in candidates:
            budgets.update(cost_budget_keys(pool, cost.agent_id, workflow_id))
    sql.select_rows(conn, b.budgets, budgets)

    # Budgets created in this batch start from the costs already in the database.
    for key in w.budgets - b.budgets.rows.keys():
        b.prior_costs[key] = sql.cost_amounts(conn, key)
