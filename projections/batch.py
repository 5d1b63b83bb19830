"""One apply's working state: the rows a batch read, changed in place, and the rows it appends.

The projector loads rows into a ``Batch`` (``projections.loading``), the handlers
(``projections.handlers``) change them as plain dicts in log order, and the projector writes what
changed (``projections.sql``). Also here: how budgets are keyed, which the handlers and the loading
must agree on. Pure: no I/O, no clock; every value comes from the events or the stored rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from contracts import Envelope
from contracts import event_types as ev
from contracts.budgets import cost_scopes
from projections import tables
from projections.performance import FOLDED, PROFILE_FIELDS, PerformanceBook, profile_from_row

Row = dict[str, Any]
Key = tuple[str, ...]
Item = tuple[int, Envelope]

# Statuses in which a task holds its agent (counts toward the agent's load).
HOLDING = frozenset({"assigned", "running"})
# Events that change the profile of the agent they name (the rest of FOLDED only track runs).
PROFILE_EVENTS = FOLDED - {ev.TaskAssigned, ev.TaskStarted, ev.TaskRequeued, ev.TaskCancelled}


class ProjectionError(Exception):
    """An event contradicts the read model; the batch was rolled back and nothing was written."""

    def __init__(self, topic: str, partition: int, offset: int, env: Envelope, reason: str):
        super().__init__(
            f"cannot project {env.type} {env.id} (pool {env.pool!r}) at "
            f"{topic}[{partition}]@{offset}: {reason}"
        )
        self.topic, self.partition, self.offset, self.reason = topic, partition, offset, reason
        self.envelope = env


class Rows:
    """The rows of one table a batch touches: read once, changed in place, written once."""

    __slots__ = ("dirty", "rows", "stored", "table", "upsert_all")

    def __init__(self, table: sa.Table, *, upsert_all: bool = False) -> None:
        self.table = table
        self.rows: dict[Key, Row] = {}
        self.dirty: dict[Key, None] = {}  # insertion-ordered set
        self.stored: set[Key] = set()  # keys whose row was read from the database
        # True for tables whose rows are written without being read first (resource limits).
        self.upsert_all = upsert_all

    def put(self, key: Key, row: Row) -> None:
        self.rows[key] = row
        self.dirty[key] = None

    def touch(self, key: Key) -> None:
        self.dirty[key] = None

    def changes(self) -> tuple[list[Row], list[Row]]:
        """(new rows to INSERT, stored rows to upsert).

        A row the batch created is inserted, not upserted: if it existed after all (an event
        re-creating an entity, which the decider never emits) the INSERT fails the batch
        instead of silently overwriting it.
        """
        if self.upsert_all:
            return [], [self.rows[k] for k in self.dirty]
        inserts: list[Row] = []
        upserts: list[Row] = []
        for k in self.dirty:
            (upserts if k in self.stored else inserts).append(self.rows[k])
        return inserts, upserts


class Batch:
    """Working state of one apply: loaded rows, rows to append, and where we are in the log."""

    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition
        self.agents = Rows(tables.agents)
        self.tasks = Rows(tables.tasks)
        self.allocations = Rows(tables.allocations)
        self.budgets = Rows(tables.budgets)
        self.limits = Rows(tables.resource_limits, upsert_all=True)
        self.pools = Rows(tables.pools)
        self.timers = Rows(tables.timers)
        self.performance = Rows(tables.agent_performance)
        self.rate_limits = Rows(tables.rate_limits, upsert_all=True)
        self.scaling_policies = Rows(tables.scaling_policies, upsert_all=True)
        self.prices = Rows(tables.prices, upsert_all=True)
        self.workflows = Rows(tables.workflows)
        self.workflow_steps = Rows(tables.workflow_steps)
        self.workflow_definitions = Rows(tables.workflow_definitions)
        self.api_tokens = Rows(tables.api_tokens)
        self.subscriptions = Rows(tables.subscriptions, upsert_all=True)
        self.webhook_sources = Rows(tables.webhook_sources, upsert_all=True)
        self.costs: list[Row] = []
        self.assignments: list[Row] = []
        self.rejections: list[Row] = []
        self.scaling_decisions: list[Row] = []
        self.subscription_failures: list[Row] = []
        # Per pool: the coordinator's own performance fold, resumed from the stored profiles.
        self.books: dict[str, PerformanceBook] = {}
        # Cost amounts (micro-dollars) already in the database for budgets created in this batch.
        self.prior_costs: dict[Key, list[int]] = {}
        self.offset = 0
        self.env: Envelope | None = None

    def fail(self, reason: str) -> ProjectionError:
        assert self.env is not None
        return ProjectionError(self.topic, self.partition, self.offset, self.env, reason)

    def agent(self, pool: str, agent_id: str) -> Row:
        row = self.agents.rows.get((pool, agent_id))
        if row is None:
            raise self.fail(f"unknown agent {agent_id!r}")
        self.agents.touch((pool, agent_id))
        return row

    def task(self, pool: str, task_id: str) -> Row:
        row = self.tasks.rows.get((pool, task_id))
        if row is None:
            raise self.fail(f"unknown task {task_id!r}")
        self.tasks.touch((pool, task_id))
        return row

    def book(self, pool: str) -> PerformanceBook:
        book = self.books.get(pool)
        if book is None:
            book = self.books[pool] = PerformanceBook()
        return book

    def resume_books(self) -> None:
        """Resume each pool's performance fold where the loaded rows left it.

        The profiles, and the runs in progress: a held task's run began at its start, else at
        its assignment.
        """
        for (pool, agent_id), stored in self.performance.rows.items():
            self.book(pool).profiles[agent_id] = profile_from_row(stored)
        for task in self.tasks.rows.values():
            if task["status"] in HOLDING and task["agent_id"] is not None:
                began = task["started_at"] or task["assigned_at"]
                self.book(task["pool"]).running(task["task_id"], task["agent_id"], began.timestamp())

    def saw(self, env: Envelope) -> None:
        """Count a (known) event in its pool's row; the latest event time is the pool's "now"."""
        key = (env.pool,)
        row = self.pools.rows.get(key)
        if row is None:
            row = {"pool": env.pool, "events": 0, "last_sequence": None, "last_event_at": env.time,
                   "policy": None, "policy_set_at": None}
            self.pools.rows[key] = row
        row["events"] += 1
        if env.sequence is not None:
            row["last_sequence"] = env.sequence
        if env.time > row["last_event_at"]:
            row["last_event_at"] = env.time
        self.pools.touch(key)

    def perform(self, env: Envelope) -> None:
        """Fold the event into its pool's performance book and mark the profile it changed."""
        book = self.book(env.pool)
        book.observe(env)
        agent_id = getattr(env.data, "agent_id", None)
        if type(env.data) in PROFILE_EVENTS and agent_id is not None and agent_id in book.profiles:
            self.performance.touch((env.pool, agent_id))

    def hold(self, task: Row, agent_id: str | None) -> None:
        """Move the task's hold on an agent (load) from its current holder to ``agent_id``."""
        holder = task["agent_id"] if task["status"] in HOLDING else None
        if holder == agent_id:
            return
        if holder is not None:
            agent = self.agent(task["pool"], holder)
            if agent["load"] <= 0:
                raise self.fail(f"agent {holder!r} would have a negative load")
            agent["load"] -= 1
        if agent_id is not None:
            self.agent(task["pool"], agent_id)["load"] += 1

    def writes(self) -> list[tuple[sa.Table, list[Row], bool]]:
        """Every (table, rows, upsert) to write: upserts for state, inserts for the trails.

        Called once, after the last event: it turns the books' changed profiles into rows.
        """
        for pool, agent_id in self.performance.dirty:
            profile = self.books[pool].profiles[agent_id]
            self.performance.rows[(pool, agent_id)] = {
                "pool": pool, **{f: getattr(profile, f) for f in PROFILE_FIELDS}
            }
        writes: list[tuple[sa.Table, list[Row], bool]] = []
        for state in (self.agents, self.tasks, self.allocations, self.budgets, self.limits,
                      self.pools, self.timers, self.performance, self.rate_limits,
                      self.scaling_policies, self.prices, self.workflows, self.workflow_steps,
                      self.workflow_definitions, self.api_tokens, self.subscriptions,
                      self.webhook_sources):
            inserts, upserts = state.changes()
            writes += [(state.table, inserts, False), (state.table, upserts, True)]
        writes += [
            (tables.costs, self.costs, False),
            (tables.assignments, self.assignments, False),
            (tables.rejections, self.rejections, False),
            (tables.scaling_decisions, self.scaling_decisions, False),
            (tables.subscription_failures, self.subscription_failures, False),
        ]
        return writes


