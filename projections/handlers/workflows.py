"""Workflow rows: runs, their steps, and named definitions.

A run's row and one row per step are written when it starts (``WorkflowStarted`` carries the
definition snapshot). A task step follows its task: the task events are the tasks family's, and
the followers here (``handlers.also``) move the step after the task row moved, so a step is
exactly as far as its task. A signal step follows the workflow events. A step's costs add up on
the step and on its run.

Which task runs a step is decided as the decider does: the task's ``data`` names the run and the
step (``projections.batch.step_key``), the run was known when the task was submitted, and the task
id is the step's (``contracts.workflows.step_task_id``). The step row keeps that task id; later
events of the task find the step through the task's data and must find that same id.

The run's counts of completed, failed and skipped steps are the decider's counts
(``services.workflows.machine``): a failure of a step with ``continue_on_failure`` is not the
run's. ``WorkflowEnded`` states them when the run ends; steps that end afterwards (work a spent
budget let finish) still count.
"""

from __future__ import annotations

from typing import Any

from contracts import Envelope
from contracts import event_types as ev
from contracts.money import to_micros
from contracts.workflows import step_task_id
from projections.batch import Batch, Row, step_key
from projections.handlers.registry import Registry
from projections.loading import NEW_RUN, RUN, STEP, STEP_OF_TASK

handlers = Registry()

# A step that has not ended (as ``services.workflows.machine.OPEN``): its run is running.
OPEN = frozenset({"queued", "assigned", "running", "retrying", "waiting"})


def _run(b: Batch, pool: str, workflow_id: str) -> Row:
    key = (pool, workflow_id)
    row = b.workflows.rows.get(key)
    if row is None:
        raise b.fail(f"unknown workflow {workflow_id!r}")
    b.workflows.touch(key)
    return row


def _named_step(b: Batch, pool: str, workflow_id: str, name: str) -> Row:
    key = (pool, workflow_id, name)
    row = b.workflow_steps.rows.get(key)
    if row is None:
        raise b.fail(f"workflow {workflow_id!r} has no step {name!r}")
    b.workflow_steps.touch(key)
    return row


def _step_of_task(b: Batch, pool: str, task_id: str | None) -> Row | None:
    """The step the task runs (None: it runs none)."""
    if task_id is None:
        return None
    task = b.tasks.rows.get((pool, task_id))
    key = None if task is None else step_key(pool, task["data"])
    if key is None:
        return None
    step = b.workflow_steps.rows.get(key)
    if step is None or step["task_id"] != task_id:
        return None
    b.workflow_steps.touch(key)
    return step


def _counts(step: Row) -> tuple[int, int, int]:
    """What the step adds to its run's (completed, failed, skipped) counts."""
    status = step["status"]
    return (status == "completed", status == "failed" and not step["continue_on_failure"],
            status == "skipped")


def _move(b: Batch, env: Envelope, step: Row, status: str, **changes: Any) -> Row:
    """Move ``step`` to ``status`` (with ``changes``), keeping its run's counts; the run runs from
    its first open step. Returns the run."""
    run = _run(b, step["pool"], step["workflow_id"])
    before = _counts(step)
    step.update(status=status, last_seq=env.sequence, **changes)
    after = _counts(step)
    run["completed_tasks"] += after[0] - before[0]
    run["failed_tasks"] += after[1] - before[1]
    run["skipped_tasks"] += after[2] - before[2]
    if status in OPEN and run["status"] == "queued":
        run.update(status="running", started_at=env.time)
    run["last_seq"] = env.sequence
    return run


# --- runs ---


