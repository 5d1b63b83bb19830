"""The pool decider: ``decide(state, command) -> events`` and ``evolve(state, event) -> state``.

``decide`` looks the command's exact type up in ``COMMAND_HANDLERS``, one row per command, and
runs its handler; the handlers live with their family (``agents``, ``tasks``, ``resources``,
``budgets``, ``policies``, ``timers``) and ``evolve`` with its own table in ``evolution``.
Adding a command is adding a handler and its row.

Pure: no I/O, no clock, no randomness. Time and ids come from the envelopes the runner passes
in, so the same history always yields the same decisions, in the embedded runner and on Faust.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from contracts import Payload, Reason
from contracts import commands as c
from services.domain import agents, budgets, policies, resources, tasks, timers
from services.domain.decision import DEFAULT_PRICES, DeciderConfig, Rejected
from services.domain.evolution import evolve
from services.domain.state import PoolState

# (state before, command, config) -> the events that follow; raises Rejected. Never changes state.
CommandHandler = Callable[[PoolState, Any, DeciderConfig], list[Payload]]

COMMAND_HANDLERS: dict[type[Any], CommandHandler] = {
    c.RegisterAgent: agents.register,
    c.AgentHeartbeat: agents.heartbeat,
    c.DeregisterAgent: agents.deregister,
    c.SubmitTask: tasks.submit,
    c.AssignTask: tasks.assign,
    c.StartTask: tasks.start,
    c.CompleteTask: tasks.complete,
    c.FailTask: tasks.fail,
    c.CancelTask: tasks.cancel,
    c.MarkTaskUnassignable: tasks.mark_unassignable,
    c.DeferTask: tasks.defer,
    c.SetResourceLimits: resources.set_limits,
    c.AllocateResources: resources.allocate,
    c.ReleaseResources: resources.release,
    c.RecordCost: budgets.record_cost,
    c.SetBudget: budgets.set_budget,
    c.SetPoolPolicy: policies.set_pool_policy,
    c.SetRateLimit: policies.set_rate_limit,
    c.SetScalingPolicy: policies.set_scaling_policy,
    c.DecideScaling: policies.decide_scaling,
    c.FireTimer: timers.fire,
}

_DEFAULT_CONFIG = DeciderConfig()


def decide(state: PoolState, cmd: Payload, config: DeciderConfig | None = None) -> list[Payload]:
    """Events that follow from ``cmd`` in ``state``; raises Rejected when a rule is broken."""
    handler = COMMAND_HANDLERS.get(type(cmd))
    if handler is None:
        raise Rejected(Reason.UNKNOWN_COMMAND, f"{type(cmd).__name__} is not a command this pool accepts")
    return list(handler(state, cmd, _DEFAULT_CONFIG if config is None else config))


__all__ = [
    "COMMAND_HANDLERS",
    "DEFAULT_PRICES",
    "CommandHandler",
    "DeciderConfig",
    "Rejected",
    "decide",
    "evolve",
]
