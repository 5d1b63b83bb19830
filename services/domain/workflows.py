"""Command handlers for workflow runs, and ``follow``: what a decision's events imply for the runs
their tasks belong to.

A run is state of its pool (``PoolState.workflows``, a ``services.workflows.machine.Run``). Its
steps are submitted by the workflow reactor as ordinary ``SubmitTask``s (checked here to be a step
that may start); each step's end is settled in the same decision that ended it (``follow``), so
a run never sits between a failed step and what its failure strategy says follows.

Pure: no I/O, no clock. Definitions were validated when the command was (``contracts.workflows``).
"""

from __future__ import annotations

import hashlib

import orjson

from contracts import Payload, Reason
from contracts import commands as c
from contracts import event_types as e
from contracts.money import to_usd
from contracts.workflows import FINAL_STATUSES, input_problems, step_task_id, with_defaults
from services.domain.decision import (
    DeciderConfig,
    Decision,
    Rejected,
    defer_timer,
    retry_timer,
    timeout_timer,
)
from services.domain.state import PoolState
from services.workflows.machine import Run, Settlement, Step, may_start, settle, stop


def workflow_timer(workflow_id: str) -> str:
    return f"workflow:{workflow_id}"


def signal_timer(workflow_id: str, step: str) -> str:
    return f"signal:{workflow_id}.{step}"


def run_of(state: PoolState, workflow_id: str) -> Run:
    """The run ``workflow_id``; rejects an unknown one."""
    run = state.workflows.get(workflow_id)
    if run is None:
        raise Rejected(
            Reason.UNKNOWN_WORKFLOW, f"workflow {workflow_id!r} does not exist", workflow_id=workflow_id
        )
    return run


def open_run(state: PoolState, workflow_id: str) -> Run:
    """The run ``workflow_id``, which must not have ended."""
    run = run_of(state, workflow_id)
    if not run.open:
        raise Rejected(
            Reason.INVALID_WORKFLOW_STATE,
            f"workflow {workflow_id!r} is {run.status}",
            workflow_id=workflow_id,
            status=run.status,
        )
    return run


def step_of(run: Run, name: str, kind: str | None = None) -> Step:
    step = run.steps.get(name)
    if step is None or (kind is not None and step.kind != kind):
        what = "step" if kind is None else f"{kind} step"
        raise Rejected(
            Reason.UNKNOWN_STEP,
            f"workflow {run.workflow_id!r} has no {what} {name!r}",
            workflow_id=run.workflow_id,
            step=name,
        )
    return step


# -- commands --------------------------------------------------------------------------------------


def start(state: PoolState, cmd: c.StartWorkflow, config: DeciderConfig) -> list[Payload]:
    """A new run: the definition snapshot and its inputs; its budget and global timeout."""
    if cmd.workflow_id in state.workflows:
        raise Rejected(
            Reason.WORKFLOW_EXISTS,
            f"workflow {cmd.workflow_id!r} already exists",
            workflow_id=cmd.workflow_id,
        )
    defn = cmd.definition
    problems = input_problems(defn, cmd.inputs)
    if problems:
        raise Rejected(
            Reason.INVALID_COMMAND,
            "; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems),
            workflow_id=cmd.workflow_id,
        )
    out = Decision(state)
    out.append(
        e.WorkflowStarted(
            workflow_id=cmd.workflow_id,
            name=defn.name,
            version=defn.version,
            definition=defn.model_dump(mode="json"),
            inputs=with_defaults(defn, cmd.inputs),
            total_tasks=len(defn.tasks),
        )
    )
    if defn.cost_budget is not None:
        out.append(e.BudgetSet(scope="workflow", scope_id=cmd.workflow_id, limit_usd=defn.cost_budget))
    if defn.global_timeout is not None:
        out.schedule(
            workflow_timer(cmd.workflow_id),
            "workflow_timeout",
            defn.global_timeout,
            workflow_id=cmd.workflow_id,
        )
    return out


def cancel(state: PoolState, cmd: c.CancelWorkflow, config: DeciderConfig) -> list[Payload]:
    """A run that has not ended stops: open steps cancelled, pending ones skipped."""
    run = open_run(state, cmd.workflow_id)
    reason = cmd.reason or "cancelled"
    out = Decision(state)
    end(state, run, stop(run, f"workflow cancelled: {reason}"), "cancelled", reason, None, out)
    return out