@handlers.on(ev.WorkflowStarted, reads=(NEW_RUN,))
def _workflow_started(b: Batch, env: Envelope, d: ev.WorkflowStarted) -> None:
    key = (env.pool, d.workflow_id)
    if key in b.workflows.rows:
        raise b.fail(f"workflow {d.workflow_id!r} was already started")
    b.workflows.put(
        key,
        {
            "pool": env.pool,
            "workflow_id": d.workflow_id,
            "name": d.name,
            "version": d.version,
            "status": "queued",
            "created_at": env.time,
            "started_at": None,
            "ended_at": None,
            "total_tasks": d.total_tasks,
            "completed_tasks": 0,
            "failed_tasks": 0,
            "skipped_tasks": 0,
            "cost_micros": 0,
            "reason": None,
            "code": None,
            "definition": d.definition,
            "inputs": d.inputs,
            "position": b.offset,
            "last_seq": env.sequence,
        },
    )
    # The snapshot is a full WorkflowDefinition dump; defaults as services.workflows.machine reads it.
    for position, s in enumerate(d.definition.get("tasks", ())):
        b.workflow_steps.put(
            (env.pool, d.workflow_id, s["name"]),
            {
                "pool": env.pool,
                "workflow_id": d.workflow_id,
                "step": s["name"],
                "position": position,
                "kind": s.get("type", "task"),
                "depends_on": list(s.get("depends_on", ())),
                "continue_on_failure": bool(s.get("continue_on_failure", False)),
                "status": "pending",
                "task_id": None,
                "agent_id": None,
                "attempts": 0,
                "submitted_at": None,
                "started_at": None,
                "ended_at": None,
                "result": None,
                "error": None,
                "reason": None,
                "cost_micros": 0,
                "last_seq": env.sequence,
            },
        )


@handlers.on(ev.WorkflowEnded, reads=(RUN,))
def _workflow_ended(b: Batch, env: Envelope, d: ev.WorkflowEnded) -> None:
    run = _run(b, env.pool, d.workflow_id)
    run.update(status=d.status, reason=d.reason, code=d.code, ended_at=env.time,
               completed_tasks=d.completed_tasks, failed_tasks=d.failed_tasks,
               skipped_tasks=d.skipped_tasks, last_seq=env.sequence)


# --- steps the workflow events move (signal steps, and steps that end without a task) ---


@handlers.on(ev.WorkflowSignalAwaited, reads=(STEP,))
def _signal_awaited(b: Batch, env: Envelope, d: ev.WorkflowSignalAwaited) -> None:
    step = _named_step(b, env.pool, d.workflow_id, d.step)
    _move(b, env, step, "waiting", submitted_at=env.time, started_at=env.time)


@handlers.on(ev.WorkflowSignalled, reads=(STEP,))
def _signalled(b: Batch, env: Envelope, d: ev.WorkflowSignalled) -> None:
    # The signal completes the step once it waits (WorkflowStepCompleted says so, with the data).
    _named_step(b, env.pool, d.workflow_id, d.step)["last_seq"] = env.sequence
    _run(b, env.pool, d.workflow_id)["last_seq"] = env.sequence


@handlers.on(ev.WorkflowStepCompleted, reads=(STEP,))
def _step_completed(b: Batch, env: Envelope, d: ev.WorkflowStepCompleted) -> None:
    step = _named_step(b, env.pool, d.workflow_id, d.step)
    _move(b, env, step, "completed", result=d.result, ended_at=env.time)


@handlers.on(ev.WorkflowStepFailed, reads=(STEP,))
def _step_failed(b: Batch, env: Envelope, d: ev.WorkflowStepFailed) -> None:
    step = _named_step(b, env.pool, d.workflow_id, d.step)
    _move(b, env, step, "failed", error=d.error, ended_at=env.time)


@handlers.on(ev.WorkflowStepSkipped, reads=(STEP,))
def _step_skipped(b: Batch, env: Envelope, d: ev.WorkflowStepSkipped) -> None:
    step = _named_step(b, env.pool, d.workflow_id, d.step)
    _move(b, env, step, "skipped", reason=d.reason, ended_at=env.time)


# --- task steps follow their task (after the tasks family moved the task row) ---


@handlers.also(ev.TaskSubmitted, reads=(STEP_OF_TASK,))
def _step_submitted(b: Batch, env: Envelope, d: ev.TaskSubmitted) -> None:
    key = step_key(env.pool, d.data)
    step = None if key is None else b.workflow_steps.rows.get(key)
    # As the decider: a step of a known run, submitted under its own task id while pending.
    if (key is None or step is None or step["kind"] != "task" or step["status"] != "pending"
            or d.task_id != step_task_id(key[1], key[2])):
        return
    b.workflow_steps.touch(key)
    _move(b, env, step, "queued", task_id=d.task_id, submitted_at=env.time)


