"""Command handlers for a task's life: submitted (pinned to an agent by id or name), assigned,
started, completed, failed (then retried or not), cancelled, deferred by the agent holding it, and
marked unassignable, deferred or noted as waiting by the coordinator.

Pure: handlers read the state and return events (or raise ``Rejected``); they never change the
state, do no I/O and read no clock. Retry delays come from ``retries`` (replay-stable jitter).
"""

from __future__ import annotations

from contracts import Payload, Reason
from contracts import commands as c
from contracts import event_types as e
from contracts.budgets import workflow_of
from contracts.commands import STRATEGIES, RetryPolicy
from services.domain.agents import breaker_failure
from services.domain.budgets import check_budget
from services.domain.capabilities import DEFAULT_RULES, capability_match, infer
from services.domain.decision import (
    EPSILON,
    DeciderConfig,
    Decision,
    Rejected,
    agent_named,
    agent_of,
    defer_timer,
    holder_of,
    retry_timer,
    task_of,
    task_workflow,
    timeout_timer,
)
from services.domain.retries import attempts_left, retry_delay
from services.domain.state import PoolState, TaskState
from services.domain.workflows import check_step_submission


def submit(state: PoolState, cmd: c.SubmitTask, config: DeciderConfig) -> list[Payload]:
    """A new task, while its pool's and workflow's budgets have money left; records the
    capabilities its data implies, so the coordinator and replay see the same ones."""
    if cmd.task_id in state.tasks:
        raise Rejected(Reason.TASK_EXISTS, f"task {cmd.task_id!r} already exists", task_id=cmd.task_id)
    if cmd.strategy is not None and cmd.strategy not in STRATEGIES:
        raise Rejected(Reason.UNKNOWN_STRATEGY,
                       f"unknown strategy {cmd.strategy!r}; use one of {', '.join(STRATEGIES)}",
                       task_id=cmd.task_id, strategy=cmd.strategy)
    pinned = _pin(state, cmd)
    check_budget(state, "pool", state.pool)
    check_budget(state, "workflow", workflow_of(cmd.data))
    check_step_submission(state, cmd)
    rules = state.policy.inference_rules
    inferred = infer(cmd.data, DEFAULT_RULES if rules is None else rules, cmd.required_capabilities)
    # The event carries the pin resolved to an id (and the name as given, for the audit): a name
    # resolves differently once agents come and go, and replay must not resolve it again.
    return [e.TaskSubmitted(**cmd.model_dump(exclude={"agent_id"}), agent_id=pinned,
                            inferred_capabilities=inferred)]


def _pin(state: PoolState, cmd: c.SubmitTask) -> str | None:
    """The agent a new task is pinned to: ``agent_id`` as given (it may register later), or the
    agent ``agent_name`` names now; rejects a name no agent has, and an id and a name that differ."""
    name = cmd.agent_name
    if name is None or name == cmd.agent_id:
        return cmd.agent_id
    resolved = agent_named(state, name)
    if resolved is None:
        raise Rejected(Reason.UNKNOWN_AGENT,
                       f"no agent has the id {name!r}, and no active agent has the name {name!r}",
                       task_id=cmd.task_id, agent_name=name)
    if cmd.agent_id is not None and cmd.agent_id != resolved:
        raise Rejected(Reason.INVALID_COMMAND,
                       f"agent_id {cmd.agent_id!r} and agent_name {name!r} name different agents "
                       f"({name!r} is agent {resolved!r}); give one, or both naming the same agent",
                       task_id=cmd.task_id, agent_id=cmd.agent_id, agent_name=name, resolved=resolved)
    return resolved


