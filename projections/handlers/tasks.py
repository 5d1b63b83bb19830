"""Task rows and the assignment trail: submission, assignment, runs, outcomes (with the failure's
code and whether it could be retried), retries, deferrals (by the coordinator, or by the agent
holding the task, which frees its slot and queues the task again after the delay).

A task that moves holds or frees its agent (the agent's load) through ``Batch.hold``; each
assignment appends its audit row, with the position it was decided at.

A queued or retrying task says why it waits (``waiting_reason``). Back in the queue it waits for
a busy agent: the default, which the coordinator never puts on the log for each task (a queue of
thousands behind busy agents would cost thousands of events). Every other reason is the
coordinator's or the decider's event: TaskUnassignable, TaskDeferred (rate_limited, or
deferred_by_agent), TaskRetryScheduled and TaskWaiting (budgets spent, circuits open, agents
unhealthy, or back to busy).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from contracts import Envelope
from contracts import event_types as ev
from projections.batch import Batch, after
from projections.handlers.registry import Registry
from projections.loading import AGENT, NEW_TASK, TASK

handlers = Registry()

BUSY = "all_capable_agents_busy"


def waiting(code: str, since: datetime, **details: Any) -> dict[str, Any]:
    """A ``waiting_reason``: its code, since when, and the details that apply (times as ISO 8601)."""
    out: dict[str, Any] = {"code": code, "since": since.isoformat()}
    for key, value in details.items():
        if value is None or value == ():
            continue
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


@handlers.on(ev.TaskSubmitted, reads=(NEW_TASK,))
def _task_submitted(b: Batch, env: Envelope, d: ev.TaskSubmitted) -> None:
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
            "action": d.action,
            "parameters": d.parameters,
            "pinned_agent_id": d.agent_id,
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
            "deferred_by": None,
            "waiting_reason": waiting(BUSY, env.time),
            "budget_flag": None,
            "budget_flagged_at": None,
            "submitted_at": env.time,
            "assigned_at": None,
            "started_at": None,
            "finished_at": None,
            "error": None,
            "error_code": None,
            "retryable": None,
            "result": None,
            "last_seq": env.sequence,
        },
    )


@handlers.on(ev.TaskAssigned, reads=(TASK, AGENT))
def _task_assigned(b: Batch, env: Envelope, d: ev.TaskAssigned) -> None:
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
        deferred_by=None,
        waiting_reason=None,
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


@handlers.on(ev.TaskStarted, reads=(TASK, AGENT))
def _task_started(b: Batch, env: Envelope, d: ev.TaskStarted) -> None:
    task = b.task(env.pool, d.task_id)
    b.hold(task, d.agent_id)
    task.update(status="running", agent_id=d.agent_id, started_at=env.time, last_seq=env.sequence)


@handlers.on(ev.TaskCompleted, reads=(TASK, AGENT))
def _task_completed(b: Batch, env: Envelope, d: ev.TaskCompleted) -> None:
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
        waiting_reason=None,
        last_seq=env.sequence,
    )


@handlers.on(ev.TaskFailed, reads=(TASK, AGENT))
def _task_failed(b: Batch, env: Envelope, d: ev.TaskFailed) -> None:
    task = b.task(env.pool, d.task_id)
    b.hold(task, None)
    if d.agent_id is not None:
        agent = b.agent(env.pool, d.agent_id)
        agent["tasks_failed"] += 1
        if d.retryable:  # as the decider: a failure retrying cannot help is not the agent's
            agent["consecutive_failures"] += 1
        task["agent_id"] = d.agent_id
    task["failures"] += 1
    task.update(status="failed", error=d.error, error_code=d.error_code, retryable=d.retryable,
                finished_at=env.time, waiting_reason=None, last_seq=env.sequence)


@handlers.on(ev.TaskCancelled, reads=(TASK, AGENT))
def _task_cancelled(b: Batch, env: Envelope, d: ev.TaskCancelled) -> None:
    task = b.task(env.pool, d.task_id)
    b.hold(task, None)
    task.update(status="cancelled", finished_at=env.time, next_attempt_at=None, waiting_reason=None,
                last_seq=env.sequence)
    if d.reason is not None:
        task.update(error=d.reason, error_code=None, retryable=None)


@handlers.on(ev.TaskRequeued, reads=(TASK, AGENT))
def _task_requeued(b: Batch, env: Envelope, d: ev.TaskRequeued | ev.TaskReassigned) -> None:
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
        waiting_reason=waiting(BUSY, env.time),
        last_seq=env.sequence,
    )


@handlers.on(ev.TaskReassigned, reads=(TASK, AGENT))
def _task_reassigned(b: Batch, env: Envelope, d: ev.TaskReassigned) -> None:
    _task_requeued(b, env, d)
    b.task(env.pool, d.task_id)["reassignments"] += 1


@handlers.on(ev.TaskTimedOut, reads=(TASK,))
def _task_timed_out(b: Batch, env: Envelope, d: ev.TaskTimedOut) -> None:
    # The failure itself (retry or final) follows as its own event.
    task = b.task(env.pool, d.task_id)
    task["timeouts"] += 1
    task["last_seq"] = env.sequence


@handlers.on(ev.TaskRetryScheduled, reads=(TASK, AGENT))
def _task_retry_scheduled(b: Batch, env: Envelope, d: ev.TaskRetryScheduled) -> None:
    task = b.task(env.pool, d.task_id)
    b.hold(task, None)
    if d.agent_id is not None:
        b.agent(env.pool, d.agent_id)["consecutive_failures"] += 1
        task["agent_id"] = d.agent_id
    task["failures"] += 1
    until = after(env.time, d.delay_s)
    task.update(
        status="retrying",
        error=d.error,
        error_code=d.error_code,
        retryable=True,
        next_attempt_at=until,
        waiting_reason=waiting("retry_backoff", env.time, until=until, attempt=d.attempt),
        last_seq=env.sequence,
    )


@handlers.on(ev.TaskUnassignable, reads=(TASK,))
def _task_unassignable(b: Batch, env: Envelope, d: ev.TaskUnassignable) -> None:
    task = b.task(env.pool, d.task_id)
    task.update(
        unassignable={"missing": list(d.missing), "best_match": d.best_match,
                      "threshold": d.threshold},
        unassignable_at=env.time,
        waiting_reason=waiting("no_capable_agent", env.time, missing=d.missing, best_match=d.best_match,
                               threshold=d.threshold),
        last_seq=env.sequence,
    )


@handlers.on(ev.TaskDeferred, reads=(TASK, AGENT))
def _task_deferred(b: Batch, env: Envelope, d: ev.TaskDeferred) -> None:
    task = b.task(env.pool, d.task_id)
    until = after(env.time, d.delay_s)
    if d.agent_id is not None:
        # Its agent gave it back: queued again (the agent's slot free, no failure counted), and
        # given to no agent until ``until``, when the decider requeues it.
        b.hold(task, None)
        task.update(
            status="queued",
            agent_id=None,
            assigned_at=None,
            started_at=None,
            finished_at=None,
            next_attempt_at=None,
            requeue_reason=f"deferred by agent {d.agent_id} ({d.reason})",
            deferred_reason=d.reason,
            deferred_until=until,
            deferred_by=d.agent_id,
            waiting_reason=waiting("deferred_by_agent", env.time, until=until, agent_id=d.agent_id,
                                   reason=d.reason, delay_s=d.delay_s),
            last_seq=env.sequence,
        )
        return
    # Deferred: capable agents exist, but none may take it until then (the coordinator defers
    # for rate limits; another reason is kept as given).
    reason = None if d.reason == "RATE_LIMITED" else d.reason
    task.update(deferred_reason=d.reason, deferred_until=until, deferred_by=None,
                waiting_reason=waiting("rate_limited", env.time, until=until, reason=reason),
                last_seq=env.sequence)


@handlers.on(ev.TaskWaiting, reads=(TASK,))
def _task_waiting(b: Batch, env: Envelope, d: ev.TaskWaiting) -> None:
    task = b.task(env.pool, d.task_id)
    task.update(waiting_reason=waiting(d.code, env.time, scope=d.scope, scope_id=d.scope_id,
                                       agents=d.agents, until=d.until),
                last_seq=env.sequence)


@handlers.on(ev.TaskBudgetFlagged, reads=(TASK,))
def _task_budget_flagged(b: Batch, env: Envelope, d: ev.TaskBudgetFlagged) -> None:
    task = b.task(env.pool, d.task_id)
    task.update(budget_flag={"scope": d.scope, "scope_id": d.scope_id},
                budget_flagged_at=env.time, last_seq=env.sequence)