@handlers.also(ev.TaskAssigned, reads=(STEP_OF_TASK,))
def _step_assigned(b: Batch, env: Envelope, d: ev.TaskAssigned) -> None:
    step = _step_of_task(b, env.pool, d.task_id)
    if step is not None:
        _move(b, env, step, "assigned", agent_id=d.agent_id, attempts=d.attempt)


@handlers.also(ev.TaskStarted, reads=(STEP_OF_TASK,))
def _step_started(b: Batch, env: Envelope, d: ev.TaskStarted) -> None:
    step = _step_of_task(b, env.pool, d.task_id)
    if step is not None:
        # The step's start is its task's first start; a retried run does not move it.
        _move(b, env, step, "running", agent_id=d.agent_id, started_at=step["started_at"] or env.time)


@handlers.also(ev.TaskCompleted, reads=(STEP_OF_TASK,))
def _step_task_completed(b: Batch, env: Envelope, d: ev.TaskCompleted) -> None:
    step = _step_of_task(b, env.pool, d.task_id)
    if step is not None:
        _move(b, env, step, "completed", agent_id=d.agent_id, result=d.result, ended_at=env.time)


@handlers.also(ev.TaskFailed, reads=(STEP_OF_TASK,))
def _step_task_failed(b: Batch, env: Envelope, d: ev.TaskFailed) -> None:
    step = _step_of_task(b, env.pool, d.task_id)
    if step is not None:
        _move(b, env, step, "failed", agent_id=d.agent_id or step["agent_id"], error=d.error,
              ended_at=env.time)


@handlers.also(ev.TaskRetryScheduled, reads=(STEP_OF_TASK,))
def _step_task_retrying(b: Batch, env: Envelope, d: ev.TaskRetryScheduled) -> None:
    step = _step_of_task(b, env.pool, d.task_id)
    if step is not None:
        _move(b, env, step, "retrying", agent_id=d.agent_id or step["agent_id"], error=d.error)


@handlers.also(ev.TaskCancelled, reads=(STEP_OF_TASK,))
def _step_task_cancelled(b: Batch, env: Envelope, d: ev.TaskCancelled) -> None:
    step = _step_of_task(b, env.pool, d.task_id)
    if step is not None:
        _move(b, env, step, "cancelled", error=d.reason or step["error"], ended_at=env.time)


@handlers.also(ev.TaskRequeued, ev.TaskReassigned, reads=(STEP_OF_TASK,))
def _step_task_requeued(b: Batch, env: Envelope, d: ev.TaskRequeued | ev.TaskReassigned) -> None:
    step = _step_of_task(b, env.pool, d.task_id)
    if step is not None:
        _move(b, env, step, "queued", agent_id=None)


@handlers.also(ev.TaskDeferred, reads=(STEP_OF_TASK,))
def _step_task_deferred(b: Batch, env: Envelope, d: ev.TaskDeferred) -> None:
    # Deferred by its agent: back in the queue and still in flight (a coordinator's deferral
    # leaves a queued task, and its step, as they are).
    step = _step_of_task(b, env.pool, d.task_id) if d.agent_id is not None else None
    if step is not None:
        _move(b, env, step, "queued", agent_id=None)


@handlers.also(ev.CostRecorded, reads=(STEP_OF_TASK,))
def _step_cost(b: Batch, env: Envelope, d: ev.CostRecorded) -> None:
    step = _step_of_task(b, env.pool, d.task_id)
    if step is not None:
        cost = to_micros(d.cost_usd)
        step["cost_micros"] += cost
        _run(b, env.pool, step["workflow_id"])["cost_micros"] += cost


# --- named definitions ---


@handlers.on(ev.WorkflowDefinitionRegistered)
def _definition_registered(b: Batch, env: Envelope, d: ev.WorkflowDefinitionRegistered) -> None:
    # A version is registered once (the decider answers the same content again with no event),
    # so the row is inserted: a second one would fail the batch rather than change history.
    b.workflow_definitions.put(
        (env.pool, d.name, d.version),
        {
            "pool": env.pool,
            "name": d.name,
            "version": d.version,
            "definition": d.definition,
            "digest": d.digest,
            "registered_at": env.time,
            "position": b.offset,
        },
    )
