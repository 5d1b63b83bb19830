"""The command handler for a due durable timer, and what each kind of timer does when it fires.

A timer's effect happens only while its subject is still in the state the timer was armed for;
a late or repeated firing changes nothing. Pure: no I/O, and no clock either: a timer is due
because the timer service sent ``FireTimer``, never because this code looked at the time.
"""

from __future__ import annotations

from collections.abc import Callable

from contracts import Payload
from contracts import commands as c
from contracts import event_types as e
from services.domain import workflows
from services.domain.agents import leave, take_back
from services.domain.decision import DeciderConfig, Decision, dead_timer
from services.domain.state import PoolState, TimerState
from services.domain.tasks import deferral_over, failure, retry_policy


def fire(state: PoolState, cmd: c.FireTimer, config: DeciderConfig) -> list[Payload]:
    """A pending timer of this generation fires, with its effects in the same decision."""
    timer = state.timers.get(cmd.timer_id)
    if timer is None or timer.generation != cmd.generation:
        return []  # fired or cancelled already: a late or repeated firing changes nothing
    out = Decision(state)
    out.fired = timer.timer_id
    out.append(e.TimerFired(timer_id=timer.timer_id, kind=timer.kind, generation=timer.generation,
                            task_id=timer.task_id, agent_id=timer.agent_id))
    effect = _EFFECTS.get(timer.kind)
    if effect is not None:
        effect(state, timer, out)
    return out


def _task_timed_out(state: PoolState, timer: TimerState, out: Decision) -> None:
    """The run the timer watched is still going: it times out and counts as a failure."""
    task = state.tasks.get(timer.task_id or "")
    if task is not None and task.held and task.attempts == timer.attempt and task.agent_id:
        out.append(e.TaskTimedOut(task_id=task.task_id, agent_id=task.agent_id, attempt=task.attempts,
                                  timeout_s=task.timeout_s or 0.0))
        failure(state, task, task.agent_id, f"timed out after {task.timeout_s}s", out)


def _retry_due(state: PoolState, timer: TimerState, out: Decision) -> None:
    """A task waiting out its backoff goes back to the queue."""
    task = state.tasks.get(timer.task_id or "")
    if task is not None and task.status == "retrying" and task.failures == timer.attempt:
        policy = retry_policy(state, task, task.agent_id)  # the agent of the failed run
        total = policy.max_attempts if policy is not None else 1
        out.append(e.TaskRequeued(task_id=task.task_id, agent_id=task.agent_id or "",
                                  reason=f"retry: run {task.failures + 1} of {total}"))


def _deferral_over(state: PoolState, timer: TimerState, out: Decision) -> None:
    """A task its agent deferred goes back to the queue. (The coordinator's own deferral of a
    queued task leaves it queued: the firing only wakes the coordinator up.)"""
    task = state.tasks.get(timer.task_id or "")
    if task is not None and task.status == "queued" and task.deferred is not None:
        agent_id, reason = task.deferred
        out.append(e.TaskRequeued(task_id=task.task_id, agent_id=agent_id,
                                  reason=deferral_over(agent_id, reason)))


def _heartbeat_missed(state: PoolState, timer: TimerState, out: Decision) -> None:
    """A healthy agent went quiet: unhealthy, its tasks reassigned, declared dead after a grace."""
    agent = state.agents.get(timer.agent_id or "")
    if agent is not None and agent.active and agent.healthy:
        reason = f"no heartbeat for {agent.heartbeat_timeout_s}s"
        out.append(e.AgentMarkedUnhealthy(agent_id=agent.agent_id, reason=reason))
        take_back(agent, out, e.TaskReassigned, f"agent unhealthy: {reason}")
        grace = agent.heartbeat_timeout_s * state.policy.dead_after_timeouts
        out.schedule(dead_timer(agent.agent_id), "agent_dead", grace, agent_id=agent.agent_id)


def _agent_dead(state: PoolState, timer: TimerState, out: Decision) -> None:
    """An agent still unhealthy after the grace period leaves the pool."""
    agent = state.agents.get(timer.agent_id or "")
    if agent is not None and agent.active and not agent.healthy:
        reason = "agent declared dead: no heartbeat"
        leave(state, agent, out, reason)
        out.append(e.AgentDeregistered(agent_id=agent.agent_id, reason=reason))


def _circuit_cooled(state: PoolState, timer: TimerState, out: Decision) -> None:
    """An open breaker's cooldown is over: half-open, one trial task may go through."""
    agent = state.agents.get(timer.agent_id or "")
    if agent is not None and agent.active and agent.breaker == "open":
        out.append(e.CircuitHalfOpened(agent_id=agent.agent_id))


def _workflow_timed_out(state: PoolState, timer: TimerState, out: Decision) -> None:
    """A run's global timeout: if it is still open, it stops, timed out."""
    workflows.timed_out(state, timer.workflow_id or "", out)


def _signal_timed_out(state: PoolState, timer: TimerState, out: Decision) -> None:
    """A signal step still waiting fails."""
    workflows.signal_timed_out(state, timer.workflow_id or "", timer.step or "", out)


# TimerScheduled.kind -> its effect when it fires.
_EFFECTS: dict[str, Callable[[PoolState, TimerState, Decision], None]] = {
    "task_timeout": _task_timed_out,
    "retry": _retry_due,
    "defer": _deferral_over,
    "heartbeat": _heartbeat_missed,
    "agent_dead": _agent_dead,
    "circuit": _circuit_cooled,
    "workflow_timeout": _workflow_timed_out,
    "signal_timeout": _signal_timed_out,
}