def assign(state: PoolState, cmd: c.AssignTask, config: DeciderConfig) -> list[Payload]:
    """The coordinator's choice, checked again: the agent may have gone, filled up or tripped."""
    task = task_of(state, cmd.task_id, "queued")
    agent = agent_of(state, cmd.agent_id)
    if task.deferred is not None:
        raise Rejected(Reason.INVALID_TASK_STATE,
                       f"task {task.task_id!r} was deferred by agent {task.deferred[0]!r} "
                       f"({task.deferred[1]}): it is queued again when its delay is over",
                       task_id=task.task_id, status="deferred", deferred_by=task.deferred[0])
    if task.pinned is not None and task.pinned != agent.agent_id:
        raise Rejected(Reason.WRONG_AGENT, f"task {task.task_id!r} is pinned to agent {task.pinned!r}",
                       task_id=task.task_id, agent_id=agent.agent_id, pinned=task.pinned)
    if not agent.healthy:
        raise Rejected(Reason.AGENT_UNHEALTHY, f"agent {agent.agent_id!r} missed its heartbeat",
                       task_id=task.task_id, agent_id=agent.agent_id)
    if agent.breaker == "open" or (agent.breaker == "half_open" and agent.tasks):
        raise Rejected(Reason.CIRCUIT_OPEN,
                       f"agent {agent.agent_id!r}'s circuit breaker is {agent.breaker}",
                       task_id=task.task_id, agent_id=agent.agent_id, breaker=agent.breaker)
    missing = task.required - agent.capabilities
    if missing:
        match = capability_match(task.required, agent.capabilities)
        threshold = state.policy.min_capability_match
        if not cmd.allow_partial or threshold >= 1.0 or match + EPSILON < threshold:
            raise Rejected(Reason.CAPABILITY_MISMATCH,
                           f"agent {agent.agent_id!r} lacks {sorted(missing)}",
                           task_id=task.task_id, agent_id=agent.agent_id, missing=sorted(missing),
                           match=round(match, 6), threshold=threshold)
    if len(agent.tasks) >= agent.capacity:
        raise Rejected(Reason.AGENT_OVER_CAPACITY,
                       f"agent {agent.agent_id!r} holds {len(agent.tasks)} of {agent.capacity} tasks",
                       task_id=task.task_id, agent_id=agent.agent_id)
    check_budget(state, "pool", state.pool)
    check_budget(state, "agent", agent.agent_id)
    check_budget(state, "workflow", task_workflow(task))
    out = Decision(state)
    out.append(e.TaskAssigned(task_id=task.task_id, agent_id=agent.agent_id, attempt=task.attempts + 1,
                              audit=cmd.audit, capability_gap=tuple(sorted(missing))))
    if task.timeout_s is not None:
        out.schedule(timeout_timer(task.task_id), "task_timeout", task.timeout_s,
                     task_id=task.task_id, agent_id=agent.agent_id, attempt=task.attempts + 1)
    return out


def start(state: PoolState, cmd: c.StartTask, config: DeciderConfig) -> list[Payload]:
    """The holder of an assigned task begins work."""
    task = task_of(state, cmd.task_id, "assigned")
    return [e.TaskStarted(task_id=task.task_id, agent_id=holder_of(task, cmd.agent_id))]


def complete(state: PoolState, cmd: c.CompleteTask, config: DeciderConfig) -> list[Payload]:
    """A held task succeeds; a success on a half-open breaker closes it."""
    task = task_of(state, cmd.task_id, "assigned", "running")
    holder = holder_of(task, cmd.agent_id)
    out = Decision(state)
    out.append(e.TaskCompleted(task_id=task.task_id, agent_id=holder, result=cmd.result))
    out.cancel(timeout_timer(task.task_id), "run ended")
    trial = state.agents.get(holder)
    if trial is not None and trial.active and trial.breaker == "half_open":
        out.append(e.CircuitClosed(agent_id=holder))
    return out


def fail(state: PoolState, cmd: c.FailTask, config: DeciderConfig) -> list[Payload]:
    """A held task's run failed (retryable or not, with the failure's code)."""
    task = task_of(state, cmd.task_id, "assigned", "running")
    out = Decision(state)
    failure(state, task, holder_of(task, cmd.agent_id), cmd.error, out, code=cmd.error_code,
            retryable=cmd.retryable)
    return out


def cancel(state: PoolState, cmd: c.CancelTask, config: DeciderConfig) -> list[Payload]:
    """A task that has not ended stops, with its timers."""
    task = task_of(state, cmd.task_id, "queued", "assigned", "running", "retrying")
    out = Decision(state)
    out.append(e.TaskCancelled(task_id=task.task_id, agent_id=task.agent_id, reason=cmd.reason))
    out.cancel(timeout_timer(task.task_id), "task cancelled")
    out.cancel(retry_timer(task.task_id), "task cancelled")
    if task.deferred is not None:
        out.cancel(defer_timer(task.task_id), "task cancelled")
    return out