def after(time: datetime, seconds: float) -> datetime:
    """``seconds`` after ``time``: when a timer, a retry, a deferral or a breaker's cooldown ends."""
    return time + timedelta(seconds=seconds)


# --- how budget rows are keyed: (pool, scope, scope_id) ---


def budget_key(pool: str, d: ev.BudgetSet | ev.BudgetExceeded) -> Key:
    """The budget row an event names."""
    # A pool budget is always keyed by the pool's own name, whatever id the command carried,
    # so costs (which know their pool) find it.
    return (pool, d.scope, pool if d.scope == "pool" else d.scope_id)


def cost_budget_keys(pool: str, agent_id: str, workflow_id: str | None) -> list[Key]:
    """The budget rows a cost counts toward (``contracts.budgets.cost_scopes``; only those that
    exist are updated)."""
    return [(pool, scope, scope_id) for scope, scope_id in cost_scopes(pool, agent_id, workflow_id)]


# --- how workflow step rows are keyed: (pool, workflow_id, step) ---


def step_key(pool: str, data: dict[str, Any]) -> Key | None:
    """The step row a task's ``data`` claims to run (``workflow_id`` and ``step``), if it names one.

    Only a claim: the task runs that step if the step's row exists and holds its task id (the
    decider accepts a step's submission only for a run it knows, under the step's own task id).
    """
    workflow_id, step = data.get("workflow_id"), data.get("step")
    if isinstance(workflow_id, str) and isinstance(step, str):
        return (pool, workflow_id, step)
    return None


def counts_toward(cost: Row, key: Key) -> bool:
    """Whether a cost row counts toward the budget row ``key``."""
    pool, scope, scope_id = key
    if cost["pool"] != pool:
        return False
    return (scope, scope_id) in cost_scopes(pool, cost["agent_id"], cost["workflow_id"])