def signal(state: PoolState, cmd: c.SignalWorkflow, config: DeciderConfig) -> list[Payload]:
    """A signal for one of the run's signal steps: completes it if it waits, else is kept until it does."""
    run = open_run(state, cmd.workflow_id)
    step = step_of(run, cmd.name, "signal")
    if step.status not in ("pending", "waiting") or step.signal is not None:
        raise Rejected(
            Reason.INVALID_WORKFLOW_STATE,
            f"signal {step.name!r} of workflow {run.workflow_id!r} was already "
            f"{'received' if step.signal is not None or step.status == 'completed' else step.status}",
            workflow_id=run.workflow_id,
            step=step.name,
            status=step.status,
        )
    out = Decision(state)
    out.append(e.WorkflowSignalled(workflow_id=run.workflow_id, step=step.name, data=cmd.data))
    if step.status == "waiting":
        out.cancel(signal_timer(run.workflow_id, step.name), "signal received")
        out.append(e.WorkflowStepCompleted(workflow_id=run.workflow_id, step=step.name, result=cmd.data))
    return out


def await_signal(state: PoolState, cmd: c.AwaitSignal, config: DeciderConfig) -> list[Payload]:
    """A signal step may start: it waits (or completes at once with a signal that came early)."""
    run = run_of(state, cmd.workflow_id)
    step = step_of(run, cmd.step, "signal")
    _may_start(run, step)
    out = Decision(state)
    out.append(e.WorkflowSignalAwaited(workflow_id=run.workflow_id, step=step.name, timeout_s=step.timeout))
    if step.signal is not None:
        out.append(e.WorkflowStepCompleted(workflow_id=run.workflow_id, step=step.name, result=step.signal))
    elif step.timeout is not None:
        out.schedule(
            signal_timer(run.workflow_id, step.name),
            "signal_timeout",
            step.timeout,
            workflow_id=run.workflow_id,
            step=step.name,
        )
    return out


def fail_step(state: PoolState, cmd: c.FailWorkflowStep, config: DeciderConfig) -> list[Payload]:
    """A step that could not start (its submission was refused, its templates did not resolve) fails."""
    run = open_run(state, cmd.workflow_id)
    step = step_of(run, cmd.step)
    if step.status != "pending":
        raise Rejected(
            Reason.INVALID_WORKFLOW_STATE,
            f"step {step.name!r} is {step.status}",
            workflow_id=run.workflow_id,
            step=step.name,
            status=step.status,
        )
    return [e.WorkflowStepFailed(workflow_id=run.workflow_id, step=step.name, error=cmd.error)]


def register_definition(
    state: PoolState, cmd: c.RegisterWorkflowDefinition, config: DeciderConfig
) -> list[Payload]:
    """A named definition at a version not stored yet (the same content again changes nothing)."""
    defn = cmd.definition
    snapshot = defn.model_dump(mode="json")
    digest = hashlib.sha256(orjson.dumps(snapshot, option=orjson.OPT_SORT_KEYS)).hexdigest()
    known = state.definitions.get((defn.name, defn.version))
    if known == digest:
        return []
    if known is not None:
        raise Rejected(
            Reason.DEFINITION_EXISTS,
            f"workflow definition {defn.name!r} version {defn.version!r} exists with other "
            "content; a version never changes: register a new version",
            name=defn.name,
            version=defn.version,
        )
    return [
        e.WorkflowDefinitionRegistered(
            name=defn.name, version=defn.version, definition=snapshot, digest=digest
        )
    ]


def check_step_submission(state: PoolState, cmd: c.SubmitTask) -> None:
    """A task that claims to run a step of a run in this pool must be that step's, and it may start."""
    data = cmd.data
    workflow_id, name = data.get("workflow_id"), data.get("step")
    if not isinstance(workflow_id, str) or workflow_id not in state.workflows:
        return  # not a run's step (a task may name a workflow only to share its budget)
    run = state.workflows[workflow_id]
    if not isinstance(name, str):
        return
    step = step_of(run, name, "task")
    if cmd.task_id != step_task_id(workflow_id, name):
        raise Rejected(
            Reason.INVALID_COMMAND,
            f"step {name!r} of workflow {workflow_id!r} runs as task "
            f"{step_task_id(workflow_id, name)!r}, not {cmd.task_id!r}",
            workflow_id=workflow_id,
            step=name,
        )
    _may_start(run, step)


def _may_start(run: Run, step: Step) -> None:
    why = may_start(run, step)
    if why is not None:
        code = (
            Reason.INVALID_WORKFLOW_STATE
            if not run.open or step.status != "pending"
            else Reason.STEP_NOT_READY
        )
        raise Rejected(code, why, workflow_id=run.workflow_id, step=step.name)


# -- what a decision implies for the runs --------------------------------------------------------


