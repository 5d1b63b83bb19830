"""What every command handler decides with: the rejection, the settings, lookups that reject, and
the builder of a decision's events (which numbers and cancels durable timers).

Pure: no I/O, no clock. Lookups read the state and never change it; only ``evolve`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contracts import Payload, Reason
from contracts import event_types as e
from services.domain.state import AgentState, PoolState, TaskState


@dataclass(frozen=True)
class DeciderConfig:
    """Deterministic settings the decider reads (never changes mid-history). Empty: whatever a
    decision depends on is in the log (prices are the pool's, ``services.domain.prices``)."""


# Resource amounts are floats: compare with a tolerance and keep sums rounded, so that allocating
# 0.1 + 0.2 and releasing both leaves exactly 0 and re-setting the same limits is accepted.
EPSILON = 1e-9
ROUND = 9


class Rejected(Exception):
    """A command broke a rule; becomes a CommandRejected event with ``code``."""

    def __init__(self, code: Reason, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


# -- lookups that reject ---------------------------------------------------------------------------


def agent_of(state: PoolState, agent_id: str, *, active: bool = True) -> AgentState:
    """The agent ``agent_id``; rejects an unknown one, and a deregistered one unless ``active=False``."""
    found = state.agents.get(agent_id)
    if found is None:
        raise Rejected(Reason.UNKNOWN_AGENT, f"agent {agent_id!r} is not registered", agent_id=agent_id)
    if active and not found.active:
        raise Rejected(Reason.AGENT_NOT_ACTIVE, f"agent {agent_id!r} is deregistered", agent_id=agent_id)
    return found


def agent_named(state: PoolState, name: str) -> str | None:
    """The agent ``name`` names: the agent with that id, else the active agent with that name
    (several: the smallest id, so every replay picks the same one); None when there is none."""
    if name in state.agents:
        return name
    named = [a.agent_id for a in state.agents.values() if a.active and a.name == name]
    return min(named) if named else None


def task_of(state: PoolState, task_id: str, *allowed: str) -> TaskState:
    """The task ``task_id``; rejects an unknown one, or one whose status is not in ``allowed``."""
    found = state.tasks.get(task_id)
    if found is None:
        raise Rejected(Reason.UNKNOWN_TASK, f"task {task_id!r} does not exist", task_id=task_id)
    if allowed and found.status not in allowed:
        raise Rejected(
            Reason.INVALID_TASK_STATE,
            f"task {task_id!r} is {found.status}; needs {' or '.join(allowed)}",
            task_id=task_id,
            status=found.status,
        )
    return found


def holder_of(held: TaskState, agent_id: str | None) -> str:
    """The agent holding ``held``; rejects a command naming another agent."""
    assert held.agent_id is not None
    if agent_id is not None and agent_id != held.agent_id:
        raise Rejected(
            Reason.WRONG_AGENT,
            f"task {held.task_id!r} is held by {held.agent_id!r}, not {agent_id!r}",
            task_id=held.task_id,
            agent_id=agent_id,
            holder=held.agent_id,
        )
    return held.agent_id


def task_workflow(of: TaskState | None) -> str | None:
    """The workflow a task belongs to (``contracts.budgets.workflow_of`` of its data)."""
    return None if of is None else of.workflow


# -- the events of one decision --------------------------------------------------------------------


class Decision(list[Payload]):
    """A decision's events, with helpers that number and cancel durable timers."""

    def __init__(self, state: PoolState) -> None:
        super().__init__()
        self.state = state
        self.generation = state.timer_seq
        self.fired: str | None = None  # the timer this decision fires (nothing left to cancel)

    def schedule(self, timer_id: str, kind: str, delay_s: float, *, task_id: str | None = None,
                 agent_id: str | None = None, attempt: int = 0, workflow_id: str | None = None,
                 step: str | None = None) -> None:
        self.generation += 1
        self.append(e.TimerScheduled(timer_id=timer_id, kind=kind, delay_s=delay_s,
                                     generation=self.generation, task_id=task_id, agent_id=agent_id,
                                     attempt=attempt, workflow_id=workflow_id, step=step))

    def cancel(self, timer_id: str, reason: str) -> None:
        timer = self.state.timers.get(timer_id)
        if timer is not None and timer_id != self.fired:
            self.append(e.TimerCancelled(timer_id=timer_id, generation=timer.generation, reason=reason))


# Timer ids: one per purpose and entity, so re-arming replaces and cancelling needs no lookup.
def timeout_timer(task_id: str) -> str:
    return f"timeout:{task_id}"


def retry_timer(task_id: str) -> str:
    return f"retry:{task_id}"


def defer_timer(task_id: str) -> str:
    return f"defer:{task_id}"


def heartbeat_timer(agent_id: str) -> str:
    return f"heartbeat:{agent_id}"


def dead_timer(agent_id: str) -> str:
    return f"dead:{agent_id}"


def circuit_timer(agent_id: str) -> str:
    return f"circuit:{agent_id}"
