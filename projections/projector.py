"""The projector: applies batches of events to the read-model tables, with its position, atomically.

One call to ``Projector.apply`` is one transaction holding every row the batch changed and the
new position (last offset + 1), so a crash never applies an event twice or skips one, and events
below the stored position are skipped on re-delivery.

It is built for throughput (tens of thousands of events per second): a batch reads the rows it
needs once per table, applies the events to plain dicts in log order, and writes each changed row
once: executemany INSERT for rows the batch created, INSERT .. ON CONFLICT DO UPDATE for rows it
read. Per-event SQL round trips must never creep back in.

It trusts the decider. An event that contradicts the model (a task that was never submitted, an
agent whose load would drop below zero) is a bug upstream: the batch fails with ProjectionError
and nothing is written, rather than the model quietly drifting from the log. It must never import
``services``, read a clock, or write anything not derived from the events.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Envelope
from contracts import event_types as ev
from projections import tables
from projections.performance import FOLDED, PerformanceBook, Profile
from projections.store import MAIN_PROJECTOR, ProjectionStore, read_position

Row = dict[str, Any]
Key = tuple[str, ...]
Item = tuple[int, Envelope]

# Statuses in which a task holds its agent (counts toward the agent's load).
HOLDING = frozenset({"assigned", "running"})
# IN-list size per SELECT: well under SQLite's bound-parameter limit. PostgreSQL gets one array
# parameter per SELECT instead, so its chunks only bound the size of one query.
_CHUNK = 500
_PG_CHUNK = 10_000
# When to refresh PostgreSQL statistics (see Projector._analyze): after this many events, then
# whenever the count doubles, at least every _MAX_ANALYZE_INTERVAL events.
_FIRST_ANALYZE = 1000
_MAX_ANALYZE_INTERVAL = 1_000_000


class ProjectionError(Exception):
    """An event contradicts the read model; the batch was rolled back and nothing was written."""

    def __init__(self, topic: str, partition: int, offset: int, env: Envelope, reason: str):
        super().__init__(
            f"cannot project {env.type} {env.id} (pool {env.pool!r}) at "
            f"{topic}[{partition}]@{offset}: {reason}"
        )
        self.topic, self.partition, self.offset, self.reason = topic, partition, offset, reason
        self.envelope = env


class _Rows:
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


class _Batch:
    """Working state of one apply: loaded rows, rows to append, and where we are in the log."""

    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition
        self.agents = _Rows(tables.agents)
        self.tasks = _Rows(tables.tasks)
        self.allocations = _Rows(tables.allocations)
        self.budgets = _Rows(tables.budgets)
        self.limits = _Rows(tables.resource_limits, upsert_all=True)
        self.pools = _Rows(tables.pools)
        self.timers = _Rows(tables.timers)
        self.performance = _Rows(tables.agent_performance)
        self.rate_limits = _Rows(tables.rate_limits, upsert_all=True)
        self.scaling_policies = _Rows(tables.scaling_policies, upsert_all=True)
        self.costs: list[Row] = []
        self.assignments: list[Row] = []
        self.rejections: list[Row] = []
        self.scaling_decisions: list[Row] = []
        # Per pool: the coordinator's own performance fold, resumed from the stored profiles.
        self.books: dict[str, PerformanceBook] = {}
        # Cost amounts already in the database for budgets created in this batch (see BudgetSet).
        self.prior_costs: dict[Key, list[float]] = {}
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
        if type(env.data) in _PROFILE_EVENTS and agent_id is not None and agent_id in book.profiles:
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


# --- one function per event type: (batch, envelope, payload) -> None, changing rows in place ---


def _agent_registered(b: _Batch, env: Envelope, d: ev.AgentRegistered) -> None:
    key = (env.pool, d.agent_id)
    row = b.agents.rows.get(key)
    if row is not None and row["status"] != "deregistered":
        raise b.fail(f"agent {d.agent_id!r} is already registered")
    if row is None:
        row = {
            "pool": env.pool,
            "agent_id": d.agent_id,
            "load": 0,
            "last_heartbeat_at": None,
            "heartbeat": None,
            "tasks_completed": 0,
            "tasks_failed": 0,
        }
    # A deregistered agent registering again keeps its history counters (and load, which its
    # requeued tasks have brought back to 0).
    row.update(
        name=d.name,
        kind=d.kind,
        capabilities=list(d.capabilities),
        capacity=d.capacity,
        status="active",
        registered_at=env.time,
        deregistered_at=None,
        weight=d.weight,
        heartbeat_timeout_s=d.heartbeat_timeout_s,
        # Registering starts afresh, as in the decider: healthy, breaker closed.
        healthy=True,
        unhealthy_reason=None,
        health_changed_at=None,
        circuit="closed",
        circuit_changed_at=None,
        circuit_until=None,
        consecutive_failures=0,
    )
    b.agents.put(key, row)


def _agent_heartbeat(b: _Batch, env: Envelope, d: ev.AgentHeartbeatReceived) -> None:
    row = b.agent(env.pool, d.agent_id)
    row["last_heartbeat_at"] = env.time
    row["heartbeat"] = {"load": d.load, "cpu": d.cpu, "memory": d.memory, "queue": d.queue}


def _agent_deregistered(b: _Batch, env: Envelope, d: ev.AgentDeregistered) -> None:
    row = b.agent(env.pool, d.agent_id)
    row["status"] = "deregistered"
    row["deregistered_at"] = env.time


def _task_submitted(b: _Batch, env: Envelope, d: ev.TaskSubmitted) -> None:
    key = (env.pool, d.task_id)
    if key in b.tasks.rows:
        raise b.fail(f"task {d.task_id!r} was already submitted")
    b.tasks.put(
        key,
        {
            "pool": env.pool,
            "task_id": d.task_id,
            "type": d.type,
            "priority": d.priority,
            "required_capabilities": list(d.required_capabilities),
            "data": d.data,
            "strategy": d.strategy,
            "inferred_capabilities": list(d.inferred_capabilities),
            "retry": None if d.retry is None else d.retry.model_dump(mode="json"),
            "timeout_s": d.timeout_s,
            "status": "queued",
            "agent_id": None,
            "attempts": 0,
            "failures": 0,
            "timeouts": 0,
            "reassignments": 0,
            "requeue_reason": None,
            "next_attempt_at": None,
            "capability_gap": [],
            "unassignable": None,
            "unassignable_at": None,
            "deferred_reason": None,
            "deferred_until": None,
            "budget_flag": None,
            "budget_flagged_at": None,
            "submitted_at": env.time,
            "assigned_at": None,
            "started_at": None,
            "finished_at": None,
            "error": None,
            "result": None,
            "last_seq": env.sequence,
        },
    )


def _task_assigned(b: _Batch, env: Envelope, d: ev.TaskAssigned) -> None:
    task = b.task(env.pool, d.task_id)
    b.hold(task, d.agent_id)
    task.update(
        status="assigned",
        agent_id=d.agent_id,
        attempts=d.attempt,
        assigned_at=env.time,
        started_at=None,
        finished_at=None,
        next_attempt_at=None,
        capability_gap=list(d.capability_gap),
        # Assigned: no longer waiting for a capable or unlimited agent (as the decider clears it).
        unassignable=None,
        unassignable_at=None,
        deferred_reason=None,
        deferred_until=None,
        last_seq=env.sequence,
    )
    audit = d.audit
    b.assignments.append(
        {
            "pool": env.pool,
            "position": b.offset,
            "task_id": d.task_id,
            "agent_id": d.agent_id,
            "attempt": d.attempt,
            "strategy": audit.strategy if audit else task["strategy"],
            "candidates": [c.model_dump() for c in audit.candidates] if audit else [],
            "eligible": audit.eligible if audit else None,
            "considered": audit.considered if audit else None,
            "decision_us": audit.decision_us if audit else None,
            "capability_gap": list(d.capability_gap),
            "preferred": list(audit.preferred) if audit else [],
            "skipped": dict(audit.skipped) if audit else {},
            "assigned_at": env.time,
            "event_id": env.id,
        }
    )


def _task_started(b: _Batch, env: Envelope, d: ev.TaskStarted) -> None:
    task = b.task(env.pool, d.task_id)
    b.hold(task, d.agent_id)
    task.update(status="running", agent_id=d.agent_id, started_at=env.time, last_seq=env.sequence)


def _task_completed(b: _Batch, env: Envelope, d: ev.TaskCompleted) -> None:
    task = b.task(env.pool, d.task_id)
    b.hold(task, None)
    agent = b.agent(env.pool, d.agent_id)
    agent["tasks_completed"] += 1
    agent["consecutive_failures"] = 0
    task.update(
        status="completed",
        agent_id=d.agent_id,
        result=d.result,
        finished_at=env.time,
        last_seq=env.sequence,
    )


def _task_failed(b: _Batch, env: Envelope, d: ev.TaskFailed) -> None:
    task = b.task(env.pool, d.task_id)
    b.hold(task, None)
    if d.agent_id is not None:
        agent = b.agent(env.pool, d.agent_id)
        agent["tasks_failed"] += 1
        agent["consecutive_failures"] += 1
        task["agent_id"] = d.agent_id
    task["failures"] += 1
    task.update(status="failed", error=d.error, finished_at=env.time, last_seq=env.sequence)


def _task_cancelled(b: _Batch, env: Envelope, d: ev.TaskCancelled) -> None:
    task = b.task(env.pool, d.task_id)
    b.hold(task, None)
    task.update(status="cancelled", finished_at=env.time, next_attempt_at=None, last_seq=env.sequence)
    if d.reason is not None:
        task["error"] = d.reason


def _task_requeued(b: _Batch, env: Envelope, d: ev.TaskRequeued | ev.TaskReassigned) -> None:
    task = b.task(env.pool, d.task_id)
    b.hold(task, None)
    task.update(
        status="queued",
        agent_id=None,
        assigned_at=None,
        started_at=None,
        finished_at=None,
        next_attempt_at=None,
        requeue_reason=d.reason,
        last_seq=env.sequence,
    )


def _task_reassigned(b: _Batch, env: Envelope, d: ev.TaskReassigned) -> None:
    _task_requeued(b, env, d)
    b.task(env.pool, d.task_id)["reassignments"] += 1


def _task_timed_out(b: _Batch, env: Envelope, d: ev.TaskTimedOut) -> None:
    # The failure itself (retry or final) follows as its own event.
    task = b.task(env.pool, d.task_id)
    task["timeouts"] += 1
    task["last_seq"] = env.sequence


def _task_retry_scheduled(b: _Batch, env: Envelope, d: ev.TaskRetryScheduled) -> None:
    task = b.task(env.pool, d.task_id)
    b.hold(task, None)
    if d.agent_id is not None:
        b.agent(env.pool, d.agent_id)["consecutive_failures"] += 1
        task["agent_id"] = d.agent_id
    task["failures"] += 1
    task.update(
        status="retrying",
        error=d.error,
        next_attempt_at=_after(env.time, d.delay_s),
        last_seq=env.sequence,
    )


def _task_unassignable(b: _Batch, env: Envelope, d: ev.TaskUnassignable) -> None:
    task = b.task(env.pool, d.task_id)
    task.update(
        unassignable={"missing": list(d.missing), "best_match": d.best_match,
                      "threshold": d.threshold},
        unassignable_at=env.time,
        last_seq=env.sequence,
    )


def _task_deferred(b: _Batch, env: Envelope, d: ev.TaskDeferred) -> None:
    task = b.task(env.pool, d.task_id)
    task.update(deferred_reason=d.reason, deferred_until=_after(env.time, d.delay_s),
                last_seq=env.sequence)


def _task_budget_flagged(b: _Batch, env: Envelope, d: ev.TaskBudgetFlagged) -> None:
    task = b.task(env.pool, d.task_id)
    task.update(budget_flag={"scope": d.scope, "scope_id": d.scope_id},
                budget_flagged_at=env.time, last_seq=env.sequence)


def _after(time: datetime, seconds: float) -> datetime:
    return time + timedelta(seconds=seconds)


# --- health and circuit breakers ---


def _agent_unhealthy(b: _Batch, env: Envelope, d: ev.AgentMarkedUnhealthy) -> None:
    agent = b.agent(env.pool, d.agent_id)
    agent.update(healthy=False, unhealthy_reason=d.reason, health_changed_at=env.time)
    if agent["status"] == "active":
        agent["status"] = "unhealthy"


def _agent_healthy(b: _Batch, env: Envelope, d: ev.AgentMarkedHealthy) -> None:
    agent = b.agent(env.pool, d.agent_id)
    agent.update(healthy=True, unhealthy_reason=None, health_changed_at=env.time)
    if agent["status"] == "unhealthy":
        agent["status"] = "active"


def _circuit_opened(b: _Batch, env: Envelope, d: ev.CircuitOpened) -> None:
    b.agent(env.pool, d.agent_id).update(
        circuit="open", circuit_changed_at=env.time, circuit_until=_after(env.time, d.cooldown_s)
    )


def _circuit_half_opened(b: _Batch, env: Envelope, d: ev.CircuitHalfOpened) -> None:
    b.agent(env.pool, d.agent_id).update(
        circuit="half_open", circuit_changed_at=env.time, circuit_until=None
    )


def _circuit_closed(b: _Batch, env: Envelope, d: ev.CircuitClosed) -> None:
    b.agent(env.pool, d.agent_id).update(
        circuit="closed", circuit_changed_at=env.time, circuit_until=None, consecutive_failures=0
    )


# --- timers ---


def _timer_scheduled(b: _Batch, env: Envelope, d: ev.TimerScheduled) -> None:
    # Scheduling a pending id re-arms it: the row holds the latest arming.
    b.timers.put(
        (env.pool, d.timer_id),
        {
            "pool": env.pool,
            "timer_id": d.timer_id,
            "kind": d.kind,
            "generation": d.generation,
            "status": "pending",
            "task_id": d.task_id,
            "agent_id": d.agent_id,
            "attempt": d.attempt,
            "delay_s": d.delay_s,
            "scheduled_at": env.time,
            "due_at": _after(env.time, d.delay_s),
            "ended_at": None,
            "cancel_reason": None,
        },
    )


def _timer_ended(b: _Batch, env: Envelope, d: ev.TimerCancelled | ev.TimerFired) -> None:
    key = (env.pool, d.timer_id)
    row = b.timers.rows.get(key)
    # As in the decider: only the pending arming of that generation ends; others are stale.
    if row is None or row["status"] != "pending" or row["generation"] != d.generation:
        return
    if isinstance(d, ev.TimerCancelled):
        row.update(status="cancelled", ended_at=env.time, cancel_reason=d.reason)
    else:
        row.update(status="fired", ended_at=env.time)
    b.timers.touch(key)


# --- policies ---


def _pool_policy_set(b: _Batch, env: Envelope, d: ev.PoolPolicySet) -> None:
    row = b.pools.rows[(env.pool,)]  # b.saw created it
    row.update(policy=d.model_dump(mode="json"), policy_set_at=env.time)


def _rate_limit_set(b: _Batch, env: Envelope, d: ev.RateLimitSet) -> None:
    b.rate_limits.put(
        (env.pool, d.scope, d.scope_id),
        {
            "pool": env.pool,
            "scope": d.scope,
            "scope_id": d.scope_id,
            "requests_per_min": d.requests_per_min,
            "tokens_per_min": d.tokens_per_min,
            "concurrent": d.concurrent,
            "updated_at": env.time,
        },
    )


def _scaling_policy_set(b: _Batch, env: Envelope, d: ev.ScalingPolicySet) -> None:
    b.scaling_policies.put(
        (env.pool, d.agent_kind),
        {
            "pool": env.pool,
            "agent_kind": d.agent_kind,
            "min_agents": d.min_agents,
            "max_agents": d.max_agents,
            "target_utilization": d.target_utilization,
            "queue_threshold": d.queue_threshold,
            "cooldown_s": d.cooldown_s,
            "stability_window_s": d.stability_window_s,
            "updated_at": env.time,
        },
    )


def _scaling_decided(b: _Batch, env: Envelope, d: ev.ScalingDecided) -> None:
    b.scaling_decisions.append(
        {
            "pool": env.pool,
            "position": b.offset,
            "agent_kind": d.agent_kind,
            "from_agents": d.from_agents,
            "to_agents": d.to_agents,
            "reason": d.reason,
            "metrics": dict(d.metrics),
            "decided_at": env.time,
            "event_id": env.id,
        }
    )


def _resource_limits_set(b: _Batch, env: Envelope, d: ev.ResourceLimitsSet) -> None:
    b.limits.put(
        (env.pool,),
        {
            "pool": env.pool,
            "max_cpu_cores": d.max_cpu_cores,
            "max_memory_mb": d.max_memory_mb,
            "max_disk_mb": d.max_disk_mb,
            "max_network_mbps": d.max_network_mbps,
            "max_agents": d.max_agents,
            "updated_at": env.time,
        },
    )


def _resources_allocated(b: _Batch, env: Envelope, d: ev.ResourcesAllocated) -> None:
    key = (env.pool, d.allocation_id)
    existing = b.allocations.rows.get(key)
    # The decider lets an allocation id be used again once released.
    if existing is not None and existing["status"] == "active":
        raise b.fail(f"allocation {d.allocation_id!r} is already active")
    b.allocations.put(
        key,
        {
            "pool": env.pool,
            "allocation_id": d.allocation_id,
            "agent_id": d.agent_id,
            "cpu_cores": d.cpu_cores,
            "memory_mb": d.memory_mb,
            "disk_mb": d.disk_mb,
            "network_mbps": d.network_mbps,
            "status": "active",
            "allocated_at": env.time,
            "released_at": None,
        },
    )


def _resources_released(b: _Batch, env: Envelope, d: ev.ResourcesReleased) -> None:
    key = (env.pool, d.allocation_id)
    row = b.allocations.rows.get(key)
    if row is None or row["status"] != "active":
        raise b.fail(f"allocation {d.allocation_id!r} is not active")
    row.update(status="released", released_at=env.time)
    b.allocations.touch(key)


def _workflow_of(task: Row | None) -> str | None:
    """The workflow a task belongs to: its data["workflow_id"], if any."""
    if task is None:
        return None
    value = task["data"].get("workflow_id")
    return None if value is None else str(value)


def _budget_keys(pool: str, agent_id: str, workflow_id: str | None) -> list[Key]:
    """The budgets a cost counts toward (only those that exist are updated)."""
    keys: list[Key] = [(pool, "pool", pool), (pool, "agent", agent_id)]
    if workflow_id is not None:
        keys.append((pool, "workflow", workflow_id))
    return keys


def _cost_recorded(b: _Batch, env: Envelope, d: ev.CostRecorded) -> None:
    task = b.tasks.rows.get((env.pool, d.task_id)) if d.task_id is not None else None
    workflow_id = _workflow_of(task)
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
    for key in _budget_keys(env.pool, d.agent_id, workflow_id):
        budget = b.budgets.rows.get(key)
        if budget is not None:
            budget["spent_usd"] += d.cost_usd
            budget["updated_at"] = env.time
            b.budgets.touch(key)


def _budget_key(env: Envelope, d: ev.BudgetSet | ev.BudgetExceeded) -> Key:
    # A pool budget is always keyed by the pool's own name, whatever id the command carried,
    # so costs (which know their pool) find it.
    return (env.pool, d.scope, env.pool if d.scope == "pool" else d.scope_id)


def _in_scope(cost: Row, key: Key) -> bool:
    pool, scope, scope_id = key
    if cost["pool"] != pool:
        return False
    if scope == "agent":
        return bool(cost["agent_id"] == scope_id)
    if scope == "workflow":
        return bool(cost["workflow_id"] == scope_id)
    return True


def _budget_set(b: _Batch, env: Envelope, d: ev.BudgetSet) -> None:
    key = _budget_key(env, d)
    row = b.budgets.rows.get(key)
    if row is None:
        # Costs recorded before the budget existed count toward it. fsum is exactly rounded,
        # so the total does not depend on how the history was split into batches.
        earlier = b.prior_costs.get(key, [])
        pending = [c["cost_usd"] for c in b.costs if _in_scope(c, key)]
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


def _budget_exceeded(b: _Batch, env: Envelope, d: ev.BudgetExceeded) -> None:
    key = _budget_key(env, d)
    row = b.budgets.rows.get(key)
    if row is None:
        raise b.fail(f"no {d.scope} budget {key[2]!r}")
    row.update(exceeded=True, updated_at=env.time)
    b.budgets.touch(key)


def _command_rejected(b: _Batch, env: Envelope, d: ev.CommandRejected) -> None:
    b.rejections.append(
        {
            "pool": env.pool,
            "position": b.offset,
            "command_id": env.commandid,
            "command_type": d.command_type,
            "code": d.code,
            "message": d.message,
            "details": d.details,
            "at": env.time,
            "event_id": env.id,
        }
    )


_HANDLERS: dict[type[Any], Callable[[_Batch, Envelope, Any], None]] = {
    ev.AgentRegistered: _agent_registered,
    ev.AgentHeartbeatReceived: _agent_heartbeat,
    ev.AgentDeregistered: _agent_deregistered,
    ev.TaskSubmitted: _task_submitted,
    ev.TaskAssigned: _task_assigned,
    ev.TaskStarted: _task_started,
    ev.TaskCompleted: _task_completed,
    ev.TaskFailed: _task_failed,
    ev.TaskCancelled: _task_cancelled,
    ev.TaskRequeued: _task_requeued,
    ev.ResourceLimitsSet: _resource_limits_set,
    ev.ResourcesAllocated: _resources_allocated,
    ev.ResourcesReleased: _resources_released,
    ev.CostRecorded: _cost_recorded,
    ev.BudgetSet: _budget_set,
    ev.BudgetExceeded: _budget_exceeded,
    ev.CommandRejected: _command_rejected,
    ev.PoolPolicySet: _pool_policy_set,
    ev.TimerScheduled: _timer_scheduled,
    ev.TimerCancelled: _timer_ended,
    ev.TimerFired: _timer_ended,
    ev.AgentMarkedUnhealthy: _agent_unhealthy,
    ev.AgentMarkedHealthy: _agent_healthy,
    ev.TaskReassigned: _task_reassigned,
    ev.TaskTimedOut: _task_timed_out,
    ev.TaskRetryScheduled: _task_retry_scheduled,
    ev.CircuitOpened: _circuit_opened,
    ev.CircuitHalfOpened: _circuit_half_opened,
    ev.CircuitClosed: _circuit_closed,
    ev.TaskUnassignable: _task_unassignable,
    ev.TaskDeferred: _task_deferred,
    ev.RateLimitSet: _rate_limit_set,
    ev.TaskBudgetFlagged: _task_budget_flagged,
    ev.ScalingPolicySet: _scaling_policy_set,
    ev.ScalingDecided: _scaling_decided,
}

# Events whose agent_id names an agent row the handler reads or changes.
_AGENT_ROW_EVENTS = frozenset(
    {
        ev.AgentRegistered,
        ev.AgentHeartbeatReceived,
        ev.AgentDeregistered,
        ev.TaskAssigned,
        ev.TaskStarted,
        ev.TaskCompleted,
        ev.TaskFailed,
        ev.TaskCancelled,
        ev.TaskRequeued,
        ev.TaskReassigned,
        ev.TaskRetryScheduled,
        ev.AgentMarkedUnhealthy,
        ev.AgentMarkedHealthy,
        ev.CircuitOpened,
        ev.CircuitHalfOpened,
        ev.CircuitClosed,
    }
)
# Events that change the profile of the agent they name (the rest of FOLDED only track runs).
_PROFILE_EVENTS = FOLDED - {ev.TaskAssigned, ev.TaskStarted, ev.TaskRequeued, ev.TaskCancelled}
# Profile fields, stored as columns of the same names in agent_performance.
_PROFILE_FIELDS = tuple(f.name for f in dataclasses.fields(Profile))


# --- reading and writing rows in bulk ---


def _member_of(column: sa.Column[Any], values: list[str], dialect: str) -> sa.ColumnElement[bool]:
    """``column IN values``; on PostgreSQL as ``= ANY(array)``: one parameter, so one prepared
    statement whatever the number of values (asyncpg prepares each distinct SQL text anew)."""
    if dialect == "postgresql":
        return column == sa.any_(sa.literal(values, postgresql.ARRAY(column.type)))
    return column.in_(values)


async def _load(conn: AsyncConnection, rows: _Rows, keys: Iterable[Key]) -> None:
    """SELECT the existing rows for ``keys`` into ``rows``: one query per key prefix and chunk."""
    table = rows.table
    dialect = conn.dialect.name
    cols = [table.c[c.name] for c in table.primary_key.columns]
    by_prefix: dict[Key, list[str]] = defaultdict(list)
    for key in keys:
        if key not in rows.rows:
            by_prefix[key[:-1]].append(key[-1])
    chunk = _CHUNK if dialect == "sqlite" else _PG_CHUNK
    for prefix, last in by_prefix.items():
        where = [col == value for col, value in zip(cols, prefix, strict=False)]
        for i in range(0, len(last), chunk):
            stmt = sa.select(table).where(*where, _member_of(cols[-1], last[i : i + chunk], dialect))
            for r in await conn.execute(stmt):
                row = dict(r._mapping)
                key = tuple(row[c.name] for c in cols)
                rows.rows[key] = row
                rows.stored.add(key)


_UPSERTS: dict[tuple[str, str], Any] = {}


def _upsert(dialect: str, table: sa.Table) -> Any:
    """INSERT .. ON CONFLICT (primary key) DO UPDATE SET every other column (cached)."""
    stmt = _UPSERTS.get((dialect, table.name))
    if stmt is None:
        ins = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(table)
        stmt = ins.on_conflict_do_update(
            index_elements=[c.name for c in table.primary_key.columns],
            set_={c.name: ins.excluded[c.name] for c in table.columns if not c.primary_key},
        )
        _UPSERTS[(dialect, table.name)] = stmt
    return stmt


_DRIVER: dict[tuple[str, str, bool], tuple[str, Callable[[Row], tuple[Any, ...]]]] = {}


def _driver_statement(
    dialect: sa.Dialect, table: sa.Table, upsert: bool
) -> tuple[str, Callable[[Row], tuple[Any, ...]]]:
    """The compiled SQL of the insert/upsert and a row -> driver parameters function (cached).

    SQLite only: SQLAlchemy's per-row parameter handling costs more than SQLite's own work for
    these executemany calls, so rows go to the driver as tuples, converted by the column types'
    own bind processors (identical storage to what SQLAlchemy writes and reads back). Cached per
    dialect name: every ProjectionStore configures the same JSON serializer.
    """
    key = (dialect.name, table.name, upsert)
    cached = _DRIVER.get(key)
    if cached is not None:
        return cached
    stmt = _upsert(dialect.name, table) if upsert else sa.insert(table)
    compiled = stmt.compile(dialect=dialect, column_keys=[c.name for c in table.columns])
    order = list(compiled.positiontup or ())
    procs = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in order]
    plan = list(zip(order, procs, strict=True))

    def to_params(row: Row) -> tuple[Any, ...]:
        return tuple(row[n] if p is None else p(row[n]) for n, p in plan)

    cached = _DRIVER[key] = (str(compiled), to_params)
    return cached


class Projector:
    """Applies event batches to the read models and stores its position in the same transaction."""

    def __init__(self, store: ProjectionStore, name: str = MAIN_PROJECTOR) -> None:
        self.store = store
        self.name = name
        self._applied = 0
        self._analyze_at = _FIRST_ANALYZE

    async def position(self, topic: str, partition: int) -> int:
        """The next offset to apply in the partition (0 if none was applied)."""
        return await self.store.read_position(self.name, topic, partition)

    async def apply(self, topic: str, partition: int, batch: Sequence[Item]) -> int:
        """Apply (offset, envelope) items in increasing offset order, in one transaction.

        Items below the stored position are skipped; returns how many were applied (unknown
        event types count: they advance the position without effect).
        """
        previous = -1
        for offset, _ in batch:
            if offset <= previous:
                raise ValueError(f"offsets must increase: {offset} after {previous}")
            previous = offset
        dialect = self.store.dialect
        async with self.store.begin_write() as conn:
            start = await read_position(conn, self.name, topic, partition)
            items = [item for item in batch if item[0] >= start]
            if not items:
                return 0
            b = _Batch(topic, partition)
            await self._load(conn, b, items)
            for offset, env in items:
                data = env.data
                kind = type(data)
                handler = _HANDLERS.get(kind)
                if handler is not None:
                    b.offset, b.env = offset, env
                    b.saw(env)
                    handler(b, env, data)
                    if kind in FOLDED:
                        b.perform(env)
            for pool, agent_id in b.performance.dirty:
                profile = b.books[pool].profiles[agent_id]
                b.performance.rows[(pool, agent_id)] = {
                    "pool": pool, **{f: getattr(profile, f) for f in _PROFILE_FIELDS}
                }
            await self._write(conn, dialect, b)
            end = items[-1][0] + 1
            await self._store_position(conn, dialect, topic, partition, start, end)
        self.store.advanced(self.name, topic, partition, end)
        self._applied += len(items)
        if dialect == "postgresql" and self._applied >= self._analyze_at:
            await self._analyze()
        return len(items)

    async def _analyze(self) -> None:
        """Refresh PostgreSQL's planner statistics while the tables grow fast.

        Without statistics (fresh tables, a rebuild, the first minute before autovacuum runs)
        PostgreSQL estimates ``pool = x`` as selective and reads the batch's rows through the
        (pool, agent_id) index plus a filter: a scan of the whole pool per batch, which makes a
        rebuild quadratic. Analyzing after 1k, 2k, 4k, ... events (then every million) keeps the
        primary-key lookup the obvious plan at a cost of a few ANALYZEs.
        """
        names = ", ".join(f'"{t.name}"' for t in (*tables.READ_MODELS, tables.positions))
        async with self.store.engine.connect() as conn:
            await conn.execute(sa.text(f"ANALYZE {names}"))
            await conn.commit()
        self._analyze_at = self._applied + min(self._applied, _MAX_ANALYZE_INTERVAL)

    async def _load(self, conn: AsyncConnection, b: _Batch, items: Sequence[Item]) -> None:
        """Read every existing row the batch's events may touch, once."""
        task_keys: set[Key] = set()
        # Tasks the batch submits before mentioning them otherwise: new (the decider never
        # submits a task id twice), so not read; the INSERT would fail if one existed.
        submitted: set[Key] = set()
        agent_keys: set[Key] = set()
        allocation_keys: set[Key] = set()
        costs: list[tuple[str, ev.CostRecorded]] = []
        budget_sets: set[Key] = set()
        workflows: dict[Key, str | None] = {}  # task key -> workflow of in-batch submissions
        pool_keys: set[Key] = set()
        timer_keys: set[Key] = set()
        profile_keys: set[Key] = set()
        for _, env in items:
            data = env.data
            kind = type(data)
            if kind not in _HANDLERS:
                continue
            pool = env.pool
            pool_keys.add((pool,))
            profiled = getattr(data, "agent_id", None) if kind in _PROFILE_EVENTS else None
            if profiled is not None:
                profile_keys.add((pool, profiled))
            if isinstance(data, ev.TimerScheduled | ev.TimerCancelled | ev.TimerFired):
                timer_keys.add((pool, data.timer_id))
            task_id = getattr(data, "task_id", None)
            if task_id is not None:
                key = (pool, task_id)
                if kind is ev.TaskSubmitted and key not in task_keys:
                    submitted.add(key)
                elif key not in submitted:
                    task_keys.add(key)
            if kind in _AGENT_ROW_EVENTS:
                agent_id = getattr(data, "agent_id", None)
                if agent_id is not None:
                    agent_keys.add((pool, agent_id))
            if isinstance(data, ev.TaskSubmitted):
                workflows[(pool, data.task_id)] = _workflow_of({"data": data.data})
            elif isinstance(data, ev.ResourcesAllocated | ev.ResourcesReleased):
                allocation_keys.add((pool, data.allocation_id))
            elif isinstance(data, ev.CostRecorded):
                costs.append((pool, data))
            elif isinstance(data, ev.BudgetSet | ev.BudgetExceeded):
                budget_sets.add(_budget_key(env, data))

        await _load(conn, b.tasks, task_keys)
        await _load(conn, b.allocations, allocation_keys)
        await _load(conn, b.pools, pool_keys)
        await _load(conn, b.timers, timer_keys)
        await _load(conn, b.performance, profile_keys)
        # Resume each pool's performance fold where the stored profiles left it: the profiles,
        # and the runs in progress (a held task's run began at its start, else its assignment).
        for (pool, agent_id), stored in b.performance.rows.items():
            b.book(pool).profiles[agent_id] = Profile(**{f: stored[f] for f in _PROFILE_FIELDS})
        for task in b.tasks.rows.values():
            if task["status"] in HOLDING and task["agent_id"] is not None:
                began = task["started_at"] or task["assigned_at"]
                b.book(task["pool"]).running(task["task_id"], task["agent_id"], began.timestamp())
        # Agents a loaded task holds lose that hold when the task moves on.
        for task in b.tasks.rows.values():
            if task["status"] in HOLDING and task["agent_id"] is not None:
                agent_keys.add((task["pool"], task["agent_id"]))
        await _load(conn, b.agents, agent_keys)

        budget_keys = set(budget_sets)
        for pool, cost in costs:
            task_key = (pool, cost.task_id) if cost.task_id is not None else None
            candidates = {_workflow_of(b.tasks.rows.get(task_key)) if task_key else None}
            if task_key in workflows:
                candidates.add(workflows[task_key])
            for workflow_id in candidates:
                budget_keys.update(_budget_keys(pool, cost.agent_id, workflow_id))
        await _load(conn, b.budgets, budget_keys)

        # Budgets created in this batch start from the costs already in the database.
        c = tables.costs.c
        for budget_key in budget_sets - b.budgets.rows.keys():
            pool, scope, scope_id = budget_key
            query = sa.select(c.cost_usd).where(c.pool == pool)
            if scope == "agent":
                query = query.where(c.agent_id == scope_id)
            elif scope == "workflow":
                query = query.where(c.workflow_id == scope_id)
            b.prior_costs[budget_key] = list((await conn.scalars(query)).all())

    async def _write(self, conn: AsyncConnection, dialect: str, b: _Batch) -> None:
        """Write every changed row once: upserts for state, inserts for the append-only trails."""
        writes: list[tuple[sa.Table, list[Row], bool]] = []
        for state in (b.agents, b.tasks, b.allocations, b.budgets, b.limits, b.pools, b.timers,
                      b.performance, b.rate_limits, b.scaling_policies):
            inserts, upserts = state.changes()
            writes += [(state.table, inserts, False), (state.table, upserts, True)]
        writes += [
            (tables.costs, b.costs, False),
            (tables.assignments, b.assignments, False),
            (tables.rejections, b.rejections, False),
            (tables.scaling_decisions, b.scaling_decisions, False),
        ]
        for table, rows, upsert in writes:
            if not rows:
                continue
            if dialect == "sqlite":
                sql, to_params = _driver_statement(conn.dialect, table, upsert)
                await conn.exec_driver_sql(sql, [to_params(row) for row in rows])
            elif upsert:
                await conn.execute(_upsert(dialect, table), rows)
            else:
                await conn.execute(sa.insert(table), rows)

    async def _store_position(
        self, conn: AsyncConnection, dialect: str, topic: str, partition: int, start: int, end: int
    ) -> None:
        """Move the position from ``start`` to ``end``, failing if someone else moved it."""
        p = tables.positions
        ins = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(p).values(
            projector=self.name, topic=topic, partition=partition, next_offset=end
        )
        stmt = ins.on_conflict_do_update(
            index_elements=["projector", "topic", "partition"],
            set_={"next_offset": ins.excluded.next_offset},
            where=p.c.next_offset == start,
        )
        result = await conn.execute(stmt)
        if result.rowcount != 1:
            raise RuntimeError(
                f"projector {self.name!r} position in {topic}[{partition}] moved during an apply: "
                "two projectors are writing the same partition"
            )