def follow(state: PoolState, events: list[Payload]) -> list[Payload]:
    """The events that settle the runs whose steps this decision ended (or whose budget it spent),
    appended to ``events``: cancellations and skips per the failure strategy, and the run's end."""
    if not state.workflows:
        return events
    changed: dict[str, dict[str, str]] = {}
    spent: list[str] = []
    ended: set[str] = set()
    step_of_task = state.step_of_task
    for ev in events:
        t = type(ev)
        # Only a task's end ends its step: a retry, a requeue or a deferral by its agent leaves the
        # step in flight (its status follows the task's in ``evolve``).
        if t is e.TaskCompleted or t is e.TaskFailed or t is e.TaskCancelled:
            where = step_of_task.get(ev.task_id)  # type: ignore[attr-defined]
            if where is not None:
                status = (
                    "completed" if t is e.TaskCompleted else "failed" if t is e.TaskFailed else "cancelled"
                )
                changed.setdefault(where[0], {})[where[1]] = status
        elif t is e.WorkflowStepCompleted:
            changed.setdefault(ev.workflow_id, {})[ev.step] = "completed"  # type: ignore[attr-defined]
        elif t is e.WorkflowStepFailed:
            changed.setdefault(ev.workflow_id, {})[ev.step] = "failed"  # type: ignore[attr-defined]
        elif t is e.BudgetExceeded and ev.scope == "workflow":  # type: ignore[attr-defined]
            spent.append(ev.scope_id)  # type: ignore[attr-defined]
        elif t is e.WorkflowEnded:
            ended.add(ev.workflow_id)  # type: ignore[attr-defined]
    if not changed and not spent:
        return events
    out = Decision(state)
    # Timers this decision armed or fired already: number after them, and leave the fired one be.
    armed = [ev.generation for ev in events if isinstance(ev, e.TimerScheduled)]
    out.generation = max([state.timer_seq, *armed])
    out.fired = next((ev.timer_id for ev in events if isinstance(ev, e.TimerFired)), None)
    for workflow_id in spent:
        run = state.workflows.get(workflow_id)
        if run is not None and run.open and workflow_id not in ended:
            limit = to_usd(state.budgets.get(("workflow", workflow_id), 0))
            reason = f"workflow budget of {limit} USD is spent"
            end(state, run, _pending_only(stop(run, reason)), "failed", reason, Reason.BUDGET_EXCEEDED, out)
            ended.add(workflow_id)
    for workflow_id, steps in changed.items():
        run = state.workflows.get(workflow_id)
        if run is None or not run.open or workflow_id in ended:
            continue
        settlement = settle(run, steps)
        if settlement.cancel or settlement.skip or settlement.final is not None:
            end(state, run, settlement, settlement.final, settlement.reason, None, out)
    events.extend(out)
    return events


def _pending_only(s: Settlement) -> Settlement:
    """A spent budget stops what has not started; running work goes on (and is flagged)."""
    s.cancel = []
    return s


def end(
    state: PoolState,
    run: Run,
    s: Settlement,
    final: str | None,
    reason: str | None,
    code: str | None,
    out: Decision,
) -> None:
    """Append a settlement: cancel and skip its steps and, with ``final``, end the run."""
    for step in s.cancel:
        task = state.tasks.get(step_task_id(run.workflow_id, step.name))
        if task is not None and task.open:
            out.append(
                e.TaskCancelled(
                    task_id=task.task_id,
                    agent_id=task.agent_id,
                    reason=f"workflow {run.workflow_id}: {reason or final}",
                )
            )
            out.cancel(timeout_timer(task.task_id), "task cancelled")
            out.cancel(retry_timer(task.task_id), "task cancelled")
            if task.deferred is not None:
                out.cancel(defer_timer(task.task_id), "task cancelled")
    for step, why in s.skip:
        if step.status == "waiting":
            out.cancel(signal_timer(run.workflow_id, step.name), "step skipped")
        out.append(e.WorkflowStepSkipped(workflow_id=run.workflow_id, step=step.name, reason=why))
    if final is None:
        return
    assert final in FINAL_STATUSES
    completed, failed, skipped = s.counts
    out.cancel(workflow_timer(run.workflow_id), f"workflow {final}")
    out.append(
        e.WorkflowEnded(
            workflow_id=run.workflow_id,
            status=final,
            reason=reason,
            code=code,
            completed_tasks=completed,
            failed_tasks=failed,
            skipped_tasks=skipped,
        )
    )


def timed_out(state: PoolState, workflow_id: str, out: Decision) -> None:
    """The run's global timeout fired while it was open: it stops, ``timed_out``."""
    run = state.workflows.get(workflow_id)
    if run is not None and run.open:
        reason = f"global timeout of {run.timeout}s reached"
        end(state, run, stop(run, reason), "timed_out", reason, None, out)


def signal_timed_out(state: PoolState, workflow_id: str, name: str, out: Decision) -> None:
    """A signal step still waiting when its timer fired fails (settled by ``follow``)."""
    run = state.workflows.get(workflow_id)
    step = None if run is None else run.steps.get(name)
    if run is not None and run.open and step is not None and step.status == "waiting":
        out.append(
            e.WorkflowStepFailed(
                workflow_id=workflow_id,
                step=name,
                error=f"signal {name!r} not received within {step.timeout}s",
            )
        )


__all__ = [
    "await_signal",
    "cancel",
    "check_step_submission",
    "fail_step",
    "follow",
    "register_definition",
    "signal",
    "signal_timed_out",
    "start",
    "timed_out",
]