def mark_unassignable(state: PoolState, cmd: c.MarkTaskUnassignable, config: DeciderConfig) -> list[Payload]:
    """The coordinator found no agent with the capabilities a queued task needs."""
    task = task_of(state, cmd.task_id, "queued")
    return [e.TaskUnassignable(task_id=task.task_id, missing=cmd.missing, best_match=cmd.best_match,
                               threshold=cmd.threshold)]


def defer(state: PoolState, cmd: c.DeferTask, config: DeciderConfig) -> list[Payload]:
    """The coordinator puts a queued task aside (a timer wakes it up again); or, with ``agent_id``,
    the agent holding a task gives it back for ``delay_s`` without spending an attempt."""
    if cmd.agent_id is not None:
        return _deferred_by_holder(state, cmd)
    task = task_of(state, cmd.task_id, "queued")
    out = Decision(state)
    out.append(e.TaskDeferred(task_id=task.task_id, reason=cmd.reason, delay_s=cmd.delay_s))
    out.schedule(defer_timer(task.task_id), "defer", cmd.delay_s, task_id=task.task_id)
    return out


def _deferred_by_holder(state: PoolState, cmd: c.DeferTask) -> list[Payload]:
    """The holder's slot is freed and its run ends uncounted (no failure, the breaker untouched: the
    target asked for time, nothing failed); the defer timer queues the task again, and until then
    the decider refuses to assign it (``assign``)."""
    task = task_of(state, cmd.task_id, "assigned", "running")
    holder = holder_of(task, cmd.agent_id)
    out = Decision(state)
    out.append(e.TaskDeferred(task_id=task.task_id, reason=cmd.reason, delay_s=cmd.delay_s, agent_id=holder))
    out.cancel(timeout_timer(task.task_id), "task deferred")
    if cmd.delay_s > 0:
        out.schedule(defer_timer(task.task_id), "defer", cmd.delay_s, task_id=task.task_id, agent_id=holder)
    else:
        out.append(e.TaskRequeued(task_id=task.task_id, agent_id=holder,
                                  reason=deferral_over(holder, cmd.reason)))
    return out


def deferral_over(agent_id: str, reason: str) -> str:
    """Why a task its agent deferred is back in the queue (``TaskRequeued.reason``)."""
    return f"deferred by agent {agent_id} ({reason}): back in the queue"


def note_waiting(state: PoolState, cmd: c.NoteTaskWaiting, config: DeciderConfig) -> list[Payload]:
    """The coordinator records why a queued task waits, now that the reason changed."""
    task_of(state, cmd.task_id, "queued")
    return [e.TaskWaiting(**cmd.model_dump())]


def retry_policy(state: PoolState, task: TaskState, agent_id: str | None) -> RetryPolicy | None:
    """How a failed run of ``task`` on ``agent_id`` is retried: the task's own policy, else the
    agent's default (``RegisterAgent.retry``), else none."""
    if task.retry is not None or agent_id is None:
        return task.retry
    agent = state.agents.get(agent_id)
    return None if agent is None else agent.retry


def failure(state: PoolState, task: TaskState, agent_id: str | None, error: str, out: Decision, *,
            code: str | None = None, retryable: bool = True) -> None:
    """A run of a held task failed: retry it after its backoff, or fail it for good (at once when
    the failure says running it again cannot help)."""
    out.cancel(timeout_timer(task.task_id), "run ended")
    failures = task.failures + 1
    policy = retry_policy(state, task, agent_id)
    if retryable and attempts_left(policy, failures):
        assert policy is not None
        delay = retry_delay(policy, task.task_id, failures)
        out.append(e.TaskRetryScheduled(task_id=task.task_id, agent_id=agent_id, error=error,
                                        attempt=failures, delay_s=delay, error_code=code))
        if delay > 0:
            out.schedule(retry_timer(task.task_id), "retry", delay, task_id=task.task_id, attempt=failures)
        else:
            out.append(e.TaskRequeued(task_id=task.task_id, agent_id=agent_id or "",
                                      reason=f"retry after failed run {failures}"))
    else:
        out.append(e.TaskFailed(task_id=task.task_id, agent_id=agent_id, error=error, attempt=task.attempts,
                                error_code=code, retryable=retryable))
    # A failure running again cannot help (a 404, a request the target refuses) says the task is
    # wrong, not that the agent is failing: it leaves the agent's breaker and its run of failures
    # alone, so a batch of bad tasks does not lock a healthy agent out of the good ones.
    if agent_id is not None and retryable:
        breaker_failure(state, agent_id, out)
